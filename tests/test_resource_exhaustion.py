"""Files and commands that would exhaust the machine: an ONNX file whose model-local functions
inline to billions of nodes (ONNX Runtime spins on it for ever), parity arrays more than this
machine's memory holds, and a command that runs out of memory. Each ends in one sentence."""

from __future__ import annotations

import json
import subprocess
import sys
import textwrap
import zipfile
from pathlib import Path

import numpy as np
import pytest

from vlmedge.artifact import sha256_file
from tests.hardening_support import tiny_classifier_artifact
from tests.test_cli import SAMPLE, vlmedge_cli

onnx = pytest.importorskip("onnx")
from onnx import TensorProto, helper  # noqa: E402

FAN_OUT_LEVELS = 30  # 2^30 nodes once inlined: ONNX Runtime would never finish loading it
OPSETS = [helper.make_opsetid("", 18), helper.make_opsetid("local.fn", 1)]


def _model_file(path: Path, nodes: list, functions: list) -> Path:
    """x (batch, 4) -> nodes -> y (batch, 4), with these model-local functions."""
    graph = helper.make_graph(nodes, "g", [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["batch", 4])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["batch", 4])])
    model = helper.make_model(graph, functions=functions, opset_imports=OPSETS)
    model.ir_version = 8  # functions need 8; the onnxruntime installed may not read the newest
    path.write_bytes(model.SerializeToString())
    return path


def _fan_out_functions(levels: int) -> list:
    """F0(x) = F1(F1(x)), F1(x) = F2(F2(x)), ..., F{levels}(x) = Identity(x)."""
    functions = [helper.make_function("local.fn", f"F{i}", ["x"], ["y"],
                                      [helper.make_node(f"F{i + 1}", ["x"], ["t"], domain="local.fn"),
                                       helper.make_node(f"F{i + 1}", ["t"], ["y"], domain="local.fn")], OPSETS)
                 for i in range(levels)]
    return functions + [helper.make_function("local.fn", f"F{levels}", ["x"], ["y"],
                                             [helper.make_node("Identity", ["x"], ["y"])], OPSETS)]


def _in_if_branch(node, source: str) -> list:
    """y = `node` run in the then-branch of an If whose condition is a constant True, its
    `source` passed on unchanged in the else-branch."""
    branch = helper.make_graph([node], "then", [], [helper.make_tensor_value_info(node.output[0], TensorProto.FLOAT,
                                                                                   None)])
    otherwise = helper.make_graph([helper.make_node("Identity", [source], ["passed"])], "else", [],
                                  [helper.make_tensor_value_info("passed", TensorProto.FLOAT, None)])
    condition = helper.make_node("Constant", [], ["condition"], value=helper.make_tensor("c", TensorProto.BOOL, [],
                                                                                          [True]))
    return [condition, helper.make_node("If", ["condition"], ["y"], then_branch=branch, else_branch=otherwise)]


# open_session in a child process: handed the file unchecked, ONNX Runtime would spin on it
# for ever, and only a process can be stopped then (subprocess.run kills it at the timeout)
OPEN_IN_CHILD = textwrap.dedent("""
    import json, sys, time
    import vlmedge.runtimes.onnxruntime  # imported before the clock starts: the refusal alone is timed
    from vlmedge.errors import VlmedgeError
    from vlmedge.runtimes.base import open_session
    started = time.perf_counter()
    try:
        open_session(sys.argv[1], cache=sys.argv[2] == "cache")
        outcome = {"error": None}
    except VlmedgeError as exc:
        outcome = {"error": type(exc).__name__, "message": str(exc)}
    print(json.dumps({**outcome, "seconds": time.perf_counter() - started}))
""")


