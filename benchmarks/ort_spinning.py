"""ONNX Runtime's intra-op spinning on (its default) against off, side by side in one process:
whether turning it off would let `vlmedge embed`'s decode workers keep up on a small machine.

    (1) batch-1 latency of the ViT-B/16 fp32 file benchmarks/quantization.py exported,
        interleaved (6 rounds x 5 calls, median);
    (2) embed_throughput.measure() for the DINOv2-S/14 artifact benchmarks/embed_throughput.py
        exported: model only, `embed FOLDER` with 2 decode workers and serially.

    .venv/bin/python benchmarks/quantization.py && .venv/bin/python benchmarks/embed_throughput.py
    .venv/bin/python benchmarks/ort_spinning.py

Prints the figures (the decision they led to is in benchmarks/README.md, End-to-end embedding).
"""

from __future__ import annotations

import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import onnxruntime as ort

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))

SPIN = "session.intra_op.allow_spinning"


def batch1_latency(model: Path) -> dict[bool, float]:
    sessions = {}
    for spin in (True, False):
        options = ort.SessionOptions()
        options.intra_op_num_threads = os.cpu_count() or 1
        options.add_session_config_entry(SPIN, "1" if spin else "0")
        sessions[spin] = ort.InferenceSession(str(model), options, providers=["CPUExecutionProvider"])
    feeds = {sessions[True].get_inputs()[0].name: np.random.default_rng(0).standard_normal((1, 3, 224, 224),
                                                                                             dtype=np.float32)}
    times: dict[bool, list[float]] = {True: [], False: []}
    for session in sessions.values():
        for _ in range(3):
            session.run(None, feeds)
    for _ in range(6):
        for spin, session in sessions.items():
            for _ in range(5):
                t0 = time.perf_counter()
                session.run(None, feeds)
                times[spin].append((time.perf_counter() - t0) * 1e3)
    return {spin: statistics.median(values) for spin, values in times.items()}


def embed_rates(work: Path, spin: bool) -> dict[str, float]:
    """embed_throughput.measure() with vlmedge's ONNX Runtime sessions opened with spinning on or off."""
    import embed_throughput

    real = ort.SessionOptions

    class Options(real):
        def __init__(self) -> None:
            super().__init__()
            self.add_session_config_entry(SPIN, "1" if spin else "0")

    ort.SessionOptions = Options  # what vlmedge.runtimes.onnxruntime builds its sessions with
    try:
        result = embed_throughput.measure(work / "dinov2-s14-onnx", work / "photos-200", "onnxruntime", "fp32",
                                          embed_throughput.embed_batch_size(), 2, 1, work,
                                          embed_throughput.hf_processor(work / "dinov2-s14-source"))
    finally:
        ort.SessionOptions = real
    return result["images_per_s"]


def main() -> int:
    temp = Path(tempfile.gettempdir())
    print(f"load average {os.getloadavg()}")
    latency = batch1_latency(temp / "vlmedge-bench-quantization" / "vit-b16" / "onnx" / "model.fp32.onnx")
    print(f"ViT-B/16 fp32, batch 1, median ms: spinning on {latency[True]:.1f}, off {latency[False]:.1f}")
    for spin in (True, False):
        print(f"DINOv2-S/14 images/s, spinning {'on' if spin else 'off'}: "
              f"{embed_rates(temp / 'vlmedge-bench-embed-throughput', spin)}")
    print(f"load average {os.getloadavg()}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
