"""Issue 9: Session.run's contract on every CPU backend: an empty batch returns empty
outputs without calling the backend, inputs must agree on their batch, and a model the
backend cannot load or run is a VlmedgeError."""

from __future__ import annotations

import numpy as np
import pytest

from vlmedge.errors import ArtifactError, InputError, NonFiniteOutputError
from vlmedge.runtimes.base import open_session
from tests.hardening_support import cpu_backends, text_model, tiny_clip, to_backend

BACKENDS = cpu_backends()


@pytest.fixture
def text_session_factory(tmp_path):
    def make(backend: str):
        return open_session(to_backend(text_model(tmp_path / "text.onnx", vocab=50, context=6, dim=4), backend),
                            backend=backend)
    return make


@pytest.mark.parametrize("backend", BACKENDS)
def test_empty_batch_returns_empty_outputs_without_calling_the_backend(backend, text_session_factory, monkeypatch):
    session = text_session_factory(backend)

    def must_not_run(feeds):
        raise AssertionError("the backend was called for an empty batch")

    monkeypatch.setattr(session, "_run", must_not_run)
    empty = np.zeros((0, 6), np.int64)
    out = session.run({"input_ids": empty, "attention_mask": empty})
    assert list(out) == ["text_embeds"]
    assert out["text_embeds"].shape == (0, 4) and out["text_embeds"].dtype == np.float32


@pytest.mark.parametrize("backend", BACKENDS)
def test_empty_batch_matches_the_shape_of_a_real_one(backend, text_session_factory):
    session = text_session_factory(backend)
    ids = np.ones((2, 6), np.int64)
    real = session.run({"input_ids": ids, "attention_mask": ids})
    empty = session.run({"input_ids": ids[:0], "attention_mask": ids[:0]})
    for name, value in real.items():
        assert empty[name].shape == (0,) + value.shape[1:] and empty[name].dtype == value.dtype


def test_empty_inputs_are_still_checked(text_session_factory):
    session = text_session_factory("onnxruntime")
    with pytest.raises(InputError, match=r"'input_ids' must have dtype int64, but it has float32"):
        session.run({"input_ids": np.zeros((0, 6), np.float32), "attention_mask": np.zeros((0, 6), np.int64)})
    with pytest.raises(InputError, match=r"'input_ids' must have size 6 on axis 1"):
        session.run({"input_ids": np.zeros((0, 5), np.int64), "attention_mask": np.zeros((0, 5), np.int64)})


def test_inputs_must_agree_on_the_batch(text_session_factory):
    session = text_session_factory("onnxruntime")
    with pytest.raises(InputError, match=r"'attention_mask' has batch size 3, but input 'input_ids' has 2"):
        session.run({"input_ids": np.ones((2, 6), np.int64), "attention_mask": np.ones((3, 6), np.int64)})


def test_an_empty_list_is_still_an_input_error_at_the_task_level(tmp_path):
    """Issue 2's rule stands: pipelines refuse an empty list with a clear sentence."""
    clip = tiny_clip(tmp_path)
    with pytest.raises(InputError, match="empty"):
        clip.embed_images([])
    with pytest.raises(InputError, match="empty"):
        clip.embed_texts([])


def test_a_run_the_backend_rejects_is_an_input_error(tmp_path):
    """Token ids outside the vocabulary pass every static check; ONNX Runtime's own failure
    comes back as an InputError naming the shapes, not as an onnxruntime exception."""
    session = open_session(text_model(tmp_path / "text.onnx", vocab=50, context=6, dim=4))
    ids = np.full((1, 6), 10_000, np.int64)
    with pytest.raises(InputError, match=r"ONNX Runtime could not run the model on inputs of shapes"):
        session.run({"input_ids": ids, "attention_mask": np.ones((1, 6), np.int64)})


