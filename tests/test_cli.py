"""The CLI as a user runs it: exit codes, tables, JSON, and one-sentence errors."""

from __future__ import annotations

import json
import os
import re
import stat
import subprocess
import sys
from pathlib import Path

import pytest

SAMPLE = Path(__file__).resolve().parent.parent / "exporters" / "sample_data" / "red-circle.jpg"


def vlmedge_cli(*args: str, timeout: float = 300, columns: int = 200, prelude: str = "",
                env: dict[str, str] | None = None) -> subprocess.CompletedProcess:
    """The real `vlmedge` command in a subprocess, its output to pipes; `prelude`: Python run
    before it in the same process (e.g. to make a package unfindable); `env`: added variables."""
    command = [sys.executable, "-m", "vlmedge"] if not prelude else [
        sys.executable, "-c", f"{prelude}\nimport sys\nfrom vlmedge.cli import main\nmain(sys.argv[1:])"]
    return subprocess.run([*command, *map(str, args)], capture_output=True, text=True,
                          timeout=timeout, env={**__import__("os").environ, "COLUMNS": str(columns), **(env or {})})


def test_export_predict_info_check(hf_classifier_dir, tmp_path):
    out = tmp_path / "vit"
    result = vlmedge_cli("export", hf_classifier_dir("vit"), "-o", out, columns=80)
    assert result.returncode == 0, result.stderr
    assert "parity passed" in result.stdout and result.stdout.count("export success") == 1
    # a progress line stays one line in an 80-column log, whatever its length
    assert re.search(r"^  \[model\] parity passed for onnx/model\.fp32\.onnx: .{40,} at batch 1$", result.stdout, re.M)
    assert "Loading weights" not in result.stdout + result.stderr  # no third-party progress bar
    # the printed next step runs as printed, on a sample the artifact bundles
    (hint,) = [line.strip() for line in result.stdout.splitlines() if line.strip().startswith("vlmedge predict ")]
    sample = hint.split()[3]
    assert Path(sample).parent == out / "samples" and Path(sample).is_file()
    assert vlmedge_cli(*hint.split()[1:]).returncode == 0

    result = vlmedge_cli("predict", out, SAMPLE, "--top-k", "3")
    assert result.returncode == 0, result.stderr
    assert "class_" in result.stdout and "red-circle.jpg" in result.stdout

    result = vlmedge_cli("predict", out, SAMPLE, SAMPLE, "--json")
    rows = json.loads(result.stdout)
    assert len(rows) == 2 and len(rows[0]["predictions"]) == 5
    assert {"label", "index", "score"} <= set(rows[0]["predictions"][0])

    result = vlmedge_cli("info", out)
    assert result.returncode == 0 and "image-classification" in result.stdout and "model.fp32.onnx" in result.stdout
    assert "pass" in result.stdout

    result = vlmedge_cli("check", out)
    assert result.returncode == 0, result.stderr
    assert "pass" in result.stdout
    assert result.stdout.strip().splitlines()[-1] == "check passed: 1 of 1 file(s), 0 skipped"


def test_check_fails_on_a_wrong_reference(vit_artifact, tmp_path):
    """A stored reference that no longer matches makes `check` exit 1 with the failing metric."""
    import shutil

    import numpy as np

    from vlmedge.artifact import sha256_file

    out = tmp_path / "art"
    shutil.copytree(vit_artifact, out)
    parity = out / "samples" / "parity.npz"
    with np.load(parity) as data:
        arrays = {k: data[k] for k in data.files}
    arrays["model.reference.logits"] = arrays["model.reference.logits"] + 1.0
    np.savez(parity, **arrays)
    manifest = json.loads((out / "manifest.json").read_text())
    for entry in manifest["files"]:
        if entry["path"] == "samples/parity.npz":
            entry.update(sha256=sha256_file(parity), size=parity.stat().st_size)
    (out / "manifest.json").write_text(json.dumps(manifest))
    result = vlmedge_cli("check", out)
    assert result.returncode == 3  # a parity gate failure (vlmedge.errors.EXIT_CODES)
    assert "max abs error" in result.stderr
    assert result.stdout.strip().splitlines()[-1].startswith("check FAILED: 1 of ")
    as_json = vlmedge_cli("check", out, "--json")  # the failures on stderr too (they were left out)
    assert as_json.returncode == 3 and "max abs error" in as_json.stderr
    assert [r["passed"] for r in json.loads(as_json.stdout)].count(False) == 1
    with open("/dev/full", "w") as full:  # and said before the document, which a full disk then loses
        unprinted = subprocess.run([sys.executable, "-m", "vlmedge", "check", str(out), "--json"], stdout=full,
                                   stderr=subprocess.PIPE, text=True, timeout=300)
    assert "max abs error" in unprinted.stderr and "Cannot write to standard output" in unprinted.stderr


