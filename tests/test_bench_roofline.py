"""`vlmedge bench`'s roofline: operations counted from a graph whose MACs are worked out by
hand, the peak GEMM measurement and its cache, the figures of a row, and a real bench run
whose JSON carries them and validates. No assertion depends on how fast anything is."""

from __future__ import annotations

import dataclasses
import importlib.util
import json
import math
from pathlib import Path

import numpy as np
import pytest

import vlmedge
from vlmedge.bench import peak
from vlmedge.bench.result import BenchResult, Latency, Parity, Row

REPO = Path(__file__).resolve().parent.parent
SCHEMA = json.loads((REPO / "benchmarks" / "bench.schema.json").read_text())
BACKENDS = [b for b in ("onnxruntime", "openvino") if importlib.util.find_spec(b)]
PEAK_BACKENDS = BACKENDS + (["torch"] if importlib.util.find_spec("torch") else [])


@pytest.fixture
def quick_peaks(tmp_path, monkeypatch):
    """A cache folder of the test's own, a small GEMM, a small copy and short timing."""
    monkeypatch.setenv("VLMEDGE_CACHE_DIR", str(tmp_path / "cache"))
    monkeypatch.delenv("VLMEDGE_NO_CACHE", raising=False)
    monkeypatch.setattr(peak, "GEMM_SIZE", 96)
    monkeypatch.setattr(peak, "BANDWIDTH_MB", 4)
    monkeypatch.setattr(peak, "MIN_SECONDS", 0.01)
    return tmp_path / "cache" / peak.CACHE_FILE


