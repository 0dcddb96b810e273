"""The runtime never imports torch, transformers, or a backend it was not asked for."""

from __future__ import annotations

import subprocess
import sys
import textwrap

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


def test_export_on_a_runtime_only_install_names_the_extra(tmp_path):
    """Without the export extra, `vlmedge export` and vlmedge.export ended in a 44-line
    traceback (ModuleNotFoundError: onnx); each is one sentence naming the pip command."""
    code = textwrap.dedent("""
        import sys
        for blocked in ("torch", "transformers", "onnx"):  # as on an install without them
            sys.modules[blocked] = None
        import vlmedge, vlmedge.cli
        try:
            vlmedge.export("builtin:shapes-vit", sys.argv[1])
        except vlmedge.VlmedgeError as exc:
            print("API:", type(exc).__name__, exc)
        vlmedge.cli.main(["export", "builtin:shapes-vit", "-o", sys.argv[1]])
    """)
    result = subprocess.run([sys.executable, "-c", code, str(tmp_path / "out")], capture_output=True, text=True,
                            timeout=120)
    assert result.returncode == 1 and "Traceback" not in result.stderr, result.stderr
    assert "API: BackendUnavailableError Exporting needs the 'export' extra" in result.stdout
    error = result.stderr.strip().splitlines()[-1]
    assert error.startswith("Error: Exporting needs the 'export' extra") and "pip install 'vlmedge[export]'" in error
    assert not (tmp_path / "out").exists()
