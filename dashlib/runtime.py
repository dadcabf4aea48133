"""How to run, not what: speed options that never change a run's identity.

`Runtime` is deliberately NOT part of a run's payload (its hash), because
none of these options changes what is trained, only how fast:

* ``channels_last``: "auto" (default) applies the rule table
  `CHANNELS_LAST_MIN_CH` (device type -> smallest UNet base width `ch` for which
  the NHWC layout measured faster, docs/scaling.md "Speed rules"; for sampling
  `SAMPLING_CHANNELS_LAST_MIN_CH`) and, for a forward
  autocast to bf16 on CPU, `CPU_BF16_CHANNELS_LAST` (per CPU bf16 feature); "on"/"off"
  force it.
* ``freeze``: "auto" (default) samples through a traced, frozen TorchScript graph
  of the UNet (`FrozenUNet`) where the rule table `FREEZE_CH` says it measured
  faster: small models on CPU, whose forward is dominated by per-module Python
  overhead; "on"/"off" force it. Same outputs to float rounding; inference only.
* ``compile``: `torch.compile` every UNet (in place, so state_dict keys and
  checkpoints are unchanged). Off by default: on a 2-core CPU compiling one UNet
  took longer than the time it saves in a `make reproduce` (docs/scaling.md).
* The optimiser's implementation (not an option): `adamw_options` picks the
  fused AdamW kernel on the device types in `FUSED_ADAMW_DEVICES`.
* ``loader_workers``: DataLoader worker processes that gather the (already drawn)
  batch rows and, on CUDA, pin them for asynchronous copies (0 = in the
  training loop itself; see `dashlib.batches`).
* ``sample_amp``: autocast for sampling ("none" by default, so samples are
  fp32 and reproducible; "auto" follows the same rule as training, `amp_dtype`).
  Training's precision is `train.amp`, part of the configuration; `amp_dtype`
  turns "auto" into a dtype per device and model width: fp16/bf16 on CUDA, bf16 on
  a CPU with bf16 matrix instructions (AMX or AVX-512 BF16, `CPU_BF16_NEEDS`) for
  UNets of base width >= `CPU_BF16_MIN_CH`, fp32 everywhere else.
"""

from __future__ import annotations

import warnings
import weakref
from dataclasses import dataclass

import torch
from torch import Tensor, nn

from dashlib.config import Validated, one_of, positive
from dashlib.device import autocast
from dashlib.unet import UNet


@dataclass(frozen=True)
class Runtime(Validated):
    compile: bool = False
    channels_last: str = "auto"
    loader_workers: int = 0
    sample_amp: str = "none"
    freeze: str = "auto"

    def validate(self) -> None:
        one_of(self, "channels_last", ("auto", "on", "off"))
        one_of(self, "freeze", ("auto", "on", "off"))
        positive(self, "loader_workers", strict=False)
        one_of(self, "sample_amp", ("none", "auto", "bf16", "fp16"))


