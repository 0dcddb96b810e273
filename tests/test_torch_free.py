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
