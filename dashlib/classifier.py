"""A small CNN classifier per dataset: the offline feature space and the guidance judge.

It has two jobs in evaluation (docs/evaluation.md):

* its penultimate activations are a feature space for FID/KID/precision-recall
  and its logits give an Inception-Score analogue ("classifier FID", which
  needs no download, on every dataset);
* its accuracy on samples generated for class c measures *guidance fidelity*:
  does the model draw the class it was asked for?

It is trained by dashlib on the dataset's train split and cached as a run
folder `runs/<dataset>/classifier-<hash>/` (`final.pt`, `results.json` with its
accuracy on the held-out test split). Training draws batches and the random
shift augmentation from one seeded `torch.Generator`; dropout draws from a
forked global RNG, so a run is a function of its payload.
"""

from __future__ import annotations

import math
import time
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from dashlib import bars
from dashlib.config import DataConfig, EvalConfig, to_dict
from dashlib.data import Split, data_identity, load_dataset
from dashlib.device import resolve_device
from dashlib.io import CheckpointError, atomic_torch_save, atomic_write_json, load_checkpoint
from dashlib.runs import Run, make_run, prepare

#: Random translation of training images by up to this many pixels (zero padding = black in [-1, 1]).
SHIFT = 1


#: The widest stage, in multiples of the first one's width: without a cap the width would
#: double at every stage (19M parameters at 128x128 images, 76M at 256x256); up to 32x32
#: images no stage reaches it.
MAX_WIDTH_FACTOR = 8


class Classifier(nn.Module):
    """(B, C, H, W) images in [-1, 1] -> (features (B, 4w), logits (B, K)).

    Stages of two 3x3 conv-BatchNorm-ReLU blocks at widths w, 2w, 4w, 8w, 8w, ...
    (`MAX_WIDTH_FACTOR`), with 2x2 max-pooling between stages until the map is 4x4
    (8x8 input: 2 stages; 32x32: 4; 128x128: 6), then global average pooling, a ReLU
    layer of width 4w (the features) and a linear layer to the K logits.
    """

    def __init__(self, in_channels: int, image_size: int, num_classes: int, width: int = 32,
                 max_width_factor: int | None = MAX_WIDTH_FACTOR) -> None:
        super().__init__()
        self.in_channels, self.image_size, self.num_classes = in_channels, image_size, num_classes
        self.feature_dim, self.max_width_factor = 4 * width, max_width_factor
        layers: list[nn.Module] = []
        c_in = in_channels
        for i, c in enumerate(stage_widths(image_size, width, max_width_factor)):
            if i:
                layers.append(nn.MaxPool2d(2))
            for _ in range(2):
                layers += [nn.Conv2d(c_in, c, 3, padding=1, bias=False), nn.BatchNorm2d(c), nn.ReLU()]
                c_in = c
        self.body = nn.Sequential(*layers, nn.AdaptiveAvgPool2d(1), nn.Flatten())
        self.head = nn.Sequential(nn.Linear(c_in, self.feature_dim), nn.ReLU())
        self.dropout = nn.Dropout(0.2)
        self.out = nn.Linear(self.feature_dim, num_classes)

    def forward(self, x: Tensor) -> tuple[Tensor, Tensor]:
        features = self.head(self.body(x))
        return features, self.out(self.dropout(features))

    def spec(self) -> dict[str, int]:
        """The constructor arguments, stored beside the weights."""
        return {"in_channels": self.in_channels, "image_size": self.image_size,
                "num_classes": self.num_classes, "width": self.feature_dim // 4,
                "max_width_factor": self.max_width_factor}


def stage_widths(image_size: int, width: int, max_width_factor: int | None = MAX_WIDTH_FACTOR) -> list[int]:
    """The width of each stage: doubling after every 2x2 pooling, which halves the map until
    it is 4x4 (or odd), up to `max_width_factor` x `width` (None: no cap)."""
    widths, size = [width], image_size
    while size > 4 and size % 2 == 0:
        size //= 2
        widths.append(2 * widths[-1] if max_width_factor is None else
                      min(2 * widths[-1], max_width_factor * width))
    return widths


def random_shift(x: Tensor, generator: torch.Generator, max_shift: int = SHIFT) -> Tensor:
    """Translate each image (B, C, H, W) by a random integer offset in [-s, s]^2."""
    if max_shift == 0:
        return x
    b, _, h, w = x.shape
    padded = F.pad(x, (max_shift,) * 4, value=-1.0)
    dy, dx = torch.randint(0, 2 * max_shift + 1, (2, b), generator=generator).tolist()
    return torch.stack([padded[i, :, dy[i]:dy[i] + h, dx[i]:dx[i] + w] for i in range(b)])


@torch.no_grad()
def predict(model: Classifier, x: Tensor, batch_size: int = 512) -> Tensor:
    """Predicted classes (N,) for images (N, C, H, W) in [-1, 1]."""
    device = next(model.parameters()).device
    model.eval()
    out = [model(x[s:s + batch_size].to(device))[1].argmax(1).cpu() for s in range(0, len(x), batch_size)]
    return torch.cat(out) if out else torch.empty(0, dtype=torch.long)


