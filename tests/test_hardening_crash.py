"""Issue 9: exports that are killed, interrupted or run out of disk never leave a
half-written artifact.

`vlmedge export` of the tiny ViT runs over an existing valid artifact and is killed at a
random point of its run (SIGKILL and SIGINT alternately, VLMEDGE_KILL_TRIALS times, 50 by
default). After each kill the destination must hold a valid artifact (the previous one, or
the new one if the export finished first) or nothing, never a partial one; after the next
export no temporary folder may remain (abandoned builds are found by their dead pid).

The exports run in children of a fork server (tests/hardening_export_worker.py) that has
imported torch and transformers already, so each trial spends its time in the export
itself rather than in imports, and a trial costs about half an export.
"""

from __future__ import annotations

import errno
import json
import os
import queue
import random
import shutil
import signal
import subprocess
import sys
import threading
import time
from collections import Counter
from pathlib import Path

import numpy as np
import pytest

import vlmedge
from vlmedge.artifact import Artifact
from vlmedge.errors import ArtifactError, ExportError
from tests.hardening_support import REPO, assert_unchanged, tree_state

pytest.importorskip("torch")
pytest.importorskip("transformers")

TRIALS = int(os.environ.get("VLMEDGE_KILL_TRIALS", "50"))
TMP_MARKER = ".vlmedge-tmp-"


class ExportWorker:
    """The fork server: start(argv) -> child pid; finished(timeout) -> its exit record."""

    def __init__(self) -> None:
        env = {**os.environ, "HF_HUB_OFFLINE": "1", "PYTHONPATH": str(REPO)}
        self.proc = subprocess.Popen([sys.executable, str(REPO / "tests" / "hardening_export_worker.py")],
                                     stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True, cwd=REPO, env=env)
        self.lines: queue.Queue = queue.Queue()
        threading.Thread(target=self._read, daemon=True).start()
        assert self._next(300) == {"ready": True}

    def _read(self) -> None:
        for line in self.proc.stdout:
            self.lines.put(json.loads(line))

    def _next(self, timeout: float) -> dict:
        return self.lines.get(timeout=timeout)

    def start(self, argv: list[str]) -> int:
        self.proc.stdin.write(json.dumps(argv) + "\n")
        self.proc.stdin.flush()
        return self._next(60)["pid"]

    def finished(self, timeout: float) -> dict | None:
        try:
            return self._next(timeout)
        except queue.Empty:
            return None

    def close(self) -> None:
        self.proc.stdin.close()
        self.proc.wait(timeout=60)


@pytest.fixture(scope="module")
def worker():
    w = ExportWorker()
    yield w
    w.close()


def _state(destination: Path) -> str:
    """'valid' (Artifact.open verifies every file) or 'none'; anything else fails."""
    if not destination.exists():
        return "none"
    try:
        Artifact.open(destination)
    except ArtifactError as exc:
        pytest.fail(f"a killed export left a broken artifact: {exc}")
    return "valid"


def _temp_folders(parent: Path) -> list[str]:
    return sorted(p.name for p in parent.iterdir() if p.name.startswith(TMP_MARKER))


def test_killed_exports_leave_the_previous_artifact_or_none(worker, vit_artifact, hf_classifier_dir, tmp_path):
    parent = tmp_path / "exports"
    parent.mkdir()
    destination = parent / "vit"
    shutil.copytree(vit_artifact, destination)
    argv = ["export", str(hf_classifier_dir("vit")), "-o", str(destination)]

    started = time.monotonic()
    worker.start(argv)
    first = worker.finished(600)
    duration = time.monotonic() - started
    assert first and first["status"] == 0, first
    assert _state(destination) == "valid"

    rng = random.Random(int(os.environ.get("VLMEDGE_KILL_SEED", "9")))
    outcomes: Counter = Counter()
    left_by_sigint = 0
    for trial in range(TRIALS):
        sig = signal.SIGKILL if trial % 2 == 0 else signal.SIGINT
        manifest_before = (destination / "manifest.json").read_bytes() if destination.exists() else None
        pid = worker.start(argv)
        result = worker.finished(rng.uniform(0.0, 1.05 * duration))
        if result is None:  # still running: kill it now
            try:
                os.kill(pid, sig)
            except ProcessLookupError:  # it ended, and the fork server reaped it, as the wait timed out
                pass
            result = worker.finished(120)
            if result is None:  # an interrupted export must stop; make sure this one does
                os.kill(pid, signal.SIGKILL)
                result = worker.finished(60)
                pytest.fail(f"trial {trial}: the export ignored {sig.name} for 120 s")
            kind = "completed" if result["status"] == 0 else sig.name
        else:
            kind = "completed" if result["status"] == 0 else f"failed({result['status']})"
        assert not kind.startswith("failed"), f"trial {trial}: the export failed on its own: {result}"
        state = _state(destination)
        if state == "valid" and kind != "completed":
            # A killed export never replaces the artifact, unless it was killed after the swap.
            changed = (destination / "manifest.json").read_bytes() != manifest_before
            outcomes[f"{kind}, {'new' if changed else 'previous'} artifact"] += 1
        else:
            outcomes[f"{kind}, {state} artifact"] += 1
        if sig == signal.SIGINT and kind == "SIGINT":
            left_by_sigint += sum(f"-{pid}-" in name for name in _temp_folders(parent))
        entries = {p.name for p in parent.iterdir()} - set(_temp_folders(parent))
        assert entries <= {"vit"}, f"trial {trial}: unexpected entries {entries}"

    worker.start(argv)
    final = worker.finished(600)
    assert final and final["status"] == 0, final
    assert _state(destination) == "valid"
    assert _temp_folders(parent) == [], "the next export did not remove the abandoned builds"
    assert left_by_sigint == 0, "an interrupted (SIGINT) export left its temporary folder behind"
    print(f"\nkill trials: {TRIALS} (export takes {duration:.1f}s here): {dict(sorted(outcomes.items()))}")


