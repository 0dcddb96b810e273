"""Everyday use of the real `vlmedge` command: discovery (--version, formats, completion),
validation before anything is loaded, exit codes, help text and narrow output."""

from __future__ import annotations

import importlib.util
import json
import re
import subprocess
import sys
from pathlib import Path

import pytest

from tests.test_cli import SAMPLE, vlmedge_cli

README = Path(__file__).resolve().parent.parent / "README.md"


def test_version_and_formats_come_from_the_tables():
    from vlmedge.parity import PRECISIONS
    from vlmedge.registry import TASKS
    from vlmedge.runtimes.base import BACKENDS
    from vlmedge.version import __version__

    result = vlmedge_cli("--version")
    assert result.returncode == 0 and result.stdout.strip() == f"vlmedge {__version__}"

    result = vlmedge_cli("formats", "--json")
    assert result.returncode == 0, result.stderr
    facts = json.loads(result.stdout)
    assert [t["name"] for t in facts["tasks"]] == list(TASKS)
    assert [b["name"] for b in facts["backends"]] == list(BACKENDS)
    assert [p["name"] for p in facts["precisions"]] == list(PRECISIONS)
    assert "shapes-vit" in facts["builtin_models"]
    tensorrt = next(b for b in facts["backends"] if b["name"] == "tensorrt")
    assert not tensorrt["runs_here"] and "NVIDIA GPU" in tensorrt["reason"]
    assert tensorrt["install"] == "pip install 'vlmedge[tensorrt]'"
    onnxruntime = next(b for b in facts["backends"] if b["name"] == "onnxruntime")
    assert list(onnxruntime["never_runs"]) == ["bf16"] and "no bf16 CPU kernels" in onnxruntime["never_runs"]["bf16"]
    assert isinstance(facts["export"]["installed"], bool) and "torch" in facts["export"]["packages"]

    result = vlmedge_cli("formats", columns=80)
    assert result.returncode == 0 and "image-classification" in result.stdout and "shapes-vit" in result.stdout
    assert "vlmedge[tensorrt]" in result.stdout


def test_formats_imports_no_torch():
    code = ("import sys, vlmedge.formats as f; f.describe(); "
            "assert not {'torch', 'transformers', 'onnx'} & set(sys.modules), sorted(sys.modules)")
    subprocess.run([sys.executable, "-c", code], check=True, timeout=120)


def test_shell_completion_script():
    # typer's own switch for naming the shell (--show-completion bash) instead of finding it among
    # the parent processes, which a test run under nohup or a CI runner may not have
    result = vlmedge_cli("--show-completion", "bash", env={"_TYPER_COMPLETE_TEST_DISABLE_SHELL_DETECTION": "1"})
    assert result.returncode == 0, result.stderr
    assert "complete" in result.stdout and "_VLMEDGE_COMPLETE" in result.stdout