# Speed rules, measured (bench/train_step_speed.py, bench/sampling_speed.py; the
# measurements and how to redo them for a new device: docs/scaling.md "Speed rules").
# Channels-last: device type -> smallest UNet base width `ch` from which the NHWC
# layout is used under "auto". On CUDA cuDNN and tensor cores prefer NHWC at every
# width; on CPU oneDNN's NHWC convolutions skip the per-call layout reorders: the
# forward measured 0.98x (digits student, ch=16) to 0.81x (cifar teacher, ch=128) of
# NCHW, the training step 0.96-0.99x. Below the smallest measured width (the tiny
# test preset) the layout is left alone.
# Device types not listed keep NCHW.
CHANNELS_LAST_MIN_CH: dict[str, int] = {"cuda": 1, "cpu": 16}
# The same rule for sampling (`inference_model`: no-grad forwards, frozen graphs on CPU).
# On CPU the ch-16 students sample faster in NCHW, where PyTorch's NHWC GroupNorm kernel
# is slow on 16 channels (docs/scaling.md "What limits the small models"): frozen 128-row
# forward, NHWC / NCHW 1.15 (digits student) and 1.16 (digits16 student) on AMD Zen 4
# (2026-12-06), 1.04 and 1.05 on the earlier AMD host (2026-12-02); the ch-32 teachers
# 1.01 and 1.00 on Zen 4, 0.94 and 0.92 on the earlier host (bench/layout_speed.py).
SAMPLING_CHANNELS_LAST_MIN_CH: dict[str, int] = {"cuda": 1, "cpu": 32}
# Device types whose fused AdamW kernel (one pass over all parameters instead of a
# Python loop of per-tensor ops) is used: on CPU the training step measured 0.90-0.98x
# of the for-loop one (digits teacher 1.02x, within its spread); standard on CUDA.
FUSED_ADAMW_DEVICES: tuple[str, ...] = ("cpu", "cuda")
# Frozen inference graphs: device type -> (smallest, widest) UNet base width `ch` for
# which sampling through a traced, frozen graph measured faster than eager
# (bench/freeze_speed.py, 128-row CFG forward, one thread: 0.81-0.88x at ch 2-16,
# 0.92x at ch 32, 0.99x at ch 64 and 128, where tracing the teacher also took 32 s).
# A small model's forward on CPU is some 900-1,300 operator calls on small tensors, so
# the per-module Python overhead the graph removes is a large share of it; a wide
# model's time is in its convolutions, which freezing leaves as they are. Device types
# not listed (CUDA: not measured) sample eagerly.
FREEZE_CH: dict[str, tuple[int, int]] = {"cpu": (1, 32)}


# Mixed precision on CPU: the smallest UNet base width `ch` from which `amp="auto"`
# (or "fp16") autocasts to bf16, on CPUs with bf16 matrix instructions that oneDNN's
# convolutions use (`cpu_bf16_fast`: any CPU feature in CPU_BF16_NEEDS). Measured
# (bench/train_step_speed.py, one thread, CPU clock, batch 8 at the cifar sizes and 64
# below; ratios to the same default path kept in fp32):
# * Intel Xeon with AMX tiles (2026-12-05): 0.67-0.75 (ch 64, cifar student) and
#   0.45-0.50 (ch 128, cifar teacher); 1.18-1.21 at ch 2-4 (tiny), 1.69 and 1.51 at ch 16
#   (digits, digits16 students), 1.30 and 0.99 at ch 32 (digits teacher on 8x8,
#   digits16 teacher on 16x16).
# * AMD EPYC (Zen 4) with AVX-512 BF16 and no AMX (2026-12-05): 0.60 (ch 64) and 0.55
#   (ch 128) in NCHW, 0.70 and 0.59 in NHWC; at batch 64 in NHWC 1.09 and 1.16 (tiny),
#   1.45 and 1.37 (ch 16), 1.07 and 0.91 (ch 32).
# Narrow layers on small maps spend more on casting than the bf16 kernels save. CPUs
# with neither feature (AVX2 only) have no bf16 kernels to gain from and stay fp32.
CPU_BF16_MIN_CH = 64
CPU_BF16_NEEDS = ("amx_bf16", "avx512_bf16")
# torch's own probes for the features in CPU_BF16_NEEDS, in the same order (private, so
# looked up softly).
_CPU_BF16_PROBES = ("_is_amx_tile_supported", "_is_avx512_bf16_supported")
# Channels-last under bf16 autocast on CPU, per bf16 feature (`cpu_bf16_feature`): whether
# the NHWC layout is used; it overrides CHANNELS_LAST_MIN_CH there (measured at ch 64 and
# 128, bench/train_step_speed.py --bf16, one thread, CPU clock, batch 8). On AMD Zen 4
# (AVX-512 BF16, 2026-12-05) the bf16 training step in NCHW took 0.83-0.87 (cifar student)
# and 0.94-0.95 (cifar teacher) of the same step in NHWC (two runs). With AMX the bf16
# rule was measured in NHWC (the ratios above); NCHW was not measured there.
CPU_BF16_CHANNELS_LAST: dict[str, bool] = {"amx_bf16": True, "avx512_bf16": False}


