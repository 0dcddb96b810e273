"""Items/s of bulk classification: the single-process engine against --engine ray, on this machine.

    .venv/bin/python benchmarks/ray_throughput.py [--images 512] [--model vit-tiny|vit-micro]
        [--batch-size 32] [--concurrency 1] [--json out.json]

It builds a ViT image classifier of the real class from a config (ViT-Tiny/16 at 224 px by
default: hidden 192, 12 layers, 3 heads; seeded random weights, nothing downloaded; the
speed does not depend on the weights' values) and exports it to ONNX fp32 once into
--workdir, renders --images shape images of varied size as PNG/JPEG files, then times on
the same files, with the same backend and precision:

    local         vlmedge.bulk.run_local: one process, the pipeline's classify in batches
                  (what `vlmedge predict DIR --out x.parquet` runs)
    ray           vlmedge.ray.run on a local Ray instance with every CPU (what
                  `vlmedge predict DIR --engine ray --out x.parquet` runs), timed from the
                  call to the last result row: actor start-up and model load included,
                  ray.init reported separately
    ray (2nd run) the same again on the warm Ray instance (new actors, warm workers)

and checks that the Ray rows equal the local ones. The machine's load average is printed:
on a busy machine the figures are noisy.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
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


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n", 1)[0])
    parser.add_argument("--images", type=int, default=512)
    parser.add_argument("--model", choices=sorted(MODELS), default="vit-tiny")
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--concurrency", type=int, default=1, help="inference actors")
    parser.add_argument("--workdir", type=Path, default=Path(os.environ.get("TMPDIR", "/tmp")) / "vlmedge-ray-bench")
    parser.add_argument("--json", type=Path, default=None)
    args = parser.parse_args(argv)

    import pyarrow as pa

    import vlmedge.ray as vray
    from vlmedge.bulk import collect, make_job, run_local

    args.workdir.mkdir(parents=True, exist_ok=True)
    artifact = build_artifact(args.model, args.workdir)
    images = render_images(args.images, args.workdir / f"images-{args.images}")
    options = dict(backend="onnxruntime", precision="fp32")
    load_start = os.getloadavg()[0]

    job = make_job(artifact, "classify", **options)
    started = time.perf_counter()
    local = run_local(job, collect([images], "image"), batch_size=args.batch_size)
    local_s = time.perf_counter() - started

    ray = vray.require_ray()
    started = time.perf_counter()
    ray.init(address="local", num_cpus=os.cpu_count(), include_dashboard=False, log_to_driver=False)
    ray.data.DataContext.get_current().enable_progress_bars = False
    init_s = time.perf_counter() - started
    runs = []
    for _ in range(2):
        started = time.perf_counter()
        dataset = vray.run(artifact, images, "classify", batch_size=args.batch_size, concurrency=args.concurrency,
                           **options)
        table = pa.concat_tables(list(dataset.iter_batches(batch_format="pyarrow", batch_size=None)))
        runs.append(time.perf_counter() - started)
    ray.shutdown()
    equal = table.equals(local)

    n = local.num_rows
    result = {
        "machine": platform.processor() or platform.machine(), "cpus": os.cpu_count(),
        "load_average_at_start": round(load_start, 2), "load_average_at_end": round(os.getloadavg()[0], 2),
        "model": args.model, "images": n, "batch_size": args.batch_size, "concurrency": args.concurrency,
        "local_s": round(local_s, 2), "local_items_per_s": round(n / local_s, 1),
        "ray_init_s": round(init_s, 2),
        "ray_s": [round(s, 2) for s in runs], "ray_items_per_s": [round(n / s, 1) for s in runs],
        "ray_equals_local": equal,
    }
    print(f"{n} images, {args.model}, batch {args.batch_size}, {os.cpu_count()} CPUs, load average "
          f"{load_start:.1f} at start")
    print(f"  local (one process)       {local_s:7.2f} s  {n / local_s:7.1f} items/s")
    print(f"  ray.init                  {init_s:7.2f} s")
    for i, seconds in enumerate(runs, 1):
        print(f"  ray run {i} ({args.concurrency} actor{'s' * (args.concurrency > 1)})    {seconds:7.2f} s  "
              f"{n / seconds:7.1f} items/s")
    print(f"  Ray rows equal the local rows: {equal}")
    if args.json:
        args.json.write_text(json.dumps(result, indent=2) + "\n")
    return 0 if equal else 1


if __name__ == "__main__":
    sys.exit(main())
