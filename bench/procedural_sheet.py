"""Contact sheet of the procedural objects, to check by eye that they read correctly from every view.

Usage: python bench/procedural_sheet.py OUT_PATH [--resolution 64] [--batch] [--device cuda]

Rows: each kind in albedo at front / side / back / overhead, then the same four views lambertian and
textureless. With --batch, an extra sheet (OUT_PATH with a "_batch" suffix) of random training images,
and the time of ``sample_batch`` for 64 and 256 images on --device (after a warm-up that bakes the SDFs).
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

import numpy as np
import torch
from PIL import Image, ImageDraw

from dreamfusion.cameras import cameras_from_angles
from dreamfusion.procedural import COLOURS, OBJECT_KINDS, ProceduralDataConfig, render_views, sample_batch

VIEWS = (("front", 15.0, 0.0), ("side", 15.0, 90.0), ("back", 15.0, 180.0), ("overhead", 70.0, 30.0))
SHEET_COLOURS = tuple(c for c in COLOURS if c != "white")  # white vanishes on the white background


def _to_uint8(images: torch.Tensor) -> np.ndarray:
    return (images.clamp(0, 1).permute(0, 2, 3, 1).cpu().numpy() * 255).round().astype(np.uint8)


def object_sheet(resolution: int) -> Image.Image:
    n = len(VIEWS)
    cameras = cameras_from_angles(
        torch.tensor([v[1] for v in VIEWS]),
        torch.tensor([v[2] for v in VIEWS]),
        torch.full((n,), 1.25),
        torch.full((n,), 1.0),
        resolution,
    )
    rows = []
    for i, kind in enumerate(OBJECT_KINDS):
        colour = SHEET_COLOURS[i % len(SHEET_COLOURS)]
        tiles = [render_views(kind, colour, cameras, mode=m) for m in ("albedo", "lambertian", "textureless")]
        rows.append(np.concatenate(list(_to_uint8(torch.cat(tiles))), axis=1))
    label_width = 70
    grid = np.concatenate(rows, axis=0)
    sheet = Image.new("RGB", (grid.shape[1] + label_width, grid.shape[0]), "white")
    sheet.paste(Image.fromarray(grid), (label_width, 0))
    draw = ImageDraw.Draw(sheet)
    for i, kind in enumerate(OBJECT_KINDS):
        draw.text((2, i * resolution + resolution // 2 - 5), kind, fill="black")
    return sheet


def _timed_batch(config: ProceduralDataConfig, count: int, device: str) -> tuple[torch.Tensor, list[str], float]:
    if device.startswith("cuda"):
        torch.cuda.synchronize()
    start = time.perf_counter()
    batch = sample_batch(config, count, torch.Generator().manual_seed(0), device=device)
    if device.startswith("cuda"):
        torch.cuda.synchronize()
    return batch.images, batch.captions, time.perf_counter() - start


def batch_sheet(resolution: int, device: str, count: int = 64) -> tuple[Image.Image, list[str]]:
    config = ProceduralDataConfig(resolution=resolution)
    _timed_batch(config, 4, device)  # bake the SDFs on the device
    for n in (64, 256):
        print(f"sample_batch of {n} on {device}: {_timed_batch(config, n, device)[2]:.3f} s")
    images, captions, _ = _timed_batch(config, count, device)
    tiles = _to_uint8(images)
    per_row = 8
    rows = [np.concatenate(list(tiles[r : r + per_row]), axis=1) for r in range(0, count, per_row)]
    return Image.fromarray(np.concatenate(rows, axis=0)), captions


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("out", type=Path)
    parser.add_argument("--resolution", type=int, default=64)
    parser.add_argument("--batch", action="store_true")
    parser.add_argument("--device", default="cpu")
    args = parser.parse_args()
    object_sheet(args.resolution).save(args.out)
    print(f"wrote {args.out}")
    if args.batch:
        image, captions = batch_sheet(args.resolution, args.device)
        path = args.out.with_name(args.out.stem + "_batch" + args.out.suffix)
        image.save(path)
        print(f"wrote {path}")
        for r in range(0, len(captions), 8):
            print(" | ".join(captions[r : r + 8]))


if __name__ == "__main__":
    main()
