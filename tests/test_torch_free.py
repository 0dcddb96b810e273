"""The runtime never imports torch, transformers, or a backend it was not asked for."""

from __future__ import annotations

import importlib.util
import subprocess
import sys
import textwrap

import pytest

SCRIPT = textwrap.dedent("""
    import sys
    import numpy as np
    import vlmedge, vlmedge.cli, vlmedge.check, vlmedge.runtimes, vlmedge.tasks
    import vlmedge.preprocess.image, vlmedge.preprocess.audio, vlmedge.preprocess.text
    classifier = vlmedge.load(sys.argv[1], backend="onnxruntime")
    classifier.classify(np.zeros((20, 20, 3), np.uint8))
    from vlmedge.check import check_artifact
    assert all(r["passed"] for r in check_artifact(sys.argv[1]))
    heavy = sorted(m for m in ("torch", "transformers", "onnx", "openvino", "tensorrt", "nncf") if m in sys.modules)
    print("HEAVY:" + ",".join(heavy))
""")


def test_runtime_imports_no_torch_and_no_unasked_backend(vit_artifact):
    result = subprocess.run([sys.executable, "-c", SCRIPT, str(vit_artifact)], capture_output=True, text=True,
                            timeout=120)
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip().splitlines()[-1] == "HEAVY:"


def test_cli_help_imports_nothing_heavy():
    code = ("import sys, vlmedge.cli\n"
            "try:\n    vlmedge.cli.main(['--help'])\nexcept SystemExit:\n    pass\n"
            "print('HEAVY:' + ','.join(m for m in ('torch', 'transformers', 'onnxruntime', 'openvino') if m in sys.modules))")
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip().splitlines()[-1] == "HEAVY:"


@pytest.mark.parametrize("blocked, options", [
    ("onnx,torch,transformers", []),  # none of the extra: the exporters' own imports fail
    ("transformers", []),  # imported where the source is read
    ("nncf", ["--to", "openvino", "--precision", "int8"]),  # imported where OpenVINO int8 is built
])
def test_export_on_a_runtime_only_install_names_the_extra(blocked, options, tmp_path):
    """Without the export extra (or a package of it), `vlmedge export` and vlmedge.export ended
    in a 44-line traceback (ModuleNotFoundError: onnx), or a build failure that named no pip
    command (nncf); each is one sentence naming the pip command."""
    if "nncf" in blocked and importlib.util.find_spec("openvino") is None:
        pytest.skip("OpenVINO is not installed")
    code = textwrap.dedent("""
        import sys
        for blocked in sys.argv[2].split(","):  # as on an install without them
            sys.modules[blocked] = None
        import vlmedge, vlmedge.cli
        try:
            vlmedge.export("builtin:shapes-vit", sys.argv[1], **({"to": ["openvino"], "precision": ["int8"]}
                                                                 if "nncf" in sys.argv[2] else {}))
        except vlmedge.VlmedgeError as exc:
            print("API:", type(exc).__name__, exc)
        vlmedge.cli.main(["export", "builtin:shapes-vit", "-o", sys.argv[1], "-q", *sys.argv[3:]])
    """)
    result = subprocess.run([sys.executable, "-c", code, str(tmp_path / "out"), blocked, *options],
                            capture_output=True, text=True, timeout=300)
    assert result.returncode == 1 and "Traceback" not in result.stderr, result.stderr
    first = blocked.split(",")[0]
    assert f"API: BackendUnavailableError Exporting needs the 'export' extra, and its {first} is not" in result.stdout
    error = result.stderr.strip().splitlines()[-1]
    assert error.startswith("Error: Exporting needs the 'export' extra") and "pip install 'vlmedge[export]'" in error
    assert not (tmp_path / "out").exists()
