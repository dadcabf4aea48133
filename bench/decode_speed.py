"""Decoding your own JPEGs: full-size decode against PIL's draft mode, per photo size.

`dashlib.imagefolder._decode` asks PIL to decode a JPEG at a reduced DCT scale
that keeps both sides at least `DRAFT_FACTOR` x the model's image size, then
crops and resizes as before. Per (photo size, target size): the seconds per
image both ways (interleaved rounds, CPU clock, one thread) and the largest and
mean pixel difference (0-255) between the two decodes. The photos are smooth
random images written as quality-90 JPEGs to a temporary folder. Then
`dashlib.imagefolder.decode_all` over `--photos` 2,400x1,800 JPEGs (32x32) on
two threads against one: wall clock, interleaved rounds (PIL releases the GIL
while decoding, so threads run in parallel).
Writes bench/results/decode_speed.json.
"""

from __future__ import annotations

import argparse
import tempfile
from collections.abc import Callable
from pathlib import Path

import numpy as np
import torch
from common import interleaved_rounds, load_average, ratio_stats, write
from PIL import Image

import dashlib.imagefolder as imagefolder

PHOTOS = [(640, 480), (1920, 1080), (4000, 3000)]
TARGETS = [8, 32]


def photo(path: Path, size: tuple[int, int], seed: int) -> str:
    rng = np.random.default_rng(seed)
    coarse = (rng.random((size[1] // 40, size[0] // 40, 3)) * 255).astype(np.uint8)
    Image.fromarray(coarse).resize(size, Image.Resampling.BICUBIC).save(path, quality=90)
    return str(path)


def decode(path: str, target: int, factor: int) -> np.ndarray:
    imagefolder.DRAFT_FACTOR = factor
    return imagefolder._decode(path, target, 3)


def thread_scaling(paths: list[str], repeat: int) -> dict:
    """decode_all on two threads against one (wall clock, interleaved rounds)."""
    def on(threads: int) -> Callable[[], object]:
        def call() -> object:
            torch.set_num_threads(threads)
            return imagefolder.decode_all(paths, 32, 3)
        return call

    times = interleaved_rounds({"one": on(1), "two": on(2)}, repeat=repeat, warmup=1)["wall"]
    torch.set_num_threads(1)
    r = ratio_stats(times["two"], times["one"])
    print(f"decode_all, {len(paths)} photos 2400x1800 -> 32: two threads / one {r['median']:.2f} "
          f"[{r['min']:.2f}, {r['max']:.2f}]", flush=True)
    return {"photos": len(paths), "size": [2400, 1800], "target": 32, "two_over_one_wall": r,
            "s_per_call": {k: float(np.median(v)) for k, v in times.items()}}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--repeat", type=int, default=7)
    ap.add_argument("--photos", type=int, default=48)
    args = ap.parse_args()
    load_start, rows = load_average(), []
    with tempfile.TemporaryDirectory() as tmp:
        for i, size in enumerate(PHOTOS):
            path = photo(Path(tmp) / f"{i}.jpg", size, i)
            for target in TARGETS:
                full_factor = max(size)  # a draft size above the photo's: full-size decode
                calls = {"full": lambda p=path, t=target, f=full_factor: decode(p, t, f),
                         "draft": lambda p=path, t=target: decode(p, t, 2)}
                times = interleaved_rounds(calls, repeat=args.repeat, warmup=1)["cpu"]
                full, fast = decode(path, target, full_factor), decode(path, target, 2)
                diff = np.abs(full.astype(int) - fast.astype(int))
                r = ratio_stats(times["draft"], times["full"])
                rows.append({"photo": list(size), "target": target,
                             "s_per_image": {k: float(np.median(v)) for k, v in times.items()},
                             "draft_over_full": r, "max_abs_diff": int(diff.max()),
                             "mean_abs_diff": float(diff.mean())})
                print(f"{size[0]}x{size[1]} -> {target}: draft / full {r['median']:.2f} "
                      f"[{r['min']:.2f}, {r['max']:.2f}], max diff {diff.max()}", flush=True)
        imagefolder.DRAFT_FACTOR = 2
        threads = thread_scaling([photo(Path(tmp) / f"t{i}.jpg", (2400, 1800), 100 + i)
                                  for i in range(args.photos)], args.repeat)
    write("decode_speed", {"threads": 1, "load_average_start": load_start,
                           "load_average_end": load_average(), "rows": rows, "decode_all": threads})


if __name__ == "__main__":
    main()