def test_check_makes_the_bundled_samples_rows_again_here(vit_artifact, tmp_path):
    """The manifest is not signed: preprocessing edited after the export passed the check, which
    ran the stored inputs. The bundled files' rows are now made again, so it fails."""
    import shutil

    from vlmedge.check import check_artifact

    (report,) = check_artifact(vit_artifact)
    assert report["sample_files"]["max_input_difference"] == 0.0 and len(report["sample_files"]["files"]) == 5
    out = tmp_path / "art"
    shutil.copytree(vit_artifact, out)
    manifest = json.loads((out / "manifest.json").read_text())
    manifest["preprocess"]["image"]["image_mean"] = [0.0, 0.0, 0.0]
    (out / "manifest.json").write_text(json.dumps(manifest))
    result = vlmedge_cli("check", out)
    assert result.returncode == 3, result.stderr
    assert "the bundled samples, decoded and preprocessed here, differ" in result.stderr
    manifest["preprocess"]["image"]["size"] = {"height": 16, "width": 16}
    (out / "manifest.json").write_text(json.dumps(manifest))
    result = vlmedge_cli("check", out)
    assert result.returncode == 1 and "edited or is corrupt" in result.stderr and "Traceback" not in result.stderr


@pytest.mark.parametrize("args, message", [
    (["predict", "/no/such/artifact", "x.jpg"], "No artifact folder"),
    (["export", "builtin:nope", "-o", "OUT"], "no built-in model"),
    (["info", "."], "manifest.json"),
])
def test_user_errors_are_one_sentence_without_traceback(args, message, tmp_path):
    args = [str(tmp_path / "out") if a == "OUT" else a for a in args]
    result = vlmedge_cli(*args)
    assert result.returncode == 1
    assert message in result.stderr and "Traceback" not in result.stderr


@pytest.mark.parametrize("module, package", [("tokenizers", "tokenizers"), ("soundfile", "soundfile")])
def test_a_requirement_that_does_not_import_is_named_with_its_pip_command(vit_artifact, module, package):
    """An install without tokenizers (or soundfile) failed an image classifier's predict with a
    ModuleNotFoundError traceback, though classifying images needs neither."""
    import importlib.metadata

    (requirement,) = [r for r in importlib.metadata.requires("vlmedge") if r.startswith(package + ">")]
    result = vlmedge_cli("predict", vit_artifact, SAMPLE, prelude=f"import sys; sys.modules[{module!r}] = None")
    assert result.returncode == 1 and "Traceback" not in result.stderr, result.stderr
    assert re.sub(r"\s+", " ", result.stderr).strip() == (
        f"Error: vlmedge cannot import {module} (its requirement {package} is not installed, or broken); install it "
        f"with: pip install '{requirement}'.")


def test_a_missing_onnxruntime_is_named_with_the_version_vlmedge_needs(vit_artifact):
    """It said "pip install 'vlmedge'", which installs nothing more where vlmedge is installed."""
    import importlib.metadata

    (requirement,) = [r for r in importlib.metadata.requires("vlmedge") if r.startswith("onnxruntime>")]
    prelude = "import importlib.util, sys; find = importlib.util.find_spec; " \
              "importlib.util.find_spec = lambda name, *a: None if name == 'onnxruntime' else find(name, *a)"
    result = vlmedge_cli("predict", vit_artifact, SAMPLE, "--backend", "onnxruntime", prelude=prelude)
    assert result.returncode == 1 and "Traceback" not in result.stderr, result.stderr
    assert (f"The onnxruntime backend needs the 'onnxruntime' package, which is not installed; install it with: pip "
            f"install '{requirement}'.") in re.sub(r"\s+", " ", result.stderr)


