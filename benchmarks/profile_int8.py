"""Where the time of vlmedge's int8 ViT-B/16 goes, and what bounds it: OpenVINO's own per-node
counters (PERF_COUNT) on the int8 file benchmarks/quantization.py exported, grouped by node
type and kernel, and the matrix multiplications' achieved rate against this machine's measured
int8 GEMM peak, measured in the same run (vlmedge.bench.peak.measure_gemm: a chain of 8 1024^3
u8 x s8 MatMuls through OpenVINO itself), per node type and kernel and per matrix shape.

    .venv/bin/python benchmarks/quantization.py            # exports the artifact (kept in --work)
    .venv/bin/python benchmarks/profile_int8.py            # then profiles its int8 file (~1 min)

Batch 1, the threads of the machine, latency hint, as `vlmedge.load(..., precision="int8")`
compiles it. Writes benchmarks/results/profile-int8-<machine>.md.
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import tempfile
from collections import Counter
from pathlib import Path
from typing import Any

import numpy as np

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parent))
sys.path.insert(0, str(HERE))

from quantization import machine_name  # noqa: E402

# node types whose time is matrix multiplication (the CPU plugin's names after fusion; its
# int8 FullyConnected also appears as "FullyConnectedQuantizedLegacy")
GEMMS = ("FullyConnected", "MatMul", "Convolution", "ScaledDotProductAttention")


def is_gemm(node_type: str) -> bool:
    return node_type.startswith(GEMMS)


def float_precision(artifact: Path, xml: Path) -> str:
    """The OpenVINO precision the export verified the file's float parts in (its manifest's
    session options: bf16 where the CPU has it and the gate passed, else f32)."""
    from vlmedge.artifact import Artifact
    from vlmedge.runtimes.openvino import INFERENCE_PRECISIONS

    entry = next(f for f in Artifact.open(artifact, verify=False).files if f["path"] == f"openvino/{xml.name}")
    return INFERENCE_PRECISIONS[entry.get("session_options", {}).get("inference_precision", "fp32")]


def fully_connected_shapes(compiled: Any) -> dict[str, tuple[int, int, int, int]]:
    """{node name: (M, K, N, how many nodes have that shape)} of the compiled model's
    FullyConnected nodes, at batch 1."""
    shapes = {}
    for op in compiled.get_runtime_model().get_ordered_ops():
        if op.get_rt_info()["layerType"].astype(str).startswith("FullyConnected"):
            rows = [d.get_length() if d.is_static else 1 for d in op.input(0).get_partial_shape()]
            n, k = (d.get_length() for d in op.input(1).get_partial_shape())
            shapes[op.get_friendly_name()] = (int(np.prod(rows[:-1])), k, n)
    counts = Counter(shapes.values())
    return {name: (*shape, counts[shape]) for name, shape in shapes.items()}


def profile(xml: Path, calls: int, precision: str) -> tuple[dict[tuple[str, str], list[float]], float,
                                                           dict[tuple[int, int, int, int], list[float]]]:
    """{(node type, kernel): per-call ms, summed over the nodes of that kind}, the median wall
    time of a call, and {(M, K, N, nodes): per-call ms, summed over the FullyConnected nodes of
    that shape}, over `calls` profiled calls after warm-up."""
    import time

    from vlmedge.runtimes.openvino import core

    compiled = core().compile_model(str(xml), "CPU", {"PERFORMANCE_HINT": "LATENCY", "PERF_COUNT": True,
                                                      "INFERENCE_PRECISION_HINT": precision})
    shapes = fully_connected_shapes(compiled)
    request = compiled.create_infer_request()
    pixels = np.random.default_rng(0).standard_normal((1, 3, 224, 224)).astype(np.float32)
    for _ in range(5):
        request.infer({0: pixels})
    per_kind: dict[tuple[str, str], list[float]] = {}
    per_shape: dict[tuple[int, int, int, int], list[float]] = {}
    walls = []
    for _ in range(calls):
        t0 = time.perf_counter()
        request.infer({0: pixels})
        walls.append((time.perf_counter() - t0) * 1e3)
        kind_sums: dict[tuple[str, str], float] = {}
        shape_sums: dict[tuple[int, int, int, int], float] = {}
        for info in request.profiling_info:
            if info.status != info.Status.EXECUTED:
                continue
            ms = info.real_time.total_seconds() * 1e3
            kind = (info.node_type, info.exec_type)
            kind_sums[kind] = kind_sums.get(kind, 0.0) + ms
            if info.node_name in shapes:
                shape_sums[shapes[info.node_name]] = shape_sums.get(shapes[info.node_name], 0.0) + ms
        for sums, into in ((kind_sums, per_kind), (shape_sums, per_shape)):
            for key, ms in sums.items():
                into.setdefault(key, []).append(ms)
    return per_kind, statistics.median(walls), per_shape


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--artifact", type=Path,
                        default=Path(tempfile.gettempdir()) / "vlmedge-bench-quantization" / "vit-b16")
    parser.add_argument("--calls", type=int, default=30)
    parser.add_argument("--out", type=Path, default=HERE / "results")
    args = parser.parse_args()
    xml = args.artifact / "openvino" / "model.int8.xml"
    if not xml.is_file():
        raise SystemExit(f"{xml} is missing: run benchmarks/quantization.py first (it keeps the artifact there).")
    from vlmedge.bench.peak import measure_gemm
    from vlmedge.bench.roofline import count_openvino
    from vlmedge.environment import available_cores

    load_start = os.getloadavg()[0]
    threads = available_cores()
    count = count_openvino(xml, {"pixel_values": (1, 3, 224, 224)})
    precision = float_precision(args.artifact, xml)
    per_kind, wall_ms, per_shape = profile(xml, args.calls, precision)
    # measured now, beside the profile, not read from the cache: a shared host's speed drifts
    # between sessions (this machine's int8 peak read 4315 GOP/s one day, 3545 the next)
    peak = measure_gemm("openvino", "int8", threads).gops
    medians = {key: statistics.median(values) for key, values in per_kind.items()}
    total = sum(medians.values())
    gemm_ms = sum(ms for (kind, _), ms in medians.items() if is_gemm(kind))
    gemm_gops = count.ops / (gemm_ms / 1e3) / 1e9
    lines = [f"# Where int8 ViT-B/16 spends its time ({machine_name()})", "",
             f"`python benchmarks/profile_int8.py` on `{xml.name}` (vlmedge's OpenVINO int8 export of "
             f"benchmarks/quantization.py), batch 1, {threads} threads, float parts in {precision}; median of {args.calls} profiled calls: "
             f"{wall_ms:.1f} ms a call, {total:.1f} ms in the nodes' counters; load average {load_start:.2f} at start, "
             f"{os.getloadavg()[0]:.2f} at end.", "",
             "| node type | kernel | ms per call | share |", "|---|---|---:|---:|"]
    for (kind, kernel), ms in sorted(medians.items(), key=lambda item: -item[1]):
        if ms / total >= 0.005:
            lines.append(f"| {kind} | {kernel} | {ms:.2f} | {ms / total:.1%} |")
    lines += ["", f"Matrix multiplications ({', '.join(GEMMS)}, fused or not): {gemm_ms:.1f} ms per call, "
              f"{gemm_ms / total:.0%} of the time, for {count.ops / 1e9:.1f} GOP: **{gemm_gops:.0f} GOP/s**, "
              + (f"**{gemm_gops / peak:.0%} of the int8 GEMM peak measured in this run ({peak:.0f} GOP/s)**."
                 if peak else "no int8 peak could be measured here."),
              "", "By shape (M x K x N at batch 1, the FullyConnected nodes of that shape together): the "
              "rate each reaches. Where K is short against N (ViT's fc1, 768 -> 3072) the kernel does less "
              "work per weight it loads, and the fused bias, GELU and requantisation run on the widest output.", "",
              "| M x K x N | nodes' ms per call | GOP/s | of the int8 peak |", "|---|---:|---:|---:|"]
    for (m, k, n, nodes), values in sorted(per_shape.items(), key=lambda item: -statistics.median(item[1])):
        ms = statistics.median(values)
        gops = 2 * m * k * n * nodes / (ms / 1e3) / 1e9
        lines.append(f"| {m} x {k} x {n} ({nodes} nodes) | {ms:.2f} | {gops:.0f} | " + (f"{gops / peak:.0%} |" if peak else "- |"))
    lines += ["", "The attention's activation x activation MatMuls run fused with their Softmax in `Subgraph` "
              "nodes: their operations are in the count and their time is not, so the rate above is an upper "
              "bound (by their share of the operations, a few per cent for a ViT at 224)."]
    text = "\n".join(lines) + "\n"
    print(text)
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / f"profile-int8-{machine_name()}.md").write_text(text)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