def cpu_bf16_feature() -> str:
    """The first feature of CPU_BF16_NEEDS this CPU has ("" for none): bf16 matrix
    instructions torch's oneDNN kernels use for bf16 convolutions and matrix products,
    AMX tiles (Intel Sapphire Rapids and later) or AVX-512 BF16 (Intel Cooper Lake, AMD
    Zen 4 and later). From torch's probes where this torch has them, else the CPU flags
    in /proc/cpuinfo."""
    probes = [getattr(torch.cpu, name, None) for name in _CPU_BF16_PROBES]
    if all(probe is not None for probe in probes):
        return next((f for f, probe in zip(CPU_BF16_NEEDS, probes, strict=True) if probe()), "")
    try:
        with open("/proc/cpuinfo") as f:
            flags = next((line.split() for line in f if line.startswith("flags")), [])
    except OSError:
        flags = []
    return next((f for f in CPU_BF16_NEEDS if f in flags), "")


def cpu_bf16_fast() -> bool:
    """Whether this CPU has bf16 matrix instructions (`cpu_bf16_feature`)."""
    return cpu_bf16_feature() != ""


def amp_dtype(device: torch.device, amp: str, ch: int | None = None) -> torch.dtype | None:
    """The autocast dtype for a UNet of base width `ch` on `device` under `amp`
    ("auto", "none", "bf16", "fp16"), or None for fp32.

    On CUDA: "auto" is bf16 where supported, else fp16; "bf16"/"fp16" as asked.
    On CPU: "bf16" as asked (slower without bf16 instructions); "auto" and "fp16" (the cifar
    presets' choice, the paper's on GPUs; CPUs have no fp16 path torch's convolutions
    use) are a request for mixed precision that follows the measured rule: bf16 where
    `cpu_bf16_fast()` and `ch >= CPU_BF16_MIN_CH`, else fp32 (also when `ch` is None).
    "none" is fp32 everywhere; other device types run fp32.
    """
    if amp == "none":
        return None
    if device.type == "cuda":
        if amp == "auto":
            return torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16
        return {"bf16": torch.bfloat16, "fp16": torch.float16}[amp]
    if device.type != "cpu":
        return None
    if amp == "bf16":
        return torch.bfloat16
    fast = ch is not None and ch >= CPU_BF16_MIN_CH and cpu_bf16_fast()
    return torch.bfloat16 if fast else None


def precision_name(dtype: torch.dtype | None) -> str:
    """An `amp_dtype` result as results JSON and `dash info` name it: "float32" for None."""
    return str(dtype or torch.float32).removeprefix("torch.")


#: `precision_name` results -> the `amp_dtype` result they name.
PRECISIONS: dict[str, torch.dtype | None] = {"float32": None, "bfloat16": torch.bfloat16,
                                             "float16": torch.float16}


def runs_precision(device: torch.device, name: str) -> bool:
    """Whether `device` can train in the precision `name` (a `precision_name`): float32
    everywhere, bfloat16 on every CPU (slower without bf16 instructions, the same
    arithmetic) and on GPUs that support it, float16 on CUDA only (CPU convolutions
    have no fp16 path)."""
    if name not in PRECISIONS:
        return False
    dtype = PRECISIONS[name]
    if dtype is torch.float16:
        return device.type == "cuda"
    if dtype is torch.bfloat16 and device.type == "cuda":
        return torch.cuda.is_bf16_supported()
    return True


def uses_channels_last(runtime: Runtime, device: torch.device, ch: int | None = None,
                       dtype: torch.dtype | None = None, sampling: bool = False) -> bool:
    """Whether a UNet of base width `ch` (None: any width) runs channels-last on `device`
    when its forward is autocast to `dtype` (None: fp32), in training or, with
    `sampling`, in sampling (`SAMPLING_CHANNELS_LAST_MIN_CH`)."""
    if runtime.channels_last != "auto":
        return runtime.channels_last == "on"
    if device.type == "cpu" and dtype == torch.bfloat16:
        by_feature = CPU_BF16_CHANNELS_LAST.get(cpu_bf16_feature())
        if by_feature is not None:
            return by_feature
    min_ch = (SAMPLING_CHANNELS_LAST_MIN_CH if sampling else CHANNELS_LAST_MIN_CH).get(device.type)
    return min_ch is not None and (ch is None or ch >= min_ch)


