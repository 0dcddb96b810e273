"""The OpenVINO target: IR files in the artifact with their hashes, a backend that runs
them in the precision they were verified in, one infer request per thread."""

from __future__ import annotations

import json
import shutil
import threading

import numpy as np
import pytest

from tests.hf_models import FAMILIES, image_processor, tiny_classifier

pytest.importorskip("openvino", reason="the openvino package is not installed (pip install 'vlmedge[openvino]')")
pytest.importorskip("torch")
pytest.importorskip("transformers")


@pytest.fixture(scope="module")
def ov_artifact(tmp_path_factory):
    """A tiny ViT exported to ONNX fp32 and OpenVINO fp32, fp16 and bf16."""
    import vlmedge

    folder = tmp_path_factory.mktemp("hf-vit4")
    tiny_classifier("vit", num_labels=4).save_pretrained(folder)
    image_processor(FAMILIES["vit"], 32).save_pretrained(folder)
    out = tmp_path_factory.mktemp("ov") / "artifact"
    vlmedge.export(str(folder), out, to=["openvino"], precision=["fp32", "fp16", "bf16"])
    return out


def test_ir_files_are_hashed_entries_with_reports(ov_artifact):
    from vlmedge.artifact import Artifact

    artifact = Artifact.open(ov_artifact)
    entries = {e["precision"]: e for e in artifact.model_entries(target="openvino")}
    assert set(entries) == {"fp32", "fp16", "bf16"}
    paths = {e["path"] for e in artifact.files}
    for precision, entry in entries.items():
        assert entry["path"] == f"openvino/model.{precision}.xml"
        assert f"openvino/model.{precision}.bin" in paths  # the weights, hashed as their own entry
        assert entry["session_options"] == {"inference_precision": precision}
        report = entry["parity"]
        assert report["passed"] and report["backend"] == "openvino" and report["precision"] == precision
        assert report["latency_ms"] > 0 and report["onnx_fp32_latency_ms"] > 0 and "speedup_vs_onnx_fp32" in report


def test_a_model_saved_after_other_work_in_the_process_is_the_same_bytes(vit_artifact, tmp_path):
    """OpenVINO names the nodes it makes by a counter of the whole process: the same export
    command wrote .xml files differing in those names alone (Constant_784230 vs Constant_783626)
    from run to run, as other precisions or int8 attempts had run before."""
    from vlmedge.exporters.openvino import convert, save

    saved = [save(convert(vit_artifact / "onnx" / "model.fp32.onnx"), tmp_path / f"{i}" / "model.xml",
                  compress_to_fp16=False) for i in range(2)]  # the second made after the first, in one process
    assert [p.read_bytes() for p in saved[0]] == [p.read_bytes() for p in saved[1]]


def test_fp32_really_runs_in_f32(ov_artifact):
    import vlmedge

    classifier = vlmedge.load(ov_artifact, backend="openvino", precision="fp32")
    (session,) = classifier.model.sessions.values()
    assert str(session._compiled.get_property("INFERENCE_PRECISION_HINT")) == "<Type: 'float32'>"
    assert session.inference_precision == "f32" and session.provider == "OpenVINO CPU f32"
    assert classifier.model.backend == "openvino" and classifier.model.precision == "fp32"


def test_bf16_is_explicit(ov_artifact):
    import vlmedge
    from vlmedge.runtimes.openvino import supports_precision

    classifier = vlmedge.load(ov_artifact, backend="openvino", precision="bf16")
    (session,) = classifier.model.sessions.values()
    expected = "bf16" if supports_precision("bf16") else "f32"
    assert session.inference_precision == expected and session.provider.endswith(expected)


def test_a_file_that_runs_otherwise_than_it_was_verified_says_so(ov_artifact, tmp_path):
    """Each file runs here as its parity gate verified it at export (an fp16 file on a CPU
    without f16 in the bf16 it falls back to): no warning. The same file recorded as verified
    in another precision, as on another machine, warns naming both."""
    import warnings

    import vlmedge
    from vlmedge.check import check_artifact
    from vlmedge.errors import UnverifiedWarning

    with warnings.catch_warnings():
        warnings.simplefilter("error")
        providers = {p: next(iter(vlmedge.load(ov_artifact, backend="openvino", precision=p).model.sessions.values()))
                     .provider for p in ("fp32", "fp16", "bf16")}
    moved = tmp_path / "moved"
    shutil.copytree(ov_artifact, moved)
    manifest = json.loads((moved / "manifest.json").read_text())
    other = {"f32": "bf16", "bf16": "f16", "f16": "bf16"}
    for entry in manifest["files"]:
        if entry.get("precision") == "fp16" and entry.get("target") == "openvino":
            verified = entry["parity"]["provider"].rsplit(" ", 1)[0] + " " + other[providers["fp16"].rsplit(" ", 1)[1]]
            entry["parity"]["provider"] = verified
    (moved / "manifest.json").write_text(json.dumps(manifest))
    with pytest.warns(UnverifiedWarning) as caught:
        vlmedge.load(moved, backend="openvino", precision="fp16")
    (warning,) = [w for w in caught if w.category is UnverifiedWarning]
    message = str(warning.message)
    assert verified in message and providers["fp16"] in message and "vlmedge check" in message
    assert warning.filename == __file__  # the user's own line that loaded it, not a line inside vlmedge
    with warnings.catch_warnings():  # the check that warning asks for does not repeat it
        warnings.simplefilter("error", UnverifiedWarning)
        reports = {r["file"]: r for r in check_artifact(moved)}
    assert reports["openvino/model.fp16.xml"]["passed"] and reports["openvino/model.fp16.xml"]["provider"] == providers["fp16"]


