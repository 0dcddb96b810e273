"""The compiled-model cache (vlmedge.runtimes.cache): written on the first load, used on the
second, refused and rebuilt whenever its key or its files do not match, and never a
different answer from a load without it. Observed through Session.cache_status, not timing."""

from __future__ import annotations

import gc
import importlib.util
import json
import os
import shutil
import signal
import stat
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

import vlmedge
from vlmedge.runtimes import cache as cache_module
from vlmedge.runtimes.base import open_session
from vlmedge.user_cache import cache_root, memo_name


def _backend_or_skip(backend: str) -> None:
    if backend == "openvino":
        pytest.importorskip("openvino", reason="the openvino package is not installed")


def _session(artifact: Path, backend: str, **options):
    classifier = vlmedge.load(artifact, backend=backend, precision="fp32", **options)
    (session,) = classifier.model.sessions.values()
    return session


def _feeds(session) -> dict[str, np.ndarray]:
    rng = np.random.default_rng(0)
    return {i.name: rng.standard_normal([d if isinstance(d, int) and d > 0 else 2 for d in i.shape]).astype(i.dtype)
            for i in session.inputs}


def _outputs(session) -> dict[str, np.ndarray]:
    return session.run(_feeds(session))


def _entries(folder: Path) -> list[Path]:
    return sorted(p for p in folder.glob("*/*") if not p.name.startswith("."))


