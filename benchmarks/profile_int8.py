"""Where the time of vlmedge's int8 file goes, and what bounds it: OpenVINO's own per-node
counters (PERF_COUNT) on an artifact's OpenVINO int8 file (ViT-B/16 from
benchmarks/quantization.py unless told), grouped by node type and kernel, beside the same
counters on the artifact's fp32 file compiled as plain OpenVINO compiles it (bf16 where the
CPU has it); and the matrix multiplications' achieved rate against this machine's int8 GEMM
peak, measured in the same run (vlmedge.bench.peak.measure_gemm: a chain of 8 1024^3 u8 x s8
MatMuls through OpenVINO itself), per node type and kernel and per matrix shape.

    .venv/bin/python benchmarks/quantization.py            # exports the artifact (kept in --work)
    .venv/bin/python benchmarks/profile_int8.py            # then profiles its int8 file (~1 min)
    .venv/bin/python benchmarks/profile_int8.py --artifact benchmarks/.work/full/swin-t/artifact
                                                           # any artifact: here the suite's Swin-T

Batch 1, the threads of the machine, latency hint, as `vlmedge.load(..., precision="int8")`
compiles it. Writes benchmarks/results/profile-int8-<machine>-<model>.md.
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import tempfile
from collections import Counter
from pathlib import Path
from typing import Any, NamedTuple

import numpy as np

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parent))
sys.path.insert(0, str(HERE))

from quantization import machine_name  # noqa: E402

# node types whose time is matrix multiplication (the CPU plugin's names after fusion; its
# int8 FullyConnected also appears as "FullyConnectedQuantizedLegacy")
GEMMS = ("FullyConnected", "MatMul", "Convolution", "ScaledDotProductAttention")


class Profile(NamedTuple):
    """Medians over the profiled calls: ms per call by (node type, kernel), summed over the
    nodes of that kind; the wall time of a call; ms per call by FullyConnected shape
    (M, K, N, nodes of that shape), summed over those nodes; and the input shapes fed."""
    per_kind: dict[tuple[str, str], float]
    wall_ms: float
    per_shape: dict[tuple[int, int, int, int], float]
    shapes: dict[str, tuple[int, ...]]


def is_gemm(node_type: str) -> bool:
    return node_type.startswith(GEMMS)


def float_precision(artifact: Path, xml: Path) -> str:
    """The OpenVINO precision the export verified the file's float parts in (its manifest's
    session options: bf16 where the CPU has it and the gate passed, else f32)."""
    from vlmedge.artifact import Artifact
    from vlmedge.runtimes.openvino import INFERENCE_PRECISIONS

    entry = next(f for f in Artifact.open(artifact, verify=False).files if f["path"] == f"openvino/{xml.name}")
    return INFERENCE_PRECISIONS[entry.get("session_options", {}).get("inference_precision", "fp32")]


def fully_connected_shapes(xml: Path, feeds: dict[int, np.ndarray],
                           config: dict[str, Any]) -> dict[str, tuple[int, int, int]]:
    """{node name: (M, K, N)} of the FullyConnected nodes, read from the file compiled once more
    with its inputs reshaped to the fed shapes: where the batch axis is dynamic the plugin
    cannot tell M (Swin's windows fold into it)."""
    import openvino as ov

    from vlmedge.runtimes.openvino import core

    model = core().read_model(str(xml))
    model.reshape({port: ov.PartialShape(list(feeds[index].shape)) for index, port in enumerate(model.inputs)})
    shapes = {}
    for op in core().compile_model(model, "CPU", config).get_runtime_model().get_ordered_ops():
        if op.get_rt_info()["layerType"].astype(str).startswith("FullyConnected"):
            rows = [d.get_length() for d in op.input(0).get_partial_shape()]
            n, k = (d.get_length() for d in op.input(1).get_partial_shape())
            shapes[op.get_friendly_name()] = (int(np.prod(rows[:-1])), k, n)
    return shapes


def batch_one_feeds(compiled: Any, length: int) -> dict[int, np.ndarray]:
    """Seeded inputs at batch 1: the batch axis 1, another dynamic axis (a text's length)
    `length`; integer inputs (token ids, masks) ones."""
    rng = np.random.default_rng(0)
    feeds = {}
    for index, port in enumerate(compiled.inputs):
        dims = port.get_partial_shape()
        shape = [d.get_length() if d.is_static else (1 if axis == 0 else length) for axis, d in enumerate(dims)]
        dtype = port.get_element_type().to_dtype()
        feeds[index] = (np.ones(shape, dtype) if np.issubdtype(dtype, np.integer)
                        else rng.standard_normal(shape).astype(dtype))
    return feeds


def input_shapes(compiled: Any, feeds: dict[int, np.ndarray]) -> dict[str, tuple[int, ...]]:
    return {name: feeds[index].shape for index, port in enumerate(compiled.inputs) for name in port.get_names()}


def profile(xml: Path, calls: int, precision: str, length: int) -> Profile:
    """OpenVINO's counters over `calls` profiled calls at batch 1 after warm-up."""
    import time

    from vlmedge.runtimes.openvino import core

    config = {"PERFORMANCE_HINT": "LATENCY", "INFERENCE_PRECISION_HINT": precision}
    compiled = core().compile_model(str(xml), "CPU", {**config, "PERF_COUNT": True})
    feeds = batch_one_feeds(compiled, length)
    shapes = fully_connected_shapes(xml, feeds, config)
    request = compiled.create_infer_request()
    for _ in range(5):
        request.infer(feeds)
    per_kind: dict[tuple[str, str], list[float]] = {}
    per_shape: dict[tuple[int, int, int, int], list[float]] = {}
    walls = []
    for _ in range(calls):
        t0 = time.perf_counter()
        request.infer(feeds)
        walls.append((time.perf_counter() - t0) * 1e3)
        kind_sums: dict[tuple[str, str], float] = {}
        shape_sums: dict[tuple[int, int, int], float] = {}
        shape_nodes: Counter[tuple[int, int, int]] = Counter()
        for info in request.profiling_info:
            if info.status != info.Status.EXECUTED:
                continue
            ms = info.real_time.total_seconds() * 1e3
            kind = (info.node_type, info.exec_type)
            kind_sums[kind] = kind_sums.get(kind, 0.0) + ms
            # a FullyConnected node the static compile also has: its shape is known
            if info.node_type.startswith("FullyConnected") and info.node_name in shapes:
                shape = shapes[info.node_name]
                shape_sums[shape] = shape_sums.get(shape, 0.0) + ms
                shape_nodes[shape] += 1
        for key, ms in kind_sums.items():
            per_kind.setdefault(key, []).append(ms)
        for shape, ms in shape_sums.items():
            per_shape.setdefault((*shape, shape_nodes[shape]), []).append(ms)
    return Profile({key: statistics.median(values) for key, values in per_kind.items()}, statistics.median(walls),
                   {key: statistics.median(values) for key, values in per_shape.items()}, input_shapes(compiled, feeds))


def role(node_type: str) -> str:
    """The row a node type is compared under, int8 file against float file: their matrix
    multiplications are told apart by name (FullyConnectedQuantizedLegacy, ...), not by role."""
    return "matrix multiplications" if is_gemm(node_type) else node_type


def by_role(per_kind: dict[tuple[str, str], float]) -> dict[str, float]:
    sums: dict[str, float] = {}
    for (kind, _), ms in per_kind.items():
        sums[role(kind)] = sums.get(role(kind), 0.0) + ms
    return sums


def comparison_lines(int8: Profile, plain: Profile, plain_name: str) -> list[str]:
    """Node roles of the int8 file beside the float file's: where int8 gains, and where it does not."""
    ours, theirs = by_role(int8.per_kind), by_role(plain.per_kind)
    lines = [f"Beside the same model's fp32 file compiled as plain OpenVINO compiles it ({plain_name}; "
             f"{plain.wall_ms:.1f} ms a call, int8 {int8.wall_ms:.1f} ms: **{plain.wall_ms / int8.wall_ms:.2f}x**), "
             "node roles summed, ms per call:", "",
             f"| role | int8 | {plain_name} | int8 speed-up |", "|---|---:|---:|---:|"]
    for name in sorted(set(ours) | set(theirs), key=lambda n: -max(ours.get(n, 0.0), theirs.get(n, 0.0))):
        a, b = ours.get(name, 0.0), theirs.get(name, 0.0)
        if max(a, b) >= 0.005 * sum(ours.values()):
            lines.append(f"| {name} | {a:.2f} | {b:.2f} | " + (f"{b / a:.2f}x |" if a > 0 and b > 0 else "- |"))
    return lines


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--artifact", type=Path,
                        default=Path(tempfile.gettempdir()) / "vlmedge-bench-quantization" / "vit-b16")
    parser.add_argument("--graph", default="model", help="the artifact's graph (CLIP: image or text)")
    parser.add_argument("--length", type=int, default=77, help="a dynamic axis other than the batch (a text's tokens)")
    parser.add_argument("--calls", type=int, default=30)
    parser.add_argument("--out", type=Path, default=HERE / "results")
    args = parser.parse_args()
    xml, fp32 = (args.artifact / "openvino" / f"{args.graph}.{p}.xml" for p in ("int8", "fp32"))
    if not xml.is_file():
        raise SystemExit(f"{xml} is missing: run benchmarks/quantization.py first (it keeps the artifact there).")
    from vlmedge.artifact import Artifact
    from vlmedge.bench.peak import measure_gemm
    from vlmedge.bench.roofline import count_openvino
    from vlmedge.environment import available_cores
    from vlmedge.runtimes.openvino import supports_precision

    load_start = os.getloadavg()[0]
    threads = available_cores()
    slug = (args.artifact.parent if args.artifact.name == "artifact" else args.artifact).name
    source = Artifact.open(args.artifact, verify=False).manifest.get("source") or {}
    # a module's reference is the name it was exported under; a folder's is its path, less telling than the slug
    title = source.get("reference") if source.get("kind") == "module" else slug
    if args.graph != "model":
        slug, title = f"{slug}-{args.graph}", f"{title}, {args.graph} graph"
    precision = float_precision(args.artifact, xml)
    int8 = profile(xml, args.calls, precision, args.length)
    plain_precision = "bf16" if supports_precision("bf16") else "f32"
    plain = profile(fp32, args.calls, plain_precision, args.length) if fp32.is_file() else None
    count = count_openvino(xml, int8.shapes)
    # measured now, beside the profile, not read from the cache: a shared host's speed drifts
    # between sessions (this machine's int8 peak read 4315 GOP/s one day, 3545 the next)
    peak = measure_gemm("openvino", "int8", threads).gops
    medians = int8.per_kind
    total = sum(medians.values())
    gemm_ms = sum(ms for (kind, _), ms in medians.items() if is_gemm(kind))
    gemm_gops = count.ops / (gemm_ms / 1e3) / 1e9
    lines = [f"# Where vlmedge's int8 {title} spends its time ({machine_name()})", "",
             f"`python benchmarks/profile_int8.py --artifact {args.artifact} --graph {args.graph}` on `{xml.name}`, "
             f"batch 1 ({', '.join(f'{k} {list(v)}' for k, v in int8.shapes.items())}), {threads} threads, "
             f"float parts in {precision}; median of {args.calls} profiled calls: "
             f"{int8.wall_ms:.1f} ms a call, {total:.1f} ms in the nodes' counters; load average {load_start:.2f} at start, "
             f"{os.getloadavg()[0]:.2f} at end.", "",
             "| node type | kernel | ms per call | share |", "|---|---|---:|---:|"]
    for (kind, kernel), ms in sorted(medians.items(), key=lambda item: -item[1]):
        if ms / total >= 0.005:
            lines.append(f"| {kind} | {kernel} | {ms:.2f} | {ms / total:.1%} |")
    if plain is not None:
        lines += [""] + comparison_lines(int8, plain, f"plain OpenVINO {plain_precision}")
    lines += ["", f"Matrix multiplications ({', '.join(GEMMS)}, fused or not): {gemm_ms:.1f} ms per call, "
              f"{gemm_ms / total:.0%} of the time, for {count.ops / 1e9:.2f} GOP: **{gemm_gops:.0f} GOP/s**, "
              + (f"**{gemm_gops / peak:.0%} of the int8 GEMM peak measured in this run ({peak:.0f} GOP/s)**."
                 if peak else "no int8 peak could be measured here."),
              "", "By shape (M x K x N at batch 1, the FullyConnected nodes of that shape together): the "
              "rate each reaches. Where K is short against N the kernel does less work per weight it loads, "
              "and where M x N is large the fused bias, activation and requantisation run on a wide output.", "",
              "| M x K x N | nodes' ms per call | GOP/s | of the int8 peak |", "|---|---:|---:|---:|"]
    for (m, k, n, nodes), ms in sorted(int8.per_shape.items(), key=lambda item: -item[1]):
        gops = 2 * m * k * n * nodes / (ms / 1e3) / 1e9
        lines.append(f"| {m} x {k} x {n} ({nodes} nodes) | {ms:.2f} | {gops:.0f} | " + (f"{gops / peak:.0%} |" if peak else "- |"))
    lines += ["", "The attention's activation x activation MatMuls run fused with their Softmax in `Subgraph` "
              "nodes: their operations are in the count and their time is not, so the rate above is an upper "
              "bound (by their share of the operations, a few per cent for a ViT at 224)."]
    text = "\n".join(lines) + "\n"
    print(text)
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / f"profile-int8-{machine_name()}-{slug}.md").write_text(text)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
