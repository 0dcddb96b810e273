"""Memory and time of a long list call against the pipeline's batch size (`vlmedge.load(...,
batch_size=N)`, serve's `--max-batch`): a small device trades a little speed for a bounded
peak.

Each cell runs in a fresh process: load the artifact (compiled-model cache warm after the
first), one untimed call of one image, then the list call of --images decoded photos
(640x480 HWC arrays, already in memory) timed once, its peak resident memory (VmHWM, reset
just before the call) minus the RSS before it. Medians over --rounds processes per cell;
every batch size of a backend runs in turn within a round, so that a drifting machine slows
them alike. The ratios against the default batch size (32) are the figures to read.

The model is benchmarks/cold_start.py's: transformers.ViTForImageClassification(ViTConfig())
with seeded weights (ViT-B/16, nothing downloaded), exported once to --work.

    .venv/bin/python benchmarks/batch_memory.py --work /tmp/cold/work        # reuses cold_start's export
    .venv/bin/python benchmarks/batch_memory.py --model small --rounds 1     # smoke run

Writes benchmarks/results/batch-memory-<machine>.json and .md (-<model> for the smaller ones).
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parent))  # run from a checkout without installing
sys.path.insert(0, str(HERE))

DEFAULT_BATCH = 32  # vlmedge.tasks.base.MAX_BATCH, the pipelines' default


def child(artifact: str, backend: str, batch_size: int, images: int) -> None:
    """One list call in this fresh process; prints one JSON line."""
    import numpy as np

    import vlmedge
    from vlmedge.bench.timing import Memory

    photos = list(np.random.default_rng(0).integers(0, 256, (images, 480, 640, 3), dtype=np.uint8))
    classifier = vlmedge.load(artifact, backend=backend, precision="fp32", batch_size=batch_size)
    classifier.classify(photos[:1], top_k=1)  # lazy initialisation and the first call's buffers, as a server warms up
    memory = Memory()
    baseline = memory.start()
    t0 = time.perf_counter()
    classifier.classify(photos, top_k=1)
    seconds = time.perf_counter() - t0
    print(json.dumps({"peak_mb": memory.increase(baseline), "seconds": seconds,
                      "provider": classifier.model.provider}), flush=True)


def run_child(artifact: Path, backend: str, batch_size: int, images: int, cache_dir: Path) -> dict[str, Any]:
    env = {**os.environ, "VLMEDGE_CACHE_DIR": str(cache_dir)}
    command = [sys.executable, __file__, "--child", str(artifact), backend, str(batch_size), str(images)]
    done = subprocess.run(command, capture_output=True, text=True, env=env, timeout=1800)
    if done.returncode != 0:
        raise SystemExit(f"child {backend} batch {batch_size} failed:\n{done.stderr[-3000:]}")
    return json.loads(done.stdout.strip().splitlines()[-1])


def markdown(result: dict[str, Any]) -> str:
    lines = [f"# Batch size against memory and time: {result['model']}, {result['images']} images in one list call",
             "", f"Machine: {result['machine']} ({result['cpu']}, {result['cores']} cores); load average "
             f"{result['load_start']:.2f} at the start, {result['load_end']:.2f} at the end; medians of "
             f"{result['rounds']} fresh processes per cell. Command: `{result['command']}`.", "",
             "| backend | batch size | peak RSS during the call, MB | vs batch 32 | ms per image | vs batch 32 |",
             "|---|---:|---:|---:|---:|---:|"]
    for row in result["rows"]:
        lines.append(f"| {row['backend']} | {row['batch_size']} | {row['peak_mb']:.0f} | {row['peak_ratio']:.2f}x | "
                     f"{row['ms_per_image']:.1f} | {row['time_ratio']:.2f}x |")
    return "\n".join(lines) + "\n"


def main() -> None:
    from cold_start import SIZES, export_artifact
    from quantization import cpu_name, machine_name

    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--model", choices=["vit-b16", *SIZES], default="vit-b16")
    parser.add_argument("--backends", default="onnxruntime,openvino")
    parser.add_argument("--batch-sizes", default="1,4,8,32")
    parser.add_argument("--images", type=int, default=64)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--work", type=Path, default=None, help="keep (and reuse) the exported artifact here")
    parser.add_argument("--results", type=Path, default=HERE / "results")
    parser.add_argument("--machine", default=machine_name())
    parser.add_argument("--child", nargs=4, metavar=("ARTIFACT", "BACKEND", "BATCH", "IMAGES"), help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        artifact, backend, batch, images = args.child
        return child(artifact, backend, int(batch), int(images))

    sizes = [int(size) for size in args.batch_sizes.split(",")]
    load_start = os.getloadavg()[0]
    with tempfile.TemporaryDirectory(prefix="vlmedge-batch-") as scratch:
        work = args.work or Path(scratch)
        # cold_start.py's export (fp32 and int8) where --work holds one, else an fp32 one made here
        artifact = next((folder for folder in (work / f"{args.model}-fp32-int8", work / f"{args.model}-fp32")
                         if (folder / "manifest.json").is_file()), work / f"{args.model}-fp32")
        if not (artifact / "manifest.json").is_file():
            export_artifact(artifact, args.model, ["fp32"])
        cells: dict[tuple[str, int], list[dict[str, Any]]] = {}
        for round_ in range(args.rounds):
            for backend in args.backends.split(","):
                for size in sizes:
                    cell = run_child(artifact, backend, size, args.images, Path(scratch) / "cache")
                    cells.setdefault((backend, size), []).append(cell)
                    print(f"round {round_ + 1} {backend} batch {size}: +{cell['peak_mb']:.0f} MB, "
                          f"{1000 * cell['seconds'] / args.images:.1f} ms/image", flush=True)
    rows = []
    for (backend, size), runs in cells.items():
        rows.append({"backend": backend, "batch_size": size, "provider": runs[0]["provider"],
                     "peak_mb": statistics.median(r["peak_mb"] for r in runs),
                     "ms_per_image": 1000 * statistics.median(r["seconds"] for r in runs) / args.images})
    for row in rows:
        base = next((r for r in rows if r["backend"] == row["backend"] and r["batch_size"] == DEFAULT_BATCH), row)
        row["peak_ratio"] = row["peak_mb"] / base["peak_mb"]
        row["time_ratio"] = row["ms_per_image"] / base["ms_per_image"]
    result = {"model": args.model, "images": args.images, "machine": args.machine, "cpu": cpu_name(),
              "cores": len(os.sched_getaffinity(0)), "rounds": args.rounds, "load_start": load_start,
              "load_end": os.getloadavg()[0], "rows": rows,
              "command": "python benchmarks/batch_memory.py " + " ".join(sys.argv[1:])}
    suffix = "" if args.model == "vit-b16" else f"-{args.model}"
    stem = args.results / f"batch-memory-{args.machine}{suffix}"
    stem.with_suffix(".json").write_text(json.dumps(result, indent=2) + "\n")
    stem.with_suffix(".md").write_text(markdown(result))
    print(markdown(result))


if __name__ == "__main__":
    main()