def test_a_file_onnx_runtime_cannot_load_is_an_artifact_error(tmp_path):
    path = tmp_path / "model.onnx"
    path.write_bytes(b"\x08\x07" + b"\x12\x03abc")  # well-formed protobuf (ir_version, producer), no graph
    with pytest.raises(ArtifactError, match=r"ONNX Runtime cannot load model\.onnx"):
        open_session(path)
    path.write_bytes(b"\x08\x07" + b"\xff" * 64)  # not even protobuf: refused before ONNX Runtime reads it
    with pytest.raises(ArtifactError, match=r"model\.onnx is not a valid ONNX file"):
        open_session(path)


@pytest.mark.parametrize("backend", BACKENDS)
def test_loading_and_running_an_artifact_writes_nothing_to_home(two_target_artifact, tmp_path, backend):
    """ONNX Runtime's telemetry would record each session in ~/.cache/Microsoft/...; vlmedge
    turns it off (ORT_DISABLE_TELEMETRY) so that serving an artifact writes nothing to home.
    OpenVINO's, on `import openvino`, wrote a client id and usage counts under ~/intel, sent a
    usage event and left a thread for the life of the process; vlmedge imports it without.
    The one thing vlmedge itself writes, the compiled-model cache, goes where
    VLMEDGE_CACHE_DIR points (conftest sets it to a temporary folder, outside this HOME);
    tests/test_compiled_cache.py checks the cache's own default place."""
    import os
    import subprocess
    import sys

    from tests.hardening_support import REPO

    home = tmp_path / "home"
    home.mkdir()
    env = {k: v for k, v in os.environ.items() if k not in ("ORT_DISABLE_TELEMETRY", "XDG_CACHE_HOME")}
    code = ("import sys, threading, numpy as np, vlmedge; c = vlmedge.load(r'%s', backend='%s'); "
            "print(c.classify(np.zeros((8, 8, 3), np.uint8))[0].label, threading.active_count(), "
            "'openvino_telemetry' in sys.modules)" % (two_target_artifact, backend))
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=tmp_path,
                          env={**env, "HOME": str(home), "PYTHONPATH": str(REPO)}, timeout=300)
    assert done.returncode == 0, done.stderr
    label, threads, telemetry = done.stdout.split()
    assert label and (threads, telemetry) == ("1", "False")
    assert [str(p.relative_to(home)) for p in home.rglob("*")] == []


def test_check_never_imports_a_module_the_manifest_names(tmp_path):
    """`vlmedge check` looks up a model's backend package; a target such as 'antigravity.x'
    must not make it import (and run) the module 'antigravity'."""
    import json
    import sys

    from vlmedge.check import check_artifact
    from tests.hardening_support import tiny_classifier_artifact

    root = tiny_classifier_artifact(tmp_path / "artifact")
    manifest = json.loads((root / "manifest.json").read_text())
    next(e for e in manifest["files"] if e["role"] == "model")["target"] = "antigravity.x"
    (root / "manifest.json").write_text(json.dumps(manifest))
    sys.modules.pop("antigravity", None)
    (report,) = check_artifact(root)
    assert report["skipped"] == "this vlmedge has no backend for target 'antigravity.x'" and report["passed"] is None
    assert "antigravity" not in sys.modules


@pytest.mark.parametrize("backend", BACKENDS)
def test_a_closed_pipeline_frees_its_model_and_refuses_to_run(backend, two_target_artifact, image_files):
    import gc
    import weakref

    import vlmedge
    from vlmedge.errors import UsageError

    with vlmedge.load(two_target_artifact, backend=backend, cache=False) as classifier:
        session = classifier.model.sessions["model"]
        # what holds the model's memory: ONNX Runtime's session, OpenVINO's mapping of the weights
        held = weakref.ref(session._session if backend == "onnxruntime" else session._mapped)
        assert classifier.classify(image_files[0], top_k=1)
    gc.collect()
    assert held() is None, "close() left the backend's model alive"
    with pytest.raises(UsageError, match="was closed; load the artifact again"):
        classifier.classify(image_files[0])
    classifier.close()  # a second close does nothing


