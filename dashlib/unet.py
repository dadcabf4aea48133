"""A class-conditional ADM/DDPM-style UNet predicting epsilon.

Layout follows DDPM's CIFAR-10 model (Ho et al. 2020, appendix B): a
sinusoidal timestep embedding through a 2-layer MLP (width 4*ch), residual
blocks with GroupNorm/SiLU and the embedding added after the first conv,
self-attention at the chosen resolutions, strided-conv downsampling and
nearest+conv upsampling, `num_res_blocks` blocks per level on the way down and
`num_res_blocks + 1` on the way up (each eating a skip). At ch=128,
mult=(1,2,2,2), 2 blocks, attention at 16x16 this is 35.75M parameters; at
ch=64 with 1 block, 6.08M (docs/paper.md).

Class conditioning (docs/paper.md 'Setup'): an embedding with num_classes + 1 rows
(row `num_classes` is the null label) added to the timestep embedding. One
network therefore has two branches, eps(x_t, t, y) and eps(x_t, t, null).
"""

from __future__ import annotations

import functools
import math
from collections.abc import Callable

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from dashlib.config import ModelConfig


def timestep_embedding(t: Tensor, dim: int, max_period: float = 10000.0) -> Tensor:
    """Sinusoidal embedding of (B,) timesteps -> (B, dim) (Vaswani et al. 2017)."""
    half = dim // 2
    freqs = torch.exp(-math.log(max_period) * torch.arange(half, device=t.device) / half)
    args = t.float()[:, None] * freqs[None]
    emb = torch.cat([torch.sin(args), torch.cos(args)], dim=1)
    if dim % 2:
        emb = F.pad(emb, (0, 1))
    return emb


class ResBlock(nn.Module):
    """GroupNorm-SiLU-conv, + projected embedding, GroupNorm-SiLU-dropout-conv, + skip.

    `emb` (B, emb_dim) arrives through SiLU where `ModelConfig.emb_silu` (ADM's
    emb_layers = SiLU, Linear; the UNet applies it once for all blocks)."""

    def __init__(self, c_in: int, c_out: int, emb_dim: int, dropout: float, groups: int) -> None:
        super().__init__()
        self.norm1 = nn.GroupNorm(groups, c_in)
        self.conv1 = nn.Conv2d(c_in, c_out, 3, padding=1)
        self.emb = nn.Linear(emb_dim, c_out)
        self.norm2 = nn.GroupNorm(groups, c_out)
        self.dropout = nn.Dropout(dropout)
        self.conv2 = nn.Conv2d(c_out, c_out, 3, padding=1)
        nn.init.zeros_(self.conv2.weight)  # each block starts as the identity
        nn.init.zeros_(self.conv2.bias)
        self.skip = nn.Conv2d(c_in, c_out, 1) if c_in != c_out else nn.Identity()

    def forward(self, x: Tensor, emb: Tensor) -> Tensor:
        h = self.conv1(F.silu(self.norm1(x)))
        h = h + self.emb(emb)[:, :, None, None]
        h = self.conv2(self.dropout(F.silu(self.norm2(h))))
        return self.skip(x) + h


class AttnBlock(nn.Module):
    """Single-head self-attention over the H*W positions, residual."""

    def __init__(self, c: int, groups: int) -> None:
        super().__init__()
        self.norm = nn.GroupNorm(groups, c)
        self.qkv = nn.Conv2d(c, 3 * c, 1)
        self.proj = nn.Conv2d(c, c, 1)
        nn.init.zeros_(self.proj.weight)
        nn.init.zeros_(self.proj.bias)

    def forward(self, x: Tensor) -> Tensor:
        b, c, h, w = x.shape
        # (3, B, 1 head, H*W, C), made contiguous: given transposed (strided) q/k/v,
        # scaled_dot_product_attention falls back to its slower math kernel on CPU.
        qkv = self.qkv(self.norm(x)).reshape(b, 3, 1, c, h * w).permute(1, 0, 2, 4, 3).contiguous()
        out = F.scaled_dot_product_attention(qkv[0], qkv[1], qkv[2])[:, 0]  # (B, H*W, C)
        return x + self.proj(out.transpose(1, 2).reshape(b, c, h, w))


class Downsample(nn.Module):
    def __init__(self, c: int) -> None:
        super().__init__()
        self.conv = nn.Conv2d(c, c, 3, stride=2, padding=1)

    def forward(self, x: Tensor) -> Tensor:
        return self.conv(x)


# Nearest 2x upsampling of an NCHW tensor on CPU without gradients, where PyTorch's NCHW
# kernel is slow (bench/upsample_speed.py, 128 rows, one thread, AMD Zen 4, 2026-12-06):
# maps of at least this many input pixels are repeated by two broadcast copies (0.13-0.80
# of the NCHW kernel's time at 8x8 and 16x16), smaller ones go through the channels-last
# kernel and back (0.60-0.77; the broadcast copies took 1.3-2.6x the NCHW kernel there).
UPSAMPLE_BROADCAST_MIN_PIXELS = 64


