"""Time of `dreamfusion export` on finished runs: the surface fit, marching cubes, simplification, UV unwrap and
texture bake, and the file, at the export defaults (grid 256, texture 1024), median of a few repeats.

    python bench/export_speed.py OUT.json RUN_DIR [RUN_DIR ...] [--device cuda] [--repeats 3] [--texture-size 1024]

Prints a table (one row per run: median, min and max seconds, faces, outline IoU of the fit) and a JSON line;
OUT.json holds the same record.
"""

from __future__ import annotations

import argparse
import json
import statistics
import tempfile
import time
from pathlib import Path

import torch


def main() -> None:
    from dreamfusion.export.mesh import MeshExportConfig, extract_mesh, write_mesh
    from dreamfusion.run import load_scene

    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("out", type=Path, help="JSON file for the figures")
    parser.add_argument("runs", type=Path, nargs="+", help="finished run directories")
    parser.add_argument("--device", default="auto")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--resolution", type=int, default=256)
    parser.add_argument("--texture-size", type=int, default=1024)
    parser.add_argument("--vertex-colors", action="store_true")
    args = parser.parse_args()
    config = MeshExportConfig(resolution=args.resolution, texture_size=args.texture_size, vertex_colors=args.vertex_colors)

    rows = []
    print(f"export: grid {args.resolution}, texture {args.texture_size if not args.vertex_colors else 'none'}, "
          f"{args.repeats} repeats, threads {torch.get_num_threads()}")
    print(f"{'run':<28}{'median s':>10}{'min s':>8}{'max s':>8}{'faces':>8}{'fit IoU':>9}")
    for run_dir in args.runs:
        _, scene = load_scene(run_dir, args.device)
        times, mesh = [], None
        with tempfile.TemporaryDirectory() as tmp:
            for _ in range(args.repeats):
                if scene.field.encoding.tables.is_cuda:
                    torch.cuda.synchronize()
                started = time.perf_counter()
                mesh = extract_mesh(scene.field, config)
                write_mesh(mesh, Path(tmp) / "mesh.glb")
                times.append(time.perf_counter() - started)
        assert mesh is not None
        row = {"run": str(run_dir), "median_seconds": statistics.median(times), "seconds": times,
               "faces": mesh.num_faces, "outline_iou": mesh.outline_iou}  # fmt: skip
        rows.append(row)
        print(f"{run_dir.name[:27]:<28}{row['median_seconds']:10.1f}{min(times):8.1f}{max(times):8.1f}"
              f"{mesh.num_faces:8d}{mesh.outline_iou or float('nan'):9.3f}")
    record = {"bench": "export_speed", "device": args.device, "resolution": args.resolution,
              "texture_size": args.texture_size, "vertex_colors": args.vertex_colors, "rows": rows,
              "median_seconds": statistics.median(r["median_seconds"] for r in rows)}  # fmt: skip
    args.out.write_text(json.dumps(record, indent=2))
    print(json.dumps(record))


if __name__ == "__main__":
    main()