def scaled_model(path, scale: float):
    """x (batch, 2) -> y = x * scale: infinite in float32 for a large enough x."""
    from onnx import TensorProto, helper, numpy_helper

    from tests.hardening_support import _save

    graph = helper.make_graph(
        [helper.make_node("Mul", ["x", "scale"], ["y"])], "scaled",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["batch", 2])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["batch", 2])],
        initializer=[numpy_helper.from_array(np.array(scale, np.float32), "scale")])
    return _save(graph, path)


@pytest.mark.parametrize("backend", BACKENDS)
def test_outputs_holding_nan_or_infinity_are_refused_unless_asked_for(backend, tmp_path):
    """A file that passed its gate may still overflow on an input unlike those it was verified
    on (an fp16 file most often): Session.run refuses such outputs, saying how many of the
    call's inputs overflowed and what to do; a parity gate asks for them to judge them."""
    session = open_session(to_backend(scaled_model(tmp_path / "scaled.onnx", 1e30), backend), backend=backend)
    fine = np.array([[1.0, -2.0], [3.0, 0.5]], np.float32)
    np.testing.assert_allclose(session.run({"x": fine})["y"], fine * 1e30, rtol=1e-2)
    overflowing = np.array([[1.0, 2.0], [1e10, 0.0], [-1e10, 1.0]], np.float32)
    with pytest.raises(NonFiniteOutputError, match=r"^scaled\.(onnx|xml) \(" + backend + r", its precision\) answered "
                       r"NaN or infinity for 2 of the 3 input\(s\) of one call, whose values are finite"):
        session.run({"x": overflowing})
    for kept in (session.run({"x": overflowing}, non_finite_outputs=True), session.run({"x": overflowing}, check=False)):
        assert np.isinf(kept["y"][1:, 0]).all() and np.isfinite(kept["y"][0]).all()


def test_a_run_that_fails_is_said_once_without_onnx_runtimes_own_red_log_line(tmp_path, capfd):
    """ONNX Runtime printed "[E:onnxruntime:, sequential_executor.cc:...] Non-zero status code
    ..." in red on stderr before the exception that vlmedge words."""
    from onnx import TensorProto, helper

    from tests.hardening_support import _save

    shape = helper.make_tensor("shape", TensorProto.INT64, [2], [3, 3])  # 9 values: x of 5 cannot take it
    graph = helper.make_graph([helper.make_node("Reshape", ["x", "shape"], ["y"])], "reshape",
                              [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["n"])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, [3, 3])], [shape])
    session = open_session(_save(graph, tmp_path / "reshape.onnx"))
    with pytest.raises(InputError, match=r"^ONNX Runtime could not run the model on inputs of shapes \{'x': \[5\]\}: .*Reshape"):
        session.run({"x": np.zeros(5, np.float32)})
    assert "onnxruntime" not in capfd.readouterr().err