def upsample_nearest(x: Tensor) -> Tensor:
    """(B, C, H, W) -> (B, C, 2H, 2W), each pixel repeated 2x2 (F.interpolate's
    "nearest"), in x's memory layout and bit for bit the same values (a copy).

    With gradients, off the CPU or in channels-last the native kernel runs (so
    training's backward is unchanged); otherwise (NCHW sampling on CPU: the narrow
    students, `SAMPLING_CHANNELS_LAST_MIN_CH`) the faster route of
    `UPSAMPLE_BROADCAST_MIN_PIXELS`."""
    if x.device.type != "cpu" or x.requires_grad or x.is_contiguous(memory_format=torch.channels_last):
        return F.interpolate(x, scale_factor=2.0, mode="nearest")
    if x.shape[-2] * x.shape[-1] < UPSAMPLE_BROADCAST_MIN_PIXELS:
        return upsample_via_nhwc(x)
    return upsample_by_broadcast(x)


def upsample_via_nhwc(x: Tensor) -> Tensor:
    """Nearest 2x of an NCHW tensor through the channels-last kernel and back."""
    nhwc = x.contiguous(memory_format=torch.channels_last)
    return F.interpolate(nhwc, scale_factor=2.0, mode="nearest").contiguous()


def upsample_by_broadcast(x: Tensor) -> Tensor:
    """Nearest 2x of an NCHW tensor as two broadcast copies (columns, then rows)."""
    b, c, h, w = x.shape
    cols = x[..., None].expand(b, c, h, w, 2).reshape(b, c, h, 2 * w)
    # a 1x1 map reshapes to a view of stride 0, not a copy; larger maps are copied already
    return cols[:, :, :, None].expand(b, c, h, 2, 2 * w).reshape(b, c, 2 * h, 2 * w).contiguous()


class Upsample(nn.Module):
    def __init__(self, c: int) -> None:
        super().__init__()
        self.conv = nn.Conv2d(c, c, 3, padding=1)

    def forward(self, x: Tensor) -> Tensor:
        return self.conv(upsample_nearest(x))


class Level(nn.Module):
    """Residual blocks (with optional attention) at one resolution."""

    def __init__(self, blocks: list[ResBlock], attn: list[AttnBlock | nn.Identity]) -> None:
        super().__init__()
        self.blocks = nn.ModuleList(blocks)
        self.attn = nn.ModuleList(attn)


def _keep_random(table: Tensor, null: int) -> None:
    """The null row keeps its random draw, like every class row."""


def _zero(table: Tensor, null: int) -> None:
    table[null].zero_()


def _class_mean(table: Tensor, null: int) -> None:
    table[null].copy_(table[:null].mean(0))


#: How a CFG model's null-label embedding row starts (`ModelConfig.null_init`); `table` is
#: the label embedding (K + 1, D), `null` its null row K.
NULL_INITS: dict[str, Callable[[Tensor, int], None]] = {
    "random": _keep_random, "zero": _zero, "mean": _class_mean}