def test_a_build_whose_pid_another_process_holds_is_removed_and_a_locked_one_kept(tmp_path, monkeypatch):
    """An export SIGKILLed as a container's pid 1 (an OOM kill) left a build whose pid is
    always alive, kept for ever: a build is abandoned when no writer holds its lock."""
    from vlmedge.artifact import ArtifactWriter

    monkeypatch.setattr("vlmedge.build_locks.LOCK_SETTLED_S", 0.0)  # the builds below are not just being made
    reused = tmp_path / f"{TMP_MARKER}art-1-0123abcd"  # pid 1, alive whatever runs as it
    reused.mkdir()
    running = ArtifactWriter(tmp_path / "art")  # holds its build's lock
    later = ArtifactWriter(tmp_path / "art")  # sweeps the abandoned builds as it starts
    assert not reused.exists() and running.tmp.is_dir() and later.tmp.is_dir()
    running.abort()
    later.abort()
    assert list(tmp_path.iterdir()) == []


def test_an_export_inside_an_artifact_is_refused(vit_artifact, tmp_path):
    """`-o artifact/sub` wrote a second artifact inside the first, which then loaded no more."""
    from vlmedge.artifact import Artifact, ArtifactWriter

    outer = tmp_path / "vit"
    shutil.copytree(vit_artifact, outer)
    with pytest.raises(ExportError, match=r"vit.sub.deeper is inside the vlmedge artifact .*vit, which would then hold "
                                          r"files its manifest does not list .*choose an output path outside it\.$"):
        ArtifactWriter(outer / "sub" / "deeper")
    (tmp_path / "link").symlink_to(outer / "onnx")
    with pytest.raises(ExportError, match=r"link.sub is inside the vlmedge artifact .*vit, "):
        ArtifactWriter(tmp_path / "link" / "sub")
    beside = ArtifactWriter(outer / ".." / "beside")  # out of it, through ".."
    beside.abort()
    assert not (outer / "sub").exists() and not (outer / "onnx" / "sub").exists() and Artifact.open(outer)


def test_a_long_destination_name_builds_beside_it(tmp_path):
    """A 240-byte name (Linux takes 255) failed as "File name too long": its build folder's name
    is the destination's plus a marker, a pid and a random part."""
    from vlmedge.artifact import ArtifactWriter

    writer = ArtifactWriter(tmp_path / ("a" * 240))
    assert writer.tmp.is_dir() and len(writer.tmp.name) <= 255
    writer.abort()


def test_an_abandoned_build_of_a_running_export_is_kept(tmp_path):
    """Only builds whose process is gone are removed: a live pid's folder is left alone,
    and so is the build of a sibling destination whose name extends this one's."""
    from vlmedge.artifact import ArtifactWriter

    parent = tmp_path
    alive = parent / f"{TMP_MARKER}art-{os.getpid()}-0123abcd"
    dead = parent / f"{TMP_MARKER}art-999999999-0123abcd"
    dead_old = parent / f"{TMP_MARKER}art-999999998-old0123abcd"
    sibling = parent / f"{TMP_MARKER}art-2-{os.getpid()}-0123abcd"  # "art-2" is another destination
    for folder in (alive, dead, dead_old, sibling):
        folder.mkdir()
    writer = ArtifactWriter(parent / "art")
    writer.abort()
    assert sorted(p.name for p in parent.iterdir()) == sorted([alive.name, sibling.name])


# -- a full disk --------------------------------------------------------------------------------

def _no_space(*args, **kwargs):
    raise OSError(errno.ENOSPC, "No space left on device")


def _iostream_error(*args, **kwargs):
    raise RuntimeError("basic_ios::clear: iostream error")  # OpenVINO's save on a full disk


def _torch_no_space(*args, **kwargs):
    raise RuntimeError("[enforce fail at inline_container.cc:664] . PytorchStreamWriter failed writing file "
                       "data/0: No space left on device")


def _no_room_left(path):
    return shutil._ntuple_diskusage(total=10**9, used=10**9, free=0)


