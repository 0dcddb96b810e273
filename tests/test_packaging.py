"""A built wheel, installed in a fresh virtualenv outside the repository, imports
vlmedge.exporters and vlmedge.runtimes the same way the editable install does."""

from __future__ import annotations

import os
import site
import subprocess
import sys
import tarfile
import venv
import zipfile
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parent.parent


@pytest.mark.slow
def test_wheel_installs_and_imports_outside_the_repo(tmp_path, vit_artifact):
    wheels = tmp_path / "wheels"
    build = subprocess.run([sys.executable, "-m", "pip", "wheel", str(REPO), "--no-deps", "--no-build-isolation",
                            "-w", str(wheels), "-q"], capture_output=True, text=True, timeout=300)
    assert build.returncode == 0, build.stderr
    (wheel,) = wheels.glob("vlmedge-*.whl")
    with zipfile.ZipFile(wheel) as archive:  # the license travels with the package, as Apache-2.0 asks
        names = archive.namelist()
        metadata = archive.read(next(n for n in names if n.endswith(".dist-info/METADATA"))).decode()
    assert any(n.endswith(".dist-info/licenses/LICENSE") for n in names)
    assert "License-Expression: Apache-2.0" in metadata and "Requires-Python: >=3.11" in metadata

    env_dir = tmp_path / "fresh"
    venv.create(env_dir, with_pip=False)
    python = env_dir / "bin" / "python"
    install = subprocess.run([sys.executable, "-m", "pip", "--python", str(python), "install", "--no-deps", "-q",
                              str(wheel)], capture_output=True, text=True, timeout=300)
    assert install.returncode == 0, install.stderr
    fresh_site = subprocess.run([str(python), "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"],
                                capture_output=True, text=True).stdout.strip()
    assert not (Path(fresh_site) / "exporters").exists() and not (Path(fresh_site) / "runtimes").exists()

    # Dependencies (numpy, onnxruntime, ...) come from this environment; vlmedge itself only from the wheel.
    code = (
        "import sys, vlmedge, vlmedge.exporters, vlmedge.exporters.sources.hf, vlmedge.runtimes.onnxruntime\n"
        "from vlmedge.exporters.sources.builtin import MODELS_DIR\n"
        "assert vlmedge.__file__.startswith(sys.argv[1]), vlmedge.__file__\n"
        "assert vlmedge.exporters.__file__.startswith(sys.argv[1]), vlmedge.exporters.__file__\n"
        "import numpy as np\n"
        "print(vlmedge.load(sys.argv[2]).classify(np.zeros((8, 8, 3), np.uint8))[0].label)\n"
        "from importlib import resources\n"  # vlmedge serve's page ships as package data
        "assert '<title>vlmedge serve</title>' in resources.files('vlmedge.serve').joinpath('static/index.html').read_text()\n"
    )
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(site.getsitepackages())}
    run = subprocess.run([str(python), "-c", code, fresh_site, str(vit_artifact)], capture_output=True, text=True,
                         cwd=tmp_path, env=env, timeout=120)
    assert run.returncode == 0, run.stderr
    assert run.stdout.strip().startswith("class_")
    cli = subprocess.run([str(env_dir / "bin" / "vlmedge"), "info", str(vit_artifact)], capture_output=True,
                         text=True, cwd=tmp_path, env=env, timeout=120)
    assert cli.returncode == 0 and "image-classification" in cli.stdout, cli.stderr
    _check_types_as_a_user(python, tmp_path, env)