def _assert_same(a: dict[str, np.ndarray], b: dict[str, np.ndarray]) -> None:
    assert a.keys() == b.keys()
    for name in a:
        np.testing.assert_allclose(a[name], b[name], rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("backend", ["onnxruntime", "openvino"])
def test_first_load_writes_an_entry_and_the_second_uses_it(two_target_artifact, cache_dir, backend):
    _backend_or_skip(backend)
    first = _session(two_target_artifact, backend)
    assert first.cache_status == "miss"
    (entry,) = _entries(cache_dir)
    assert first.cache_path == entry and (entry / "key.json").is_file()
    record = json.loads((entry / "key.json").read_text())
    assert record["key"]["backend"] == backend and set(record["files"])
    second = _session(two_target_artifact, backend)
    assert second.cache_status == "hit" and second.cache_path == entry
    uncached = _session(two_target_artifact, backend, cache=False)
    assert uncached.cache_status == "off"
    _assert_same(_outputs(second), _outputs(uncached))
    _assert_same(_outputs(first), _outputs(uncached))


@pytest.mark.parametrize("backend", ["onnxruntime", "openvino"])
def test_cache_off_leaves_nothing_behind(two_target_artifact, cache_dir, monkeypatch, backend):
    _backend_or_skip(backend)
    assert _session(two_target_artifact, backend, cache=False).cache_status == "off"
    monkeypatch.setenv("VLMEDGE_NO_CACHE", "1")
    assert _session(two_target_artifact, backend).cache_status == "off"
    assert not cache_dir.exists()
    # an explicit cache=True wins over the environment
    assert _session(two_target_artifact, backend, cache=True).cache_status == "miss"


@pytest.mark.parametrize("backend", ["onnxruntime", "openvino"])
def test_another_backend_version_or_cpu_is_a_miss(two_target_artifact, cache_dir, monkeypatch, backend):
    _backend_or_skip(backend)
    assert _session(two_target_artifact, backend).cache_status == "miss"
    if backend == "onnxruntime":
        import onnxruntime

        monkeypatch.setattr(onnxruntime, "__version__", "0.0.1-other")
    else:
        import openvino

        monkeypatch.setattr(openvino, "get_version", lambda: "0.0.1-other")
    assert _session(two_target_artifact, backend).cache_status == "miss"
    monkeypatch.undo()
    monkeypatch.setenv("VLMEDGE_CACHE_DIR", str(cache_dir))
    real = cache_module.cpu_key()
    monkeypatch.setattr(cache_module, "cpu_key", lambda: {**real, "flags": "another-cpu"})
    assert _session(two_target_artifact, backend).cache_status == "miss"
    monkeypatch.setattr(cache_module, "cpu_key", lambda: real)
    assert _session(two_target_artifact, backend).cache_status == "hit"
    assert len(_entries(cache_dir)) == 3


@pytest.mark.parametrize("backend", ["onnxruntime", "openvino"])
@pytest.mark.parametrize("damage", ["truncate", "flip", "extra-file", "missing-file", "bad-key", "other-key"])
def test_a_damaged_entry_is_rebuilt_and_answers_right(two_target_artifact, cache_dir, backend, damage):
    _backend_or_skip(backend)
    reference = _outputs(_session(two_target_artifact, backend, cache=False))
    (entry,) = {_session(two_target_artifact, backend).cache_path}
    biggest = max((p for p in entry.iterdir() if p.name != "key.json"), key=lambda p: p.stat().st_size)
    data = bytearray(biggest.read_bytes())
    if damage == "truncate":
        biggest.write_bytes(data[: len(data) // 2])
    elif damage == "flip":
        data[len(data) // 2] ^= 0xFF
        biggest.write_bytes(data)
    elif damage == "extra-file":
        (entry / "stray.blob").write_bytes(b"\0" * 16)
    elif damage == "missing-file":
        biggest.unlink()
    elif damage == "bad-key":
        (entry / "key.json").write_text("{not json")
    else:
        record = json.loads((entry / "key.json").read_text())
        record["key"]["version"] = "older"
        (entry / "key.json").write_text(json.dumps(record))
    again = _session(two_target_artifact, backend)
    assert again.cache_status == "miss"
    _assert_same(_outputs(again), reference)
    assert _session(two_target_artifact, backend).cache_status == "hit"


@pytest.mark.parametrize("backend", ["onnxruntime", "openvino"])
@pytest.mark.parametrize("shared", ["writable by others", "another user's"])
def test_an_entry_another_user_could_have_written_is_rebuilt_not_used(two_target_artifact, cache_dir, backend, shared):
    """In a cache folder shared by users, one could write an entry (any model, with a key.json
    to match) that another's load used: only the user's own entries, 0700 as made, are used."""
    _backend_or_skip(backend)
    reference = _outputs(_session(two_target_artifact, backend, cache=False))
    entry = _session(two_target_artifact, backend).cache_path
    assert entry.stat().st_mode & 0o777 == 0o700 and _session(two_target_artifact, backend).cache_status == "hit"
    if shared == "writable by others":
        entry.chmod(0o777)
    elif os.geteuid() == 0:
        os.chown(entry, 4242, 4242)
    else:
        pytest.skip("only root can give an entry to another user")
    again = _session(two_target_artifact, backend)
    assert again.cache_status == "miss"
    _assert_same(_outputs(again), reference)
    assert _session(two_target_artifact, backend).cache_status == "hit"


@pytest.mark.parametrize("backend", ["onnxruntime", "openvino"])
def test_a_leftover_build_of_a_killed_process_is_never_used(two_target_artifact, cache_dir, backend):
    _backend_or_skip(backend)
    entry = _session(two_target_artifact, backend).cache_path
    leftover = entry.parent / f".tmp-{entry.name}-killed"
    shutil.copytree(entry, leftover)
    shutil.rmtree(entry)
    assert _session(two_target_artifact, backend).cache_status == "miss"
    assert leftover.is_dir()  # young: it may belong to a process still compiling


def test_the_builds_of_killed_loads_are_removed_by_the_next_build_and_by_clear(two_target_artifact, cache_dir):
    """A load killed while building its entry left its temporary folder for a day: a device
    whose loads an out-of-memory killer ended in a restart loop filled its disk with them, and
    `vlmedge cache --clear` left them too. A build still running is never touched."""
    from vlmedge.build_locks import lock_path
    from vlmedge.runtimes.cache import cache_entry
    from tests.test_cli import vlmedge_cli

    killed_build = ("import os, signal\n"
                    "from vlmedge.runtimes.cache import cache_entry\n"
                    "built = cache_entry('onnxruntime', '1', 'digest', 'cpu', {}).start_build()\n"
                    "(built / 'model.onnx').write_bytes(bytes(4096))\n"
                    "print(built, flush=True)\n"
                    "os.kill(os.getpid(), signal.SIGKILL)\n")

    def killed() -> Path:
        done = subprocess.run([sys.executable, "-c", killed_build], capture_output=True, text=True, timeout=60)
        assert done.returncode == -signal.SIGKILL
        return Path(done.stdout.strip())

    builder = cache_entry("onnxruntime", "1", "other", "cpu", {})
    running = builder.start_build()  # this process's, locked
    first = killed()
    second = killed()  # its build removed the first's
    assert not first.exists() and second.is_dir() and running.is_dir()
    assert _session(two_target_artifact, "onnxruntime").cache_status == "miss"
    assert not second.exists() and running.is_dir()
    leftover = killed()
    cleared = vlmedge_cli("cache", "--clear", env={"VLMEDGE_CACHE_DIR": str(cache_dir)})
    assert cleared.returncode == 0 and not leftover.exists() and running.is_dir()
    assert lock_path(running) is None  # still this process's build
    builder.abandon(running)


def test_a_cache_folder_users_share_gets_backend_folders_they_all_may_write(two_target_artifact, cache_dir):
    """In a cache folder of mode 1777, the first user's load made the backend's folder 0755:
    every other user's load warned that it could not write the cache."""
    cache_dir.mkdir(mode=0o1777)
    cache_dir.chmod(0o1777)
    entry = _session(two_target_artifact, "onnxruntime").cache_path
    assert stat.S_IMODE(entry.parent.stat().st_mode) == 0o1777
    assert stat.S_IMODE(entry.stat().st_mode) == 0o700  # the entry itself stays the user's own


def test_a_private_cache_folder_keeps_its_backend_folders_private(two_target_artifact, cache_dir):
    entry = _session(two_target_artifact, "onnxruntime").cache_path
    assert not entry.parent.stat().st_mode & 0o022


def test_a_changed_model_file_at_the_same_path_is_a_miss(two_target_artifact, cache_dir, tmp_path):
    """Without a manifest the files are hashed: new weights at the same path never reuse
    the entry of the old ones (OpenVINO's own cache, keyed by path, would)."""
    onnx = pytest.importorskip("onnx")
    from onnx import numpy_helper

    path = tmp_path / "model.onnx"
    shutil.copyfile(two_target_artifact / "onnx" / "model.fp32.onnx", path)
    first = open_session(path, cache=True)
    assert first.cache_status == "miss"
    assert open_session(path, cache=True).cache_status == "hit"
    model = onnx.load(str(path))
    tensor = max(model.graph.initializer, key=lambda t: int(np.prod(t.dims)))
    tensor.CopyFrom(numpy_helper.from_array(numpy_helper.to_array(tensor) + 0.5, tensor.name))
    onnx.save(model, str(path))
    changed = open_session(path, cache=True)
    assert changed.cache_status == "miss" and changed.cache_path != first.cache_path
    _assert_same(_outputs(changed), _outputs(open_session(path)))
    # the old entry, which only the old bytes at that path could use, made way for the new one;
    # another file's entry with the same options stays
    other = tmp_path / "other.onnx"
    shutil.copyfile(two_target_artifact / "onnx" / "model.fp32.onnx", other)
    kept = open_session(other, cache=True).cache_path
    assert _entries(cache_dir) == sorted([changed.cache_path, kept]) and not first.cache_path.exists()


def test_users_sharing_a_cache_folder_keep_their_own_entries(two_target_artifact, cache_dir, tmp_path,
                                                              monkeypatch):
    """Users of one cache folder took each other's entry's place at every load (all misses),
    each leaving the other's folder renamed and undeletable (0700) behind: entries are named
    per user, and one user's new entry removes only that user's old ones."""
    path = tmp_path / "model.onnx"
    shutil.copyfile(two_target_artifact / "onnx" / "model.fp32.onnx", path)
    mine = open_session(path, cache=True).cache_path
    with monkeypatch.context() as another_user:
        another_user.setattr(os, "geteuid", lambda: 4242)
        theirs = cache_module.cache_entry("onnxruntime", "v", "digest", "cpu", {}).folder
    assert theirs != cache_module.cache_entry("onnxruntime", "v", "digest", "cpu", {}).folder
    if os.geteuid() != 0:
        pytest.skip("only root can give an entry to another user")
    os.chown(mine, 4242, 4242)  # another user's entry of this same file
    onnx = pytest.importorskip("onnx")
    model = onnx.load(str(path))
    model.producer_name = "changed"  # new content at the same path: this user's entries of it are superseded
    onnx.save(model, str(path))
    ours = open_session(path, cache=True)
    assert ours.cache_status == "miss" and mine.is_dir() and sorted(_entries(cache_dir)) == sorted([mine, ours.cache_path])
    assert not [p for p in mine.parent.iterdir() if p.name.startswith(".")]  # nothing renamed aside


def test_an_entry_of_an_older_cache_format_is_rebuilt_and_replaced(two_target_artifact, cache_dir, monkeypatch):
    """An entry an older vlmedge wrote (another CACHE_FORMAT: ONNX Runtime's of format 1 held
    no packed weights) is not used; the entry built instead replaces it."""
    current = cache_module.CACHE_FORMAT
    monkeypatch.setattr(cache_module, "CACHE_FORMAT", current - 1)
    old = _session(two_target_artifact, "onnxruntime").cache_path
    monkeypatch.setattr(cache_module, "CACHE_FORMAT", current)
    new = _session(two_target_artifact, "onnxruntime")
    assert new.cache_status == "miss" and _entries(cache_dir) == [new.cache_path] and not old.exists()


def test_openvino_weights_changed_at_the_same_path_are_a_miss(two_target_artifact, cache_dir, tmp_path):
    pytest.importorskip("openvino", reason="the openvino package is not installed")
    for suffix in (".xml", ".bin"):
        shutil.copyfile(two_target_artifact / "openvino" / f"model.fp32{suffix}", tmp_path / f"model{suffix}")
    xml = tmp_path / "model.xml"
    assert open_session(xml, backend="openvino", cache=True).cache_status == "miss"
    assert open_session(xml, backend="openvino", cache=True).cache_status == "hit"
    weights = bytearray((tmp_path / "model.bin").read_bytes())
    weights[-4:] = np.float32(3.0).tobytes()
    (tmp_path / "model.bin").write_bytes(weights)
    changed = open_session(xml, backend="openvino", cache=True)
    assert changed.cache_status == "miss"
    _assert_same(_outputs(changed), _outputs(open_session(xml, backend="openvino")))


def test_the_manifest_digest_follows_the_file_hashes(two_target_artifact):
    from vlmedge.artifact import Artifact
    from vlmedge.runtimes.select import model_digest

    artifact = Artifact.open(two_target_artifact)
    entry = artifact.model_entries(target="onnx", precision="fp32")[0]
    before = model_digest(artifact, entry)
    entry["sha256"] = "0" * 64
    assert model_digest(artifact, entry) != before


def test_an_unwritable_cache_only_costs_the_speed_up(two_target_artifact, tmp_path, monkeypatch):
    blocker = tmp_path / "not-a-folder"
    blocker.write_text("")
    monkeypatch.setenv("VLMEDGE_CACHE_DIR", str(blocker / "cache"))
    with pytest.warns(UserWarning, match="could not write its compiled-model cache") as caught:
        session = _session(two_target_artifact, "onnxruntime")
    assert session.cache_status == "unsaved"
    assert caught[0].filename == __file__  # the caller's line that loaded it, not one inside vlmedge
    _assert_same(_outputs(session), _outputs(_session(two_target_artifact, "onnxruntime", cache=False)))


_CHILD_UNDER_A_FILE_SIZE_LIMIT = """
import json, resource, signal, sys, warnings
import numpy as np
import vlmedge
signal.signal(signal.SIGXFSZ, signal.SIG_IGN)  # a write past the limit fails with EFBIG instead
resource.setrlimit(resource.RLIMIT_FSIZE, (int(sys.argv[2]), int(sys.argv[2])))
with warnings.catch_warnings(record=True) as caught:
    warnings.simplefilter("always")
    (session,) = vlmedge.load(sys.argv[1], backend="onnxruntime", precision="fp32").model.sessions.values()
feeds = {i.name: np.random.default_rng(0).standard_normal([d if isinstance(d, int) and d > 0 else 2 for d in i.shape])
         .astype(i.dtype) for i in session.inputs}
print(json.dumps({"status": session.cache_status, "warnings": [str(w.message) for w in caught],
                  "outputs": {k: v.tolist() for k, v in session.run(feeds).items()}}))
"""


@pytest.mark.skipif(not hasattr(signal, "SIGXFSZ"), reason="limits the file size with POSIX RLIMIT_FSIZE")
def test_an_entry_that_cannot_be_written_in_full_is_not_kept_and_the_load_says_why(two_target_artifact, cache_dir):
    """As on a nearly full disk: a process that may write no file as large as the entry's
    weights with their packed copies (RLIMIT_FSIZE) gets through the build's first pass and
    fails in its second. No entry nor build folder is left, the load goes on without the
    cache, answers as without it, and warns why."""
    sized = _session(two_target_artifact, "onnxruntime")  # an entry built without the limit, to size it
    limit = (sized.cache_path / "model.onnx.data").stat().st_size - 1
    shutil.rmtree(cache_dir)
    done = subprocess.run([sys.executable, "-c", _CHILD_UNDER_A_FILE_SIZE_LIMIT, str(two_target_artifact),
                           str(limit)], capture_output=True, text=True, timeout=300,
                          env={**os.environ, "VLMEDGE_CACHE_DIR": str(cache_dir)})
    assert done.returncode == 0, done.stderr
    result = json.loads(done.stdout.strip().splitlines()[-1])
    assert result["status"] == "unsaved"
    (warning,) = result["warnings"]
    assert "could not write its compiled-model cache" in warning and "disk full" in warning
    assert [p.name for p in (cache_dir / "onnxruntime").iterdir()] == []
    expected = _outputs(_session(two_target_artifact, "onnxruntime", cache=False))
    _assert_same({k: np.asarray(v, dtype=expected[k].dtype) for k, v in result["outputs"].items()}, expected)


def test_vlmedge_cache_lists_the_compiled_models_by_their_files_and_clears_them(two_target_artifact, cache_dir):
    """`vlmedge cache` names each entry's model file, backend and size; `--clear` removes
    them (the next load compiles again) and keeps the verified-file memo."""
    from tests.test_cli import vlmedge_cli

    backends = ["onnxruntime"] + (["openvino"] if importlib.util.find_spec("openvino") else [])
    folders = {backend: _session(two_target_artifact, backend).cache_path for backend in backends}
    listed = json.loads(vlmedge_cli("cache", "--json", env={"VLMEDGE_CACHE_DIR": str(cache_dir)}).stdout)
    assert {e["backend"]: Path(e["folder"]) for e in listed} == folders
    files = {"onnxruntime": "onnx/model.fp32.onnx", "openvino": "openvino/model.fp32.xml"}
    for entry in listed:
        assert entry["source"] == str(two_target_artifact / files[entry["backend"]])
        assert entry["bytes"] == sum(p.stat().st_size for p in Path(entry["folder"]).iterdir())
    shown = vlmedge_cli("cache", env={"VLMEDGE_CACHE_DIR": str(cache_dir)})
    assert shown.returncode == 0 and str(two_target_artifact / files["onnxruntime"]) in shown.stdout
    cleared = vlmedge_cli("cache", "--clear", env={"VLMEDGE_CACHE_DIR": str(cache_dir)})
    assert cleared.returncode == 0 and f"removed {len(backends)} compiled model(s)" in cleared.stdout
    assert _entries(cache_dir) == [] and (cache_dir / memo_name()).is_file()
    assert json.loads(vlmedge_cli("cache", "--json", env={"VLMEDGE_CACHE_DIR": str(cache_dir)}).stdout) == []
    assert all(_session(two_target_artifact, backend).cache_status == "miss" for backend in backends)


def without_permission_override() -> list[str]:
    """The command prefix that runs a command held to file permissions: root may read and
    change any file; without these capabilities it keeps to the permissions too."""
    prefix = [] if os.geteuid() else ["setpriv", "--bounding-set", "-dac_override,-dac_read_search", "--inh-caps",
                                       "-dac_override,-dac_read_search", "--"]
    if prefix and not shutil.which("setpriv"):
        pytest.skip("needs setpriv (util-linux) to drop root's file-permission override")
    return prefix


def test_a_clear_that_cannot_remove_the_entries_says_so(two_target_artifact, cache_dir):
    """`vlmedge cache --clear` on a folder it may not change names the folder and fails,
    rather than counting as removed what is still there."""
    from tests.test_cli import vlmedge_cli

    _session(two_target_artifact, "onnxruntime")
    entries = _entries(cache_dir)
    assert entries
    prefix = without_permission_override()
    parents = sorted({entry.parent for entry in entries})
    for parent in parents:
        parent.chmod(0o555)
    try:
        done = subprocess.run([*prefix, sys.executable, "-m", "vlmedge", "cache", "--clear"], capture_output=True,
                              text=True, timeout=120, env={**os.environ, "VLMEDGE_CACHE_DIR": str(cache_dir)})
    finally:
        for parent in parents:
            parent.chmod(0o755)
    assert done.returncode == 1 and "Traceback" not in done.stderr, done.stderr
    assert f"{len(entries)} of the {len(entries)} compiled models in {cache_dir} could not be removed" in done.stderr
    assert "removed" not in done.stdout and _entries(cache_dir) == entries


def test_the_cache_folder_follows_the_environment(monkeypatch, tmp_path):
    monkeypatch.delenv("VLMEDGE_CACHE_DIR", raising=False)
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "xdg"))
    assert cache_root() == tmp_path / "xdg" / "vlmedge"
    monkeypatch.setenv("VLMEDGE_CACHE_DIR", str(tmp_path / "mine"))
    assert cache_root() == tmp_path / "mine"


def test_an_empty_or_relative_home_or_xdg_folder_is_not_where_the_cache_goes(monkeypatch, tmp_path):
    """HOME= put the cache at the file system's root (/.cache/vlmedge); a relative
    XDG_CACHE_HOME, which the XDG spec says to ignore, followed the working folder."""
    import pwd

    home = Path(pwd.getpwuid(os.getuid()).pw_dir)
    monkeypatch.delenv("VLMEDGE_CACHE_DIR", raising=False)
    monkeypatch.setenv("XDG_CACHE_HOME", "relcache")
    monkeypatch.setenv("HOME", str(tmp_path))
    assert cache_root() == tmp_path / ".cache" / "vlmedge"
    for unusable in ("", "relative/home"):
        monkeypatch.setenv("HOME", unusable)
        assert cache_root() == home / ".cache" / "vlmedge"


def test_an_untouched_entry_is_not_hashed_again_but_a_touched_one_is(two_target_artifact, cache_dir, monkeypatch):
    entry = _session(two_target_artifact, "onnxruntime").cache_path
    hashed: list[str] = []
    real = cache_module.sha256_file
    monkeypatch.setattr(cache_module, "sha256_file", lambda path: hashed.append(Path(path).name) or real(path))
    assert _session(two_target_artifact, "onnxruntime").cache_status == "hit" and hashed == []
    for path in entry.iterdir():
        if path.name != "key.json":
            path.write_bytes(path.read_bytes())  # same bytes, new ctime: hashed, still a hit
    assert _session(two_target_artifact, "onnxruntime").cache_status == "hit" and hashed


def test_a_first_onnxruntime_load_serves_from_the_saved_model(two_target_artifact, cache_dir):
    """The first load saves ONNX Runtime's optimised model with sessions that only build it
    (dropped at once), then serves from the saved file as later loads do: one copy of the
    weights in memory at a time, not two (benchmarks/cold_start.py measures the peak). The
    saved file holds the kernels' packed weights, which a load maps instead of packing."""
    import onnx

    first = _session(two_target_artifact, "onnxruntime")
    assert first.cache_status == "miss"
    assert sorted(p.name for p in first.cache_path.iterdir()) == ["key.json", "model.onnx", "model.onnx.data"]
    saved = onnx.load(str(first.cache_path / "model.onnx"), load_external_data=False)
    assert any(e.key.startswith("prepacked") for t in saved.graph.initializer for e in t.external_data)
    # ONNX Runtime's InferenceSession keeps the path it was opened from
    assert Path(first._session._model_path) == first.cache_path / "model.onnx"
    second = _session(two_target_artifact, "onnxruntime")
    assert second.cache_status == "hit" and Path(second._session._model_path) == first.cache_path / "model.onnx"
    feeds = _feeds(first)
    for name, value in first.run(feeds).items():
        np.testing.assert_array_equal(value, second.run(feeds)[name])


def _resident_kb(path: Path) -> dict[str, int]:
    """The resident kB of each mapping of `path` in this process, by address range (/proc/self/smaps)."""
    sizes, current = {}, None
    for line in Path("/proc/self/smaps").read_text().splitlines():
        fields = line.split()
        if fields and "-" in fields[0] and len(fields) >= 5 and ":" in fields[3]:  # a mapping's header line
            current = fields[0] if len(fields) > 5 and fields[5] == str(path) else None
        elif fields[:1] == ["Rss:"] and current is not None:
            sizes[current] = int(fields[1])
    return sizes


@pytest.mark.skipif(not Path("/proc/self/smaps").is_file(), reason="reads the mappings from Linux's /proc/self/smaps")
def test_openvino_hands_back_the_mapped_pages_of_what_it_read(two_target_artifact, cache_dir):
    """The weights (uncached, or a cold load) and the cached blob (a warm load) are read through
    vlmedge's own mapping, whose pages the load and first call hand back; later calls read the
    pages they need again, and every answer is OpenVINO's own from the file."""
    import openvino as ov

    xml = two_target_artifact / "openvino" / "model.fp32.xml"
    own = ov.Core().compile_model(str(xml), "CPU", {"INFERENCE_PRECISION_HINT": "f32"})
    session = _session(two_target_artifact, "openvino", cache=False)
    expected = {p.get_any_name(): v for p, v in own.create_infer_request().infer(_feeds(session)).items()}
    del own, session
    for cache, status in ((False, "off"), (True, "miss"), (True, "hit")):
        gc.collect()  # the sessions before, with their mappings
        before = set(_resident_kb(xml.with_suffix(".bin"))) | {m for b in cache_dir.glob("*/*/*.blob")
                                                              for m in _resident_kb(b)}
        session = _session(two_target_artifact, "openvino", cache=cache)
        assert session.cache_status == status
        read = xml.with_suffix(".bin") if status != "hit" else next(session.cache_path.glob("*.blob"))
        assert read.stat().st_size > 64 * 1024  # pages enough for the check to mean something
        (mapping,) = set(_resident_kb(read)) - before  # vlmedge's mapping; OpenVINO has none of its own
        first = _outputs(session)
        assert _resident_kb(read)[mapping] == 0, status
        second = _outputs(session)
        for name, value in expected.items():
            port = next(o.name for o in session.outputs if o.name == name or name in o.name)
            np.testing.assert_allclose(first[port], value, rtol=1e-5, atol=1e-5)
            np.testing.assert_array_equal(first[port], second[port])


def test_onnxruntime_checks_the_external_data_of_the_files_it_parses_and_only_those(two_target_artifact, cache_dir,
                                                                                   monkeypatch):
    """A miss parses the artifact's file (checked against the artifact's root), the build's
    first pass (against its folder) and the entry's saved model (against the entry); a hit parses the entry's alone, so the artifact's file,
    hashed already, is not read again."""
    from vlmedge.runtimes import onnxruntime as ort_module

    checked = []
    real_check = ort_module.check_external_data
    monkeypatch.setattr(ort_module, "check_external_data", lambda path, root: checked.append((path, root)) or
                        real_check(path, root))
    first = _session(two_target_artifact, "onnxruntime")
    entry = first.cache_path
    model = two_target_artifact / "onnx" / "model.fp32.onnx"
    optimised = [path for path, _ in checked if path.parent.name == "optimised"]  # the build's first pass, gone now
    assert len(optimised) == 1 and not optimised[0].exists()
    assert first.cache_status == "miss" and checked == [(model, two_target_artifact),
                                                        (optimised[0], optimised[0].parent),
                                                        (entry / "model.onnx", entry)]
    checked.clear()
    assert _session(two_target_artifact, "onnxruntime").cache_status == "hit"
    assert checked == [(entry / "model.onnx", entry)]
    checked.clear()
    assert _session(two_target_artifact, "onnxruntime", cache=False).cache_status == "off"
    assert checked == [(model, two_target_artifact)]


def test_an_openvino_blob_of_another_form_is_rebuilt_not_imported(two_target_artifact, cache_dir):
    """A listed, intact blob whose header is not this OpenVINO's (another version's, as a
    shared cache folder could hold) is built again rather than handed to import_model."""
    import openvino as ov

    _backend_or_skip("openvino")
    first = _session(two_target_artifact, "openvino")
    entry = first.cache_path
    (blob,) = entry.glob("*.blob")
    data = blob.read_bytes()
    version = ov.get_version().encode()
    assert data.count(version) >= 1 and data.startswith(b"<?xml")
    blob.write_bytes(data.replace(version, b"9" * len(version), 1))
    cache_module._write_key_file(entry, json.loads((entry / "key.json").read_text())["key"])  # listed as it is now
    again = _session(two_target_artifact, "openvino")
    assert again.cache_status == "miss"
    assert version in next(entry.glob("*.blob")).read_bytes()[:512]
    assert _session(two_target_artifact, "openvino").cache_status == "hit"
    _assert_same(_outputs(again), _outputs(first))


@pytest.mark.skipif(not Path("/proc/self/smaps").is_file(), reason="reads the mappings from Linux's /proc/self/smaps")
def test_a_mapped_file_hands_its_pages_back_and_reads_the_same_bytes_after(tmp_path):
    from vlmedge.runtimes.mapped import MappedFile

    path = tmp_path / "weights.bin"
    data = np.random.default_rng(0).integers(0, 256, 1 << 20, dtype=np.uint8)
    path.write_bytes(data.tobytes())
    mapped = MappedFile(path)
    view = mapped.array(4096)
    assert int(view.sum()) == int(data[4096:].sum())  # every page but the first read: resident
    (resident,) = _resident_kb(path).values()
    assert resident >= 1020
    mapped.hand_back_pages()
    assert list(_resident_kb(path).values()) == [0]
    with mapped.handing_back_pages():
        assert np.array_equal(view, data[4096:])  # read again from the page cache
    assert list(_resident_kb(path).values()) == [0]
    del mapped  # the array keeps the mapping open under it
    gc.collect()
    assert np.array_equal(view[:16], data[4096:4112]) and len(_resident_kb(path)) == 1


@pytest.mark.skipif(not Path("/proc/self/smaps").is_file(), reason="reads the process's memory from Linux's /proc")
def test_profile_memory_reports_each_step_of_an_openvino_load(two_target_artifact, tmp_path):
    """benchmarks/profile_memory.py on a tiny artifact: a row per OpenVINO file with the memory
    after each step of the load, and the compiled graph's weights as many bytes as the weights
    file holds (an fp32 file runs in f32: nothing packed smaller or larger)."""
    import subprocess
    import sys

    _backend_or_skip("openvino")
    work = tmp_path / "work"
    work.mkdir()
    (work / "vit").symlink_to(two_target_artifact, target_is_directory=True)
    repo = Path(__file__).resolve().parent.parent
    done = subprocess.run([sys.executable, str(repo / "benchmarks" / "profile_memory.py"), "--work", str(work),
                           "--out", str(tmp_path / "out")], capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-2000:]
    (report,) = (tmp_path / "out").glob("profile-memory-*.json")
    rows = json.loads(report.read_text())["rows"]
    assert [(row["model"], row["file"], row["precision"]) for row in rows] == [("vit", "openvino/model.fp32.xml", "f32")]
    (row,) = rows
    assert list(row["steps"]) == ["imports", "plugin loaded", "IR read", "compiled", "first call"]
    weights_mb = (two_target_artifact / "openvino" / "model.fp32.bin").stat().st_size / (1 << 20)
    assert row["graph_weights_mb"] == pytest.approx(weights_mb, rel=0.05)


def test_check_runs_the_artifacts_own_files_never_the_cache(two_target_artifact, cache_dir):
    """A cache entry gone bad answered for the files `check` verifies, and the failure was
    blamed on the artifact's files: check opens them uncached."""
    from vlmedge.check import check_artifact

    reports = check_artifact(two_target_artifact)
    assert len(reports) >= 2 and all(r["passed"] for r in reports)
    assert not cache_dir.exists() or not _entries(cache_dir)