def uses_freeze(runtime: Runtime, device: torch.device, ch: int) -> bool:
    """Whether a UNet of base width `ch` samples through a frozen graph on `device`."""
    if runtime.freeze != "auto":
        return runtime.freeze == "on"
    lo, hi = FREEZE_CH.get(device.type, (1, 0))
    return lo <= ch <= hi


def adamw_options(device: torch.device) -> dict[str, bool]:
    """Keyword arguments choosing torch.optim.AdamW's implementation on `device`."""
    return {"fused": True} if device.type in FUSED_ADAMW_DEVICES else {}


def _with_frozen(module: nn.Module) -> list[nn.Module]:
    """The module and a distillation objective's frozen teacher, kept outside its tree."""
    teacher = getattr(module, "teacher", None)
    return [module, teacher] if isinstance(teacher, nn.Module) else [module]


def _base_width(module: nn.Module) -> int | None:
    """The widest UNet base width `ch` inside `module` (None: no UNet inside)."""
    widths = [m.config.ch for m in module.modules() if isinstance(m, UNet)]
    return max(widths) if widths else None


def to_channels_last(module: nn.Module, runtime: Runtime, device: torch.device,
                     dtype: torch.dtype | None = None, sampling: bool = False) -> nn.Module:
    """Lay out 4-D weights in place (and a frozen teacher's) as `uses_channels_last`
    says for a forward autocast to `dtype` (None: fp32), in training or `sampling`,
    decided per top module by its widest UNet: NHWC where it applies, NCHW
    (contiguous) where it does not."""
    for m in _with_frozen(module):
        nhwc = uses_channels_last(runtime, device, _base_width(m), dtype, sampling)
        m.to(memory_format=torch.channels_last if nhwc else torch.contiguous_format)
    return module


def compile_unets(module: nn.Module, runtime: Runtime) -> None:
    """torch.compile every UNet inside `module` (and a frozen teacher), in place, so
    state_dict keys and checkpoints are unchanged.

    Call it after any deepcopy of the module (the EMA): a copy made after
    compiling would call the original's compiled forward.
    """
    if runtime.compile:
        for top in _with_frozen(module):
            for m in top.modules():
                if isinstance(m, UNet):
                    m.compile()


class InferenceModel(nn.Module):
    """A UNet run under autocast, returning float32; exposes `config` and `null_label`
    so the sampler and guidance code treat it as the UNet itself."""

    def __init__(self, model: UNet, dtype: torch.dtype | None) -> None:
        super().__init__()
        self.model, self.dtype = model, dtype
        self.config = model.config

    @property
    def null_label(self) -> int:
        return self.model.null_label

    def forward(self, x: Tensor, t: Tensor, y: Tensor) -> Tensor:
        with autocast(x.device, self.dtype):
            return self.model(x, t, y).float()


# Frozen graphs of each live UNet, keyed by the input's device, dtypes and layout, kept
# while the weights are those they were traced from (see `_weights_key`).
# A graph of None: tracing failed, so that model samples eagerly.
_FROZEN: weakref.WeakKeyDictionary[UNet, tuple[tuple, dict[tuple, nn.Module | None]]] = (
    weakref.WeakKeyDictionary())


def _weights_key(model: UNet) -> tuple:
    """Changes whenever a parameter or buffer is replaced or changed in place (storage
    and autograd version counter), so a stale frozen graph is never used."""
    return tuple((t.data_ptr(), t._version) for t in (*model.parameters(), *model.buffers()))