@pytest.mark.parametrize("cache", [False, True], ids=["uncached", "cached"])
@pytest.mark.parametrize("where", ["graph", "if-branch"])
def test_functions_that_inline_to_a_billion_nodes_are_refused_at_once(tmp_path, where, cache):
    if where == "graph":
        nodes = [helper.make_node("F0", ["x"], ["y"], domain="local.fn")]
    else:
        nodes = _in_if_branch(helper.make_node("F0", ["x"], ["fanned"], domain="local.fn"), "x")
    path = _model_file(tmp_path / "fan-out.onnx", nodes, _fan_out_functions(FAN_OUT_LEVELS))
    assert path.stat().st_size < 10_000  # a small file: the bomb is in the inlining
    child = subprocess.run([sys.executable, "-c", OPEN_IN_CHILD, str(path), "cache" if cache else "off"],
                           capture_output=True, text=True, timeout=60)
    assert child.returncode == 0, child.stderr
    outcome = json.loads(child.stdout.splitlines()[-1])
    assert outcome["error"] == "ArtifactError", outcome
    assert outcome["message"] == ("fan-out.onnx would have more than 1,000,000 nodes once its functions are "
                                  "inlined, more than any real model; refusing to load it.")
    assert outcome["seconds"] < 1.0, outcome


def test_functions_that_call_each_other_in_a_loop_are_refused(tmp_path):
    from vlmedge.errors import ArtifactError
    from vlmedge.runtimes.base import open_session

    ping = helper.make_function("local.fn", "Ping", ["x"], ["y"], [helper.make_node("Pong", ["x"], ["y"],
                                                                                     domain="local.fn")], OPSETS)
    pong = helper.make_function("local.fn", "Pong", ["x"], ["y"], [helper.make_node("Ping", ["x"], ["y"],
                                                                                     domain="local.fn")], OPSETS)
    path = _model_file(tmp_path / "loop.onnx", [helper.make_node("Ping", ["x"], ["y"], domain="local.fn")],
                       [ping, pong])
    with pytest.raises(ArtifactError, match=r"^loop\.onnx has a function that calls itself, directly or through "
                                            r"others \(local\.fn\.Ping\); refusing to load it\.$"):
        open_session(path)


@pytest.mark.parametrize("cache", [False, True], ids=["uncached", "cached"])
def test_a_model_with_a_small_function_still_loads_and_answers(tmp_path, cache):
    """A legitimate function, called twice from the graph and once from an If's branch: the
    count stays far below the bound and ONNX Runtime runs it as before."""
    from vlmedge.runtimes.base import open_session

    add_one = helper.make_function("local.fn", "AddOne", ["a"], ["b"], [
        helper.make_node("Constant", [], ["one"], value_float=1.0), helper.make_node("Add", ["a", "one"], ["b"])],
        OPSETS)
    calls = [helper.make_node("AddOne", ["x"], ["t"], domain="local.fn"),
             helper.make_node("AddOne", ["t"], ["u"], domain="local.fn")]
    last = _in_if_branch(helper.make_node("AddOne", ["u"], ["v"], domain="local.fn"), "u")
    path = _model_file(tmp_path / "add-three.onnx", calls + last, [add_one])
    session = open_session(path, cache=cache)
    x = np.arange(8, dtype=np.float32).reshape(2, 4)
    np.testing.assert_array_equal(session.run({"x": x})["y"], x + 3)


def _rehash(root: Path, relpath: str) -> None:
    """The manifest's size and sha256 of a file made to match it, as a thorough tamperer would."""
    manifest = json.loads((root / "manifest.json").read_text())
    entry = next(e for e in manifest["files"] if e["path"] == relpath)
    entry.update(sha256=sha256_file(root / relpath), size=(root / relpath).stat().st_size)
    (root / "manifest.json").write_text(json.dumps(manifest))


def _under_a_limit(imports: str, call: str, error: str) -> str:
    """A child's script: the imports, then its address space capped at what it maps plus 64 MiB,
    then the call, printing the VlmedgeError it raises."""
    return textwrap.dedent(f"""
        import re, resource, sys
        {imports}
        from vlmedge.errors import {error}
        with open("/proc/self/status") as status:
            mapped = int(re.search(r"VmSize:\\s+(\\d+) kB", status.read()).group(1)) * 1024
        resource.setrlimit(resource.RLIMIT_AS, (mapped + 64 * 2**20, resource.RLIM_INFINITY))
        try:
            {call}
        except {error} as exc:
            print(exc)
    """)