def test_a_requirement_the_command_line_itself_imports_is_named_before_any_command():
    code = ("import sys; sys.modules['rich'] = None; sys.argv = ['vlmedge', '--version']\n"
            "from vlmedge.__main__ import main\nmain()")
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert result.returncode == 1 and "Traceback" not in result.stderr, result.stderr
    assert result.stderr.startswith("Error: vlmedge cannot import rich (its requirement rich is not installed, or "
                                    "broken); install it with: pip install 'rich>=")


def test_serve_without_its_extra_names_the_distributions_pip_installs(vit_artifact):
    """It said "needs multipart", a module name: the distribution is python-multipart."""
    result = vlmedge_cli("serve", vit_artifact, "--port", "0",
                         prelude="import sys; sys.modules['multipart'] = sys.modules['anyio'] = None")
    assert result.returncode == 1 and "Traceback" not in result.stderr, result.stderr
    assert ("`vlmedge serve` needs anyio, python-multipart; install the 'serve' extra: pip install "
            "'vlmedge[serve]'.") in re.sub(r"\s+", " ", result.stderr)


def test_bench_of_a_model_on_an_install_without_the_export_extra_says_so(tmp_path):
    result = vlmedge_cli("bench", "builtin:shapes-vit", "--duration", "0.1", prelude="import sys; sys.modules['onnx'] = None")
    assert result.returncode == 1 and "Traceback" not in result.stderr, result.stderr
    assert ("Exporting needs the 'export' extra, and its onnx is not installed; install it with: pip install "
            "'vlmedge[export]'.") in re.sub(r"\s+", " ", result.stderr)


def test_bad_input_image_is_an_error_not_a_traceback(vit_artifact, tmp_path):
    fake = tmp_path / "fake.jpg"
    fake.write_text("hello")
    result = vlmedge_cli("predict", vit_artifact, fake)
    assert result.returncode == 1 and "fake.jpg" in result.stderr and "Traceback" not in result.stderr


def test_predict_batch_size_is_the_model_call_size(vit_artifact, image_files):
    """It applied to bulk runs only: a plain predict ran its inputs in one call whatever it said."""
    spy = "\n".join(["import atexit, sys", "from vlmedge.runtimes.base import Session", "calls, run = [], Session.run",
                     "def counted(self, feeds, *args, **kwargs):",
                     "    calls.append(len(next(iter(feeds.values()))))",
                     "    return run(self, feeds, *args, **kwargs)",
                     "Session.run = counted", "atexit.register(lambda: print('calls', calls, file=sys.stderr))"])
    result = vlmedge_cli("predict", vit_artifact, *image_files[:3], "--batch-size", "2", prelude=spy)
    assert result.returncode == 0 and "calls [2, 1]" in result.stderr, result.stderr


def test_one_unreadable_input_does_not_cost_the_others_their_results(vit_artifact, image_files, tmp_path):
    """`predict a.jpg bad.jpg b.png` printed only the error, where `embed` skips the bad file;
    a name that is not UTF-8 came out as a lone surrogate, which strict JSON readers refuse.
    A bulk run of which every input failed exited 0."""
    import os
    import shutil

    import vlmedge

    fake = tmp_path / "fake.jpg"
    fake.write_text("hello")
    odd = os.path.join(os.fsencode(tmp_path), b"caf\xe9.png").decode("utf-8", "surrogateescape")
    shutil.copy(image_files[1], odd)
    result = vlmedge_cli("predict", vit_artifact, image_files[0], fake, odd, image_files[0], "--top-k", "1", "--json")
    assert result.returncode == 1 and "1 of the 4 inputs could not be run" in result.stderr
    rows = json.loads(result.stdout)  # in input order, an input named twice in both places
    assert [row["input"] for row in rows] == [str(image_files[0]), str(fake), f"{tmp_path}/caf\\xe9.png",
                                              str(image_files[0])]
    assert "error" in rows[1] and "not a readable" in rows[1]["error"] and "predictions" not in rows[1]
    expected = vlmedge.load(vit_artifact).classify([str(image_files[0]), odd], top_k=1)
    assert [row["predictions"][0]["label"] for row in (rows[0], rows[2])] == [p[0].label for p in expected]
    table = vlmedge_cli("predict", vit_artifact, image_files[0], fake, "--top-k", "1")
    assert table.returncode == 1 and expected[0][0].label in table.stdout and "fake.jpg" in table.stderr
    pytest.importorskip("pyarrow")
    every = vlmedge_cli("predict", vit_artifact, fake, fake, "--out", tmp_path / "r.parquet")
    assert every.returncode == 1 and "None of the 2 inputs could be run" in every.stderr
    assert (tmp_path / "r.parquet").exists()  # their rows, whose error column says why


