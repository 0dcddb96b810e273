"""`vlmedge bench`: every figure present and consistent, the real samples fed, every graph
measured, the torch baseline checked, the JSON valid against its schema, and --compare a
working CI gate. Structure and correctness only: no assertion depends on how fast anything is."""

from __future__ import annotations

import dataclasses
import importlib.util
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

import vlmedge
from vlmedge.bench.report import header_lines
from vlmedge.bench.result import BenchResult, threads_text
from vlmedge.errors import InputError, UsageError

REPO = Path(__file__).resolve().parent.parent
SCHEMA = json.loads((REPO / "benchmarks" / "bench.schema.json").read_text())
FAST = dict(iterations=3, warmup=1)


def validate(document: dict) -> None:
    """Against benchmarks/bench.schema.json when jsonschema is installed."""
    if importlib.util.find_spec("jsonschema") is None:
        return
    import jsonschema

    jsonschema.validate(document, SCHEMA)


def cli_here(capsys, *args: str) -> tuple[int, str, str]:
    """The CLI in this process (no interpreter start-up): exit code, stdout, stderr."""
    from vlmedge.cli import main

    try:
        main([str(a) for a in args])
        code = 0
    except SystemExit as exc:
        code = exc.code if isinstance(exc.code, int) else 1
    out = capsys.readouterr()
    return code, out.out, out.err


@pytest.fixture(scope="module")
def result(vit_artifact) -> BenchResult:
    """torch and ONNX Runtime on the tiny ViT, batches 1 and 3."""
    return vlmedge.bench(vit_artifact, batch_sizes=[1, 3], **FAST)


def test_rows_carry_every_figure_and_a_checked_torch_baseline(result, vit_artifact):
    assert [(r.backend, r.batch_size) for r in result.rows] == [("torch", 1), ("torch", 3),
                                                                ("onnxruntime", 1), ("onnxruntime", 3)]
    onnx_size = (vit_artifact / "onnx" / "model.fp32.onnx").stat().st_size
    for row in result.rows:
        lat = row.latency
        assert lat.iterations == 3
        assert 0 < lat.min_ms <= lat.p50_ms <= lat.p90_ms <= lat.p95_ms <= lat.p99_ms <= lat.max_ms
        assert lat.min_ms <= lat.mean_ms <= lat.max_ms and lat.cov == pytest.approx(lat.std_ms / lat.mean_ms, abs=1e-3)
        assert row.throughput_per_s == pytest.approx(row.batch_size * 1e3 / lat.mean_ms, rel=1e-3, abs=0.006)
        assert row.load_s > 0 and row.first_inference_ms > 0 and row.peak_rss_increase_mb >= 0
        assert row.anonymous_increase_mb is not None and row.anonymous_increase_mb >= 0  # Linux: /proc has RssAnon
        assert row.mode == "model-only" and row.threads == result.settings.threads[0]
        assert f"the first real sample repeated to {row.batch_size}" in row.inputs
        torch_row = next(r for r in result.rows if r.backend == "torch" and r.batch_size == row.batch_size)
        assert row.speedup_vs_torch == pytest.approx(torch_row.latency.p50_ms / lat.p50_ms, rel=1e-2)
    torch_row, ort_row = result.rows[0], result.rows[2]
    assert torch_row.provider.startswith("torch ") and torch_row.file is None
    assert torch_row.parity.source == "live" and torch_row.parity.passed and torch_row.parity.max_abs < 1e-5
    assert ort_row.provider == "CPUExecutionProvider" and ort_row.file == "onnx/model.fp32.onnx"
    assert ort_row.model_mb == pytest.approx(onnx_size / 1e6, abs=1e-3)
    assert ort_row.parity.source == "export" and ort_row.parity.passed and ort_row.parity.top1 == 1.0
    assert result.settings.mode == "model-only" and "no preprocessing" in result.settings.scope
    env = result.environment
    assert env.cores_available >= 1 and env.cpu_model and env.python and "onnxruntime" in env.versions
    assert {r.objective for r in result.recommendations} == {"latency", "throughput"}


def test_a_comparison_in_a_log_prints_one_block_per_row(result):
    """At 80 columns (a log) or fewer, --compare's rows are blocks of `column: value` pairs
    as every other table's; its cells were wrapped over several lines."""
    import io

    from rich.console import Console

    from vlmedge.bench.report import compare, print_comparison

    slower = BenchResult.from_dict(result.to_dict())
    slower.rows[2].latency.p50_ms *= 1.5
    for width in (80, 60):
        out = io.StringIO()
        print_comparison(compare(result, slower), Console(file=out, width=width, soft_wrap=True))
        lines = out.getvalue().splitlines()
        label = compare(result, slower).rows[2].label
        assert label in lines, lines  # the row's name, whole, on its own line
        (pairs,) = [line for line in lines[lines.index(label) + 1:][:2] if "slowdown: 1.500x" in line]
        assert pairs.startswith("  base ms: ") and "verdict: REGRESSION" in " ".join(lines[lines.index(label):][:3])
        assert not any("│" in line for line in lines), "a table at this width"


def test_json_validates_against_the_schema_and_round_trips(result, tmp_path):
    path = result.save(tmp_path / "r.json")
    document = json.loads(path.read_text())
    assert document["schema"] == "vlmedge-bench" and document["schema_version"] == 4
    validate(document)
    assert BenchResult.load(path).to_dict() == document


