"""A fork server that runs `vlmedge export` in child processes, for the kill tests.

Importing torch and transformers takes seconds; killing a fresh `vlmedge export` process
at random points would mostly hit those imports. This process imports them once (and
warms their lazy parts), then forks one child per request; each child runs the real
command line (vlmedge.cli.main) from the start and is the process the test kills. The
children run torch single-threaded, which for the tiny test model costs nothing.

Protocol (one JSON document per line):
    stdin:  ["export", MODEL, "-o", OUT, ...]      argv for vlmedge
    stdout: {"pid": N}                              the child started
            {"pid": N, "status": S, "signal": K}    the child ended (exit status, or the signal that killed it)
Run: python tests/hardening_export_worker.py   (prints {"ready": true} first)
"""

from __future__ import annotations

import json
import os
import signal
import sys
import warnings


def _child(argv: list[str]) -> None:
    signal.signal(signal.SIGINT, signal.default_int_handler)  # Ctrl-C -> KeyboardInterrupt, as in a shell
    devnull = os.open(os.devnull, os.O_WRONLY)
    os.dup2(devnull, 1)
    os.dup2(devnull, 2)
    code = 0
    try:
        from vlmedge.cli import main

        main(argv)
    except SystemExit as exc:
        code = exc.code if isinstance(exc.code, int) else (0 if exc.code is None else 1)
    except KeyboardInterrupt:
        code = 130
    except BaseException:  # noqa: BLE001 - the exit status says it failed
        code = 99
    os._exit(code)


def _warm_up() -> None:
    """Does once, in the server, the slow first-time work every child would repeat: lazy
    imports (transformers' model modules, torch.onnx, onnx, Pillow's plugins) and a tiny
    torch -> ONNX -> ONNX Runtime round trip. Single-threaded, so that no thread pool
    exists when the server forks (OpenMP pools do not survive fork)."""
    import io

    import onnx.checker  # noqa: F401
    import onnx.shape_inference  # noqa: F401
    import onnxruntime as ort
    import torch
    import transformers
    from PIL import Image

    import vlmedge.cli  # noqa: F401
    import vlmedge.exporters.onnx  # noqa: F401
    import vlmedge.exporters.reference  # noqa: F401
    import vlmedge.exporters.pipeline  # noqa: F401
    import vlmedge.exporters.samples  # noqa: F401
    import vlmedge.exporters.sources.hf  # noqa: F401
    import vlmedge.runtimes.onnxruntime  # noqa: F401

    Image.init()
    for name in ("ViTForImageClassification", "ViTConfig", "AutoConfig"):
        getattr(transformers, name)
    torch.set_num_threads(1)
    buffer = io.BytesIO()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        torch.onnx.export(torch.nn.Linear(2, 2), (torch.zeros(1, 2),), buffer, dynamo=False)
    options = ort.SessionOptions()
    options.intra_op_num_threads = options.inter_op_num_threads = 1
    session = ort.InferenceSession(buffer.getvalue(), sess_options=options, providers=["CPUExecutionProvider"])
    del session


def main() -> None:
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    _warm_up()
    print(json.dumps({"ready": True}), flush=True)
    for line in sys.stdin:
        argv = json.loads(line)
        pid = os.fork()
        if pid == 0:
            _child(argv)
        print(json.dumps({"pid": pid}), flush=True)
        _, status = os.waitpid(pid, 0)
        print(json.dumps({"pid": pid, "status": os.waitstatus_to_exitcode(status),
                          "signal": os.WTERMSIG(status) if os.WIFSIGNALED(status) else None}), flush=True)


if __name__ == "__main__":
    main()