@pytest.mark.parametrize("args, named", [
    (["export", "builtin:shapes-vit", "-o", "OUT", "--to", "onxx"], "onnx, openvino, tensorrt"),
    (["export", "builtin:shapes-vit", "-o", "OUT", "--precision", "fp32,fp33"], "fp32, fp16, bf16, int8"),
    (["export", "builtin:shapes-vit", "-o", "OUT", "--task", "detection"], "image-classification"),
    (["export", "builtin:shapes-vit", "-o", "OUT", "--precision", "bf16"], "add --to openvino"),  # onnx alone
    (["export", "builtin:shapes-vit", "-o", "OUT", "--image-size", "0"], "from 1 to 4096"),  # was exit 1, late
    (["export", "builtin:shapes-vit", "-o", "OUT", "--image-size", "99999"], "from 1 to 4096"),
    (["predict", "ART", SAMPLE, "--backend", "onnx"], "auto, onnxruntime, openvino, tensorrt"),
    (["predict", "ART", SAMPLE, "--precision", "int4"], "fp32, fp16, bf16, int8"),
    (["bench", "ART", "--precision", "int4"], "fp32, fp16, bf16, int8"),
    (["bench", "ART", "--sweep", "memory"], "threads, batch"),
    (["bench", "ART", "--metric", "p42_ms"], "p50_ms"),
    (["bench", "ART", "--peer", "other:int4=other.onnx"], "fp32, fp16, bf16, int8"),
    (["bench", "ART", "--peer", "other=other.bin"], "a .onnx file (onnxruntime) or a .xml file (openvino)"),
    (["bench", "ART", "--rounds", "0"], "--rounds"),
    # serve checks them before it opens any artifact, as predict does
    (["serve", "ART", "--backend", "onnx"], "auto, onnxruntime, openvino, tensorrt"),
    (["serve", "ART", "--precision", "fp33"], "fp32, fp16, bf16, int8"),
    (["serve", "ART", "--engine", "threads"], "local, ray"),
    (["serve", "ART", "--replicas", "2"], "--replicas and --replica-cpus apply to --engine ray"),
    (["serve", "ART", "--replica-cpus", "0.5"], "--replicas and --replica-cpus apply to --engine ray"),
    (["predict", "ART", SAMPLE, "--session-option", "hint=latency"], "threads, optimization, performance_hint"),
    (["embed", "ART", SAMPLE, "--out", "OUT", "--session-option", "threads"], "NAME=VALUE"),
    (["serve", "ART", "--session-option", "threads=two"], "threads is a whole number"),
    (["predict", "ART", SAMPLE, "--threads", "2", "--session-option", "threads=4"], "given twice"),
])
def test_bad_values_are_usage_errors_naming_the_valid_ones(args, named, tmp_path):
    args = [str(tmp_path / "out") if a == "OUT" else str(tmp_path) if a == "ART" else a for a in args]
    result = vlmedge_cli(*args)
    assert result.returncode == 2, result.stderr
    assert named in result.stderr and "Traceback" not in result.stderr
    assert not (tmp_path / "out").exists()


@pytest.mark.parametrize("args", [
    ["export", "builtin:shapes-vit", "-o", "OUT", "--to", "onnx,tensorrt"],
    ["predict", "ART", SAMPLE, "--backend", "tensorrt"],
    ["embed", "ART", SAMPLE, "--out", "OUT", "--backend", "tensorrt"],
    ["bench", "ART", "--backend", "onnxruntime,tensorrt"],
])
def test_tensorrt_refusals_say_why_and_how(args, tmp_path):
    args = [str(tmp_path / "out") if a == "OUT" else str(tmp_path) if a == "ART" else a for a in args]
    result = vlmedge_cli(*args, timeout=120)
    assert result.returncode == 1
    message = " ".join(result.stderr.split())
    assert "NVIDIA GPU" in message and "pip install 'vlmedge[tensorrt]'" in message
    assert "Traceback" not in result.stderr and not (tmp_path / "out").exists()


@pytest.mark.skipif(importlib.util.find_spec("openvino") is None, reason="openvino is not installed")
def test_session_options_reach_the_backend_that_runs_the_files(two_target_artifact):
    result = vlmedge_cli("predict", two_target_artifact, SAMPLE, "--backend", "openvino", "--json",
                         "--session-option", "inference_precision=bf16", "--session-option", "performance_hint=throughput")
    assert result.returncode == 0, result.stderr
    # the file's parity gate verified it in f32 (fp32 is forced at export), so bf16 is said to be unverified
    assert "OpenVINO CPU bf16" in result.stderr and "parity gate did not check" in result.stderr
    result = vlmedge_cli("predict", two_target_artifact, SAMPLE, "--backend", "onnxruntime",
                         "--session-option", "performance_hint=throughput")
    assert result.returncode == 2 and "takes no session option 'performance_hint' (an option of openvino)" in result.stderr


