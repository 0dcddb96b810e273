"""Items/s of bulk classification: the single-process engine against --engine ray, on this machine.

    .venv/bin/python benchmarks/ray_throughput.py [--images 512] [--model vit-tiny|vit-micro]
        [--batch-size 32] [--concurrency 1] [--rounds 3] [--json out.json]

It builds a ViT image classifier of the real class from a config (ViT-Tiny/16 at 224 px by
default: hidden 192, 12 layers, 3 heads; seeded random weights, nothing downloaded; the
speed does not depend on the weights' values) and exports it to ONNX fp32 once into
--workdir, renders --images shape images of varied size as PNG/JPEG files, then times on
the same files, with the same backend and precision:

    local         vlmedge.bulk.local.run_local: one process, both stages (preprocess, classify) in batches
                  (what `vlmedge predict DIR --out x.parquet` runs)
    ray           vlmedge.ray.run on a local Ray instance with every CPU (what
                  `vlmedge predict DIR --engine ray --out x.parquet` runs), timed from the
                  call to the last result row: actor start-up and model load included;
                  ray.init and a first 4-image job that starts Ray's workers come before

in --rounds alternating rounds (medians reported, each run with the load average at its
start: on a busy machine the figures are noisy), and checks that the Ray rows equal the
local ones. "items/s" is end to end (model load and, for Ray, actor start-up included).
"CPU ms/item" sums user + system time of every process involved (local: this process;
Ray: the driver, GCS, raylet, workers and actors), which a busy machine disturbs far less than wall
time; cores / (CPU s per item) is the most an otherwise idle machine could do.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import sys
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

MODELS = {
    # name -> (image size, patch, hidden, layers, heads, mlp)
    "vit-tiny": (224, 16, 192, 12, 3, 768),
    "vit-micro": (64, 16, 64, 2, 2, 128),
}


def build_artifact(model: str, workdir: Path) -> Path:
    out = workdir / f"{model}-artifact"
    if (out / "manifest.json").is_file():
        return out
    import torch
    import transformers as t

    import vlmedge

    size, patch, hidden, layers, heads, mlp = MODELS[model]
    torch.manual_seed(0)
    labels = {i: f"class_{i}" for i in range(100)}
    config = t.ViTConfig(image_size=size, patch_size=patch, hidden_size=hidden, num_hidden_layers=layers,
                         num_attention_heads=heads, intermediate_size=mlp, num_labels=len(labels), id2label=labels,
                         label2id={v: k for k, v in labels.items()})
    folder = workdir / f"{model}-hf"
    t.ViTForImageClassification(config).eval().save_pretrained(folder)
    t.ViTImageProcessorPil(size={"height": size, "width": size}, resample=2).save_pretrained(folder)
    vlmedge.export(str(folder), out)
    return out


def render_images(count: int, folder: Path) -> Path:
    from vlmedge.exporters.builtin import shapes

    if folder.is_dir() and len(list(folder.iterdir())) == count:
        return folder
    folder.mkdir(parents=True, exist_ok=True)
    for old in folder.iterdir():
        old.unlink()
    rng = np.random.default_rng(0)
    for i in range(count):
        image, *_ = shapes.random_example(rng, image_size=int(rng.integers(96, 320)))
        image.save(folder / f"img-{i:05d}.{'png' if i % 2 else 'jpg'}")
    return folder


class CpuMeter:
    """CPU seconds (user + system) used by this process and every process it started (the
    local Ray instance: GCS, raylet, workers, actors), sampled every 0.2 s so that workers
    that exit during a run still count. Without psutil it reports None."""

    def __init__(self, tree: bool = True) -> None:
        self._tree = tree
        try:
            import psutil
        except ImportError:
            psutil = None
        self._psutil = psutil
        self._last: dict[int, float] = {}
        self._stop = None

    def _sample(self) -> None:
        me = self._psutil.Process()
        for proc in [me] + (me.children(recursive=True) if self._tree else []):
            try:
                times = proc.cpu_times()
            except self._psutil.Error:
                continue
            self._last[proc.pid] = max(self._last.get(proc.pid, 0.0), times.user + times.system)

    def __enter__(self) -> "CpuMeter":
        import threading

        self.seconds = None
        if self._psutil is None:
            return self
        self._last.clear()
        self._sample()
        self._start = dict(self._last)
        self._stop = threading.Event()

        def loop() -> None:
            while not self._stop.wait(0.2):
                self._sample()

        self._thread = threading.Thread(target=loop, daemon=True)
        self._thread.start()
        return self

    def __exit__(self, *exc) -> None:
        if self._psutil is None:
            return
        self._stop.set()
        self._thread.join()
        self._sample()
        self.seconds = sum(t - self._start.get(pid, 0.0) for pid, t in self._last.items())


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n", 1)[0])
    parser.add_argument("--images", type=int, default=512)
    parser.add_argument("--model", choices=sorted(MODELS), default="vit-tiny")
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--concurrency", type=int, default=1, help="inference actors")
    parser.add_argument("--rounds", type=int, default=3, help="alternating local / ray runs; medians are reported")
    parser.add_argument("--workdir", type=Path, default=Path(os.environ.get("TMPDIR", "/tmp")) / "vlmedge-ray-bench")
    parser.add_argument("--json", type=Path, default=None)
    args = parser.parse_args(argv)

    import pyarrow as pa

    import vlmedge.ray as vray
    from vlmedge.bulk.inputs import collect
    from vlmedge.bulk.job import make_job
    from vlmedge.bulk.local import run_local

    args.workdir.mkdir(parents=True, exist_ok=True)
    artifact = build_artifact(args.model, args.workdir)
    images = render_images(args.images, args.workdir / f"images-{args.images}")
    options = dict(backend="onnxruntime", precision="fp32")

    job = make_job(artifact, "classify", **options)
    found = collect([images], "image")
    ray = vray.require_ray()
    started = time.perf_counter()
    ray.init(address="local", num_cpus=os.cpu_count(), include_dashboard=False, log_to_driver=False)
    ray.data.DataContext.get_current().enable_progress_bars = False
    init_s = time.perf_counter() - started
    # A first job starts Ray's worker processes (about 20 CPU s here, once per Ray instance);
    # every timed run below still starts its own actor and loads the model.
    warm = vray.run(artifact, found.files[:4], "classify", batch_size=args.batch_size, **options)
    warm.take_all()

    # Rounds alternate the engines, so that a change in the machine's load hits both alike.
    samples: dict[str, list[dict]] = {"local": [], "ray": []}
    tables = {}
    for _ in range(args.rounds):
        for engine in ("local", "ray"):
            load = os.getloadavg()[0]
            started = time.perf_counter()
            with CpuMeter(tree=engine == "ray") as cpu:  # the local engine is this process alone
                if engine == "local":
                    tables[engine] = run_local(job, found, batch_size=args.batch_size)
                else:
                    dataset = vray.run(artifact, images, "classify", batch_size=args.batch_size,
                                       concurrency=args.concurrency, **options)
                    batches = dataset.iter_batches(batch_format="pyarrow", batch_size=None)
                    tables[engine] = pa.concat_tables(list(batches))
                ended = time.perf_counter()
            n = found_count(found)
            cpu_ms = None if cpu.seconds is None else 1000 * cpu.seconds / n
            samples[engine].append({"seconds": round(ended - started, 2), "items_per_s": round(n / (ended - started), 1),
                                    "load_average": round(load, 1),
                                    "cpu_ms_per_item": None if cpu_ms is None else round(cpu_ms, 1)})
            print(f"  {engine}: {samples[engine][-1]}", flush=True)
    ray.shutdown()
    equal = tables["ray"].equals(tables["local"])

    n = tables["local"].num_rows
    median = {engine: statistics.median(s["items_per_s"] for s in runs) for engine, runs in samples.items()}
    cpu_ms = {engine: (statistics.median(s["cpu_ms_per_item"] for s in runs) if runs[0]["cpu_ms_per_item"] else None)
              for engine, runs in samples.items()}
    cores = os.cpu_count() or 1
    # what the CPU cost allows on this many otherwise idle cores (an upper bound: perfect overlap)
    bound = {engine: (round(1000 * cores / ms, 1) if ms else None) for engine, ms in cpu_ms.items()}
    result = {
        "machine": platform.processor() or platform.machine(), "cpus": os.cpu_count(),
        "model": args.model, "images": n, "batch_size": args.batch_size, "concurrency": args.concurrency,
        "rounds": args.rounds, "ray_init_s": round(init_s, 2), "samples": samples,
        "median_items_per_s": median, "ray_over_local": round(median["ray"] / median["local"], 3),
        "median_cpu_ms_per_item": cpu_ms, "idle_machine_bound_items_per_s": bound,
        "ray_equals_local": equal,
    }
    print(f"{n} images, {args.model}, batch {args.batch_size}, {os.cpu_count()} CPUs, "
          f"{args.concurrency} inference actor(s), ray.init {init_s:.1f} s")
    print(f"{'round':>5} {'engine':>6} {'seconds':>8} {'items/s':>8} {'CPU ms/item':>12} {'load avg':>9}")
    for i in range(args.rounds):
        for engine in ("local", "ray"):
            s = samples[engine][i]
            print(f"{i + 1:>5} {engine:>6} {s['seconds']:>8.2f} {s['items_per_s']:>8.1f} "
                  f"{s['cpu_ms_per_item'] or float('nan'):>12.1f} {s['load_average']:>9.1f}")
    print(f"median items/s: local {median['local']:.1f}, ray {median['ray']:.1f} "
          f"(ray / local = {median['ray'] / median['local']:.2f})")
    if cpu_ms["local"] and cpu_ms["ray"]:
        print(f"CPU ms per item (all processes): local {cpu_ms['local']:.1f}, ray {cpu_ms['ray']:.1f}; on {cores} idle "
              f"cores that allows at most local {bound['local']:.1f}, ray {bound['ray']:.1f} items/s")
    print(f"Ray rows equal the local rows: {equal}")
    if args.json:
        args.json.write_text(json.dumps(result, indent=2) + "\n")
    return 0 if equal else 1


def found_count(found) -> int:
    return len(found.files) + len(found.missing)


if __name__ == "__main__":
    sys.exit(main())