# Tolerance by the precision OpenVINO actually computes in: a CPU without FP16 units (AMD
# Zen 4) runs an fp16 file in bf16, and says so in the session's inference_precision.
ATOL_OF_EXECUTION = {"f32": 1e-4, "f16": 2e-2, "bf16": 5e-2}


@pytest.mark.parametrize("precision", ["fp32", "fp16", "bf16"])
def test_results_close_to_onnx_fp32(ov_artifact, image_files, precision):
    import vlmedge

    reference = vlmedge.load(ov_artifact, backend="onnxruntime", precision="fp32")
    classifier = vlmedge.load(ov_artifact, backend="openvino", precision=precision)
    (session,) = classifier.model.sessions.values()
    atol = ATOL_OF_EXECUTION[session.inference_precision]
    paths = [str(p) for p in image_files]
    np.testing.assert_allclose(classifier.probabilities(paths), reference.probabilities(paths), atol=atol)
    assert [p[0].index for p in classifier.classify(paths[:4])] == [p[0].index for p in reference.classify(paths[:4])]


def test_threads_get_their_own_infer_request(ov_artifact):
    """4 threads x 20 calls on one session give exactly the serial results."""
    from vlmedge.artifact import Artifact
    from vlmedge.runtimes.base import open_session

    artifact = Artifact.open(ov_artifact)
    (entry,) = artifact.model_entries(target="openvino", precision="fp32")
    session = open_session(artifact.path_of(entry), backend="openvino", **entry["session_options"])
    rng = np.random.default_rng(0)
    inputs = [rng.standard_normal((1 + i % 3, 3, 32, 32)).astype(np.float32) for i in range(20)]
    serial = [session.run({"pixel_values": x})["logits"] for x in inputs]
    results: dict[tuple[int, int], np.ndarray] = {}
    errors: list[BaseException] = []
    barrier = threading.Barrier(4)

    def work(thread: int) -> None:
        try:
            barrier.wait()
            for i, x in enumerate(inputs):
                results[thread, i] = session.run({"pixel_values": x})["logits"]
        except BaseException as exc:  # noqa: BLE001 - reported below
            errors.append(exc)

    threads = [threading.Thread(target=work, args=(t,)) for t in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert not errors
    for (thread, i), value in results.items():
        np.testing.assert_allclose(value, serial[i], rtol=0, atol=1e-6, err_msg=f"thread {thread} call {i}")
    assert len(results) == 80


def test_devices_and_hints(ov_artifact):
    from vlmedge.artifact import Artifact
    from vlmedge.errors import BackendUnavailableError, InputError
    from vlmedge.runtimes.base import open_session

    artifact = Artifact.open(ov_artifact)
    path = artifact.path_of(artifact.model_entries(target="openvino", precision="fp32")[0])
    session = open_session(path, backend="openvino", device="CPU", performance_hint="throughput")
    assert session.provider.startswith("OpenVINO CPU") and session.performance_hint == "throughput"
    assert session.run({"pixel_values": np.zeros((2, 3, 32, 32), np.float32)})["logits"].shape == (2, 4)
    with pytest.raises(BackendUnavailableError, match="no device 'npu.7'"):
        open_session(path, backend="openvino", device="npu.7")
    with pytest.raises(InputError, match="performance hint"):
        open_session(path, backend="openvino", performance_hint="fastest")
    with pytest.raises(InputError, match="dimensions"):
        session.run({"pixel_values": np.zeros((3, 32, 32), np.float32)})


def test_check_reverifies_openvino_entries(ov_artifact):
    from vlmedge.check import check_artifact

    reports = {r["file"]: r for r in check_artifact(ov_artifact)}
    assert {"openvino/model.fp32.xml", "openvino/model.fp16.xml", "openvino/model.bf16.xml"} <= set(reports)
    for report in reports.values():
        assert report["passed"], report.get("failures")
    assert reports["openvino/model.fp32.xml"]["provider"] == "OpenVINO CPU f32"


def test_altered_weights_are_refused(ov_artifact, tmp_path):
    import vlmedge
    from vlmedge.errors import ArtifactError

    copy = tmp_path / "copy"
    shutil.copytree(ov_artifact, copy)
    weights = copy / "openvino" / "model.fp32.bin"
    data = bytearray(weights.read_bytes())
    data[len(data) // 2] ^= 0xFF
    weights.write_bytes(bytes(data))
    with pytest.raises(ArtifactError, match="model.fp32.bin"):
        vlmedge.load(copy, backend="openvino", precision="fp32")  # a load hashes the files it opens


def test_onnx_bf16_is_skipped_or_refused(tmp_path, hf_classifier_dir):
    import vlmedge
    from vlmedge.errors import UsageError

    with pytest.raises(UsageError, match="bf16"):  # decided from the options alone, as --to onxx is: exit 2
        vlmedge.export(str(hf_classifier_dir("vit")), tmp_path / "x", to=["onnx"], precision=["bf16"])
    assert not (tmp_path / "x").exists()


def test_a_converter_error_is_one_sentence_naming_the_variant_and_nothing_is_written(tmp_path, hf_classifier_dir,
                                                                                      monkeypatch):
    """OpenVINO's ONNX frontend failing on a graph (made to, here) is an ExportError that
    names the file being built and says what to do, not OpenVINO's own exception; the
    exception stays on __cause__ and no artifact is left behind."""
    import openvino as ov

    import vlmedge
    from vlmedge.errors import ExportError

    def frontend_fails(*args, **kwargs):
        raise RuntimeError("Check 'unknown_operators.empty()' failed at src/frontends/onnx/frontend/src/core/graph.cpp\n"
                           "OpenVINO does not support the following ONNX operations: Col2Im")

    monkeypatch.setattr(ov, "convert_model", frontend_fails)
    with pytest.raises(ExportError, match=r"Building the openvino fp32 file of graph 'model' failed \(RuntimeError: "
                                          r"Check 'unknown_operators.empty\(\)' failed.*export without openvino fp32") as caught:
        vlmedge.export(str(hf_classifier_dir("vit")), tmp_path / "x", to=["onnx", "openvino"], precision=["fp32"])
    assert caught.value.variant == ("openvino", "fp32") and isinstance(caught.value.__cause__, RuntimeError)
    assert "\n" not in str(caught.value)
    assert not (tmp_path / "x").exists() and not list(tmp_path.iterdir())


def test_info_lists_the_variants(ov_artifact):
    from tests.test_cli import vlmedge_cli

    result = vlmedge_cli("info", ov_artifact)
    assert result.returncode == 0, result.stderr
    for precision in ("fp32", "fp16", "bf16"):
        assert f"openvino/model.{precision}.xml" in result.stdout
    # what each file was verified on: OpenVINO's fp32 file computes in f32, its bf16 file in bf16
    assert "verified on: OpenVINO CPU f32" in result.stdout and "verified on: CPUExecutionProvider" in result.stdout
    manifest = json.loads(vlmedge_cli("info", ov_artifact, "--json").stdout)
    assert any(e.get("session_options") == {"inference_precision": "bf16"} for e in manifest["files"])


@pytest.mark.parametrize("vendor, flags, expected", [
    ("GenuineIntel", "sse4_2 avx2", "openvino"),
    ("AuthenticAMD", "sse4_2 avx2 avx512f avx512_vnni avx512_bf16", "openvino"),
    ("AuthenticAMD", "sse4_2 avx2", "onnxruntime"),
    (None, "", "onnxruntime"),  # no /proc/cpuinfo: another OS
])
def test_auto_picks_openvino_on_the_cpus_it_was_measured_ahead_on(two_target_artifact, monkeypatch, vendor, flags,
                                                                  expected):
    """backend="auto" on a CPU opens an artifact with both targets on OpenVINO on Intel's CPUs
    and AMD's with AVX-512 (Zen 4, measured: benchmarks/results/amd-epyc-2c.md), else on ONNX
    Runtime."""
    import vlmedge
    import vlmedge.runtimes.select as select

    monkeypatch.setattr(select, "cpuinfo", lambda: {} if vendor is None else {"vendor_id": vendor, "flags": flags})
    assert vlmedge.load(two_target_artifact, precision="fp32", cache=False).model.backend == expected


def test_session_options_are_the_chosen_backends_own(two_target_artifact, monkeypatch):
    """A session option of another backend, such as OpenVINO's performance_hint when
    backend="auto" picked ONNX Runtime, is an InputError naming whose option it is (it was a
    TypeError about a class's __init__); the OpenVINO-only cache_dir is gone (vlmedge's own
    cache replaces it); each backend takes its own."""
    import vlmedge
    import vlmedge.runtimes.select as select
    from vlmedge.errors import UsageError

    monkeypatch.setattr(select, "cpuinfo", lambda: {"vendor_id": "AuthenticAMD", "flags": "avx2"})  # auto: ORT
    with pytest.raises(UsageError, match=r"^The onnxruntime backend takes no session option 'performance_hint' "
                                         r"\(an option of openvino\); its options are threads, optimization"):
        vlmedge.load(two_target_artifact, precision="fp32", cache=False, performance_hint="throughput")
    with pytest.raises(UsageError, match=r"vlmedge.load takes no keyword 'cache_dir'; .*session options: threads"):
        vlmedge.load(two_target_artifact, backend="openvino", precision="fp32", cache=False, cache_dir="/tmp/ov")
    for threads in (0, "2", True):
        with pytest.raises(UsageError, match="threads must be a whole number of at least 1"):
            vlmedge.load(two_target_artifact, backend="onnxruntime", precision="fp32", cache=False, threads=threads)
    ov = vlmedge.load(two_target_artifact, backend="openvino", precision="fp32", cache=False, threads=1,
                      performance_hint="throughput", inference_precision="fp32").model.sessions["model"]
    assert (ov.performance_hint, ov.inference_precision) == ("throughput", "f32")
    ort = vlmedge.load(two_target_artifact, backend="onnxruntime", precision="fp32", cache=False, threads=1,
                       optimization="basic").model.sessions["model"]
    assert ort._session.get_session_options().intra_op_num_threads == 1


def test_the_declared_session_options_are_those_the_sessions_take():
    """runtimes.base.BACKENDS declares each backend's session options (vlmedge formats shows
    them); they must be the session class's own keywords, less what vlmedge passes itself,
    and their meanings must name every value the backend accepts."""
    import inspect

    from vlmedge.runtimes import onnxruntime as ort_runtime
    from vlmedge.runtimes import openvino as ov_runtime
    from vlmedge.runtimes.base import BACKENDS

    vlmedge_own = {"self", "model_path", "device", "cache", "model_digest", "data_root"}
    for name, session_class in (("onnxruntime", ort_runtime.OnnxRuntimeSession),
                                ("openvino", ov_runtime.OpenVinoSession)):
        taken = set(inspect.signature(session_class.__init__).parameters) - vlmedge_own
        assert taken == set(BACKENDS[name].option_names()), name
    meanings = {(b.name, o.name): o.meaning for b in BACKENDS.values() for o in b.options}
    values = {("onnxruntime", "optimization"): ort_runtime._LEVELS,
              ("openvino", "performance_hint"): ov_runtime.PERFORMANCE_HINTS,
              ("openvino", "inference_precision"): ["fp32", "bf16", "fp16"]}
    for key, accepted in values.items():
        assert all(value in meanings[key] for value in accepted), key


def test_check_one_backend_and_a_device_only_some_backends_reach(two_target_artifact, vit_artifact):
    """`check --backend` checks that backend's files alone; a device one backend lacks skips its
    files with the reason and checks the others'; a check that checked nothing fails."""
    from tests.test_cli import vlmedge_cli

    only = json.loads(vlmedge_cli("check", two_target_artifact, "--backend", "openvino", "--json").stdout)
    assert only and {r["backend"] for r in only} == {"openvino"} and all(r["passed"] for r in only)
    # OpenVINO's AUTO device picks the CPU here; ONNX Runtime has no such device
    result = vlmedge_cli("check", two_target_artifact, "--device", "auto", "--json")
    assert result.returncode == 0, result.stderr
    reports = json.loads(result.stdout)
    assert all(r["passed"] for r in reports if r["backend"] == "openvino")
    assert all("has no device 'auto'" in r["skipped"] for r in reports if r["backend"] == "onnxruntime")
    nothing = vlmedge_cli("check", vit_artifact, "--device", "auto")
    assert nothing.returncode == 1 and "No file of" in nothing.stderr and "every one was skipped" in nothing.stderr
    absent = vlmedge_cli("check", vit_artifact, "--backend", "openvino")
    assert absent.returncode == 1 and "has no openvino files to check with openvino (it has: onnx)" in absent.stderr


def test_auto_gives_nvidia_devices_to_onnx_runtime_and_openvinos_own_devices_to_openvino(two_target_artifact):
    """OpenVINO has no 'cuda' device: auto chose it for any device but the CPU, and the load failed."""
    from vlmedge.artifact import Artifact
    from vlmedge.runtimes.select import choose_backend

    artifact = Artifact.open(two_target_artifact)
    assert choose_backend(artifact, "cuda") == choose_backend(artifact, "tensorrt") == "onnxruntime"
    assert choose_backend(artifact, "GPU") == choose_backend(artifact, "npu") == "openvino"
