"""The compiled-model cache when files change under a load: a model file rewritten or swapped
while it is read, an entry removed between its lookup and its use (`vlmedge cache --clear` in
another process), a cache copied to another disk, and OpenVINO's virtual devices. The races are
made to happen at the worst moment by running the other side's step inside the load's own."""

from __future__ import annotations

import os
import shutil
from pathlib import Path

import pytest

import vlmedge
from vlmedge.artifact import Artifact
from vlmedge.errors import ArtifactError
from vlmedge.runtimes import cache as cache_module

BACKENDS = ["onnxruntime", "openvino"]


def _session(artifact: Path, backend: str, **options):
    if backend == "openvino":
        pytest.importorskip("openvino", reason="the openvino package is not installed")
    (session,) = vlmedge.load(artifact, backend=backend, precision="fp32", **options).model.sessions.values()
    return session


def _entries(folder: Path) -> list[Path]:
    return sorted(p for p in folder.glob("*/*") if not p.name.startswith("."))


@pytest.mark.parametrize("backend", BACKENDS)
def test_a_model_file_rewritten_while_it_loads_is_refused_and_leaves_no_entry(two_target_artifact, cache_dir,
                                                                              tmp_path, monkeypatch, backend):
    """Verified, then read by the backend by path: a file replaced in between was compiled and
    cached under the verified file's hash, so that every later load of the right model ran the
    other one. The load now sees the change and keeps nothing."""
    artifact = tmp_path / "art"
    shutil.copytree(two_target_artifact, artifact)
    verify = Artifact.verify_model

    def verify_then_rewrite(self, entry, cache=None):
        verify(self, entry, cache=cache)
        path = self.path_of(entry)
        path.write_bytes(path.read_bytes())  # a copy over it: same bytes here, but nothing says so

    monkeypatch.setattr(Artifact, "verify_model", verify_then_rewrite)
    with pytest.raises(ArtifactError, match=r"model\.fp32\.\w+ in .* changed while it was loaded .*load the "
                                            r"artifact again"):
        _session(artifact, backend)
    assert _entries(cache_dir) == []
    monkeypatch.setattr(Artifact, "verify_model", verify)
    assert _session(artifact, backend).cache_status == "miss"


@pytest.mark.parametrize("backend", BACKENDS)
def test_an_entry_removed_between_its_lookup_and_its_use_is_built_again(two_target_artifact, cache_dir,
                                                                        monkeypatch, backend):
    """ONNX Runtime raised a bare FileNotFoundError when `cache --clear` ran mid-load."""
    assert _session(two_target_artifact, backend).cache_status == "miss"
    lookup = cache_module.CacheEntry.lookup

    def lookup_then_clear(self):
        found = lookup(self)
        cache_module.clear_entries()
        return found

    monkeypatch.setattr(cache_module.CacheEntry, "lookup", lookup_then_clear)
    session = _session(two_target_artifact, backend)
    assert session.cache_status in ("miss", "unsaved")
    assert session.run({i.name: _zeros(i) for i in session.inputs})


def _zeros(info):
    import numpy as np

    return np.zeros([d if isinstance(d, int) and d > 0 else 1 for d in info.shape], dtype=info.dtype)


@pytest.mark.parametrize("backend", BACKENDS)
def test_a_copied_cache_is_hashed_once_then_trusted(two_target_artifact, cache_dir, tmp_path, monkeypatch, backend):
    """Every file of a copied cache has a new identity: the first load hashes them and records
    the new identities, where every load used to hash the whole entry again."""
    _session(two_target_artifact, backend)
    copy = tmp_path / "copied-cache"
    shutil.copytree(cache_dir, copy)
    monkeypatch.setenv("VLMEDGE_CACHE_DIR", str(copy))
    hashed: list[str] = []
    real = cache_module.sha256_file
    monkeypatch.setattr(cache_module, "sha256_file", lambda path: hashed.append(Path(path).name) or real(path))
    assert _session(two_target_artifact, backend).cache_status == "hit" and hashed
    hashed.clear()
    assert _session(two_target_artifact, backend).cache_status == "hit" and hashed == []
    os.chmod(copy, 0o500)  # a read-only copy still loads from its entries (hashed each time)
    try:
        assert _session(two_target_artifact, backend).cache_status == "hit"
    finally:
        os.chmod(copy, 0o700)


def test_openvino_virtual_devices_are_not_cached(two_target_artifact, cache_dir):
    """AUTO cannot import a compiled blob: every load compiled, wrote a blob and called it a miss."""
    session = _session(two_target_artifact, "openvino", device="AUTO")
    assert session.cache_status == "off" and _entries(cache_dir) == []


def test_a_cache_that_cannot_be_read_is_never_listed_or_cleared_as_empty(tmp_path):
    """`vlmedge cache` said "0 model(s)" and `--clear` "removed 0" (exit 0) for a cache folder
    that is a file, or entries another user owns."""
    from tests.test_cli import vlmedge_cli

    blocker = tmp_path / "a-file"
    blocker.write_text("x")
    listed = vlmedge_cli("cache", env={"VLMEDGE_CACHE_DIR": str(blocker)})
    assert listed.returncode == 0 and "warning: The cache folder" in listed.stderr and "is not a folder" in listed.stderr
    cleared = vlmedge_cli("cache", "--clear", env={"VLMEDGE_CACHE_DIR": str(blocker)})
    assert cleared.returncode == 1 and "nothing in it can be removed" in cleared.stderr