def test_compare_api_reports_ratios_per_row_and_metric(result):
    from vlmedge.bench.report import compare

    assert compare(result, result).passed and {r.slowdown for r in compare(result, result).rows} == {1.0}
    slower = BenchResult.from_dict(result.to_dict())
    slower.rows[2].latency.p50_ms *= 1.5
    slower.rows[2].throughput_per_s /= 1.5
    verdict = compare(result, slower, max_slowdown=1.10)
    assert not verdict.passed and [r.label for r in verdict.regressions] == [
        f"onnxruntime fp32 [model] batch 1, {threads_text(result.rows[2].threads)}, model-only"]
    assert threads_text(1) == "1 thread" and threads_text(2) == "2 threads"
    assert not compare(result, slower, metric="throughput").passed
    assert compare(result, slower, metric="p99_ms").passed  # only p50 and throughput changed
    fewer = BenchResult.from_dict(result.to_dict())
    fewer.rows.pop()  # a variant that failed to run in NEW fails the gate, as a regression does
    assert len(compare(result, fewer).only_base) == 1 and not compare(result, fewer).passed
    assert compare(fewer, result).passed and len(compare(fewer, result).only_new) == 1  # a new variant does not
    zero = BenchResult.from_dict(result.to_dict())
    zero.rows[2].latency.p50_ms = 0.0  # no ratio to take: said, not an infinite regression, and not a pass
    verdict = compare(result, zero)
    assert not verdict.passed and len(verdict.rows) == len(result.rows) - 1 and "is 0 in NEW" in verdict.uncompared[0]
    other = BenchResult.from_dict(result.to_dict())  # other inputs (random vs samples) or another model
    counted = next(r for r in other.rows if r.roofline and r.roofline.ops)
    counted.roofline.ops *= 2
    other.settings.inputs, other.artifact.reference = "random", "another-model"
    verdict = compare(result, other)
    assert not verdict.passed and "did other work in NEW" in verdict.uncompared[0]
    assert any("different models: " in note for note in verdict.notes) and any("different inputs" in n for n in verdict.notes)


def test_a_noisy_row_is_told_what_would_steady_it(result):
    from vlmedge.bench.result import annotate

    noisy = BenchResult.from_dict(result.to_dict())
    for row in noisy.rows:
        row.latency.cov, row.warnings = 0.5, []
    annotate(noisy.rows)
    assert "round-robin (--rounds)" in noisy.rows[0].warnings[0]
    for row in noisy.rows:
        row.warnings = []
    annotate(noisy.rows, rounds=2)  # already round-robin: more rounds, not --rounds again
    assert "more --rounds than 2" in noisy.rows[0].warnings[0] and "round-robin" not in noisy.rows[0].warnings[0]


@pytest.mark.parametrize("field, value", [("p50_ms", "fast"), ("p50_ms", None), ("min_ms", -1.0), ("max_ms", True)])
def test_a_stored_row_with_a_figure_that_is_not_a_number_is_malformed(result, field, value):
    document = result.to_dict()
    document["rows"][0]["latency"][field] = value
    with pytest.raises(InputError, match=f"malformed .*latency.{field} {value!r}, not a number from 0 up"):
        BenchResult.from_dict(document)


def test_inputs_are_the_first_stored_real_sample_repeated(vit_artifact, monkeypatch):
    from vlmedge.artifact import Artifact
    from vlmedge.check import stored_parity_inputs
    from vlmedge.runtimes.onnxruntime import OnnxRuntimeSession

    seen = []
    original = OnnxRuntimeSession._run
    monkeypatch.setattr(OnnxRuntimeSession, "_run", lambda self, feeds: seen.append(feeds) or original(self, feeds))
    vlmedge.bench(vit_artifact, backends=["onnxruntime"], batch_sizes=[7], **FAST)
    stored = stored_parity_inputs(Artifact.open(vit_artifact))["model"]["input"]["pixel_values"]
    real = len([p for p in (vit_artifact / "samples").iterdir() if p.suffix in (".jpg", ".png")])
    timed = [feeds for feeds in seen if len(feeds.get("pixel_values", ())) == 7]  # not the peak's GEMM
    assert real == 5 and len(timed) == 1 + 1 + 3  # first call, warm-up, timed calls
    np.testing.assert_array_equal(timed[-1]["pixel_values"], stored[[0] * 7])  # the same work at every batch size

    seen.clear()
    noise = vlmedge.bench(vit_artifact, backends=["onnxruntime"], batch_sizes=[2], random_inputs=True, **FAST)
    assert noise.settings.inputs == "random" and "random" in noise.rows[0].inputs
    timed = [feeds for feeds in seen if "pixel_values" in feeds]
    assert timed[-1]["pixel_values"].shape == (2, 3, 32, 32) and not np.allclose(timed[-1]["pixel_values"], stored[:2])


def test_end_to_end_times_the_pipeline_on_the_sample_files(vit_artifact, monkeypatch):
    from vlmedge.tasks.classifier import ImageClassifier

    calls = []
    original = ImageClassifier.classify
    monkeypatch.setattr(ImageClassifier, "classify",
                        lambda self, images, top_k=5: calls.append(images) or original(self, images, top_k=top_k))
    r = vlmedge.bench(vit_artifact, backends=["onnxruntime"], batch_sizes=[6], end_to_end=True, **FAST)
    assert r.settings.mode == "end-to-end" and "preprocessing" in r.settings.scope
    assert [row.mode for row in r.rows] == ["end-to-end"] and "the first sample file repeated to 6" in r.rows[0].inputs
    assert len(calls) == 5 and len(calls[-1]) == 6
    assert all(Path(p).parent == vit_artifact / "samples" for p in calls[-1]) and len(set(calls[-1])) == 1