@pytest.mark.parametrize("backend", BACKENDS)
def test_an_output_of_another_shape_than_the_file_declares_is_refused(backend, tmp_path):
    """OpenVINO's CPU plugin answered an NNCF int8 text tower's (batch, 16) as (1, batch, 16):
    read as it came, rows were other captions' (the int8 ladder's concatenation crashed the
    whole export). An output of another rank, fixed size or batch is refused, naming both."""
    from onnx import TensorProto, helper, numpy_helper

    from tests.hardening_support import _save

    graph = helper.make_graph(  # declares (batch, 2), answers the first row alone
        [helper.make_node("Slice", ["x", "start", "end"], ["y"])], "first",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["batch", 2])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["batch", 2])],
        initializer=[numpy_helper.from_array(np.array([0], np.int64), "start"),
                     numpy_helper.from_array(np.array([1], np.int64), "end")])
    session = open_session(to_backend(_save(graph, tmp_path / "first.onnx"), backend), backend=backend)
    x = np.ones((3, 2), np.float32)
    with pytest.raises(ArtifactError, match=r"^first\.(onnx|xml) \(" + backend + r", its precision\) answered 'y' of "
                       r"shape \(1, 2\) for 3 input\(s\), where it declares \(batch, 2\): " + backend + r" computes this "
                       r"file wrongly here; load another precision or backend\.$"):
        session.run({"x": x})
    assert session.run({"x": x[:1]})["y"].shape == (1, 2)
    assert session.run({"x": x}, check=False)["y"].shape == (1, 2)  # a benchmark's timed call checks nothing
    graph = helper.make_graph(  # (1, batch, 2), whatever it declares (the backend's own reading declares it so)
        [helper.make_node("Unsqueeze", ["x", "axes"], ["y"])], "unsqueezed",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["batch", 2])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, "batch", 2])],
        initializer=[numpy_helper.from_array(np.array([0], np.int64), "axes")])
    session = open_session(to_backend(_save(graph, tmp_path / "unsqueezed.onnx"), backend), backend=backend)
    with pytest.raises(ArtifactError, match=r"answered 'y' of shape \(1, 3, 2\) for 3 input\(s\), where it declares "
                       r"\(1, "):
        session.run({"x": x})


def test_a_model_that_overflows_on_one_input_fails_that_input_alone(tmp_path, image_files):
    """The Python API refuses the call (never a NaN score); a bulk job runs the batch's rows
    alone and gives the overflowing row the error, the others their labels."""
    from PIL import Image

    import vlmedge
    from vlmedge.bulk.inputs import collect
    from vlmedge.bulk.job import make_job
    from vlmedge.bulk.local import run_local
    from tests.hardening_support import tiny_classifier_artifact

    artifact = tiny_classifier_artifact(tmp_path / "artifact", overflows_on_white=True)
    Image.new("RGB", (16, 16), "white").save(tmp_path / "white.png")
    Image.new("RGB", (16, 16), (20, 20, 20)).save(tmp_path / "dark.png")
    classifier = vlmedge.load(artifact)
    assert classifier.classify(tmp_path / "dark.png", top_k=1)
    message = (r"onnx/model\.fp32\.onnx \(onnxruntime, fp32\) answered NaN or infinity for 1 of the 2 input\(s\) of "
               r"one call, whose values are finite: it overflows on them; the input is outside what this model handles")
    with pytest.raises(NonFiniteOutputError, match=rf"^{tmp_path}/white.png: {message}") as raised:
        classifier.classify([tmp_path / "dark.png", tmp_path / "white.png"])  # named among several
    assert raised.value.rows == (1,)
    with pytest.raises(NonFiniteOutputError, match=rf"^image 0 of the list: {message}"):
        classifier.classify([Image.new("RGB", (16, 16), "white"), tmp_path / "dark.png"])
    with pytest.raises(NonFiniteOutputError, match=r"^onnx/model\.fp32\.onnx .* for 1 of the 1 input\(s\)"):
        classifier.classify(tmp_path / "white.png")
    pytest.importorskip("pyarrow")
    paths = [str(tmp_path / name) for name in ("dark.png", "white.png", "dark.png")]
    rows = run_local(make_job(artifact, "classify"), collect(paths, "image"), batch_size=3).to_pylist()
    assert [r["error"] is None for r in rows] == [True, False, True]
    assert "answered NaN or infinity for 1 of the 1 input(s)" in rows[1]["error"] and rows[1]["labels"] is None
    assert rows[0]["labels"] == rows[2]["labels"] and len(rows[0]["labels"]) == 4



