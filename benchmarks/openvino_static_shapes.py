"""What a static batch-1 shape would buy on OpenVINO: every OpenVINO file that
benchmarks/quantization_models.py and benchmarks/quantization.py exported, compiled as
`vlmedge.load` compiles it (from its path, the batch axis dynamic) and again with its inputs
reshaped to batch 1, timed round-robin at batch 1 in one process, outputs compared.

vlmedge compiles one model per file with a dynamic batch so that one compiled model serves
every batch size; this measures what that costs a single-item call, the edge case. Only the
files whose inputs are static but for the batch axis are measured (CLIP text towers exported
before their sequence axis became dynamic were; benchmarks/clip_text_length.py times that axis).

    .venv/bin/python benchmarks/quantization_models.py     # exports the suite's models (kept in --work)
    .venv/bin/python benchmarks/quantization.py            # exports ViT-B/16
    .venv/bin/python benchmarks/openvino_static_shapes.py  # ~5 min on 2 cores

Writes benchmarks/results/openvino-static-shapes-<machine>.md and .json.
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parent))

from benchmarks.quantization import Timer, cosine_min, cpu_flags, cpu_name, machine_name, write_results  # noqa: E402

TMP = Path(tempfile.gettempdir())
WORK = (TMP / "vlmedge-bench-quantization-models", TMP / "vlmedge-bench-quantization")


def openvino_files(work: tuple[Path, ...]) -> list[tuple[str, Path]]:
    """(model name, IR file) for the fp32 and int8 files of every artifact found in `work`."""
    found = []
    for root in work:
        for xml in sorted(root.glob("*/artifact/openvino/*.xml")) + sorted(root.glob("*/openvino/*.xml")):
            if xml.name.split(".")[1] in ("fp32", "int8"):
                artifact = xml.parent.parent  # <work>/<model>/artifact, or quantization.py's <work>/vit-b16
                found.append((artifact.parent.name if artifact.name == "artifact" else artifact.name, xml))
    return found


def batch_one_shapes(model: Any) -> dict[Any, list[int]] | None:
    """Each input's shape at batch 1, or None when an axis other than the batch is dynamic."""
    shapes = {}
    for port in model.inputs:
        dims = list(port.get_partial_shape())
        if any(not d.is_static for d in dims[1:]):
            return None
        shapes[port] = [1] + [d.get_length() for d in dims[1:]]
    return shapes


def feeds_for(shapes: dict[Any, list[int]], types: list[Any]) -> dict[int, np.ndarray]:
    rng = np.random.default_rng(0)
    feeds = {}
    for i, (shape, kind) in enumerate(zip(shapes.values(), types)):
        dtype = kind.to_dtype()
        # token ids and masks of ones: a full-length caption
        feeds[i] = (np.ones(shape) if np.issubdtype(dtype, np.integer) else rng.standard_normal(shape)).astype(dtype)
    return feeds


def measure(name: str, xml: Path, rounds: int, runs: int) -> dict[str, Any] | None:
    from vlmedge.runtimes.openvino import core

    config = {"PERFORMANCE_HINT": "LATENCY", "INFERENCE_PRECISION_HINT": "f32"}
    model = core().read_model(str(xml))
    shapes = batch_one_shapes(model)
    if shapes is None:
        print(f"{name} {xml.name}: skipped (an axis other than the batch is dynamic)")
        return None
    feeds = feeds_for(shapes, [port.get_element_type() for port in model.inputs])
    dynamic = core().compile_model(str(xml), "CPU", config).create_infer_request()
    model.reshape(shapes)
    static = core().compile_model(model, "CPU", config).create_infer_request()
    del model
    a, b = dynamic.infer(feeds, share_outputs=False), static.infer(feeds, share_outputs=False)
    # the same file, compiled two ways: int8 kernels may differ between them, so say by how much
    cosine = min(cosine_min(np.asarray(b[i]).reshape(1, -1), np.asarray(a[i]).reshape(1, -1)) for i in range(len(a)))
    timer = Timer(rounds, runs)
    timer.add("dynamic batch (as vlmedge.load)", lambda: dynamic.infer(feeds))
    timer.add("static batch 1", lambda: static.infer(feeds))
    times = timer.run()
    dyn, sta = times["dynamic batch (as vlmedge.load)"]["median_ms"], times["static batch 1"]["median_ms"]
    row = {"model": name, "file": xml.name, "dynamic_ms": dyn, "static_ms": sta, "speedup": dyn / sta,
           "cosine": cosine, "load_average": list(timer.load)}
    print(f"{name:12s} {xml.name:18s} dynamic {dyn:7.1f} ms  static {sta:7.1f} ms  {dyn / sta:.2f}x  "
          f"cosine {cosine:.6f}  load {timer.load[0]:.2f}-{timer.load[1]:.2f}", flush=True)
    return row


def markdown(summary: dict[str, Any]) -> str:
    lines = [f"# OpenVINO at batch 1: dynamic batch axis vs static batch-1 shape ({summary['machine']})", "",
             f"CPU: {summary['cpu']}, {summary['cores']} cores ({', '.join(summary['cpu_flags'])}); load average "
             f"{summary['load_average_start']:.2f} at the start. {summary['rounds']} round-robin rounds x "
             f"{summary['runs']} runs per file, median; one infer request each, LATENCY hint, f32 inference "
             "precision for the float parts. Command: `python benchmarks/openvino_static_shapes.py`.", "",
             "| model | file | dynamic batch ms | static batch 1 ms | static speedup | cosine, static vs dynamic | load while timing |",
             "|---|---|---:|---:|---:|---:|---|"]
    for r in summary["rows"]:
        lines.append(f"| {r['model']} | {r['file']} | {r['dynamic_ms']:.1f} | {r['static_ms']:.1f} | "
                     f"{r['speedup']:.2f}x | {r['cosine']:.6f} | {r['load_average'][0]:.2f}-{r['load_average'][1]:.2f} |")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--work", type=Path, nargs="*", default=list(WORK),
                        help="folders of quantization_models.py / quantization.py runs")
    parser.add_argument("--out", type=Path, default=HERE / "results")
    parser.add_argument("--rounds", type=int, default=6)
    parser.add_argument("--runs", type=int, default=8)
    args = parser.parse_args(argv)
    files = openvino_files(tuple(args.work))
    if not files:
        raise SystemExit(f"No OpenVINO files under {', '.join(map(str, args.work))}: run benchmarks/"
                         "quantization_models.py and benchmarks/quantization.py first.")
    load_start = os.getloadavg()[0]
    rows = [row for name, xml in files if (row := measure(name, xml, args.rounds, args.runs)) is not None]
    summary = {"machine": machine_name(), "cpu": cpu_name(), "cpu_flags": cpu_flags(),
               "cores": len(os.sched_getaffinity(0)), "rounds": args.rounds, "runs": args.runs,
               "load_average_start": load_start, "created": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
               "rows": rows}
    write_results(args.out / f"openvino-static-shapes-{machine_name()}", summary, markdown(summary))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
