"""Memory soak: resident memory over many calls of one loaded pipeline, per CPU backend.

For each CPU backend present (ONNX Runtime; OpenVINO when installed) and each pipeline
(the image classifier on a tiny ViT artifact; the audio tagger and the CLIP towers on tiny
ONNX graphs with their inputs and outputs), a fresh process loads the pipeline, warms it
up, then makes N calls (10,000 by default) cycling through varied inputs (arrays, encoded
bytes and files of several sizes; clips at several sample rates; captions of every
length), sampling its RSS every 250 calls. It reports the RSS after warm-up, the total
growth over the N calls and the slope of a least-squares line through the samples in MB
per 1000 calls. The target is < 20 MB total growth.

    .venv/bin/python benchmarks/memory_soak.py                  # all backends and pipelines
    .venv/bin/python benchmarks/memory_soak.py --calls 2000 --pipelines classifier
    .venv/bin/python benchmarks/memory_soak.py --json benchmarks/results/memory_soak.json

Needs the export extra (torch, transformers) to build the tiny ViT once; run it on a quiet
machine (the load average is recorded with the figures).
"""

from __future__ import annotations

import argparse
import io
import json
import os
import platform
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
PIPELINES = ("classifier", "audio", "clip")
TARGET_MB = 20.0
SAMPLE_EVERY = 250


def rss_mb() -> float:
    """Resident set size of this process in MB (Linux /proc; psutil elsewhere)."""
    try:
        with open("/proc/self/statm") as f:
            return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE") / 1e6
    except OSError:
        import psutil

        return psutil.Process().memory_info().rss / 1e6


def _slope_per_1000(calls: list[int], rss: list[float]) -> float:
    import numpy as np

    if len(calls) < 2:
        return 0.0
    return float(np.polyfit(np.asarray(calls, float), np.asarray(rss, float), 1)[0] * 1000)


def _classifier_calls(backend: str, artifact: Path, work: Path):
    import numpy as np
    from PIL import Image

    import vlmedge
    from tests.hardening_support import pipeline_from, to_backend

    if backend == "onnxruntime":
        classifier = vlmedge.load(artifact, backend=backend)
    else:
        from vlmedge.artifact import Artifact
        from vlmedge.runtimes.base import open_session
        from vlmedge.tasks.classifier import ImageClassifier

        art = Artifact.open(artifact)
        onnx_copy = work / "model.onnx"
        onnx_copy.write_bytes(art.path_of("onnx/model.fp32.onnx").read_bytes())
        session = open_session(to_backend(onnx_copy, backend), backend=backend)
        manifest = {k: v for k, v in art.manifest.items() if k not in ("files", "graphs")}
        classifier = pipeline_from(ImageClassifier, work, {"model": session}, manifest, backend)
    rng = np.random.default_rng(0)
    inputs: list = []
    for i in range(12):
        array = rng.integers(0, 256, (int(rng.integers(16, 200)), int(rng.integers(16, 200)), 3), dtype=np.uint8)
        if i % 3 == 0:
            inputs.append(array)
        elif i % 3 == 1:
            buffer = io.BytesIO()
            Image.fromarray(array).save(buffer, "PNG" if i % 2 else "JPEG")
            inputs.append(buffer.getvalue())
        else:
            path = work / f"image-{i}.jpg"
            Image.fromarray(array).save(path)
            inputs.append(str(path))
    batches = [[inputs[i]] for i in range(len(inputs))] + [inputs[:5], inputs[5:]]
    return lambda k: classifier.classify(batches[k % len(batches)], top_k=3)


def _audio_calls(backend: str, work: Path):
    import numpy as np

    from tests.hardening_support import tiny_audio_tagger

    tagger = tiny_audio_tagger(work, backend)
    rng = np.random.default_rng(1)
    rates = (8000, 16000, 22050, 44100)
    clips = [((0.3 * rng.standard_normal(int(rates[i % 4] * (0.1 + 0.07 * i)))).astype(np.float32), rates[i % 4])
             for i in range(10)]
    return lambda k: tagger.tag(clips[k % len(clips)][0], sample_rate=clips[k % len(clips)][1], top_k=3)


def _clip_calls(backend: str, work: Path):
    import numpy as np

    from tests.hardening_support import tiny_clip

    clip = tiny_clip(work, backend)
    rng = np.random.default_rng(2)
    images = [rng.integers(0, 256, (int(rng.integers(16, 120)), int(rng.integers(16, 120)), 3), dtype=np.uint8)
              for _ in range(6)]
    captions = ["a photo of a cat", "", "日本語のテキスト", "emoji 🐱🐶", "x" * 5000, "\ud800 lone surrogate",
                "a red circle on a white background " * 30]

    def call(k: int):
        if k % 2:
            return clip.embed_texts([captions[k % len(captions)], captions[(k + 3) % len(captions)]])
        return clip.embed_images(images[k % len(images)])

    return call