def test_predict_refuses_options_its_task_does_not_take(vit_artifact, tmp_path):
    result = vlmedge_cli("predict", vit_artifact, SAMPLE, "--labels", "a,b")
    assert result.returncode == 2 and "--labels does not apply to image-classification" in result.stderr
    result = vlmedge_cli("predict", vit_artifact, SAMPLE, "--aggregate", "avg")
    assert result.returncode == 2 and "--aggregate must be max or mean" in result.stderr
    result = vlmedge_cli("predict", vit_artifact, SAMPLE.parent)
    assert result.returncode == 2 and "--out results.parquet" in result.stderr
    result = vlmedge_cli("predict", vit_artifact, SAMPLE, "--top-k", "2", "--device", "cpu", "--json")
    assert result.returncode == 0, result.stderr
    assert len(json.loads(result.stdout)[0]["predictions"]) == 2


def test_next_step_hint_predicts_on_a_bundled_sample_or_names_the_input_kind():
    from types import SimpleNamespace

    from vlmedge.cli import SAMPLE_LABELS, _next_steps

    def artifact(task, *paths):
        return SimpleNamespace(task=task, files=[{"path": "samples/parity.npz", "role": "parity_inputs"},
                                                 *({"path": p, "role": "sample"} for p in paths)])

    out = Path("out")
    assert "vlmedge predict out AUDIO" in _next_steps(out, artifact("audio-classification"))
    assert f'vlmedge predict out IMAGE --labels "{SAMPLE_LABELS}"' in _next_steps(out, artifact("clip"))
    clip = artifact("clip", "samples/captions.txt", "samples/red-circle.jpg", "samples/green-square-rgba.png")
    assert (f'vlmedge predict out {out / "samples" / "green-square-rgba.png"} --labels "{SAMPLE_LABELS}"'
            in _next_steps(out, clip))


def test_help_reads_well():
    result = vlmedge_cli("predict", "--help", columns=100)
    assert result.returncode == 0
    assert "pip install 'vlmedge[ray]'" in " ".join(result.stdout.split())
    assert "{" not in result.stdout.splitlines()[0] and "<list[str]>" not in result.stdout
    assert "--device" in result.stdout
    result = vlmedge_cli("export", "--help", columns=100)
    text = " ".join(result.stdout.split())
    assert "shapes-vit" in text and "image-classification, image-embedding, clip, audio-classification" in text
    for command in ("serve", "bench", "embed"):  # metavars that say what goes there, not click's types
        result = vlmedge_cli(command, "--help", columns=100)
        assert result.returncode == 0 and not re.search(r"<(str|int|float)( range)?>|INTEGER|FLOAT", result.stdout), \
            result.stdout


def test_bench_fails_on_a_missing_plot_package_before_measuring(vit_artifact, tmp_path):
    result = vlmedge_cli("bench", vit_artifact, "--backend", "onnxruntime", "--json", tmp_path / "a.json",
                         "--plot", tmp_path / "a.png", prelude="import sys; sys.modules['matplotlib'] = None")
    assert result.returncode == 1 and "--plot needs matplotlib" in result.stderr
    assert "p50" not in result.stdout + result.stderr and not (tmp_path / "a.json").exists()


def test_tables_are_readable_at_80_columns_in_a_log(vit_artifact):
    result = vlmedge_cli("info", vit_artifact, columns=80)
    assert result.returncode == 0, result.stderr
    assert "onnx/model.fp32.onnx" in result.stdout and "…" not in result.stdout
    assert "parity: pass" in result.stdout

    result = vlmedge_cli("bench", vit_artifact, "--backend", "onnxruntime", "--batch-size", "1", "--iterations", "3",
                         "--warmup", "0", columns=80)
    assert result.returncode == 0, result.stderr
    # every line of text is one line in a log however long (progress, the report's header, warnings);
    # the rows, which would be tables on a wide terminal, are blocks of short lines
    progress, report = result.stdout.split("\nartifact: ", 1)
    assert any(line.startswith("  peak GEMM rates") and line.endswith("then read from the cache)")
               for line in progress.splitlines())
    lines = report.splitlines()
    assert "┃" not in result.stdout
    assert any(line.startswith("machine: ") and "; load average at start: " in line and "; finished " in line
               for line in lines)
    assert any(line.startswith("latency: ms per call") and line.endswith("(peak RSS less the file pages the kernel can drop)")
               for line in lines)
    block = [line for line in lines if line.startswith("  ") and not line.startswith("  roofline: ")]
    assert block and max(map(len, block)) <= 80
    assert any(line.startswith("  latency ms: p50 ") for line in lines)
    assert any("provider CPUExecutionProvider" in line for line in lines)


