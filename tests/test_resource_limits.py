"""The runtime within the process's limits: ONNX Runtime computes on as many threads as the
process may use cores (taskset, a container's cpuset), and so do the decode threads and
the server's preparation slots; running out of threads or memory, or a corrupt IR, says so
in one sentence with what to do. The limits are real ones, set in a child process."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import tempfile
import textwrap
from pathlib import Path

import pytest

import vlmedge
from vlmedge.artifact import sha256_file
from vlmedge.errors import ArtifactError, first_line
from vlmedge.runtimes.base import backend_message, resources_exhausted

REPO = Path(__file__).resolve().parents[1]
pytestmark = pytest.mark.skipif(sys.platform != "linux", reason="sets Linux's process limits and reads its /proc")
CPUS = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else 1
needs_two_cpus = pytest.mark.skipif(CPUS < 2, reason="needs two CPUs, to pin a process to one")

# What the children share: the threads this process has now, and limits set on it.
HELPERS = """
import json, os, resource, sys
from pathlib import Path


def threads():
    return len(os.listdir("/proc/self/task"))


def limit_threads():
    # no further thread: root is not bound by RLIMIT_NPROC, so a root child becomes nobody (65534)
    resource.setrlimit(resource.RLIMIT_NPROC, (1, 1))
    if os.getuid() == 0:
        os.setresuid(65534, 65534, 65534)


def limit_memory(headroom_mb):
    # the address space this process maps now, and headroom_mb more
    size = next(int(line.split()[1]) * 1024 for line in open("/proc/self/status") if line.startswith("VmSize:"))
    limit = size + int(headroom_mb * 2**20)
    resource.setrlimit(resource.RLIMIT_AS, (limit, limit))


def error_of(make):
    try:
        make()
    except Exception as exc:
        return [type(exc).__name__, str(exc)]
    return None