def worker(backend: str, pipeline: str, calls: int, warmup: int, artifact: str | None) -> dict:
    """Runs in its own process: returns the soak figures of one backend and pipeline."""
    sys.path.insert(0, str(REPO))
    with tempfile.TemporaryDirectory(prefix="vlmedge-soak-") as tmp:
        work = Path(tmp)
        if pipeline == "classifier":
            call = _classifier_calls(backend, Path(artifact), work)
        elif pipeline == "audio":
            call = _audio_calls(backend, work)
        else:
            call = _clip_calls(backend, work)
        for k in range(warmup):
            call(k)
        start_rss = rss_mb()
        samples_calls, samples_rss = [0], [start_rss]
        started = time.perf_counter()
        for k in range(1, calls + 1):
            call(k)
            if k % SAMPLE_EVERY == 0:
                samples_calls.append(k)
                samples_rss.append(rss_mb())
        seconds = time.perf_counter() - started
    growth = samples_rss[-1] - start_rss
    return {"backend": backend, "pipeline": pipeline, "calls": calls, "warmup": warmup,
            "rss_after_warmup_mb": round(start_rss, 1), "rss_end_mb": round(samples_rss[-1], 1),
            "rss_peak_mb": round(max(samples_rss), 1), "growth_mb": round(growth, 2),
            "slope_mb_per_1000_calls": round(_slope_per_1000(samples_calls, samples_rss), 3),
            "calls_per_s": round(calls / seconds, 1), "passed": growth < TARGET_MB}


def build_vit_artifact(folder: Path) -> Path:
    """The tiny ViT the tests use (tests/hf_models.py), exported once."""
    sys.path.insert(0, str(REPO))
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    import vlmedge
    from tests.hf_models import FAMILIES, image_processor, tiny_classifier

    source = folder / "hf-vit"
    tiny_classifier("vit").save_pretrained(source)
    image_processor(FAMILIES["vit"], 32).save_pretrained(source)
    out = folder / "vit-artifact"
    vlmedge.export(str(source), out)
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--calls", type=int, default=10_000)
    parser.add_argument("--warmup", type=int, default=500)
    parser.add_argument("--backends", default="", help="comma-separated; default: every CPU backend present")
    parser.add_argument("--pipelines", default=",".join(PIPELINES))
    parser.add_argument("--artifact", default=None, help="an image-classification artifact (default: build the tiny ViT)")
    parser.add_argument("--json", default=None, help="write the results here")
    parser.add_argument("--worker", nargs=2, metavar=("BACKEND", "PIPELINE"), help=argparse.SUPPRESS)
    args = parser.parse_args()

    if args.worker:
        print(json.dumps(worker(*args.worker, args.calls, args.warmup, args.artifact)))
        return

    sys.path.insert(0, str(REPO))
    from tests.hardening_support import cpu_backends

    backends = [b for b in args.backends.split(",") if b] or cpu_backends()
    pipelines = [p for p in args.pipelines.split(",") if p]
    load = os.getloadavg()[0]
    print(f"load average {load:.2f} on {os.cpu_count()} cores; backends {backends}; pipelines {pipelines}", flush=True)
    with tempfile.TemporaryDirectory(prefix="vlmedge-soak-") as tmp:
        artifact = args.artifact or (str(build_vit_artifact(Path(tmp))) if "classifier" in pipelines else None)
        results = []
        for backend in backends:
            for pipeline in pipelines:
                command = [sys.executable, __file__, "--worker", backend, pipeline, "--calls", str(args.calls),
                           "--warmup", str(args.warmup)] + (["--artifact", artifact] if artifact else [])
                done = subprocess.run(command, capture_output=True, text=True, cwd=REPO)
                if done.returncode != 0:
                    print(f"{backend} {pipeline}: FAILED\n{done.stderr[-2000:]}", flush=True)
                    results.append({"backend": backend, "pipeline": pipeline, "error": done.stderr[-2000:]})
                    continue
                row = json.loads(done.stdout.strip().splitlines()[-1])
                results.append(row)
                print(f"{backend:12s} {pipeline:10s} rss {row['rss_after_warmup_mb']:7.1f} MB after warm-up, "
                      f"growth {row['growth_mb']:+6.2f} MB over {row['calls']} calls, "
                      f"slope {row['slope_mb_per_1000_calls']:+.3f} MB/1000 calls, {row['calls_per_s']} calls/s "
                      f"{'ok' if row['passed'] else 'OVER TARGET'}", flush=True)
    document = {"target_mb": TARGET_MB, "load_average_at_start": round(load, 2), "cpu_count": os.cpu_count(),
                "platform": platform.platform(), "python": platform.python_version(), "results": results}
    if args.json:
        Path(args.json).write_text(json.dumps(document, indent=2) + "\n")
    print("\n| backend | pipeline | RSS after warm-up | growth over calls | slope (MB / 1000 calls) |")
    print("|---|---|---|---|---|")
    for row in results:
        if "error" in row:
            print(f"| {row['backend']} | {row['pipeline']} | failed | | |")
        else:
            print(f"| {row['backend']} | {row['pipeline']} | {row['rss_after_warmup_mb']} MB | "
                  f"{row['growth_mb']:+.2f} MB / {row['calls']:,} | {row['slope_mb_per_1000_calls']:+.3f} |")
    if any("error" in row or not row["passed"] for row in results):
        sys.exit(1)


if __name__ == "__main__":
    main()