def test_a_json_command_that_fails_prints_the_failure_as_json_on_stdout(vit_artifact, tmp_path):
    """`out=$(vlmedge predict ... --json)` got an empty string when the command failed as a whole
    (the sentence is on stderr): stdout now holds the failure as a document, beside that line;
    a command that printed its result before failing (an unreadable input among others,
    test_one_unreadable_input_...) prints no second document."""
    missing = tmp_path / "no-artifact"
    for args, kind, code in ((["predict", missing, SAMPLE, "--json"], "ArtifactError", 1),
                             (["predict", vit_artifact, SAMPLE, "--json", "--top-k", "0"], "UsageError", 2),
                             (["predict", vit_artifact, SAMPLE, "--json", "--threads", "0"], None, 2),
                             (["bench", missing, "--json", "-"], "ArtifactError", 1)):
        result = vlmedge_cli(*args)
        assert result.returncode == code and "Error: " in result.stderr and "Traceback" not in result.stderr
        if kind is None:  # an option typer refuses while reading the command line, before the command runs
            assert result.stdout == ""
            continue
        failure = json.loads(result.stdout)
        assert failure == {"error": result.stderr.strip().removeprefix("Error: "), "type": kind, "exit_code": code}
    assert vlmedge_cli("predict", missing, SAMPLE).stdout == ""  # a person's run: the stderr line alone


