"""Where the time of vlmedge's int8 ViT-B/16 goes, and what bounds it: OpenVINO's own per-node
counters (PERF_COUNT) on the int8 file benchmarks/quantization.py exported, grouped by node
type and kernel, and the matrix multiplications' achieved rate against this machine's measured
int8 GEMM peak (vlmedge.bench.peak: a chain of 8 1024^3 u8 x s8 MatMuls through OpenVINO itself).

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
from pathlib import Path

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


def profile(xml: Path, calls: int, precision: str) -> tuple[dict[tuple[str, str], list[float]], float]:
    """{(node type, kernel): per-call ms, summed over the nodes of that kind} and the median
    wall time of a call, over `calls` profiled calls after warm-up."""
    import time

    from vlmedge.runtimes.openvino import core

    compiled = core().compile_model(str(xml), "CPU", {"PERFORMANCE_HINT": "LATENCY", "PERF_COUNT": True,
                                                      "INFERENCE_PRECISION_HINT": precision})
    request = compiled.create_infer_request()
    pixels = np.random.default_rng(0).standard_normal((1, 3, 224, 224)).astype(np.float32)
    for _ in range(5):
        request.infer({0: pixels})
    per_kind: dict[tuple[str, str], list[float]] = {}
    walls = []
    for _ in range(calls):
        t0 = time.perf_counter()
        request.infer({0: pixels})
        walls.append((time.perf_counter() - t0) * 1e3)
        sums: dict[tuple[str, str], float] = {}
        for info in request.profiling_info:
            if info.status != info.Status.EXECUTED:
                continue
            key = (info.node_type, info.exec_type)
            sums[key] = sums.get(key, 0.0) + info.real_time.total_seconds() * 1e3
        for key, ms in sums.items():
            per_kind.setdefault(key, []).append(ms)
    return per_kind, statistics.median(walls)


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
    from vlmedge.bench.peak import machine_peaks
    from vlmedge.bench.roofline import count_openvino
    from vlmedge.environment import available_cores

    load_start = os.getloadavg()[0]
    threads = available_cores()
    count = count_openvino(xml, {"pixel_values": (1, 3, 224, 224)})
    precision = float_precision(args.artifact, xml)
    per_kind, wall_ms = profile(xml, args.calls, precision)
    peak = machine_peaks("openvino", threads).gops("int8")
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
              + (f"**{gemm_gops / peak:.0%} of the measured int8 GEMM peak ({peak:.0f} GOP/s)**."
                 if peak else "no int8 peak could be measured here."),
              "", "The attention's activation x activation MatMuls run fused with their Softmax in `Subgraph` "
              "nodes: their operations are in the count and their time is not, so the rate above is an upper "
              "bound (by their share of the operations, a few per cent for a ViT at 224)."]
    text = "\n".join(lines) + "\n"
    print(text)
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / f"profile-int8-{machine_name()}.md").write_text(text)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