def test_an_audio_overflow_names_the_clips_whose_windows_overflowed(tmp_path):
    """It said how many of the call's windows overflowed, not which clips: the windows of
    every clip run together, in batches of the pipeline's batch_size, so their rows are mapped back to clips."""
    import soundfile

    from tests.hardening_support import tiny_audio_tagger

    tagger = tiny_audio_tagger(tmp_path, overflows_when_loud=True)
    silence = np.zeros(16000, np.float32)
    noise = (np.random.default_rng(0).standard_normal(4000) * 0.5).astype(np.float32)
    soundfile.write(tmp_path / "noise.wav", noise, 16000)
    assert tagger.tag(silence, sample_rate=16000, top_k=1).tags[0].score == 0.5  # exp(-large) = 0: finite
    message = r"audio\.onnx \(onnxruntime, its precision\) answered NaN or infinity for 1 of the \d+ input\(s\) of one call"
    with pytest.raises(NonFiniteOutputError, match=rf"^{tmp_path}/noise\.wav: {message}") as raised:
        tagger.tag([silence, str(tmp_path / "noise.wav")], sample_rate=16000)
    assert raised.value.rows == (1,)
    long_silence = np.zeros(16000 * 7, np.float32)  # 43 windows: the noise's is in the second batch
    with pytest.raises(NonFiniteOutputError, match=rf"^Audio clip 2 of the list: {message}") as raised:
        tagger.tag([long_silence, silence, noise, silence], sample_rate=16000)
    assert raised.value.rows == (2,)
    with pytest.raises(NonFiniteOutputError, match=rf"^{message}"):
        tagger.tag(noise, sample_rate=16000)


def test_a_pipeline_refuses_to_be_pickled_in_one_sentence(two_target_artifact, image_files):
    """pickle, deepcopy and a multiprocessing pool raised ONNX Runtime's own TypeError ("cannot
    pickle InferenceSession"); now a UsageError says to load the artifact in each worker.
    copy.copy shares the loaded model; the repr of a closed pipeline says so."""
    import copy
    import pickle

    import vlmedge
    from vlmedge.errors import UsageError

    classifier = vlmedge.load(two_target_artifact, backend="onnxruntime", cache=False)
    for attempt in (pickle.dumps, copy.deepcopy):
        with pytest.raises(UsageError, match=r"^A loaded ImageClassifier cannot be pickled or copied to another process "
                                             r"\(its onnxruntime session lives in this one\); pass the artifact path"):
            attempt(classifier)
    shared = copy.copy(classifier)
    assert shared.classify(image_files[0]) == classifier.classify(image_files[0])
    classifier.close()
    assert repr(classifier).endswith(", closed)") and "closed" not in repr(vlmedge.load(two_target_artifact, cache=False))


def test_loading_a_model_reference_says_to_export_it_first(hf_classifier_dir):
    """vlmedge.load("builtin:shapes-vit") or a save_pretrained folder is a model, not an artifact:
    the refusal says to export it (it said to pass an export's folder, or that no manifest was found)."""
    import vlmedge

    with pytest.raises(ArtifactError, match=r"^No artifact folder at builtin:shapes-vit; export it first \(vlmedge "
                                            r"export builtin:shapes-vit -o out/model\) and pass that folder\.$"):
        vlmedge.load("builtin:shapes-vit")
    folder = hf_classifier_dir("vit")
    with pytest.raises(ArtifactError, match=rf"^{folder} is a model folder, not an artifact; export it first"):
        vlmedge.load(folder)


def test_an_unknown_backend_is_a_usage_error_in_python_as_on_the_command_line(vit_artifact):
    """backend="onxx" was a BackendUnavailableError (exit code 1) from vlmedge.load and bulk,
    where bench and the CLI (exit 2) call it a usage error."""
    import vlmedge
    from vlmedge.bulk.job import make_job
    from vlmedge.errors import UsageError

    for call in (lambda: vlmedge.load(vit_artifact, backend="onxx"), lambda: make_job(vit_artifact, backend="onxx")):
        with pytest.raises(UsageError, match=r"^Unknown backend 'onxx'; choose one of auto, onnxruntime, openvino"):
            call()