def test_sweep_measures_a_grid_and_recommends(vit_artifact):
    r = vlmedge.bench(vit_artifact, backends=["onnxruntime"], sweep=["threads", "batch"], batch_sizes=[1, 2], **FAST)
    cores = r.environment.cores_available
    expected_threads = sorted({1, cores} | {2**i for i in range(8) if 2**i < cores})
    assert r.settings.threads == expected_threads and r.settings.sweep == ["threads", "batch"]
    assert sorted((row.threads, row.batch_size) for row in r.rows) == sorted(
        (t, b) for t in expected_threads for b in (1, 2))
    latency, throughput = r.recommendations
    assert latency.objective == "latency" and latency.batch_size == 1
    assert latency.p50_ms == min(row.latency.p50_ms for row in r.rows if row.batch_size == 1)
    assert throughput.throughput_per_s == max(row.throughput_per_s for row in r.rows)


def test_rounds_time_every_row_round_robin_with_the_same_rows(vit_artifact, tmp_path):
    sequential = vlmedge.bench(vit_artifact, batch_sizes=[1, 2], roofline=False, iterations=6, warmup=1)
    r = vlmedge.bench(vit_artifact, batch_sizes=[1, 2], roofline=False, iterations=6, warmup=1, rounds=3)
    assert r.settings.rounds == 3 and sequential.settings.rounds is None
    assert [row.key for row in r.rows] == [row.key for row in sequential.rows]  # torch and onnxruntime, 1 and 2
    assert all(row.latency.iterations == 6 and row.first_inference_ms > 0 for row in r.rows)
    assert all(row.speedup_vs_torch for row in r.rows) and "round-robin" in r.settings.memory_method
    validate(r.to_dict())
    assert BenchResult.load(r.save(tmp_path / "r.json")).settings.rounds == 3
    # the header counts the calls each row got: a round's share is rounded up (7 in 3 rounds: 9)
    odd = dataclasses.replace(r, settings=dataclasses.replace(r.settings, iterations=7))
    assert "; 9 timed calls, every row timed round-robin in 3 rounds" in "\n".join(header_lines(odd))


def test_round_robin_visits_every_call_each_round_and_keeps_a_failure_to_its_call():
    from vlmedge.bench.timing import round_robin

    order: list[int] = []

    def call(i: int, fail_at: int | None = None):
        def run():
            order.append(i)
            if fail_at is not None and order.count(i) == fail_at:
                raise RuntimeError("out of memory")
        return run

    results = round_robin([call(0), call(1), call(2, fail_at=4)], rounds=2, iterations=4, duration=0.0,
                          min_iterations=1)
    # each round: one untimed call then half the iterations, call by call
    assert order == [0, 0, 0, 1, 1, 1, 2, 2, 2, 0, 0, 0, 1, 1, 1, 2]
    assert [len(x) for x in results[:2]] == [4, 4] and isinstance(results[2], RuntimeError)


def test_wrong_variant_is_visible_and_a_changed_source_gives_no_baseline(vit_artifact, tmp_path):
    art = tmp_path / "art"
    shutil.copytree(vit_artifact, art)
    manifest = json.loads((art / "manifest.json").read_text())
    manifest["source"]["config_sha256"] = "0" * 64
    manifest["files"][0]["parity"]["passed"] = False
    (art / "manifest.json").write_text(json.dumps(manifest))
    r = vlmedge.bench(art, batch_sizes=[1], **FAST)
    assert [row.backend for row in r.rows] == ["onnxruntime"]
    (skip,) = [s for s in r.skipped if s.backend == "torch"]
    assert "changed since" in skip.reason
    assert r.rows[0].parity.passed is False and any("fails its parity gate" in w for w in r.rows[0].warnings)
    assert r.recommendations == []  # nothing that fails parity is recommended


def test_a_source_folder_whose_weights_changed_since_the_export_is_said_not_to_be_the_artifacts_model(
        hf_classifier_dir, vit_artifact, tmp_path):
    """The manifest fingerprints the source's config.json only: a folder trained or fine-tuned
    again since the export, same config, rebuilds. Its outputs on the stored parity inputs
    are not those the export stored, which the result says beside the baseline it times."""
    import torch
    import transformers

    source, art = tmp_path / "source", tmp_path / "art"
    shutil.copytree(hf_classifier_dir("vit"), source)
    shutil.copytree(vit_artifact, art)
    manifest = json.loads((art / "manifest.json").read_text())
    manifest["source"].update(folder=str(source), reference=str(source))
    (art / "manifest.json").write_text(json.dumps(manifest))
    config = (source / "config.json").read_bytes()
    model = transformers.AutoModelForImageClassification.from_pretrained(source)
    with torch.no_grad():
        model.classifier.weight.mul_(-1.0)  # trained again: the same config, other answers
    model.save_pretrained(source)
    assert (source / "config.json").read_bytes() == config
    r = vlmedge.bench(art, batch_sizes=[1], **FAST)
    (said,) = [w for w in r.warnings if "the rebuilt torch source does not reproduce the outputs stored" in w]
    assert "cosine similarity -1.0" in said and "the baseline may not be the model the artifact came from" in said
    assert not [w for w in vlmedge.bench(vit_artifact, batch_sizes=[1], **FAST).warnings if "rebuilt torch" in w]