def test_an_output_that_is_a_link_is_written_through_and_one_that_is_a_pipe_or_device_refused(vit_artifact, tmp_path):
    """Every output was written beside its path and renamed over it: `--json link.json` replaced
    the link with a file (its target left stale), a FIFO's reader got nothing and hung, and as
    root `bench --json /dev/null` replaced /dev/null with a file for every process."""
    from vlmedge.choices import check_writable_file
    from vlmedge.errors import UsageError

    pytest.importorskip("pyarrow")
    real = tmp_path / "real"
    real.mkdir()
    (real / "bench.json").write_text("old")
    os.symlink(real / "bench.json", tmp_path / "bench.json")
    os.symlink(real / "results.parquet", tmp_path / "results.parquet")  # dangling: its target is made, as `>` makes it
    bench = vlmedge_cli("bench", vit_artifact, "--backend", "onnxruntime", "--precision", "fp32", "--batch-size", "1",
                        "--iterations", "2", "--warmup", "0", "--no-roofline", "--json", tmp_path / "bench.json")
    predict = vlmedge_cli("predict", vit_artifact, SAMPLE, "--out", tmp_path / "results.parquet")
    assert bench.returncode == 0 and predict.returncode == 0, bench.stderr + predict.stderr
    assert (tmp_path / "bench.json").is_symlink() and json.loads((real / "bench.json").read_text())["rows"]
    assert (tmp_path / "results.parquet").is_symlink() and (real / "results.parquet").stat().st_size > 0
    assert sorted(p.name for p in real.iterdir()) == ["bench.json", "results.parquet"]  # no temporary left
    os.mkfifo(tmp_path / "fifo.json")
    os.mkfifo(tmp_path / "fifo.parquet")
    for args in (["bench", vit_artifact, "--json", tmp_path / "fifo.json"],
                 ["predict", vit_artifact, SAMPLE, "--out", tmp_path / "fifo.parquet"]):
        refused = vlmedge_cli(*args, timeout=60)
        assert refused.returncode == 2 and "is not a regular file (a pipe, a device or a socket)" in refused.stderr
    assert stat.S_ISFIFO(os.stat(tmp_path / "fifo.json").st_mode)
    for path in ("/dev/null", "//dev/fd/1", "/tmp/../dev/null"):  # checked, never written
        with pytest.raises(UsageError, match=r"^--json \S+ goes through /dev/(null|fd), on /dev, /proc or /sys"):
            check_writable_file(Path(path), f"--json {path}")
    check_writable_file(Path("/dev/shm/results.json"), "--json /dev/shm/results.json")  # plain files there
    # /dev/stdout is /proc/self/fd/1, which resolves to the file the shell sent standard output to:
    # renamed over, `>> build.log` lost the log (through a link, or a link to /proc/self/fd as a
    # folder, or a relative link read beside where it is); a link into a loop of links became a file
    os.symlink("/dev/stdout", tmp_path / "out.json")
    os.symlink("/proc/self/fd", tmp_path / "fds")
    (tmp_path / "a" / "b").mkdir(parents=True)
    os.symlink(tmp_path, tmp_path / "a" / "b" / "up")
    os.symlink("../" * len(tmp_path.parts) + "dev/stdout", tmp_path / "relative.json")
    os.symlink(tmp_path / "loop-b.json", tmp_path / "loop-a.json")
    os.symlink(tmp_path / "loop-a.json", tmp_path / "loop-b.json")
    log = tmp_path / "build.log"
    log.write_text("the log so far\n")
    for target, message in (("out.json", "goes through /dev/stdout, on /dev, /proc or /sys"),
                            ("fds/1", "goes through /proc/self, on /dev, /proc or /sys"),
                            ("a/b/up/relative.json", "goes through /dev/stdout, on /dev, /proc or /sys"),
                            ("loop-a.json", "goes through more than 40 symbolic links (a loop of links?)")):
        with log.open("a") as appended:
            refused = subprocess.run([sys.executable, "-m", "vlmedge", "bench", str(vit_artifact), "--json",
                                      str(tmp_path / target)], stdout=appended, stderr=subprocess.PIPE, text=True,
                                     timeout=120)
        assert refused.returncode == 2 and message in refused.stderr, refused.stderr
    assert log.read_text() == "the log so far\n" and (tmp_path / "loop-a.json").is_symlink()


def test_outputs_on_procfs_mounted_elsewhere_or_in_a_read_only_mount_are_refused_before_any_work(tmp_path):
    """A bind mount of /proc elsewhere (a chroot's, a container's) got past the refusal of paths
    under /proc, its paths reading otherwise: `--json mnt/self/fd/1` replaced the shell's log.
    A folder where no file can be made (a read-only mount; permissions do not tell root) is said
    before any work too."""
    from vlmedge.choices import check_writable_file
    from vlmedge.errors import UsageError

    proc, fresh, host, read_only = tmp_path / "proc", tmp_path / "fresh", tmp_path / "host", tmp_path / "read-only"
    for folder in (proc, fresh, host, read_only):
        folder.mkdir()
    mounted = subprocess.run(["mount", "--bind", "/proc", str(proc)], capture_output=True, text=True)
    if mounted.returncode != 0:
        pytest.skip(f"cannot bind-mount here: {mounted.stderr.strip()}")
    try:
        subprocess.run(["mount", "-t", "proc", "proc", str(fresh)], check=True)  # a device of its own, on new kernels
        for mount in (proc, fresh):
            with pytest.raises(UsageError, match=rf"^--json x goes through {mount}, on /dev, /proc or /sys"):
                check_writable_file(mount / "self" / "fd" / "1", "--json x")
        subprocess.run(["mount", "--bind", str(host), str(read_only)], check=True)
        subprocess.run(["mount", "-o", "remount,bind,ro", str(read_only)], check=True)
        with pytest.raises(UsageError, match=rf"^--json y cannot be written \(.* in {read_only}\); choose a path"):
            check_writable_file(read_only / "r.json", "--json y")
    finally:
        for folder in (proc, fresh, read_only):
            subprocess.run(["umount", str(folder)], capture_output=True)