def test_readme_lists_every_exit_code():
    from vlmedge.errors import EXIT_CODES

    errors = README.read_text(encoding="utf-8").split("## Errors", 1)[1].split("\n## ", 1)[0]
    assert {int(code) for code in re.findall(r"^\| (\d) \|", errors, flags=re.M)} == set(EXIT_CODES)


def test_a_warning_is_one_line_naming_no_source_file(vit_artifact, tmp_path):
    """Python's warning format named a line inside typer's source, on two lines."""
    blocker = tmp_path / "a-file"
    blocker.write_text("x")
    result = vlmedge_cli("predict", vit_artifact, SAMPLE, env={"VLMEDGE_CACHE_DIR": str(blocker)})
    assert result.returncode == 0, result.stderr
    lines = [line for line in result.stderr.splitlines() if line.strip()]
    assert lines and all(line.startswith("warning: vlmedge could not write its compiled-model cache") for line in lines)
    assert "UserWarning" not in result.stderr and "typer" not in result.stderr


@pytest.mark.parametrize("args,line", [
    (("frobnicate",), "Error: No such command 'frobnicate'; see 'vlmedge --help'."),
    (("--bogus",), "Error: No such option: --bogus; see 'vlmedge --help'."),
    (("predict",), "Error: Missing argument 'ARTIFACT'; see 'vlmedge predict --help'."),
    (("predict", "art", "cat.jpg", "--to", "onnx"), "Error: No such option: --to (Possible options: --json, --out, "
                                                     "--top-k); see 'vlmedge predict --help'."),
    (("predict", "art", "cat.jpg", "--batch-size", "0"), "Error: Invalid value for '--batch-size': Input should be "
                                                          "greater than or equal to 1; see 'vlmedge predict --help'."),
    (("embed", "art", "x.jpg", "--out", "e.npy", "--engine", "ray", "--decode-workers", "2"),
     "Error: Invalid value for --decode-workers: --decode-workers sets the threads of the local engine; with --engine "
     "ray preprocessing runs in Ray tasks, one per CPU; see 'vlmedge embed --help'."),
])
def test_a_usage_error_is_one_line_as_every_other_error(args, line):
    """click printed the usage, a hint and the error on three lines (and a blank one); a log
    gets one `Error:` line, as for vlmedge's own errors, with the hint at its end."""
    result = vlmedge_cli(*args)
    assert result.returncode == 2 and result.stderr.splitlines() == [line], result.stderr


def test_a_bare_vlmedge_prints_its_help():
    """No arguments is click's request for help (exit 2), not a usage error to fold into one line."""
    result = vlmedge_cli()
    assert result.returncode == 2 and result.stderr.startswith("Usage: vlmedge [OPTIONS] COMMAND") and "Error" not in result.stderr
    assert "export   Export MODEL" in result.stderr


def test_ctrl_c_while_the_command_line_imports_ends_as_during_a_command():
    """Ctrl-C in the ~0.3 s the command spends importing typer, rich and the runtimes printed
    Python's traceback of the interrupted import; it ends as Ctrl-C during a command does.
    The interrupt is raised by the import of typer itself, where a keypress would land."""
    interrupt_typer = ("import sys\n"
                       "class Interrupt:\n"
                       "    def find_spec(self, name, path=None, target=None):\n"
                       "        if name == 'typer':\n"
                       "            raise KeyboardInterrupt\n"
                       "sys.meta_path.insert(0, Interrupt())\n"
                       "sys.argv = ['vlmedge', 'formats']\n"
                       "from vlmedge.__main__ import main\n"
                       "main()\n")
    result = subprocess.run([sys.executable, "-c", interrupt_typer], capture_output=True, text=True, timeout=60)
    assert (result.returncode, result.stderr) == (130, ""), result.stderr  # as typer ends a command on Ctrl-C