def test_peer_file_is_a_row_with_live_parity(vit_artifact, tmp_path):
    peer = tmp_path / "peer" / "model.onnx"
    peer.parent.mkdir()
    shutil.copyfile(vit_artifact / "onnx" / "model.fp32.onnx", peer)
    r = vlmedge.bench(vit_artifact, backends=["onnxruntime"], batch_sizes=[1], peers={"copy": peer}, **FAST)
    row = r.rows[-1]
    assert row.label == "copy (peer)" and row.peer == "copy" and row.file == str(peer)
    assert row.parity.source == "live" and row.parity.passed


def test_int8_peer_is_judged_by_the_int8_gate(vit_artifact, tmp_path):
    onnx = pytest.importorskip("onnx")
    from onnxruntime.quantization import QuantType, quantize_dynamic

    peer = tmp_path / "peer" / "model.int8.onnx"
    peer.parent.mkdir()
    fp32 = vit_artifact / "onnx" / "model.fp32.onnx"
    # one weight MatMul in int8: close enough for the int8 gate on this tiny random model (whose
    # near-tied logits a fully quantized file flips), not for the fp32 one
    first = next(n.name for n in onnx.load(str(fp32)).graph.node if n.op_type == "MatMul")
    quantize_dynamic(str(fp32), str(peer), weight_type=QuantType.QInt8, per_channel=True, nodes_to_quantize=[first])
    r = vlmedge.bench(vit_artifact, backends=["onnxruntime"], batch_sizes=[1], roofline=False,
                      peers={"quantized:int8": peer, "as fp32": peer}, **FAST)
    rows = {row.peer: row for row in r.rows if row.peer}
    assert rows["quantized"].precision == "int8" and rows["quantized"].label == "quantized:int8 (peer)"
    assert rows["quantized"].parity.passed
    # the same file said to be fp32 is held to the fp32 gate, which int8 rounding misses
    assert rows["as fp32"].precision == "fp32" and rows["as fp32"].parity.passed is False



def test_a_peers_operations_and_traffic_are_counted_as_the_artifacts_own(vit_artifact, tmp_path):
    """A peer's row was counted from its own file, whose quantize/dequantize nodes counted as
    traffic: the same int8 file had half the ops per byte as a peer that it had as the
    artifact's. Now both count the artifact's fp32 graph, at the row's precision."""
    pytest.importorskip("onnx")
    from onnxruntime.quantization import QuantType, quantize_dynamic

    peer = tmp_path / "model.int8.onnx"
    fp32 = vit_artifact / "onnx" / "model.fp32.onnx"
    quantize_dynamic(str(fp32), str(peer), weight_type=QuantType.QInt8)
    r = vlmedge.bench(vit_artifact, backends=["onnxruntime"], batch_sizes=[1], peers={"q:int8": peer, "f": fp32},
                      **FAST)
    ours = next(row for row in r.rows if not row.peer and row.precision == "fp32")
    rows = {row.peer: row for row in r.rows if row.peer}
    assert rows["f"].roofline.bytes == ours.roofline.bytes and rows["f"].roofline.ops == ours.roofline.ops
    assert rows["q"].roofline.ops == ours.roofline.ops and rows["q"].roofline.compute_precision == "int8"
    assert rows["q"].roofline.count_source == ours.roofline.count_source
    assert rows["q"].roofline.bytes < ours.roofline.bytes  # weights at one byte, not four


def test_openvino_ir_peer_runs_on_openvino(two_target_artifact, tmp_path):
    pytest.importorskip("openvino")
    peer = tmp_path / "peer" / "ir.xml"
    peer.parent.mkdir()
    for suffix in (".xml", ".bin"):
        shutil.copyfile(two_target_artifact / "openvino" / f"model.fp32{suffix}", peer.with_suffix(suffix))
    r = vlmedge.bench(two_target_artifact, backends=["onnxruntime"], batch_sizes=[1], peers={"plain ir": peer}, **FAST)
    (row,) = [row for row in r.rows if row.peer]
    assert row.backend == "openvino" and row.label == "plain ir (peer)" and row.file == str(peer)
    assert row.provider.startswith("OpenVINO") and row.provider.endswith("f32")  # fp32 as said, not bf16
    assert row.parity.source == "live" and row.parity.passed
    assert row.model_mb == round((peer.stat().st_size + peer.with_suffix(".bin").stat().st_size) / 1e6, 3)
    assert row.roofline is not None and row.roofline.percent_of_peak, row.roofline


@pytest.mark.parametrize("name", ["q:int4", ":int8", "q:"])
def test_peer_with_an_unknown_precision_is_refused_before_measuring(vit_artifact, name):
    with pytest.raises(UsageError, match="NAME:PRECISION"):
        vlmedge.bench(vit_artifact, peers={name: vit_artifact / "onnx" / "model.fp32.onnx"}, **FAST)


def test_peer_file_no_backend_reads_is_refused_before_measuring(vit_artifact, tmp_path):
    weights = tmp_path / "model.bin"
    weights.write_bytes(b"\0" * 16)
    with pytest.raises(InputError, match=r"a \.onnx file \(onnxruntime\) or a \.xml file \(openvino\)"):
        vlmedge.bench(vit_artifact, peers={"weights": weights}, **FAST)