@pytest.mark.skipif(not os.path.exists("/dev/full"), reason="needs /dev/full")
def test_a_standard_output_that_cannot_be_written_is_one_sentence_not_a_traceback_nor_a_success(vit_artifact,
                                                                                                  tmp_path):
    """`vlmedge info ART > /dev/full` (a full disk) ended in rich's or print's traceback, and
    `vlmedge predict ... --json >&-` (started with standard output closed) exited 0 having
    printed its result nowhere; `export` called it a full disk where its artifact goes."""
    unwritable = "Error: Cannot write to standard output ({}); send it to a file or pipe that can take it.\n"
    for args in (["info", vit_artifact], ["predict", vit_artifact, SAMPLE, "--json"], ["--version"], ["--help"],
                 ["export", "builtin:no-such-model", "-o", tmp_path / "x"]):
        with open("/dev/full", "w") as full:
            result = subprocess.run([sys.executable, "-m", "vlmedge", *map(str, args)], stdout=full,
                                    stderr=subprocess.PIPE, text=True, timeout=300)
        assert (result.returncode, result.stderr) == (1, unwritable.format("No space left on device")), args
        closed = subprocess.run([sys.executable, "-m", "vlmedge", *map(str, args)], stderr=subprocess.PIPE, text=True,
                                timeout=300, preexec_fn=lambda: os.close(1))
        assert (closed.returncode, closed.stderr) == (1, unwritable.format("Bad file descriptor")), args
    assert list(tmp_path.iterdir()) == []


def test_a_closed_standard_output_or_error_is_held_so_that_no_file_takes_its_descriptor(tmp_path):
    """Started with standard error closed (`2>&-`), the next file opened took descriptor 2
    (a bulk run's temporary .parquet), into which ONNX Runtime's or OpenVINO's own prints
    would have gone."""
    opened = ("import os, sys\nfrom vlmedge.cli import _hold_closed_descriptors\n_hold_closed_descriptors()\n"
              f"file = open({str(tmp_path / 'f')!r}, 'w')\n"
              "sys.exit(file.fileno() if os.get_inheritable(1) and os.get_inheritable(2) else 0)")  # children too
    for closed in (1, 2):
        child = subprocess.run([sys.executable, "-c", opened], preexec_fn=lambda fd=closed: os.close(fd), timeout=120)
        assert child.returncode >= 3, closed


def test_a_working_folder_removed_before_the_command_is_one_sentence(vit_artifact, tmp_path):
    """os.getcwd() of a removed folder was a FileNotFoundError traceback (bulk's job, the output
    path check); a command that needs no relative path runs."""
    gone = tmp_path / "gone"
    script = (f"import os, sys\nos.mkdir({str(gone)!r})\nos.chdir({str(gone)!r})\nos.rmdir({str(gone)!r})\n"
              "from vlmedge.cli import main\nmain(sys.argv[1:])")
    run = lambda *args: subprocess.run([sys.executable, "-c", script, *map(str, args)],  # noqa: E731
                                       capture_output=True, text=True, timeout=300)
    for args in (["predict", vit_artifact, SAMPLE, "--out", tmp_path / "r.parquet"],
                 ["bench", vit_artifact, "--json", "relative.json"]):
        result = run(*args)
        assert result.returncode == 2 and "Traceback" not in result.stderr, result.stderr
        assert result.stderr == "Error: The current folder was removed; cd to a folder that exists, or give absolute paths.\n"
    assert run("predict", vit_artifact, SAMPLE, "--json").returncode == 0


def test_bad_usage_exits_2():
    assert vlmedge_cli("predict").returncode == 2
    assert vlmedge_cli("export", "x", "--to").returncode == 2