# the parity array below (200 MiB, within PARITY_MAX_BYTES) cannot be loaded within the limit
CHECK_UNDER_A_LIMIT = _under_a_limit("import numpy, onnxruntime; from vlmedge.check import check_artifact",
                                     "check_artifact(sys.argv[1])", "ArtifactError")


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="reads /proc/self/status")
def test_check_says_so_when_the_parity_arrays_do_not_fit_in_memory(tmp_path):
    root = tiny_classifier_artifact(tmp_path / "art")
    with zipfile.ZipFile(root / "samples" / "parity.npz", "w", zipfile.ZIP_DEFLATED) as archive:
        with archive.open("model.input.pixel_values.npy", "w") as member:  # 200 MiB of zeros, ~200 KB deflated
            np.lib.format.write_array_header_1_0(member, {"descr": "<f4", "fortran_order": False,
                                                          "shape": (50 * 2**20,)})
            for _ in range(200):
                member.write(bytes(2**20))
    _rehash(root, "samples/parity.npz")
    child = subprocess.run([sys.executable, "-c", CHECK_UNDER_A_LIMIT, str(root)], capture_output=True, text=True,
                           timeout=120)
    assert child.returncode == 0 and "Traceback" not in child.stderr, child.stderr
    assert child.stdout.strip() == (f"This machine ran out of memory loading samples/parity.npz of {root}; free "
                                    "memory and run the check again.")


# a 6000x6000 photo (108 MB of pixels) cannot be decoded within the limit
DECODE_UNDER_A_LIMIT = _under_a_limit("from vlmedge.preprocess.image import load_image", "load_image(sys.argv[1])",
                                      "InputError")


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="reads /proc/self/status")
def test_an_image_too_large_for_the_memory_left_is_not_called_corrupt(tmp_path):
    """A good photo decoded where memory ran out was said to be "truncated or corrupt"."""
    from PIL import Image

    photo = tmp_path / "photo.png"
    Image.new("RGB", (6000, 6000), (90, 140, 200)).save(photo)
    child = subprocess.run([sys.executable, "-c", DECODE_UNDER_A_LIMIT, str(photo)], capture_output=True, text=True,
                           timeout=120)
    assert child.returncode == 0 and "Traceback" not in child.stderr, child.stderr
    assert child.stdout.strip() == (f"Image file {photo} could not be decoded: this process ran out of memory; free "
                                    "memory or raise its limit (ulimit -v), or downscale the image.")


# Where memory runs out is the machine's to decide (under `ulimit -v`, an export fails in an
# import, in torch's C++ allocator or in OpenVINO's, depending on the machine), so the command
# below meets a MemoryError of its own: an allocation no machine can make, in place of the work.
OUT_OF_MEMORY = "def _out_of_memory(*args, **kwargs):\n    return bytearray(2**62)\n"


def test_an_export_that_runs_out_of_memory_says_so_in_one_sentence(tmp_path):
    result = vlmedge_cli("export", "builtin:shapes-vit", "-o", tmp_path / "out", "-q",
                         prelude=OUT_OF_MEMORY + "import vlmedge\nvlmedge.export = _out_of_memory")
    assert result.returncode == 1
    assert "Traceback" not in result.stderr
    assert result.stderr == ("Error: vlmedge export ran out of memory; free memory or raise this process's memory "
                             "limit (ulimit -v).\n")


def test_a_prediction_that_runs_out_of_memory_suggests_a_smaller_batch(tmp_path):
    root = tiny_classifier_artifact(tmp_path / "art")
    result = vlmedge_cli("predict", root, SAMPLE, prelude=OUT_OF_MEMORY + "import vlmedge.tasks\n"
                                                                        "vlmedge.tasks.load = _out_of_memory")
    assert result.returncode == 1
    assert "Traceback" not in result.stderr
    assert result.stderr == ("Error: vlmedge predict ran out of memory; free memory, lower --batch-size, or raise "
                             "this process's memory limit (ulimit -v).\n")


def test_a_target_that_runs_out_of_memory_is_not_blamed():
    """A converter's MemoryError says that memory ran out, not to export without the target."""
    from vlmedge.exporters.pipeline import _build_failure

    error = _build_failure("model", "openvino", "fp32", MemoryError())
    assert str(error) == ("Building the openvino fp32 file of graph 'model' ran out of memory; free memory or raise "
                          "this process's memory limit (ulimit -v).")
    assert error.variant == ("openvino", "fp32")
