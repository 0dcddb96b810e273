"""Issue 9: one loaded model shared by many threads gives exactly the serial results.

For every CPU backend installed (ONNX Runtime; OpenVINO when runtimes/openvino.py and the
openvino package are present): 8 threads x 500 calls of the image classifier (the tiny
ViT), and 8 threads x 100 calls of the audio tagger and of the CLIP text and image towers
(tiny ONNX graphs with those pipelines' inputs and outputs, so no minutes go into
exporting an AST or a CLIP model). Each call's result must equal, bit for bit, what a
serial call on the same input gave; no call may raise.

Scale with VLMEDGE_THREAD_CALLS (classifier, default 500) and VLMEDGE_THREAD_CALLS_OTHER
(the others, default 100).
"""

from __future__ import annotations

import os
import threading
from typing import Any, Callable

import numpy as np
import pytest

import vlmedge
from vlmedge.artifact import Artifact
from tests.hardening_support import (REPO, cpu_backends, hold_runs, pipeline_from, tiny_audio_tagger, tiny_clip,
                                    to_backend)

THREADS = 8
CALLS = int(os.environ.get("VLMEDGE_THREAD_CALLS", "500"))
OTHER_CALLS = int(os.environ.get("VLMEDGE_THREAD_CALLS_OTHER", "100"))
BACKENDS = cpu_backends()


def _same(a: Any, b: Any) -> bool:
    if isinstance(a, np.ndarray) or isinstance(b, np.ndarray):
        return isinstance(a, np.ndarray) and isinstance(b, np.ndarray) and a.dtype == b.dtype and np.array_equal(a, b)
    if isinstance(a, (list, tuple)) and isinstance(b, (list, tuple)):
        return type(a) is type(b) and len(a) == len(b) and all(_same(x, y) for x, y in zip(a, b))
    return a == b


def hammer(call: Callable[[int], Any], inputs: int, calls: int, threads: int = THREADS) -> int:
    """Runs call(i) serially for every input, then `threads` threads x `calls` calls over the
    inputs, all started together; asserts no exception and identical results. Returns the
    number of threaded calls made."""
    serial = [call(i) for i in range(inputs)]
    start = threading.Barrier(threads)
    errors: list[BaseException] = []
    mismatches: list[tuple[int, int, int]] = []
    done = [0] * threads

    def worker(t: int) -> None:
        try:
            start.wait()
            for k in range(calls):
                i = (7 * t + k) % inputs
                if not _same(call(i), serial[i]):
                    mismatches.append((t, k, i))
                done[t] += 1
        except BaseException as exc:  # noqa: BLE001 - reported by the assertion below
            errors.append(exc)

    workers = [threading.Thread(target=worker, args=(t,), name=f"hammer-{t}") for t in range(threads)]
    for w in workers:
        w.start()
    for w in workers:
        w.join()
    assert not errors, f"{len(errors)} thread(s) raised, first: {errors[0]!r}"
    assert not mismatches, f"{len(mismatches)} results differ from the serial ones, e.g. (thread, call, input) {mismatches[:5]}"
    assert sum(done) == threads * calls
    return sum(done)


@pytest.fixture(scope="module")
def images() -> list[np.ndarray]:
    rng = np.random.default_rng(11)
    return [rng.integers(0, 256, (int(rng.integers(16, 64)), int(rng.integers(16, 64)), 3), dtype=np.uint8)
            for _ in range(16)]


def _classifier(backend: str, vit_artifact, folder):
    if backend == "onnxruntime":
        return vlmedge.load(vit_artifact, backend="onnxruntime")
    # The exporter may not write OpenVINO IR yet: convert the artifact's verified ONNX file.
    from vlmedge.runtimes.base import open_session
    from vlmedge.tasks.classifier import ImageClassifier

    artifact = Artifact.open(vit_artifact)
    onnx_copy = folder / "model.onnx"
    onnx_copy.write_bytes(artifact.path_of("onnx/model.fp32.onnx").read_bytes())
    session = open_session(to_backend(onnx_copy, backend), backend=backend)
    manifest = {k: v for k, v in artifact.manifest.items() if k not in ("files", "graphs")}
    return pipeline_from(ImageClassifier, folder, {"model": session}, manifest, backend)


@pytest.mark.parametrize("backend", BACKENDS)
def test_classifier_shared_across_threads(backend, vit_artifact, images, tmp_path):
    classifier = _classifier(backend, vit_artifact, tmp_path)
    assert classifier.model.backend == backend
    made = hammer(lambda i: classifier.classify(images[i], top_k=5), len(images), CALLS)
    print(f"\n{backend} classifier: {THREADS} threads x {CALLS} calls = {made} calls, all equal to serial")


@pytest.mark.parametrize("backend", BACKENDS)
def test_audio_tagger_shared_across_threads(backend, tmp_path):
    tagger = tiny_audio_tagger(tmp_path, backend)
    rng = np.random.default_rng(5)
    rates = [8000, 16000, 22050, 44100]
    clips = [(0.3 * rng.standard_normal(int(rates[i % 4] * (0.1 + 0.05 * i)))).astype(np.float32) for i in range(12)]
    made = hammer(lambda i: tagger.tag(clips[i], sample_rate=rates[i % 4], top_k=3), len(clips), OTHER_CALLS)
    print(f"\n{backend} audio tagger: {made} threaded calls, all equal to serial")