def accuracy(predicted: Tensor, y: Tensor) -> float:
    """Fraction of predicted classes (N,) equal to the labels y (N,)."""
    return float((predicted == y).float().mean())


def balanced_accuracy(predicted: Tensor, y: Tensor) -> float:
    """The mean over the classes present in y (N,) of the fraction of each predicted (N,)
    correctly: what judging class-balanced samples takes. On an imbalanced split plain
    accuracy hides a classifier that names the largest class for everything (0.98 on a
    200:2 split, where this gives 0.5)."""
    right = (predicted == y).float()
    return float(torch.stack([right[y == c].mean() for c in y.unique()]).mean())


def classifier_payload(data: DataConfig, config: EvalConfig) -> dict[str, Any]:
    """Everything that determines a classifier; where the data lives does not."""
    return {"kind": "classifier", "data": data_identity(to_dict(data)), "steps": config.classifier_steps,
            "width": config.classifier_width, "batch_size": config.classifier_batch_size,
            "lr": config.classifier_lr, "seed": config.classifier_seed, "shift": SHIFT,
            # only where the cap changes the network, so that smaller images keep their runs
            **({"max_width_factor": MAX_WIDTH_FACTOR} if capped(data.image_size, config.classifier_width)
               else {})}


def capped(image_size: int, width: int) -> bool:
    """Whether `MAX_WIDTH_FACTOR` narrows a classifier for these images."""
    return stage_widths(image_size, width) != stage_widths(image_size, width, None)


def classifier_run(data: DataConfig, config: EvalConfig) -> Run:
    return make_run(data.name, "classifier", classifier_payload(data, config))


def fit(model: Classifier, train: Split, config: EvalConfig, device: torch.device,
        progress: bool = True) -> float:
    """AdamW with cosine decay and label smoothing 0.1; returns the last batch loss."""
    model.to(device).train()
    opt = torch.optim.AdamW(model.parameters(), lr=config.classifier_lr, weight_decay=1e-4)
    steps = config.classifier_steps
    g = torch.Generator().manual_seed(config.classifier_seed)
    loss = torch.zeros(())
    bar = bars.bar(range(steps), desc="classifier", disable=not progress, mininterval=1.0, leave=False)
    for step in bar:
        for group in opt.param_groups:
            group["lr"] = config.classifier_lr * 0.5 * (1 + math.cos(math.pi * step / steps))
        idx = torch.randint(0, len(train), (config.classifier_batch_size,), generator=g)
        x = random_shift(train.x[idx], g).to(device)
        loss = F.cross_entropy(model(x)[1], train.y[idx].to(device), label_smoothing=0.1)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
    model.eval()
    return float(loss.detach())


def train_classifier(data: DataConfig, config: EvalConfig, force: bool = False,
                     device: str = "auto", progress: bool = True) -> Run:
    """Train (or reuse) the dataset's classifier; its results.json has `test_accuracy`."""
    payload = classifier_payload(data, config)
    run = classifier_run(data, config)
    dev = resolve_device(device)  # checked even when the run is reused: a typo is an error either way
    if prepare(run, payload, force=force, resume=False) == "reuse":
        return run
    dataset = load_dataset(data)
    start = time.perf_counter()
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(config.classifier_seed)
        model = Classifier(dataset.channels, dataset.image_size, dataset.num_classes,
                           config.classifier_width)
        last_loss = fit(model, dataset.train, config, dev, progress)
    wall = time.perf_counter() - start
    test_pred = predict(model, dataset.test.x)
    atomic_torch_save({"kind": "classifier", "config": payload, "spec": model.spec(),
                       "model": model.cpu().state_dict()}, run.final)
    atomic_write_json(run.results, {
        "kind": "classifier", "dataset": data.name, "image_size": data.image_size,
        "test_accuracy": accuracy(test_pred, dataset.test.y),
        "train_accuracy": accuracy(predict(model, dataset.train.x), dataset.train.y),
        "balanced_test_accuracy": balanced_accuracy(test_pred, dataset.test.y),
        "n_test": len(dataset.test), "steps": config.classifier_steps, "final_loss": last_loss,
        "params": sum(p.numel() for p in model.parameters()), "feature_dim": model.feature_dim,
        "wall_time_s": wall, "device": str(dev), "run": str(run.path)})
    return run


def load_classifier(source: Run | str | Path, device: str | torch.device = "cpu") -> Classifier:
    """A trained classifier from a run (folder) or its final.pt (weights_only load)."""
    path = source.final if isinstance(source, Run) else Path(source)
    file = path / "final.pt" if path.is_dir() else path
    ckpt = load_checkpoint(file)
    if ckpt.get("kind") != "classifier" or "spec" not in ckpt:
        raise CheckpointError(f"{file} is not a dash classifier (train one with `dash train-classifier`)")
    model = Classifier(**{"max_width_factor": None, **ckpt["spec"]})  # older files: no cap
    model.load_state_dict(ckpt["model"])
    return model.to(device).eval()