def hand_graph(path: Path) -> Path:
    """x[N,3,8,8] -> Conv(4x3x3x3, pad 1) -> Relu -> Reshape; t[N,8,16] -> MatMul(16x32) and
    Einsum bij,jk->bik (16x4); v[N,16] -> Gemm(transB, 10x16, bias) -> Softmax."""
    onnx = pytest.importorskip("onnx")
    from onnx import TensorProto, helper, numpy_helper

    rng = np.random.default_rng(0)
    weights = {"cw": (4, 3, 3, 3), "cb": (4,), "mw": (16, 32), "ew": (16, 4), "gw": (10, 16), "gb": (10,)}
    initializers = [numpy_helper.from_array(rng.standard_normal(s).astype(np.float32), n) for n, s in weights.items()]
    initializers.append(numpy_helper.from_array(np.array([0, 256], np.int64), "flat"))
    nodes = [
        helper.make_node("Conv", ["x", "cw", "cb"], ["c"], pads=[1, 1, 1, 1]),
        helper.make_node("Relu", ["c"], ["r"]),
        helper.make_node("Reshape", ["r", "flat"], ["rf"]),
        helper.make_node("MatMul", ["t", "mw"], ["m"]),
        helper.make_node("Einsum", ["t", "ew"], ["e"], equation="bij,jk->bik"),
        helper.make_node("Gemm", ["v", "gw", "gb"], ["g"], transB=1),
        helper.make_node("Softmax", ["g"], ["s"]),
    ]
    inputs = [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", 3, 8, 8]),
              helper.make_tensor_value_info("t", TensorProto.FLOAT, ["N", 8, 16]),
              helper.make_tensor_value_info("v", TensorProto.FLOAT, ["N", 16])]
    outputs = [helper.make_tensor_value_info(n, TensorProto.FLOAT, None) for n in ("rf", "m", "e", "s")]
    model = helper.make_model(helper.make_graph(nodes, "hand", inputs, outputs, initializers),
                              opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    onnx.save(model, str(path))
    return path


@pytest.mark.parametrize("batch", [1, 3])
def test_operation_count_equals_the_hand_count(tmp_path, batch):
    from vlmedge.bench.roofline import count_onnx

    path = hand_graph(tmp_path / "hand.onnx")
    count = count_onnx(path, {"x": (batch, 3, 8, 8), "t": (batch, 8, 16), "v": (batch, 16)})
    conv = batch * 4 * 8 * 8 * (3 * 3 * 3)  # every output element: C_in x kH x kW MACs
    matmul = batch * 8 * 32 * 16  # [N,8,16] x [16,32]
    einsum = batch * 8 * 16 * 4  # b, i, j, k
    gemm = batch * 10 * 16  # [N,16] x [16,10]
    assert count.by_op == {"Conv": conv, "MatMul": matmul, "Einsum": einsum, "Gemm": gemm}
    assert count.macs == conv + matmul + einsum + gemm == batch * 11680 and count.ops == 2 * count.macs
    assert count.unknown == []
    weights = 4 * 3 * 3 * 3 + 4 + 16 * 32 + 16 * 4 + 10 * 16 + 10
    assert count.weight_elements == weights + 2 and count.weight_bytes == 4 * weights + 8 * 2  # int64 shape
    # Relu reads and writes [N,4,8,8]; Softmax [N,10]; Reshape is a view of what Relu wrote; a GEMM's
    # activations are counted where other nodes read or write them, and graph inputs and outputs that only
    # GEMMs touch once: x [N,3,8,8], t [N,8,16], v [N,16], m [N,8,32], e [N,8,4]
    assert count.activation_elements == batch * (2 * 256 + 2 * 10 + 192 + 128 + 16 + 256 + 32)
    assert count.activation_bytes == 4 * count.activation_elements


def positions_graph(path: Path) -> Path:
    """x (N, L, 4) plus a (1, 16, 4) position table sliced to L, a length computed from x's
    shape (as a text graph of any length does), then MatMul 4 -> 8."""
    import onnx
    from onnx import TensorProto, helper, numpy_helper

    rng = np.random.default_rng(0)
    initializers = [numpy_helper.from_array(rng.standard_normal((1, 16, 4)).astype(np.float32), "table"),
                    numpy_helper.from_array(rng.standard_normal((4, 8)).astype(np.float32), "w"),
                    numpy_helper.from_array(np.array([1], np.int64), "one"),
                    numpy_helper.from_array(np.array([0], np.int64), "zero")]
    nodes = [helper.make_node("Shape", ["x"], ["shape"]),
             helper.make_node("Gather", ["shape", "one"], ["length"], axis=0),
             helper.make_node("Slice", ["table", "zero", "length", "one"], ["positions"]),
             helper.make_node("Add", ["x", "positions"], ["h"]),
             helper.make_node("MatMul", ["h", "w"], ["y"])]
    graph = helper.make_graph(nodes, "positions", [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", "L", 4])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, None)], initializers)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    onnx.save(model, str(path))
    return path


@pytest.mark.parametrize("batch", [1, 2, 3])
def test_a_batch_of_one_is_counted_where_shape_inference_loses_its_axis(tmp_path, batch):
    """Shape inference broadcasts batch 1 against the sliced table's unknown dims into an
    unknown dim (batch 2 or 3 stays): the count at batch 1 is the batch-2 count halved."""
    from vlmedge.bench.roofline import count_onnx

    count = count_onnx(positions_graph(tmp_path / "positions.onnx"), {"x": (batch, 5, 4)})
    assert count.unknown == [] and count.macs == batch * 5 * 4 * 8 and count.by_op == {"MatMul": count.macs}
    assert ("at batch 2 halved" in count.source) == (batch == 1)


@pytest.mark.skipif(len(BACKENDS) < 2, reason="needs onnxruntime and openvino")
def test_a_graph_onnx_shape_inference_cannot_follow_is_counted_by_openvino_whatever_the_run_asked_for(
        hf_classifier_dir, quick_peaks, tmp_path):
    """Swin's window partition reshapes by a length divided from the input's shape: ONNX
    shape inference leaves those GEMMs unknown, OpenVINO's reading of the same file does not.
    A run without OpenVINO rows counts the file alike: a count must not depend on --backend."""
    from vlmedge.bench.roofline import count_onnx, count_openvino

    out = tmp_path / "swin"
    vlmedge.export(str(hf_classifier_dir("swin")), out, to=["onnx", "openvino"], precision=["fp32"])
    shape = {"pixel_values": (1, 3, 32, 32)}
    onnx_count, openvino_count = (f(out / "onnx" / "model.fp32.onnx", shape) for f in (count_onnx, count_openvino))
    assert onnx_count.unknown and not openvino_count.unknown and openvino_count.macs > onnx_count.macs

    both = vlmedge.bench(out, backends=["onnxruntime", "openvino"], batch_sizes=[1], iterations=2, warmup=0, threads=1)
    assert {row.backend for row in both.rows} == {"onnxruntime", "openvino"}
    for row in both.rows:
        assert row.roofline.macs == openvino_count.macs and "ONNX shape inference left" in row.roofline.count_source
    alone = vlmedge.bench(out, backends=["onnxruntime"], batch_sizes=[1], iterations=2, warmup=0, threads=1)
    assert alone.rows[0].roofline.macs == openvino_count.macs and not alone.rows[0].roofline.note


@pytest.mark.skipif("openvino" not in BACKENDS, reason="openvino is not installed")
def test_openvino_counts_the_same_graph_alike(tmp_path):
    from vlmedge.bench.roofline import count_openvino

    path = hand_graph(tmp_path / "hand.onnx")
    count = count_openvino(path, {"x": (2, 3, 8, 8), "t": (2, 8, 16), "v": (2, 16)})
    assert count.macs == 2 * 11680 and count.unknown == []


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("precision", ["fp32", "int8"])
def test_the_peak_graph_does_the_work_its_rate_is_divided_by(backend, precision, tmp_path):
    """The peak is 2 * GEMM_DEPTH * size^3 operations over the best time: the chained graph it
    times, counted as a model's graph is, does exactly that work."""
    pytest.importorskip("onnx")
    from vlmedge.bench.roofline import count_onnx, count_openvino

    size = 32
    build, count = ((peak._onnx_gemm, count_onnx) if backend == "onnxruntime"
                    else (peak._openvino_gemm, count_openvino))
    path, feed = build(precision, size, tmp_path)
    counted = count(path, {"a": feed.shape})
    assert counted.unknown == [] and counted.ops == 2 * peak.GEMM_DEPTH * size**3


@pytest.mark.parametrize("backend", PEAK_BACKENDS)
def test_peak_is_measured_cached_and_measured_again_for_another_key(backend, quick_peaks, monkeypatch):
    first = peak.machine_peaks(backend, threads=1)
    fp32 = first.gops("fp32")
    assert not first.cached and first.gemm_size == 96 and fp32 is not None and math.isfinite(fp32) and fp32 > 0
    assert first.bandwidth_gbs > 0 and "numpy copy" in first.bandwidth_method
    gemms = lambda: [key for key in json.loads(quick_peaks.read_text()) if "| gemm " in key]  # noqa: E731
    assert len(gemms()) == 1 and f"| {backend} " in gemms()[0]

    def no_measuring(*args, **kwargs):
        raise AssertionError("measured although the cache holds this key")

    monkeypatch.setattr(peak, "measure_gemm", no_measuring)
    again = peak.machine_peaks(backend, threads=1)
    assert again.cached and again.peaks == first.peaks and again.bandwidth_gbs == first.bandwidth_gbs

    measured = []
    monkeypatch.setattr(peak, "measure_gemm", lambda b, p, t, s: measured.append((t, p)) or peak.Peak(b, p, 1.0, "x"))
    assert not peak.machine_peaks(backend, threads=2).cached and {t for t, _ in measured} == {2}
    monkeypatch.setattr(peak, "backend_version", lambda name: "0.0-another")
    assert not peak.machine_peaks(backend, threads=1).cached
    assert peak.machine_peaks(backend, threads=1, remeasure=True).cached is False
    assert len(gemms()) == 3


def test_measured_again_after_a_faster_row_each_precision_keeps_the_higher_figure(quick_peaks, monkeypatch):
    figures = {"fp32": 100.0, "fp16": 50.0, "bf16": None, "int8": 400.0}
    monkeypatch.setattr(peak, "measure_gemm", lambda b, p, t, s: peak.Peak(b, p, figures[p], f"first {p}"))
    first = peak.machine_peaks("onnxruntime", threads=1)
    figures.update(fp32=80.0, fp16=70.0, bf16=30.0)  # a slower moment for fp32; fp16 and bf16 now higher
    monkeypatch.setattr(peak, "measure_gemm", lambda b, p, t, s: peak.Peak(b, p, figures[p], f"second {p}"))
    again = peak.machine_peaks("onnxruntime", threads=1, keep_higher=True)
    assert not again.cached and {p.precision: p.gops for p in again.peaks} == {"fp32": 100.0, "fp16": 70.0,
                                                                               "bf16": 30.0, "int8": 400.0}
    kept = next(p for p in again.peaks if p.precision == "fp32")
    assert kept.note.startswith("first fp32; measured ") and first.measured in kept.note
    assert peak.machine_peaks("onnxruntime", threads=1).peaks == again.peaks  # what the cache now holds
    third = peak.machine_peaks("onnxruntime", threads=1, keep_higher=True)  # kept twice: said once
    assert next(p for p in third.peaks if p.precision == "fp32").note == kept.note


def test_no_cache_measures_every_time_and_writes_nothing(quick_peaks, monkeypatch):
    monkeypatch.setenv("VLMEDGE_NO_CACHE", "1")
    monkeypatch.setattr(peak, "measure_gemm", lambda b, p, t, s: peak.Peak(b, p, 1.0, "x"))
    assert not peak.machine_peaks("onnxruntime", threads=1).cached
    assert not peak.machine_peaks("onnxruntime", threads=1).cached and not quick_peaks.exists()


def test_without_onnx_the_onnxruntime_peak_is_unavailable_not_an_error(quick_peaks, monkeypatch):
    real = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec", lambda name, *a: None if name == "onnx" else real(name, *a))
    result = peak.measure_gemm("onnxruntime", "fp32", 1)
    assert result.gops is None and "pip install onnx" in result.note


def _row(backend: str, precision: str, provider: str, p50_ms: float) -> Row:
    latency = Latency(iterations=1, min_ms=p50_ms, mean_ms=p50_ms, std_ms=0.0, cov=0.0, p50_ms=p50_ms, p90_ms=p50_ms,
                      p95_ms=p50_ms, p99_ms=p50_ms, max_ms=p50_ms)
    return Row(graph="model", backend=backend, precision=precision, batch_size=1, threads=1, mode="model-only",
               label=f"{backend} {precision}", provider=provider, device="cpu", file=None, model_mb=None, load_s=0.0,
               first_inference_ms=0.0, latency=latency, throughput_per_s=1.0, peak_rss_increase_mb=None,
               parity=Parity.from_report(None, "none"), inputs="")


def test_a_row_is_placed_against_the_peak_of_the_precision_it_computes_in():
    from vlmedge.bench.roofline import OpCount, roofline

    peaks = peak.MachinePeaks("openvino", "1", 1, 1024, [peak.Peak("openvino", p, g, "") for p, g in
                                                         (("fp32", 100.0), ("bf16", 400.0), ("int8", 800.0))],
                              bandwidth_gbs=20.0, bandwidth_method="", measured="", load_average=[], cached=True)
    count = OpCount(macs=10**9, by_op={}, weight_elements=10**6, weight_bytes=0, activation_elements=10**6,
                    activation_bytes=0, source="test")
    bf16 = roofline(_row("openvino", "fp32", "OpenVINO CPU bf16", 10.0), count, peaks)
    assert (bf16.compute_precision, bf16.ops, bf16.gops_per_s, bf16.peak_gops) == ("bf16", 2 * 10**9, 200.0, 400.0)
    assert bf16.percent_of_peak == 50.0 and bf16.bytes == 2 * 10**6 + 2 * 10**6 and bf16.intensity == 500.0
    assert bf16.ridge == 20.0 and bf16.bound == "compute" and bf16.attainable_gops == 400.0
    int8 = roofline(_row("openvino", "int8", "OpenVINO CPU f32", 10.0), count, peaks)
    assert int8.compute_precision == "int8" and int8.percent_of_peak == 25.0 and int8.bytes == 10**6 + 4 * 10**6
    small = OpCount(macs=10**6, by_op={}, weight_elements=10**6, weight_bytes=0, activation_elements=10**6,
                    activation_bytes=0, source="test")
    fp32 = roofline(_row("openvino", "fp32", "OpenVINO CPU f32", 1.0), small, peaks)
    assert fp32.intensity == 0.25 and fp32.ridge == 5.0 and fp32.bound == "memory" and fp32.attainable_gops == 5.0
    fast = roofline(_row("openvino", "fp32", "OpenVINO CPU f32", 1.0), count, peaks)  # 2000 GOP/s
    assert fast.percent_of_peak == 2000.0 and "understates this machine now" in fast.note
    fresh = roofline(_row("openvino", "fp32", "OpenVINO CPU f32", 1.0), count, dataclasses.replace(peaks, cached=False))
    assert "run faster through openvino than its chain of 1024^3 GEMMs does" in fresh.note and "understates" not in fresh.note
    assert "above the" not in bf16.note
    torch = roofline(_row("torch", "fp32", "torch eager", 1.0), small, None, "the torch baseline has no measured peak")
    assert torch.ops == 2 * 10**6 and torch.percent_of_peak is None and "no measured peak" in torch.note


@pytest.mark.skipif("onnxruntime" not in BACKENDS, reason="onnxruntime is not installed")
def test_bench_rows_carry_the_roofline_in_json_markdown_and_table(vit_artifact, quick_peaks, tmp_path):
    from vlmedge.artifact import Artifact
    from vlmedge.bench.report import markdown, row_block
    from vlmedge.bench.roofline import count_onnx
    from vlmedge.check import stored_parity_inputs

    result = vlmedge.bench(vit_artifact, backends=["onnxruntime"], batch_sizes=[2], iterations=3, warmup=1)
    [row] = result.rows
    r = row.roofline
    stored = stored_parity_inputs(Artifact.open(vit_artifact))["model"]["input"]
    count = count_onnx(vit_artifact / "onnx" / "model.fp32.onnx", {k: (2, *v.shape[1:]) for k, v in stored.items()})
    assert r.ops == count.ops > 0 and r.compute_precision == "fp32" and r.count_source.startswith("model.fp32.onnx")
    assert r.gops_per_s == pytest.approx(r.ops / (row.latency.p50_ms * 1e6), rel=1e-3)
    [machine] = result.peaks
    assert (machine.backend, machine.gemm_size, machine.threads) == ("onnxruntime", 96, row.threads)
    # percent_of_peak is rounded to 0.1: at a few percent that is more than 1% of it
    assert r.peak_gops == machine.gops("fp32") and r.percent_of_peak == pytest.approx(100 * r.gops_per_s / r.peak_gops,
                                                                                     rel=1e-2, abs=0.051)
    assert r.bound in ("compute", "memory") and r.ridge == pytest.approx(r.peak_gops / machine.bandwidth_gbs, rel=1e-2)
    document = json.loads(result.save(tmp_path / "r.json").read_text())
    assert document["schema_version"] == 4 and document["rows"][0]["roofline"]["ops"] == r.ops
    if importlib.util.find_spec("jsonschema"):
        import jsonschema

        jsonschema.validate(document, SCHEMA)
    assert BenchResult.load(tmp_path / "r.json").to_dict() == document
    assert "% of peak" in markdown(result) and "peak onnxruntime" in markdown(result)
    assert any(line.startswith("  roofline: ") and "% of the fp32 peak" in line for line in row_block(row))
    again = vlmedge.bench(vit_artifact, backends=["onnxruntime"], batch_sizes=[2], iterations=3, warmup=1)
    assert again.peaks[0].cached and again.peaks[0].peaks == machine.peaks
    off = vlmedge.bench(vit_artifact, backends=["onnxruntime"], batch_sizes=[2], iterations=3, warmup=1, roofline=False)
    assert off.rows[0].roofline is None and off.peaks == []


@pytest.mark.skipif("onnxruntime" not in BACKENDS, reason="onnxruntime is not installed")
def test_a_cached_peak_that_a_row_runs_above_is_measured_again(vit_artifact, quick_peaks, monkeypatch):
    """A peak cached on a busier (or slower) machine understates this one: the first row that
    runs above it has the backend's peaks measured again, and the cache holds the new ones."""
    real = peak.measure_gemm
    monkeypatch.setattr(peak, "measure_gemm", lambda b, p, t, s: peak.Peak(b, p, 1e-6, "understated"))
    threads = peak.machine_peaks("onnxruntime", threads=1).threads
    monkeypatch.setattr(peak, "measure_gemm", real)
    said = []
    result = vlmedge.bench(vit_artifact, backends=["onnxruntime"], batch_sizes=[2], iterations=3, warmup=1, threads=threads,
                           progress=said.append)
    [machine] = result.peaks
    assert not machine.cached and machine.gops("fp32") > 1e-6
    assert any("ran above the cached peak" in line and "measuring onnxruntime's peaks again" in line for line in said)
    r = result.rows[0].roofline
    # percent_of_peak is rounded to 0.1: at a few percent that is more than 1% of it
    assert r.peak_gops == machine.gops("fp32") and r.percent_of_peak == pytest.approx(100 * r.gops_per_s / r.peak_gops,
                                                                                     rel=1e-2, abs=0.051)
    stored = peak._cached(peak.cache_key("onnxruntime", peak.backend_version("onnxruntime"), threads, 96))
    assert {p["precision"]: p["gops"] for p in stored["peaks"]}["fp32"] == machine.gops("fp32")


@pytest.mark.skipif("onnxruntime" not in BACKENDS, reason="onnxruntime is not installed")
def test_without_onnx_a_row_says_its_operations_are_unknown(vit_artifact, quick_peaks, monkeypatch):
    real = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec", lambda name, *a: None if name == "onnx" else real(name, *a))
    result = vlmedge.bench(vit_artifact, backends=["onnxruntime"], batch_sizes=[1], iterations=1, warmup=0)
    r = result.rows[0].roofline
    assert r.ops is None and r.percent_of_peak is None and "pip install onnx" in r.note
    assert result.peaks[0].gops("fp32") is None and "pip install onnx" in result.peaks[0].peaks[0].note


def test_version_1_results_are_still_read_and_valid():
    version_1 = {"schema": "vlmedge-bench", "schema_version": 1, "created": "", "vlmedge_version": "0",
                 "artifact": {"path": "a", "task": "t", "reference": "", "graphs": ["model"]},
                 "settings": {"mode": "model-only", "scope": "", "inputs": "samples", "warmup": 0, "iterations": 1,
                              "min_iterations": None, "duration_s": None, "threads": [1], "batch_sizes": [1],
                              "backends": [], "precisions": [], "device": "cpu", "sweep": [], "memory_method": ""},
                 "environment": {"cpu_model": "", "cpu_vendor": "", "cores_logical": 1, "cores_physical": None,
                                 "cores_available": 1, "memory_gb": None, "os": "", "python": "", "versions": {},
                                 "gpus": [], "load_average": []},
                 "rows": [], "skipped": [], "recommendations": [], "warnings": []}
    loaded = BenchResult.from_dict(version_1)
    assert loaded.peaks == [] and loaded.schema_version == 1
    if importlib.util.find_spec("jsonschema"):
        import jsonschema

        jsonschema.validate(version_1, SCHEMA)  # published version 1 results stay valid
        with pytest.raises(jsonschema.ValidationError, match="peaks"):
            jsonschema.validate({**version_1, "schema_version": 2}, SCHEMA)


def test_onnx_runtimes_own_gemms_transposed_convolutions_and_broadcast_einsums_are_counted(tmp_path):
    """An ONNX Runtime-optimised peer's DynamicQuantizeMatMul, MatMulIntegerToFloat and
    FusedMatMul were counted as no work, without a note, and so was ConvTranspose; an Einsum
    axis of 1 against another operand's size took the 1."""
    import onnx
    from onnx import TensorProto, helper, numpy_helper

    from vlmedge.bench.roofline import count_onnx

    def count(node, x_shape, initializers, x_type=TensorProto.FLOAT, microsoft=False):
        graph = helper.make_graph([node], "g", [helper.make_tensor_value_info("x", x_type, ["N", *x_shape[1:]])],
                                  [helper.make_tensor_value_info("y", TensorProto.FLOAT, None)], initializers)
        opsets = [helper.make_opsetid("", 17)] + ([helper.make_opsetid("com.microsoft", 1)] if microsoft else [])
        model = helper.make_model(graph, opset_imports=opsets)
        model.ir_version = 8
        path = tmp_path / f"{node.op_type}.onnx"
        onnx.save(model, str(path))
        return count_onnx(path, {"x": x_shape})

    int8 = numpy_helper.from_array(np.ones((64, 32), np.int8), "w")
    scale = numpy_helper.from_array(np.float32(0.1), "s")
    for op, inputs, x_type in (("DynamicQuantizeMatMul", ["x", "w", "s"], TensorProto.FLOAT),
                               ("MatMulIntegerToFloat", ["x", "w", "s", "s"], TensorProto.UINT8)):
        counted = count(helper.make_node(op, inputs, ["y"], domain="com.microsoft"), (5, 64), [int8, scale], x_type, True)
        assert counted.macs == 5 * 64 * 32 and counted.unknown == [], op
    fused = count(helper.make_node("FusedMatMul", ["x", "w"], ["y"], domain="com.microsoft", transA=1), (64, 5),
                  [numpy_helper.from_array(np.ones((64, 32), np.float32), "w")], microsoft=True)  # x^T @ w
    assert fused.macs == 5 * 64 * 32
    kernel = numpy_helper.from_array(np.ones((8, 4, 3, 3), np.float32), "w")
    transposed = count(helper.make_node("ConvTranspose", ["x", "w"], ["y"], strides=[2, 2]), (1, 8, 5, 5), [kernel])
    assert transposed.macs == 8 * 5 * 5 * 4 * 3 * 3  # every input pixel meets the whole kernel
    right = numpy_helper.from_array(np.ones((1, 6, 7), np.float32), "w")
    broadcast = count(helper.make_node("Einsum", ["x", "w"], ["y"], equation="bij,bjk->bik"), (4, 5, 6), [right])
    assert broadcast.macs == 4 * 5 * 6 * 7
    assert count(helper.make_node("Einsum", ["x"], ["y"], equation="ij->ji"), (4, 5), []).unknown == []


def test_a_damaged_or_incomplete_cached_peak_is_measured_again(quick_peaks):
    """A peak of the wrong type crashed the run after measuring; one cached while a package
    was missing stayed "not installed" after it was installed."""
    import json

    first = peak.machine_peaks("onnxruntime", 1)
    stored = json.loads(quick_peaks.read_text())
    (key,) = [k for k in stored if "onnxruntime" in k]
    stored[key]["peaks"][0]["gops"] = "fast"
    quick_peaks.write_text(json.dumps(stored))
    again = peak.machine_peaks("onnxruntime", 1)
    assert not again.cached and isinstance(again.gops("fp32"), float)
    stored = json.loads(quick_peaks.read_text())
    stored[key]["peaks"][0]["gops"] = None  # as if fp32 could not be measured then
    quick_peaks.write_text(json.dumps(stored))
    assert not peak.machine_peaks("onnxruntime", 1).cached
    assert first.gops("fp32") and peak.machine_peaks("onnxruntime", 1).cached


def test_onnx_runtime_fp16_rows_compute_in_fp32_on_x86():
    import platform

    from vlmedge.bench.result import Latency, Parity, Row
    from vlmedge.bench.roofline import compute_precision

    row = Row(graph="model", backend="onnxruntime", precision="fp16", batch_size=1, threads=1, mode="model-only",
              label="onnxruntime fp16", provider="CPUExecutionProvider", device="cpu", file=None, model_mb=None,
              load_s=0, first_inference_ms=0, latency=Latency(1, 1, 1, 0, 0, 1, 1, 1, 1, 1), throughput_per_s=1,
              peak_rss_increase_mb=None, parity=Parity(None, None, None, None, None, "none"), inputs="")
    x86 = platform.machine().lower() in ("x86_64", "amd64")
    assert compute_precision(row) == ("fp32" if x86 else "fp16")


def test_a_backend_version_is_found_whatever_distribution_installed_it():
    """onnxruntime-gpu installs the module onnxruntime: its peaks were cached as 'not installed'.
    Pillow is a real package whose module (PIL) is named otherwise."""
    import importlib.metadata

    assert peak.backend_version("PIL") == importlib.metadata.version("pillow")
    assert peak.backend_version("onnxruntime") == importlib.metadata.version("onnxruntime")
    assert peak.backend_version("no_such_backend_module") == "not installed"