@pytest.mark.parametrize("backend", BACKENDS)
def test_clip_towers_shared_across_threads(backend, images, tmp_path):
    clip = tiny_clip(tmp_path, backend)
    captions = ["a photo of a cat", "", "日本語のテキスト", "emoji 🐱🐶", "a" * 3000, "\ud800 lone surrogate",
                "THE YELLOW STAR", "a red circle on a white background, twice: " * 20]

    def call(i: int):
        if i % 2:
            return clip.embed_texts([captions[i % len(captions)], captions[(i + 3) % len(captions)]])
        return clip.embed_images(images[i % len(images)])

    made = hammer(call, 16, OTHER_CALLS)
    print(f"\n{backend} CLIP text+image towers: {made} threaded calls, all equal to serial")


@pytest.mark.parametrize("backend", BACKENDS)
def test_close_waits_for_the_runs_in_progress_and_refuses_later_ones(backend, vit_artifact, images, tmp_path):
    """close() on one thread while another was inside a model call dropped the backend's objects
    under it: OpenVINO crashed the process (SIGSEGV), ONNX Runtime raised AttributeError on
    None. A run in progress now ends with its answer before close() returns; a later one is a
    UsageError. The held run waits on an event inside the session's own run, the close
    happens meanwhile."""
    from vlmedge.errors import UsageError

    classifier = _classifier(backend, vit_artifact, tmp_path)
    expected = classifier.classify(images[0], top_k=3)
    session = classifier.model.sessions["model"]
    inside, release = hold_runs(session)
    answers: list[Any] = []
    caller = threading.Thread(target=lambda: answers.append(classifier.classify(images[0], top_k=3)))
    caller.start()
    assert inside.wait(30)
    closer = threading.Thread(target=classifier.close)
    closer.start()
    closer.join(0.5)
    assert closer.is_alive() and session.closed  # waiting for the run; new ones are refused meanwhile
    with pytest.raises(UsageError, match="model was closed"):
        classifier.classify(images[1])
    release.set()
    caller.join(30)
    closer.join(30)
    assert not closer.is_alive() and _same(answers, [expected])


@pytest.mark.parametrize("backend", BACKENDS)
def test_clip_text_tower_reads_its_batch_size_once_per_call(backend, tmp_path):
    """embed_texts stepped through the captions by one batch_size and sliced them by another
    when a thread set batch_size during the call: 12 captions gave 13-49 rows, or zero_shot a
    reshape error. The setting is made inside the call's first model run."""
    clip = tiny_clip(tmp_path, backend)
    captions = [f"caption number {i}" for i in range(12)]
    clip.batch_size = 5
    expected = clip.embed_texts(captions)  # in calls of 5, 5 and 2, as the call below starts
    text_run = clip._text.run

    def run_then_change_the_batch_size(feeds, *args, **kwargs):
        clip.batch_size = 1
        return text_run(feeds, *args, **kwargs)

    clip._text.run = run_then_change_the_batch_size
    assert _same(clip.embed_texts(captions), expected)


def test_fork_workers_that_load_their_own_model_do_not_hang(vit_artifact, images, tmp_path):
    """The README's advice for worker processes (load the artifact in each), with Linux's default
    start method, fork: a worker that replaced the ONNX Runtime pipeline it inherited hung for
    ever in ONNX Runtime's destructor, which joins the parent's threads (onnxruntime#31961).
    The child keeps inherited sessions alive instead. Run in a subprocess: forking pytest's
    own threaded process is not the case tested."""
    import subprocess
    import sys

    np.save(tmp_path / "image.npy", images[0])
    script = f"""
import multiprocessing, numpy as np, vlmedge
ARTIFACT, IMAGE = {str(vit_artifact)!r}, np.load({str(tmp_path / "image.npy")!r})
pipeline = None

def load_own():
    global pipeline
    pipeline = vlmedge.load(ARTIFACT, backend="onnxruntime")  # drops the one inherited from the parent

def label(_):
    return pipeline.classify(IMAGE, top_k=1)[0].label

pipeline = vlmedge.load(ARTIFACT, backend="onnxruntime")
expected = label(0)  # the parent's session has run: its thread pool is up
with multiprocessing.get_context("fork").Pool(2, initializer=load_own) as pool:
    assert pool.map(label, range(4)) == [expected] * 4
print("ok")
"""
    done = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=120)
    assert done.returncode == 0 and done.stdout.strip() == "ok", done.stderr[-2000:]


@pytest.mark.parametrize("backend", BACKENDS)
def test_close_in_a_child_forked_during_a_run_returns(backend, two_target_artifact, images, tmp_path):
    """A child forked while another thread of its parent was inside a model run inherited that
    run in close()'s count, and its close() waited for ever for a run it does not have."""
    import subprocess
    import sys

    np.save(tmp_path / "image.npy", images[0])
    script = f"""
import os, sys, threading, numpy as np, vlmedge
sys.path.insert(0, {str(REPO)!r})
from tests.hardening_support import hold_runs
pipeline = vlmedge.load({str(two_target_artifact)!r}, backend={backend!r})
inside, release = hold_runs(pipeline.model.sessions["model"])
caller = threading.Thread(target=pipeline.classify, args=(np.load({str(tmp_path / "image.npy")!r}),))
caller.start()
inside.wait(30)
pid = os.fork()  # with a run in progress on the caller thread
if pid == 0:
    pipeline.close()
    os._exit(0)
release.set()
caller.join()
_, status = os.waitpid(pid, 0)
print("child", os.waitstatus_to_exitcode(status))
"""
    done = subprocess.run([sys.executable, "-W", "ignore::DeprecationWarning", "-c", script], capture_output=True,
                          text=True, timeout=120)
    assert done.returncode == 0 and done.stdout.strip() == "child 0", done.stderr[-2000:]