def _two_graph_artifact(folder: Path) -> Path:
    """A CLIP-shaped artifact ("image" and "text" graphs) built from two tiny ONNX graphs."""
    onnx = pytest.importorskip("onnx")
    from onnx import TensorProto, helper

    from vlmedge.artifact import ArtifactWriter
    from vlmedge.check import PARITY_FILE
    from vlmedge.parity import GATES, parity_report

    graphs = {
        "image": ("pixel_values", TensorProto.FLOAT, [3, 4, 4], "image_embeds",
                  [helper.make_node("Flatten", ["pixel_values"], ["image_embeds"], axis=1)], np.float32),
        "text": ("input_ids", TensorProto.INT64, [5], "text_embeds",
                 [helper.make_node("Cast", ["input_ids"], ["text_embeds"], to=TensorProto.FLOAT)], np.int64),
    }
    stored, io = {}, {}
    with ArtifactWriter(folder) as writer:
        for name, (inp, dtype, dims, out, nodes, np_dtype) in graphs.items():
            graph = helper.make_graph(nodes, name, [helper.make_tensor_value_info(inp, dtype, ["batch", *dims])],
                                      [helper.make_tensor_value_info(out, TensorProto.FLOAT, None)])
            model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 18)])
            onnx.save(model, writer.path(f"onnx/{name}.fp32.onnx"))
            feeds = np.arange(4 * int(np.prod(dims)), dtype=np_dtype).reshape(4, *dims)
            reference = feeds.reshape(4, -1).astype(np.float32)
            stored.update({f"{name}.input.{inp}": feeds, f"{name}.reference.{out}": reference})
            report = parity_report({out: reference}, {out: reference}, {}, GATES["fp32"], graph=name)
            writer.add(f"onnx/{name}.fp32.onnx", role="model", graph=name, target="onnx", precision="fp32",
                       parity=report)
            io[name] = {"inputs": [{"name": inp, "shape": ["batch", *dims], "dtype": np.dtype(np_dtype).name}],
                        "outputs": [{"name": out, "shape": ["batch", "?"], "dtype": "float32"}], "dynamic_axes": {}}
        np.savez(writer.path(PARITY_FILE), **stored)
        writer.add(PARITY_FILE, role="parity_inputs")
        writer.commit({"task": "clip", "source": {"kind": "module", "reference": "TwoTowers"}, "graphs": io,
                       "preprocess": {"image": {}, "text": {}}, "labels": None, "postprocess": {}})
    return folder


def test_every_graph_is_measured_and_absences_are_explained(tmp_path):
    art = _two_graph_artifact(tmp_path / "clip-like")
    r = vlmedge.bench(art, batch_sizes=[1, 2], **FAST)
    assert r.artifact.graphs == ["image", "text"]
    assert sorted((row.graph, row.batch_size) for row in r.rows) == [("image", 1), ("image", 2), ("text", 1), ("text", 2)]
    assert {rec.graph for rec in r.recommendations} == {"image", "text"}
    reasons = {s.backend: s.reason for s in r.skipped}
    assert "cannot be rebuilt" in reasons["torch"]
    validate(r.to_dict())
    e2e = vlmedge.bench(art, backends=["onnxruntime"], end_to_end=True, **FAST)
    assert e2e.rows == [] and e2e.skipped and all(s.reason for s in e2e.skipped)


def test_bad_options_are_one_sentence_errors(vit_artifact):
    with pytest.raises(UsageError, match="not both"):
        vlmedge.bench(vit_artifact, iterations=3, duration=1.0)
    with pytest.raises(UsageError, match="Unknown backend"):
        vlmedge.bench(vit_artifact, backends=["cuda-magic"])
    with pytest.raises(UsageError, match="sweep"):
        vlmedge.bench(vit_artifact, sweep=["precision"])
    with pytest.raises(UsageError, match="rounds must be positive"):
        vlmedge.bench(vit_artifact, rounds=0)
    with pytest.raises(UsageError, match="batch sizes must be positive integers, not 1.5"):
        vlmedge.bench(vit_artifact, batch_sizes=1.5)
    with pytest.raises(UsageError, match="Unknown backend 5; choose from"):
        vlmedge.bench(vit_artifact, backends=5)
    # each was taken before any measuring: 0 threads as the default, "no" as yes, a string called
    with pytest.raises(UsageError, match="threads must be positive integers, not 0"):
        vlmedge.bench(vit_artifact, threads=0)
    with pytest.raises(UsageError, match="roofline must be True or False, not 'no'"):
        vlmedge.bench(vit_artifact, roofline="no")
    with pytest.raises(UsageError, match="remeasure_peak must be True or False, not 'yes'"):
        vlmedge.bench(vit_artifact, remeasure_peak="yes")
    with pytest.raises(UsageError, match="progress must be a function taking a line of text, not str"):
        vlmedge.bench(vit_artifact, progress="x")


def test_a_list_option_may_be_given_one_value(vit_artifact):
    """backends="onnxruntime" is that backend (it was iterated into 'o', 'n', 'n', ...), batch_sizes=2
    that batch size (a TypeError before)."""
    result = vlmedge.bench(vit_artifact, backends="onnxruntime", precisions="fp32", batch_sizes=2, **FAST)
    assert [(row.backend, row.precision, row.batch_size) for row in result.rows] == [("onnxruntime", "fp32", 2)]