"""


def eight_mb_thread_stacks() -> None:
    """The stack size a new process gives its threads, as most shells' ulimit -s (8 MB), so that
    a memory limit is met where the tests expect it (ONNX Runtime hangs, rather than fails,
    without memory for some of its threads' 2 MB stacks under `ulimit -s unlimited`)."""
    import resource

    _, hard = resource.getrlimit(resource.RLIMIT_STACK)
    wanted = 8 * 2**20 if hard == resource.RLIM_INFINITY else min(8 * 2**20, hard)
    resource.setrlimit(resource.RLIMIT_STACK, (wanted, hard))


def in_child(code: str, *args: object) -> dict:
    """Runs HELPERS + code in a fresh Python (sys.argv[1:]: args); the JSON it printed last."""
    result = subprocess.run([sys.executable, "-c", HELPERS + textwrap.dedent(code), *map(str, args)],
                            capture_output=True, text=True, timeout=180, cwd=REPO, preexec_fn=eight_mb_thread_stacks)
    assert result.returncode == 0, result.stdout + result.stderr
    return json.loads(result.stdout.strip().splitlines()[-1])


@pytest.fixture
def readable_model_files(vit_artifact):
    """The ONNX file of the tiny ViT in a folder anyone may read (a child that drops to nobody
    reads it), removed afterwards."""
    folder = Path(tempfile.mkdtemp(prefix="vlmedge-limits-"))
    try:
        os.chmod(folder, 0o755)
        model = folder / "model.fp32.onnx"
        shutil.copyfile(vit_artifact / "onnx" / "model.fp32.onnx", model)
        os.chmod(model, 0o644)
        yield folder
    finally:
        shutil.rmtree(folder)


# -- threads that fit the CPUs the process may use -----------------------------------------------

@needs_two_cpus
def test_onnx_runtime_computes_on_one_thread_per_core_the_process_may_use(vit_artifact):
    """Pinned to one CPU, a session without `threads` starts no pool thread (ONNX Runtime's own
    default started one per core of the machine, spinning on the one CPU at half the speed);
    unpinned, one thread besides the caller's per physical core."""
    code = """
        if sys.argv[2] == "one":
            os.sched_setaffinity(0, {min(os.sched_getaffinity(0))})
        from vlmedge.environment import available_physical_cores
        from vlmedge.runtimes.onnxruntime import OnnxRuntimeSession
        before = threads()
        session = OnnxRuntimeSession(Path(sys.argv[1]))
        print(json.dumps({"started": threads() - before, "cores": available_physical_cores()}))
    """
    model = vit_artifact / "onnx" / "model.fp32.onnx"
    assert in_child(code, model, "one") == {"started": 0, "cores": 1}
    unpinned = in_child(code, model, "all")
    assert unpinned["started"] == unpinned["cores"] - 1


@needs_two_cpus
def test_decode_workers_and_serve_preparation_count_the_cores_the_process_may_use():
    code = """
        import asyncio
        os.sched_setaffinity(0, {min(os.sched_getaffinity(0))})
        from vlmedge.preprocess.parallel import DEFAULT_WORKERS
        from vlmedge.serve import create_app
        slots = create_app({}, warm_up=False).state.vlmedge.prepare_slots

        async def full_after_one():
            await slots.acquire()
            return slots.locked()

        print(json.dumps({"decode_workers": DEFAULT_WORKERS, "one_slot": asyncio.run(full_after_one())}))
    """
    assert in_child(code) == {"decode_workers": 1, "one_slot": True}


# -- no threads left -----------------------------------------------------------------------------

@needs_two_cpus
def test_onnx_runtime_at_a_thread_limit_says_so_and_runs_on_one_thread(readable_model_files):
    code = """
        from vlmedge.runtimes.onnxruntime import OnnxRuntimeSession
        model = Path(sys.argv[1]) / "model.fp32.onnx"
        limit_threads()
        print(json.dumps({"default": error_of(lambda: OnnxRuntimeSession(model)),
                          "one_thread": error_of(lambda: OnnxRuntimeSession(model, threads=1))}))
    """
    outcome = in_child(code, readable_model_files)
    assert outcome["default"] == [
        "BackendUnavailableError",
        "ONNX Runtime could not start its threads while loading model.fp32.onnx (a process or thread limit such as "
        "ulimit -u, or too little memory for their stacks); raise the limit or pass --threads 1."]
    assert outcome["one_thread"] is None  # the advice works: one thread is the caller's own


def test_openvino_at_a_thread_limit_says_its_cpu_plugin_could_not_start():
    """Its device list, empty, was reported as "no device 'cpu' (it has: none)"."""
    pytest.importorskip("openvino")
    code = """
        from vlmedge.runtimes.openvino import device_name
        limit_threads()
        print(json.dumps({"error": error_of(lambda: device_name("cpu"))}))
    """
    assert in_child(code)["error"] == [
        "BackendUnavailableError",
        "OpenVINO could not start its threads while starting its CPU plugin (a process or thread limit such as "
        "ulimit -u, or too little memory for their stacks); raise the limit or use --backend onnxruntime --threads 1."]


def test_decoding_at_a_thread_limit_says_so():
    code = """
        from concurrent.futures import ThreadPoolExecutor  # before the limit: nobody may not read this Python's files
        from vlmedge.preprocess.parallel import prepare_ordered
        limit_threads()
        print(json.dumps({"error": error_of(lambda: list(prepare_ordered(str, range(4), workers=2)))}))
    """
    assert in_child(code)["error"] == [
        "BackendUnavailableError",
        "vlmedge could not start its decode threads (a process or thread limit such as ulimit -u); raise the limit "
        "or pass --decode-workers 1 (decode_workers=1)."]


# -- no memory left ------------------------------------------------------------------------------

def test_openvino_without_memory_for_its_cpu_plugin_says_it_ran_out():
    """16 MB more address space than the process has mapped cannot hold the CPU plugin's
    library (tens of MB), as under `ulimit -v 300000` for `vlmedge predict`."""
    pytest.importorskip("openvino")
    code = """
        from vlmedge.runtimes.openvino import device_name
        limit_memory(16)
        print(json.dumps({"error": error_of(lambda: device_name("cpu"))}))
    """
    assert in_child(code)["error"] == [
        "BackendUnavailableError",
        "OpenVINO ran out of memory while starting its CPU plugin; free memory or raise the process's limit "
        "(ulimit -v), or use a smaller precision."]


def test_onnx_runtime_without_memory_to_load_says_it_ran_out(vit_artifact):
    """4 MB more address space than mapped: the stacks of its 4 threads (8 MB each, as a rule)
    or its allocations fail (pthread_create's ENOMEM, std::bad_alloc), which read as a corrupt
    file."""
    code = """
        from vlmedge.runtimes.onnxruntime import OnnxRuntimeSession
        model = Path(sys.argv[1])
        limit_memory(4)
        print(json.dumps({"error": error_of(lambda: OnnxRuntimeSession(model, threads=4))}))
    """
    assert in_child(code, vit_artifact / "onnx" / "model.fp32.onnx")["error"] == [
        "BackendUnavailableError",
        "ONNX Runtime ran out of memory while loading model.fp32.onnx; free memory or raise the process's limit "
        "(ulimit -v), or use a smaller precision."]


# OpenVINO's own words, as it raised them under `ulimit -v 600000` (its compile's std::bad_alloc
# comes and goes with the headroom, so the texts are kept here) and for a truncated weights file.
OPENVINO_OUT_OF_MEMORY = ("Exception from src/inference/src/cpp/core.cpp:117:\n"
                          "Exception from src/plugins/intel_cpu/src/plugin.cpp:54:\nstd::bad_alloc\n\n")
OPENVINO_BAD_WEIGHTS = ("Exception from src/inference/src/cpp/core.cpp:105:\n"
                        "Check 'is_valid_weights_range(m_weights_provider->size(), offset, size)' failed at "
                        "src/core/xml_util/src/xml_deserialize_util.cpp:900:\nIncorrect weights in bin file!\n\n")
ORT_NO_THREADS = ("/onnxruntime_src/onnxruntime/core/platform/posix/env.cc:327 onnxruntime::{anonymous}::PosixThread::"
                  "PosixThread(const char*, int, unsigned int (*)(int, Eigen::ThreadPoolInterface*), Eigen::"
                  "ThreadPoolInterface*, const onnxruntime::ThreadOptions&) pthread_create failed, error code: 11 "
                  "error msg: Resource temporarily unavailable\n")


def test_backend_messages_are_their_meaningful_lines_never_cut_mid_word():
    assert backend_message(RuntimeError(OPENVINO_BAD_WEIGHTS)) == "Incorrect weights in bin file!"
    assert backend_message(RuntimeError("Exception from a.cpp:1:\nfirst\nException from b.cpp:2:\nsecond\n")) == \
        "first; second"
    # 120 characters end in "char*": the quote ends at the word before it
    assert backend_message(RuntimeError(ORT_NO_THREADS), limit=120) == \
        ORT_NO_THREADS[:ORT_NO_THREADS.index(" char*")] + "…"
    # the first line any error quotes of a library's exception is cut the same way
    assert first_line(RuntimeError(ORT_NO_THREADS), limit=120) == ORT_NO_THREADS[:ORT_NO_THREADS.index(" char*")] + "…"
    memory = resources_exhausted("OpenVINO", "while compiling model.fp32.xml for CPU", RuntimeError(OPENVINO_OUT_OF_MEMORY),
                                 fewer_threads="use --backend onnxruntime --threads 1")
    assert str(memory) == ("OpenVINO ran out of memory while compiling model.fp32.xml for CPU; free memory or raise "
                           "the process's limit (ulimit -v), or use a smaller precision.")
    assert resources_exhausted("OpenVINO", "while reading model.fp32.xml", RuntimeError(OPENVINO_BAD_WEIGHTS),
                               fewer_threads="") is None


# -- a corrupt IR --------------------------------------------------------------------------------

def test_a_truncated_ir_weights_file_whose_hash_matches_says_re_export(two_target_artifact, tmp_path):
    """The manifest's hash of the .bin matches (the artifact itself is bad, not changed since):
    OpenVINO's refusal was a BackendUnavailableError of its raw, multi-line text."""
    pytest.importorskip("openvino")
    root = tmp_path / "artifact"
    shutil.copytree(two_target_artifact, root)
    weights = root / "openvino" / "model.fp32.bin"
    with open(weights, "r+b") as f:
        f.truncate(weights.stat().st_size // 2)
    manifest = json.loads((root / "manifest.json").read_text())
    entry = next(e for e in manifest["files"] if e["path"] == "openvino/model.fp32.bin")
    entry.update(sha256=sha256_file(weights), size=weights.stat().st_size)
    (root / "manifest.json").write_text(json.dumps(manifest))
    with pytest.raises(ArtifactError) as refused:
        vlmedge.load(root, backend="openvino", precision="fp32", cache=False)
    assert str(refused.value) == ("OpenVINO cannot read model.fp32.xml: Incorrect weights in bin file!; the file is "
                                  "corrupt or not an IR this OpenVINO reads. Re-export it.")