@pytest.mark.parametrize("where", ["fsync", "savez", "torch.onnx.export", "an int8 build"])
def test_full_disk_is_one_clear_export_error_and_changes_nothing(where, monkeypatch, vit_artifact, hf_classifier_dir,
                                                                 tmp_path):
    """An int8 build that failed on a full disk (OpenVINO says "basic_ios::clear: iostream error")
    was counted as a gate miss: the export wrote an artifact without the file, exit 3."""
    import onnxruntime.quantization
    import torch

    parent = tmp_path / "exports"
    parent.mkdir()
    destination = parent / "vit"
    shutil.copytree(vit_artifact, destination)
    before = tree_state(parent)
    if where == "fsync":
        monkeypatch.setattr("vlmedge.artifact._fsync", _no_space)
    elif where == "savez":
        monkeypatch.setattr(np, "savez", _no_space)
    elif where == "torch.onnx.export":
        monkeypatch.setattr(torch.onnx, "export", _torch_no_space)
    else:
        for quantizer in ("quantize_static", "quantize_dynamic"):
            monkeypatch.setattr(onnxruntime.quantization, quantizer, _iostream_error)
        monkeypatch.setattr("vlmedge.exporters.onnx.shutil.disk_usage", _no_room_left)
    with pytest.raises(ExportError, match=r"^No space left on the disk holding .*exports while writing the artifact; "
                                          r"nothing was written .* Free some space and export again\.$"):
        vlmedge.export(str(hf_classifier_dir("vit")), destination, to="onnx", precision="fp32,int8")
    assert_unchanged(before, tree_state(parent), f"a full disk at {where}")
    assert Artifact.open(destination)


def test_full_disk_on_the_command_line(monkeypatch, vit_artifact, hf_classifier_dir, tmp_path, capsys):
    from vlmedge.cli import main

    destination = tmp_path / "vit"
    shutil.copytree(vit_artifact, destination)
    monkeypatch.setattr(np, "savez", _no_space)
    with pytest.raises(SystemExit) as info:
        main(["export", str(hf_classifier_dir("vit")), "-o", str(destination)])
    assert info.value.code == 1
    err = " ".join(capsys.readouterr().err.split())  # rich wraps long lines
    assert "Error: No space left on the disk holding" in err and "Free some space and export again." in err
    assert "Traceback" not in err
    assert sorted(p.name for p in tmp_path.iterdir()) == ["vit"]


def test_a_terminated_export_command_leaves_nothing_behind(tmp_path):
    """`vlmedge export` stopped by SIGTERM (`timeout`, a scheduler) unwinds as Ctrl-C does: no
    build folder beside the destination, nor the quantizer's scratch inside it, nothing in the
    temporary folder; then it ends by SIGTERM."""
    scratch, out = tmp_path / "tmp", tmp_path / "out" / "vit"
    scratch.mkdir()
    proc = subprocess.Popen([sys.executable, "-m", "vlmedge.cli", "export", "builtin:shapes-vit", "-o", str(out),
                             "--precision", "fp32,int8"], stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
                            env={**os.environ, "TMPDIR": str(scratch)})
    try:
        deadline = time.monotonic() + 240
        while not list(out.parent.glob(".vlmedge-tmp-*/.quantize-*")):  # the int8 ladder is under way
            assert proc.poll() is None and time.monotonic() < deadline, proc.communicate()[1][-2000:]
            time.sleep(0.05)
        proc.terminate()
        _, stderr = proc.communicate(timeout=120)
    finally:
        proc.kill()
    assert proc.returncode == -signal.SIGTERM, stderr[-2000:]
    assert not out.exists() and list(out.parent.iterdir()) == [], list(out.parent.iterdir())
    assert not [p.name for p in scratch.iterdir() if "vlmedge" in p.name or "quantize" in p.name]  # torch keeps its own


@pytest.mark.parametrize("stop_when", ["exporting", "measuring"])
def test_a_terminated_bench_of_a_model_leaves_nothing_behind_and_says_so(tmp_path, stop_when):
    """`vlmedge bench builtin:NAME` exports the model to a temporary artifact first: SIGTERM
    left it (1.6 MB for the smallest model), during the export or the measuring, and the
    run stopped without a word."""
    scratch = tmp_path / "tmp"
    scratch.mkdir()
    proc = subprocess.Popen([sys.executable, "-m", "vlmedge.cli", "bench", "builtin:shapes-vit", "--backend",
                             "onnxruntime", "--batch-size", "1", "--duration", "30", "--no-roofline"],
                            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, env={**os.environ, "TMPDIR": str(scratch)})
    made = {"exporting": "vlmedge-bench-*/.vlmedge-tmp-*", "measuring": "vlmedge-bench-*/artifact/manifest.json"}
    try:
        deadline = time.monotonic() + 240
        while not list(scratch.glob(made[stop_when])):
            assert proc.poll() is None and time.monotonic() < deadline, proc.communicate()[1][-2000:]
            time.sleep(0.05)
        if stop_when == "measuring":
            time.sleep(1)  # into the timed calls
        proc.terminate()
        _, stderr = proc.communicate(timeout=120)
    finally:
        proc.kill()
    assert proc.returncode == -signal.SIGTERM, stderr[-2000:]
    assert stderr.decode().rstrip().endswith("Terminated: nothing was written.") and b"Traceback" not in stderr
    assert not [p.name for p in scratch.iterdir() if "vlmedge" in p.name], list(scratch.iterdir())