def test_threads_reach_the_backend_sessions_of_predict_bulk_and_serve(vit_artifact, tmp_path, monkeypatch):
    """--threads of predict (one call, and bulk into Parquet) and serve's load_models reach the
    session ONNX Runtime opens: every open_session vlmedge makes is watched (and run)."""
    pytest.importorskip("pyarrow")
    from typer.testing import CliRunner

    import vlmedge.runtimes.select as select
    from vlmedge.cli import app
    from vlmedge.environment import available_physical_cores
    from vlmedge.serve.app import load_models

    opened: list[int | None] = []
    real_open_session = select.open_session

    def watched(path, **options):
        session = real_open_session(path, **options)
        opened.append(session._session.get_session_options().intra_op_num_threads)
        return session

    monkeypatch.setattr(select, "open_session", watched)
    base = ["--backend", "onnxruntime", "--threads", "1"]
    for args in ([], ["--out", str(tmp_path / "rows.parquet")]):
        opened.clear()
        result = CliRunner().invoke(app, ["predict", str(vit_artifact), str(SAMPLE), *base, *args])
        assert result.exit_code == 0, result.output
        assert opened == [1], args
    opened.clear()
    load_models([str(vit_artifact)], backend="onnxruntime", session_options={"threads": 1})
    assert opened == [1]
    opened.clear()
    assert CliRunner().invoke(app, ["predict", str(vit_artifact), str(SAMPLE), "--backend", "onnxruntime"]).exit_code == 0
    # not ONNX Runtime's own default (0: a thread per physical core of the machine, whatever the affinity)
    assert opened == [available_physical_cores()]


def test_every_line_reaches_a_console_of_no_width_or_of_an_encoding_without_the_labels(vit_artifact, tmp_path):
    """COLUMNS=0 made every command print nothing, errors included, and exit 0 or 1 without a
    word; a console encoding without a label's characters (PYTHONIOENCODING=ascii, cp1252)
    ended predict and info in UnicodeEncodeError tracebacks."""
    import shutil

    artifact = tmp_path / "vit"
    shutil.copytree(vit_artifact, artifact)
    manifest = json.loads((artifact / "manifest.json").read_text())
    manifest["labels"] = ["café", "日本"] + [f"label {i}" for i in range(2, len(manifest["labels"]))]
    (artifact / "manifest.json").write_text(json.dumps(manifest))
    every = ("--top-k", str(len(manifest["labels"])))
    ascii_only = vlmedge_cli("predict", artifact, SAMPLE, *every, env={"PYTHONIOENCODING": "ascii"})
    assert ascii_only.returncode == 0, ascii_only.stderr
    assert "caf\\xe9" in ascii_only.stdout and "\\u65e5\\u672c" in ascii_only.stdout
    assert vlmedge_cli("info", artifact, env={"PYTHONIOENCODING": "ascii"}).returncode == 0
    no_width = vlmedge_cli("predict", artifact, SAMPLE, *every, columns=0)
    assert no_width.returncode == 0 and "café" in no_width.stdout and "label 2" in no_width.stdout
    missing = vlmedge_cli("predict", artifact, tmp_path / "nope.jpg", columns=0)
    assert missing.returncode == 1 and "nope.jpg does not exist" in missing.stderr


def test_a_name_longer_than_the_file_system_takes_is_one_sentence(vit_artifact, tmp_path):
    """A path component over 255 bytes made Path.is_dir raise (ENAMETOOLONG) in the checks
    before any work: an OSError traceback from predict (whose other inputs did not run either),
    info, check, bench and embed --out."""
    long = "x" * 300
    predicted = vlmedge_cli("predict", vit_artifact, tmp_path / f"{long}.jpg", SAMPLE)
    assert predicted.returncode == 1 and "Traceback" not in predicted.stderr, predicted.stderr
    assert SAMPLE.name in predicted.stdout  # the other input ran
    info = vlmedge_cli("info", tmp_path / long)
    assert info.returncode == 1 and info.stderr.startswith("Error: No artifact folder at"), info.stderr
    embedded = vlmedge_cli("embed", vit_artifact, SAMPLE, "--out", tmp_path / f"{long}.npy")
    assert embedded.returncode != 0 and "Traceback" not in embedded.stderr, embedded.stderr
    assert embedded.stderr.strip().splitlines()[-1].endswith("has a name longer than the file system takes (255 bytes); "
                                                             "shorten it.")