def test_runs_torch_free_unless_torch_is_asked_for(vit_artifact):
    code = ("import sys, vlmedge\n"
            f"r = vlmedge.bench({str(vit_artifact)!r}, backends=['onnxruntime'], iterations=2, warmup=0)\n"
            "import vlmedge.bench\n"
            "assert callable(vlmedge.bench) and r.rows\n"
            "print('HEAVY:' + ','.join(m for m in ('torch', 'transformers', 'openvino') if m in sys.modules))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip().splitlines()[-1] == "HEAVY:"


def test_cli_table_json_markdown_plot_and_compare_gate(vit_artifact, tmp_path, capsys, monkeypatch):
    out = tmp_path / "base.json"
    args = ["bench", vit_artifact, "--batch-size", "1,2", "--iterations", "3", "--warmup", "1",
            "--json", out, "--markdown", tmp_path / "base.md"]
    plotting = importlib.util.find_spec("matplotlib") is not None
    if plotting:
        args += ["--plot", tmp_path / "base.png"]
    monkeypatch.setenv("COLUMNS", "260")
    code, stdout, stderr = cli_here(capsys, *args)  # in this process: the interpreter and torch start once
    assert code == 0, stderr
    for text in ("scope: model-only", "machine:", "versions:", "torch fp32", "onnxruntime fp32", "CPUExecutionProvider",
                 "1.00x (base)", "recommended", "peak RSS", "latency per call (ms)"):
        assert text in stdout, text
    for column in ("min", "mean", "std", "CoV", "p50", "p90", "p95", "p99", "max", "items/s", "vs torch",
                   "load s", "first ms", "peak RSS +MiB", "anon +MiB", "size MB", "provider", "parity"):
        assert column in stdout and column in (tmp_path / "base.md").read_text(), column
    document = json.loads(out.read_text())
    validate(document)
    assert len(document["rows"]) == 4
    if plotting:
        assert (tmp_path / "base.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"

    code, stdout, stderr = cli_here(capsys, "bench", "--compare", out, out)
    assert code == 0, stdout + stderr
    assert "no regression" in stdout

    slower = json.loads(out.read_text())
    for row in slower["rows"]:
        row["latency"] = {k: v * 1.5 if k.endswith("_ms") else v for k, v in row["latency"].items()}
        row["throughput_per_s"] /= 1.5
    (tmp_path / "slower.json").write_text(json.dumps(slower))
    code, stdout, _ = cli_here(capsys, "bench", "--compare", out, tmp_path / "slower.json")
    assert code == 1 and "REGRESSION" in stdout and "4 regression(s)" in stdout
    code, _, _ = cli_here(capsys, "bench", "--compare", out, tmp_path / "slower.json", "--max-slowdown", "1.6")
    assert code == 0


def test_cli_errors(tmp_path, capsys):
    (tmp_path / "junk.json").write_text("{}")
    code, _, stderr = cli_here(capsys, "bench", "--compare", tmp_path / "junk.json", tmp_path / "junk.json")
    assert code == 1 and "not a vlmedge bench result" in stderr and "Traceback" not in stderr
    assert cli_here(capsys, "bench")[0] == 2
    assert cli_here(capsys, "bench", "x", "--iterations", "3", "--duration", "1")[0] == 2
    # found before anything is measured: a typo in a list, a folder where a file is written, a missing peer
    for args, words in ((["--batch-size", "1,,8"], "positive integers"), (["--json", tmp_path], "is a folder"),
                        (["--peer", f"p={tmp_path / 'none.onnx'}"], "does not exist")):
        code, _, stderr = cli_here(capsys, "bench", tmp_path, *map(str, args))
        assert code == 2 and words in stderr and "Traceback" not in stderr, stderr


def _suite():
    import importlib.util as iu

    spec = iu.spec_from_file_location("run_suite", REPO / "benchmarks" / "run_suite.py")
    module = iu.module_from_spec(spec)
    sys.modules["run_suite"] = module  # dataclasses look their module up there
    spec.loader.exec_module(module)
    return module


def test_suite_skips_a_task_that_is_not_exportable_yet(monkeypatch):
    pytest.importorskip("torch")
    suite = _suite()
    from vlmedge.exporters.sources import hf

    assert "no exporter" in suite.not_exportable("video-captioning")
    monkeypatch.setitem(hf.BUILDERS, "clip", ("vlmedge.exporters.sources.hf_not_there", "clip_model"))
    assert "not part of this vlmedge yet" in suite.not_exportable("clip")
    assert suite.not_exportable("image-classification") is None
    assert {m.name for m in suite.MODELS} == {"vit-b16", "swin-t", "dinov2-s14", "clip-b32", "ast-base"}


def test_suite_reuses_an_artifact_only_from_the_folder_it_was_exported_from(tmp_path):
    """A work folder that moved keeps artifacts whose manifest names the old source folder:
    bench could not rebuild their PyTorch baseline, so the suite exports them again."""
    suite = _suite()
    folder, artifact, stamp = tmp_path / "m" / "hf", tmp_path / "m" / "artifact", tmp_path / "m" / "artifact.fingerprint"
    folder.mkdir(parents=True)
    artifact.mkdir()
    stamp.write_text("abc\n[]")
    source = {"kind": "huggingface", "reference": str(folder), "folder": str(folder.resolve())}  # as exports record it
    (artifact / "manifest.json").write_text(json.dumps({"source": source}))
    assert suite.reusable(artifact, stamp, "abc", folder)
    assert not suite.reusable(artifact, stamp, "other variants", folder)
    moved = tmp_path / "moved" / "hf"
    assert not suite.reusable(artifact, stamp, "abc", moved)


def test_suite_drops_a_failing_variant_and_keeps_the_rest(monkeypatch, tmp_path):
    pytest.importorskip("torch")
    suite = _suite()
    from vlmedge.errors import ExportError

    calls = []

    class Exported:
        def __init__(self, dropped):
            self.manifest = {"export": {"dropped": dropped} if dropped else {}}

    def int8_misses_on_onnx(model, out, to, precision, progress, gates, strict):
        assert not strict  # export leaves a missed variant out itself: that target and precision only
        calls.append((list(to), list(precision)))
        assert gates["fp32"].max_abs == 8e-3 and gates["int8"].min_top1 == 0.0  # suite_gates()
        progress("[model] exported onnx/model.fp32.onnx in 1.0s (1.0 MB)")
        progress("[model] parity passed for onnx/model.fp32.onnx: logits cosine 1.0")
        progress("[model] left out onnx int8: output 'logits': top-1 agreement 80% < 95%.")
        return Exported([{"target": "onnx", "precision": "int8", "graph": "model",
                          "reason": "output 'logits': top-1 agreement 80% < 95%."}])

    monkeypatch.setattr(vlmedge, "export", int8_misses_on_onnx)
    artifact, dropped = suite.export_with_fallback(tmp_path, tmp_path / "a", [("onnx", "fp32"), ("onnx", "int8"),
                                                                              ("openvino", "int8")], lambda m: None)
    assert calls == [(["onnx", "openvino"], ["fp32", "int8"])]  # one export: OpenVINO int8 was not given up
    assert dropped == ["onnx int8 (missed its gate): output 'logits': top-1 agreement 80% < 95%."]

    def openvino_fails(model, out, to, precision, progress, gates, strict):
        calls.append((list(to), list(precision)))
        progress("[model] exported onnx/model.fp32.onnx in 1.0s (1.0 MB)")
        progress("[model] parity passed for onnx/model.fp32.onnx: logits cosine 1.0")
        progress("[model] left out onnx int8: output 'logits': top-1 agreement 80% < 95%.")
        if "openvino" in to:  # a converter error: export raises, naming the variant whose build failed
            error = ExportError("Building the openvino fp32 file of graph 'model' failed (RuntimeError: no).")
            error.variant = ("openvino", "fp32")
            raise error
        return Exported([{"target": "onnx", "precision": "int8", "graph": "model", "reason": "top-1 80%."}])

    calls.clear()
    monkeypatch.setattr(vlmedge, "export", openvino_fails)
    _, dropped = suite.export_with_fallback(tmp_path, tmp_path / "a", [("onnx", "fp32"), ("onnx", "int8"),
                                                                       ("openvino", "fp32"), ("openvino", "bf16")],
                                            lambda m: None)
    # the int8 left out before the failure is not blamed for it; bf16 went with openvino
    assert calls[-1] == (["onnx"], ["fp32", "int8"])
    assert dropped == ["openvino (every precision; openvino fp32 failed): Building the openvino fp32 file of graph "
                       "'model' failed (RuntimeError: no).",
                       "onnx int8 (missed its gate): top-1 80%."]


def test_machine_name_tells_amx_cpus_apart():
    """Xeons sold under one name differ by AMX, which changes every int8/bf16 figure: their
    results must not overwrite each other's."""
    import dataclasses

    from vlmedge.environment import COMPUTE_FLAGS, describe

    here = dataclasses.replace(describe(), cpu_model="Intel(R) Xeon(R) Processor", cores_available=2, gpus=[])
    without = dataclasses.replace(here, cpu_flags=["avx2", "avx512_bf16", "avx512_vnni", "avx512f"])
    with_amx = dataclasses.replace(here, cpu_flags=sorted(COMPUTE_FLAGS))
    assert without.machine_name == "intel-xeon-processor-2c"
    assert with_amx.machine_name == "intel-xeon-processor-amx-2c"
    assert set(describe().cpu_flags) <= COMPUTE_FLAGS


def test_environment_reads_nvidia_smi_when_present(tmp_path, monkeypatch):
    """No GPU here: a stand-in nvidia-smi prints what the real one prints for these fields."""
    from vlmedge.environment import describe

    fake = tmp_path / "nvidia-smi"
    fake.write_text("#!/bin/sh\necho 'NVIDIA H100 80GB HBM3, 550.54.15, 9.0, 81559'\n")
    fake.chmod(0o755)
    monkeypatch.setenv("PATH", f"{tmp_path}{os.pathsep}{os.environ['PATH']}")
    env = describe()
    (gpu,) = env.gpus
    assert (gpu.name, gpu.driver, gpu.compute_capability, gpu.memory_mb) == ("NVIDIA H100 80GB HBM3", "550.54.15", "9.0", 81559)
    assert "NVIDIA H100" in env.summary() and env.machine_name.endswith("-nvidia-h100-80gb-hbm3")


@pytest.mark.skipif(not hasattr(__import__("ctypes").CDLL(None), "malloc_trim"), reason="glibc's malloc_trim only")
def test_the_memory_baseline_does_not_count_heap_a_closed_session_freed():
    """glibc keeps freed heap pages resident: without handing them back, a session opened after
    another closed grows into them and its peak RSS reads almost nothing (ONNX Runtime int8
    measured +6 MB after fp32 in one bench run). Memory.start() releases them first."""
    import ctypes

    from vlmedge.bench.timing import Memory

    libc = ctypes.CDLL(None)
    libc.malloc.restype, libc.free.argtypes = ctypes.c_void_p, [ctypes.c_void_p]
    chunks = [libc.malloc(64 * 1024) for _ in range(3000)]  # under the mmap threshold: heap pages
    assert all(chunks)
    for chunk in chunks:
        ctypes.memset(chunk, 1, 64 * 1024)
    held = Memory.status("VmRSS")
    for chunk in chunks[:-1]:  # the last keeps the heap's top in use, so free() alone trims nothing
        libc.free(chunk)
    baseline = Memory().start()
    libc.free(chunks[-1])
    assert held - baseline.rss_mb > 150, (held, baseline)  # ~190 MB were freed


def test_a_peer_of_a_fixed_batch_runs_at_that_batch_and_is_skipped_at_others(vit_artifact, tmp_path):
    """A peer exported at batch 1 aborted the whole run (its parity check ran 8 inputs per call)."""
    import onnx

    model = onnx.load(str(vit_artifact / "onnx" / "model.fp32.onnx"))
    for value in [*model.graph.input, *model.graph.output]:
        value.type.tensor_type.shape.dim[0].dim_value = 1
    peer = tmp_path / "static.onnx"
    onnx.save(model, str(peer))
    r = vlmedge.bench(vit_artifact, backends=["onnxruntime"], batch_sizes=[1, 2], peers={"one": peer}, **FAST)
    rows = [row for row in r.rows if row.peer == "one"]
    assert [row.batch_size for row in rows] == [1] and rows[0].parity.source == "live" and rows[0].parity.passed
    assert any("one" in s.reason or s.batch_size == 2 for s in r.skipped)


def test_bench_output_paths_are_checked_before_measuring(vit_artifact, tmp_path):
    from tests.test_cli import vlmedge_cli

    blocker = tmp_path / "a-file"
    blocker.write_text("x")
    for args, words in ((["--markdown", str(blocker / "r.md")], "is a file, not a folder"),
                        (["--plot", str(tmp_path / "r.weird")], "--plot writes .png, .svg, .pdf files"),
                        (["--json", "/sys/r.json"], "--json /sys/r.json goes through /sys/r.json"),
                        (["--json", "/proc/r.json"], "--json /proc/r.json goes through /proc/r.json, on /dev, /proc or /sys"),
                        (["--peer", f"a={vit_artifact / 'onnx' / 'model.fp32.onnx'}",
                          "--peer", f"a={vit_artifact / 'onnx' / 'model.fp32.onnx'}"], "a is given twice")):
        result = vlmedge_cli("bench", vit_artifact, *args)
        assert result.returncode == 2 and words in " ".join(result.stderr.split()), result.stderr
        assert "Traceback" not in result.stderr


def test_more_threads_than_cores_is_said(vit_artifact):
    from vlmedge.environment import available_cores

    cores = available_cores()
    r = vlmedge.bench(vit_artifact, backends=["onnxruntime"], batch_sizes=[1], threads=cores + 1, **FAST)
    assert any(f"{cores + 1} threads on {cores} available cores" in w for w in r.warnings)


def test_a_peer_openvino_cannot_compile_is_skipped_with_the_cause(two_target_artifact, tmp_path):
    """OpenVINO puts its cause after lines of source locations ("Exception from src/...cpp:N:"),
    which the skip quoted alone."""
    pytest.importorskip("openvino")
    peer = tmp_path / "nobin.xml"  # an IR whose weights file is missing
    shutil.copyfile(two_target_artifact / "openvino" / "model.fp32.xml", peer)
    r = vlmedge.bench(two_target_artifact, backends=["onnxruntime"], batch_sizes=[1], peers={"nobin": peer}, **FAST)
    (skip,) = [s for s in r.skipped if "nobin" in s.reason]
    # a missing weights file is one OpenVINO cannot read, not compile
    assert "OpenVINO cannot read nobin.xml: Empty weights data in bin file or bin file cannot be found!; the file " \
        "is corrupt" in skip.reason and "Exception from" not in skip.reason, skip.reason
    assert not skip.reason.rstrip().endswith(":"), skip.reason


def test_a_model_folder_is_exported_to_the_targets_installed_here_and_measured(hf_classifier_dir, monkeypatch):
    """A Hugging Face folder is exported to a temporary artifact first; where OpenVINO is not
    installed, to ONNX alone (it was announced, then built, as onnx and openvino)."""
    import importlib.util

    from typer.testing import CliRunner

    from vlmedge.cli import app

    real = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec", lambda name, *a: None if name == "openvino" else real(name, *a))
    result = CliRunner().invoke(app, ["bench", str(hf_classifier_dir("vit")), "--backend", "onnxruntime",
                                      "--iterations", "2", "--warmup", "0", "--batch-size", "1", "--json", "-"])
    assert result.exit_code == 0, result.output
    assert "exporting it to a temporary artifact (onnx fp32)" in " ".join(result.output.split())
    rows = json.loads(result.stdout[result.stdout.index("{"):])["rows"]
    assert [(row["backend"], row["precision"]) for row in rows] == [("onnxruntime", "fp32")]