def _frozen_graph(model: UNet, x: Tensor, t: Tensor, y: Tensor) -> nn.Module | None:
    weights = _weights_key(model)
    traced_for, graphs = _FROZEN.get(model, (None, {}))
    if traced_for != weights:
        graphs = {}
        _FROZEN[model] = (weights, graphs)
    key = (x.device, x.dtype, t.dtype, y.dtype, x.is_contiguous(memory_format=torch.channels_last))
    if key not in graphs:
        # torch.jit is deprecated in favour of torch.compile, whose CPU compile takes
        # minutes per model shape (docs/scaling.md); tracing and freezing take a second.
        graphs[key] = _trace_frozen(model, x, t, y)
    return graphs[key]


def _trace_frozen(model: UNet, x: Tensor, t: Tensor, y: Tensor) -> nn.Module | None:
    """torch.jit.freeze(torch.jit.trace(model)), or None (with one warning) when this
    torch cannot trace it: sampling then stays eager, only slower."""
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", FutureWarning)
            # group_norm's input check (more than one value per group) and the upsampling's
            # route (`unet.upsample_nearest`, by map size) are Python branches on sizes that
            # are fixed per layer; the UNet has no data-dependent branch to lose.
            for module in ("torch.nn.functional", "dashlib.unet"):
                warnings.filterwarnings("ignore", category=torch.jit.TracerWarning, module=module)
            return torch.jit.freeze(torch.jit.trace(model, (x, t, y), check_trace=False))
    except Exception as err:  # noqa: BLE001 - whatever tracing trips on, sampling must still work
        warnings.warn(f"could not freeze the UNet for sampling ({type(err).__name__}: "
                      f"{str(err).splitlines()[0] if str(err) else ''}); sampling eagerly instead "
                      f"(--freeze off silences this)", RuntimeWarning, stacklevel=3)
        return None


class FrozenUNet(nn.Module):
    """A UNet sampled through a traced, frozen TorchScript graph of itself: the same
    eps_theta(x_t, t, y), (B, C, H, W), (B,), (B,) -> (B, C, H, W), to float rounding,
    without the per-module Python overhead. The graph is traced on the first call
    (any batch size works after) and cached per model until its weights change.
    In training mode or with gradients enabled it runs the UNet itself."""

    def __init__(self, model: UNet) -> None:
        super().__init__()
        self.model = model
        self.config = model.config

    @property
    def null_label(self) -> int:
        return self.model.null_label

    def forward(self, x: Tensor, t: Tensor, y: Tensor) -> Tensor:
        if self.model.training or torch.is_grad_enabled():
            return self.model(x, t, y)
        graph = _frozen_graph(self.model, x, t, y)
        return self.model(x, t, y) if graph is None else graph(x, t, y)


def sampling_dtype(model: UNet, runtime: Runtime, device: torch.device) -> torch.dtype | None:
    """The autocast dtype `inference_model` samples `model` in (None: fp32)."""
    return amp_dtype(device, runtime.sample_amp, model.config.ch)


def inference_model(model: UNet, runtime: Runtime, device: torch.device) -> nn.Module:
    """The model prepared for sampling: channels-last, compiled or frozen, autocast as
    configured. With the default Runtime on CPU a small model comes back frozen
    (`FREEZE_CH`), a wide one as the model itself."""
    dtype = sampling_dtype(model, runtime, device)
    to_channels_last(model, runtime, device, dtype, sampling=True)
    compile_unets(model, runtime)
    if dtype is not None:
        return InferenceModel(model, dtype)
    return model if runtime.compile else frozen(model, runtime, device)


def frozen(model: UNet, runtime: Runtime, device: torch.device) -> nn.Module:
    """`FrozenUNet(model)` where the rule `FREEZE_CH` (or `runtime.freeze`) says so,
    else the model itself; the layout is left as it is. Same outputs either way."""
    # TorchScript's tracer calls hasattr() on every attribute, and null_label raises on a
    # model without a null row (single-head), so those run eagerly.
    if model.config.cfg and uses_freeze(runtime, device, model.config.ch):
        return FrozenUNet(model)
    return model