# Code a user type-checks against the installed wheel (it ships py.typed): one input gives one
# result, a list a list of them, for each pipeline method whose return depends on it.
USER_CODE = """
import numpy as np
from pathlib import Path
import vlmedge
from vlmedge.tasks.audio import AudioTagger
from vlmedge.tasks.classifier import ImageClassifier
from vlmedge.tasks.clip import Clip
from vlmedge.tasks.encoder import ImageEncoder

classifier: ImageClassifier = vlmedge.load("out/vit")
reveal_type(classifier.classify("cat.jpg")[0].label)
reveal_type(classifier.classify([Path("a.jpg"), b"..."])[0][0].score)
reveal_type(classifier.classify(np.zeros((8, 8, 3), np.uint8), top_k=None)[0].index)
clip: Clip = vlmedge.load("out/clip")
reveal_type(clip.zero_shot("cat.jpg", ["cat", "dog"])[0].label)
reveal_type(clip.zero_shot(("a.jpg", "b.jpg"), labels=["cat"])[1][0].label)
tagger: AudioTagger = vlmedge.load("out/ast")
reveal_type(tagger.tag("clip.wav").tags[0].label)
reveal_type(tagger.tag(["a.wav", np.zeros(16000, np.float32)], sample_rate=16000)[1].duration)
reveal_type(tagger.tag({"raw": np.zeros(10), "sampling_rate": 16000}).windows[0].start)
def either(images: str | list[str]) -> None:  # a str is a Sequence of str too: it is still one input
    reveal_type(classifier.classify(images))
encoder: ImageEncoder = vlmedge.load("out/dinov2")
reveal_type(encoder.embed(["a.jpg", "b.jpg"]).shape)
reveal_type(encoder.embed("a.jpg", patch_tokens=True)[1])
with vlmedge.load("out/vit") as loaded, classifier as same:
    reveal_type(same)
classifier.classify("cat.jpg", top_k="3")
"""


def _check_types_as_a_user(python: Path, tmp_path: Path, env: dict[str, str]) -> None:
    pytest.importorskip("mypy")
    (tmp_path / "user.py").write_text(USER_CODE)
    run = subprocess.run([sys.executable, "-m", "mypy", "--strict", "--no-incremental", "--python-executable",
                          str(python), "user.py"], capture_output=True, text=True, cwd=tmp_path, env=env, timeout=300)
    revealed = [line.split('Revealed type is "')[1].rstrip('"') for line in run.stdout.splitlines() if "Revealed" in line]
    prediction = "tuple[str, int, float, fallback=vlmedge.tasks.base.Prediction]"  # how mypy shows a NamedTuple
    assert revealed == ["str", "float", "int", "str", "str", "str", "float", "float",
                        f"list[{prediction}] | list[list[{prediction}]]", "tuple[Any, ...]",
                        "numpy.ndarray[tuple[Any, ...], numpy.dtype[Any]]",
                        "vlmedge.tasks.classifier.ImageClassifier"], run.stdout
    errors = [line for line in run.stdout.splitlines() if ": error:" in line]
    assert len(errors) == 1 and 'No overload variant of "classify"' in errors[0], run.stdout  # a wrong top_k is caught


@pytest.mark.slow
def test_the_source_distribution_carries_the_license_and_a_test_suite_that_can_run(tmp_path):
    """It carried tests/test_*.py alone (setuptools' default), without conftest.py and the
    helpers they import, and no license file."""
    build = subprocess.run([sys.executable, "-m", "build", "--sdist", "--no-isolation", "-o", str(tmp_path), str(REPO)],
                           capture_output=True, text=True, timeout=300)
    assert build.returncode == 0, build.stderr
    (sdist,) = tmp_path.glob("vlmedge-*.tar.gz")
    with tarfile.open(sdist) as archive:
        names = {name.split("/", 1)[1] for name in archive.getnames() if "/" in name}
    tests = {name for name in names if name.startswith("tests/") and name.endswith(".py")}
    imported = {f"tests/{module}.py" for module in ("conftest", "serve_support", "hardening_support", "clip_models")}
    assert "LICENSE" in names and imported <= tests
    assert tests == {str(p.relative_to(REPO)) for p in (REPO / "tests").rglob("*.py")}
    assert not [name for name in names if "__pycache__" in name or name.endswith(".pyc")]