class UNet(nn.Module):
    """eps_theta(x_t, t, y): (B, C, H, W), (B,) int, (B,) int -> (B, C, H, W).

    `y == config.num_classes` selects the null (unconditional) branch when
    `config.cfg` is true.
    """

    def __init__(self, config: ModelConfig) -> None:
        super().__init__()
        self.config = config
        ch, g = config.ch, config.norm_groups
        emb_dim = 4 * ch
        self.time_mlp = nn.Sequential(nn.Linear(ch, emb_dim), nn.SiLU(), nn.Linear(emb_dim, emb_dim))
        self.label_emb = nn.Embedding(config.num_classes + int(config.cfg), emb_dim)
        self.conv_in = nn.Conv2d(config.in_channels, ch, 3, padding=1)

        def attn_at(res: int, c: int) -> AttnBlock | nn.Identity:
            return AttnBlock(c, g) if res in config.attn_resolutions else nn.Identity()

        # Down path; `skips` records the width of every tensor pushed to the stack.
        skips, c, res = [ch], ch, config.image_size
        self.down = nn.ModuleList()
        self.downsample = nn.ModuleList()
        for i, mult in enumerate(config.ch_mult):
            blocks, attns = [], []
            for _ in range(config.num_res_blocks):
                blocks.append(ResBlock(c, ch * mult, emb_dim, config.dropout, g))
                c = ch * mult
                attns.append(attn_at(res, c))
                skips.append(c)
            self.down.append(Level(blocks, attns))
            last = i == len(config.ch_mult) - 1
            self.downsample.append(nn.Identity() if last else Downsample(c))
            if not last:
                skips.append(c)
                res //= 2

        self.mid1 = ResBlock(c, c, emb_dim, config.dropout, g)
        self.mid_attn = AttnBlock(c, g)
        self.mid2 = ResBlock(c, c, emb_dim, config.dropout, g)

        self.up = nn.ModuleList()
        self.upsample = nn.ModuleList()
        for i, mult in reversed(list(enumerate(config.ch_mult))):
            blocks, attns = [], []
            for _ in range(config.num_res_blocks + 1):
                blocks.append(ResBlock(c + skips.pop(), ch * mult, emb_dim, config.dropout, g))
                c = ch * mult
                attns.append(attn_at(res, c))
            self.up.append(Level(blocks, attns))
            self.upsample.append(Upsample(c) if i > 0 else nn.Identity())
            if i > 0:
                res *= 2

        self.norm_out = nn.GroupNorm(g, c)
        self.conv_out = nn.Conv2d(c, config.in_channels, 3, padding=1)
        nn.init.zeros_(self.conv_out.weight)
        nn.init.zeros_(self.conv_out.bias)
        self._init_null_row()

    @torch.no_grad()
    def _init_null_row(self) -> None:
        if self.config.cfg:
            NULL_INITS[self.config.null_init](self.label_emb.weight, self.config.num_classes)

    @property
    def null_label(self) -> int:
        if not self.config.cfg:
            raise ValueError("this model has no null label (cfg=False)")
        return self.config.num_classes

    def embed(self, t: Tensor, y: Tensor) -> Tensor:
        """Timestep embedding plus class embedding, (B, 4*ch)."""
        return self.time_mlp(timestep_embedding(t, self.config.ch)) + self.label_emb(y)

    def forward(self, x: Tensor, t: Tensor, y: Tensor) -> Tensor:
        """eps(x_t, t, y): x (B, C, H, W) the noised images x_t, t (B,) int64 timesteps,
        y (B,) int64 labels (`null_label` for the unconditional branch); returns (B, C, H, W)."""
        return self.forward_with_features(x, t, y)[0]

    def forward_with_features(self, x: Tensor, t: Tensor, y: Tensor) -> tuple[Tensor, list[Tensor]]:
        """eps and the output of every down level and of the middle block.

        Features (used by FitNets distillation) have shapes
        (B, ch*mult_i, H/2^i, W/2^i) for each level i, then the middle block's.
        """
        emb = self.embed(t, y)
        if self.config.emb_silu:  # ADM's emb_layers = SiLU, Linear: the same SiLU for every block
            emb = F.silu(emb)
        h = self.conv_in(x)
        stack, features = [h], []
        for level, down in zip(self.down, self.downsample):
            for block, attn in zip(level.blocks, level.attn):
                h = attn(block(h, emb))
                stack.append(h)
            features.append(h)
            if not isinstance(down, nn.Identity):
                h = down(h)
                stack.append(h)
        h = self.mid2(self.mid_attn(self.mid1(h, emb)), emb)
        features.append(h)
        for level, up in zip(self.up, self.upsample):
            for block, attn in zip(level.blocks, level.attn):
                h = attn(block(torch.cat([h, stack.pop()], dim=1), emb))
            h = up(h)
        return self.conv_out(F.silu(self.norm_out(h))), features


def count_params(model: nn.Module, nonzero: bool = False) -> int:
    """Number of parameters (or of nonzero ones, for pruned models)."""
    if nonzero:
        return int(sum(int((p != 0).sum()) for p in model.parameters()))
    return sum(p.numel() for p in model.parameters())


@functools.lru_cache(maxsize=64)
def param_count(config: ModelConfig) -> int:
    """Parameters of a UNet of this configuration, built once per process and configuration.

    Built on the CPU, not the meta device: the first meta build in a process took
    1.1 s (PyTorch loads its meta kernels for the initialisers), which every command,
    notebook kernel and worker would pay; on the CPU the cifar teacher takes 0.2 s and
    the digits models 0.01 s. The global RNG, which the initialisers draw from, is
    restored, so counting never changes what a later random call draws."""
    with torch.random.fork_rng(devices=[]):
        return count_params(UNet(config))


def feature_channels(config: ModelConfig) -> list[int]:
    """Channel widths of `forward_with_features`' features, in order."""
    widths = [config.ch * m for m in config.ch_mult]
    return widths + [widths[-1]]


def build_unet(config: ModelConfig, seed: int) -> UNet:
    """A freshly initialised UNet whose weights depend only on (config, seed).

    nn.Module initialisers draw from the global RNG; we fork it so building a
    model neither depends on nor disturbs the caller's random state.
    """
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        return UNet(config)
