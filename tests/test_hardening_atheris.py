"""Smoke run of the atheris harness (tests/fuzz/): each target for a few hundred inputs.

Skipped when atheris is not installed; longer runs are described in tests/fuzz/README.md.
VLMEDGE_ATHERIS_RUNS sets the inputs per target (default 100).
"""

from __future__ import annotations

import importlib.util
import os
import subprocess
import sys

import pytest

from tests.hardening_support import REPO

RUNS = int(os.environ.get("VLMEDGE_ATHERIS_RUNS", "100"))

pytestmark = pytest.mark.skipif(importlib.util.find_spec("atheris") is None,
                                reason="atheris is not installed (pip install atheris)")


@pytest.mark.parametrize("target", ["image", "audio", "caption", "manifest", "onnx"])
def test_atheris_target_finds_no_crash(target, tmp_path):
    corpus, crashes = tmp_path / "corpus", tmp_path / "crashes"
    crashes.mkdir()
    done = subprocess.run(
        [sys.executable, str(REPO / "tests" / "fuzz" / "fuzz_inputs.py"), target, f"-runs={RUNS}", "-timeout=30",
         "-rss_limit_mb=4096", f"-artifact_prefix={crashes}/", str(corpus)],
        capture_output=True, text=True, cwd=tmp_path, timeout=600,
        # TMPDIR: the harness's scratch folder goes with the test's, not into /tmp for good.
        env={**os.environ, "HF_HUB_OFFLINE": "1", "PYTHONPATH": str(REPO), "TMPDIR": str(tmp_path)})
    assert done.returncode == 0 and not any(crashes.iterdir()), done.stderr[-4000:]
    assert f"Done {RUNS} runs" in done.stderr