def test_a_bulk_job_logging_to_a_file_says_how_far_it_got_as_it_goes(vit_artifact, tmp_path):
    """rich draws its bar on a stderr that is no terminal only once, at the end: a job under
    nohup, a service or CI said nothing until it was done. There, a plain line every
    PROGRESS_LINE_EVERY_S (0 here: one per batch) and one at the end."""
    import shutil

    folder = tmp_path / "photos"
    folder.mkdir()
    for k in range(3):
        shutil.copy(SAMPLE, folder / f"{k}.jpg")
    result = vlmedge_cli("predict", vit_artifact, folder, "--out", tmp_path / "r.parquet", "--batch-size", "1",
                         prelude="import vlmedge.bulk.command as bulk\nbulk.PROGRESS_LINE_EVERY_S = 0")
    assert result.returncode == 0, result.stderr
    lines = [line for line in result.stderr.splitlines() if line.startswith("classify: ")]
    assert [line.split(" inputs")[0] for line in lines] == [
        "classify: 1/3 (33%)", "classify: 2/3 (67%)", "classify: 3/3 (100%)", "classify: 3/3 (100%)"], result.stderr
    assert "\x1b" not in result.stderr


def test_the_partial_results_of_a_killed_run_are_removed_by_the_next_run_to_that_path(vit_artifact, tmp_path):
    """A bulk run killed while writing (SIGKILL, an out-of-memory kill) left its hidden
    .NAME.tmp-PID file, which no later run removed. One still being written is kept, even where
    its pid means nothing here (a run in another container, writing to the same folder)."""
    from vlmedge.build_locks import lock_path

    dead = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True, text=True)
    out = tmp_path / "r.parquet"
    killed = tmp_path / f".r.parquet.tmp-{dead.stdout.strip()}"
    elsewhere = tmp_path / ".r.parquet.tmp-999999999"  # no process here has that pid
    for partial in (killed, elsewhere):
        partial.write_bytes(b"PAR1 half a file")
    writing = lock_path(elsewhere)  # as the run writing it holds it
    try:
        done = vlmedge_cli("predict", vit_artifact, SAMPLE, "--out", out)
    finally:
        os.close(writing)
    assert done.returncode == 0, done.stderr
    assert out.is_file() and not killed.exists() and elsewhere.is_file()
    assert vlmedge_cli("predict", vit_artifact, SAMPLE, "--out", out).returncode == 0
    assert not elsewhere.exists()  # its writer gone (the lock released)


def test_control_characters_in_labels_and_names_are_shown_escaped_not_run(vit_artifact, tmp_path):
    """Labels come from the model's config: ESC sequences in one recoloured (or rewrote) the
    user's terminal through the predict table; a file's name reaches the error lines."""
    import shutil

    artifact = tmp_path / "vit"
    shutil.copytree(vit_artifact, artifact)
    manifest = json.loads((artifact / "manifest.json").read_text())
    manifest["labels"] = (["\x1b[31mred\x1b[0m\x07", "abc\u202edef", "two\nlines\tand a tab"]
                          + [f"label {i}" for i in range(3, len(manifest["labels"]))])
    (artifact / "manifest.json").write_text(json.dumps(manifest))
    bad = tmp_path / "bad\x1b]0;owned\x07.jpg"
    bad.write_text("not an image")
    broken = tmp_path / "broken\nline.jpg"  # a newline would split the one line an error is
    broken.write_text("not an image")
    result = vlmedge_cli("predict", artifact, SAMPLE, bad, broken, "--top-k", str(len(manifest["labels"])))
    assert result.returncode == 1, result.stderr
    assert "\x1b" not in result.stdout + result.stderr and "\x07" not in result.stdout + result.stderr
    assert "\\x1b[31mred\\x1b[0m\\x07" in result.stdout and "bad\\x1b]0;owned\\x07.jpg" in result.stderr
    assert "two\\nlines\\tand a tab" in result.stdout and "two\nlines" not in result.stdout
    assert "broken\\nline.jpg" in result.stderr and "broken\nline" not in result.stderr
    assert "\u202e" not in result.stdout and "abc\\u202edef" in result.stdout
    info = vlmedge_cli("info", artifact)  # its labels line, as every line a command prints
    assert info.returncode == 0 and "\x1b" not in info.stdout and "\\x1b[31mred" in info.stdout
    as_json = vlmedge_cli("predict", artifact, SAMPLE, "--json", "--top-k", str(len(manifest["labels"])))
    labels = {p["label"] for p in json.loads(as_json.stdout)[0]["predictions"]}
    assert manifest["labels"][0] in labels  # the data itself is as the model names it
