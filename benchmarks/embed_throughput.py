"""End-to-end embedding throughput: `vlmedge embed FOLDER` against the model alone.

One process measures, side by side and round-robin (so a change in machine load hits every
entry alike), on one exported image encoder:

    (a) model only        images/s of `embed_prepared` on batches already preprocessed, of
                          `vlmedge embed`'s default batch size
    (b) embed FOLDER      the local engine `vlmedge embed ARTIFACT FOLDER --out x.npy` runs
                          (collect -> iter_local -> NpyWriter, the model loaded once), over a
                          folder of photo-like JPEGs of several sizes, with the default decode
                          workers (decoding and preprocessing overlap the model)
    (c) serial decode     the same with --decode-workers 1
    decode only           decoding + preprocessing alone, 1 thread and the default workers;
                          and reading the files alone (load_image), 1 thread: what of it is the
                          JPEG decode and what the resizing
    transformers          the same photos decoded and preprocessed as users do without vlmedge:
                          transformers' load_image + the source model's Pillow image processor,
                          1 thread (the parity reference: the arrays are checked equal first)

and prints (b)/(a) (the goal: >= 0.90, the pipeline costs under 10 % of the model's
throughput) and (b)/(c), with the load average. The models are built from transformers
configs with seeded random weights (as benchmarks/run_suite.py builds them; nothing is
downloaded): DINOv2-S/14 (default), ViT-S/16, or `tiny` (a wiring check, not figures).

    .venv/bin/python benchmarks/embed_throughput.py                       # DINOv2-S/14, 200 images
    .venv/bin/python benchmarks/embed_throughput.py --backend openvino --precision int8   # a faster model
    .venv/bin/python benchmarks/embed_throughput.py --model tiny --images 24 --rounds 1   # smoke run

The faster the variant, the larger decoding's share: int8 and bf16 on CPUs with AMX are
where the pipeline has least room. Artifacts and images are kept in --work (a temp folder)
and reused. Writes benchmarks/results/embed-throughput-<machine>-<backend>[-<precision>].json
and .md (`-quick` for the tiny model).
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any, Callable

import numpy as np

HERE = Path(__file__).resolve().parent
REPO = HERE.parent
sys.path.insert(0, str(REPO))
os.environ.setdefault("HF_HUB_OFFLINE", "1")

GOAL = 0.90
# (width, height) of the generated photos: camera-like sizes and both orientations
PHOTO_SIZES = [(640, 480), (480, 640), (800, 600), (1024, 768), (500, 375), (640, 427)]


def build_vit_s16(folder: Path) -> None:
    """ViT-S/16 at 224 (DeiT-S / DINO ViT-S/16 shape): 12 layers of width 384, 6 heads."""
    import torch
    import transformers as t

    from benchmarks.run_suite import IMAGENET_MEAN, IMAGENET_STD

    torch.manual_seed(0)
    t.ViTModel(t.ViTConfig(hidden_size=384, num_hidden_layers=12, num_attention_heads=6, intermediate_size=1536,
                           image_size=224, patch_size=16), add_pooling_layer=False).eval().save_pretrained(folder)
    processor = getattr(t, "ViTImageProcessorPil", None) or t.ViTImageProcessor
    processor(size={"height": 224, "width": 224}, resample=3, image_mean=IMAGENET_MEAN,
              image_std=IMAGENET_STD).save_pretrained(folder)


def build_dinov2(folder: Path, quick: bool) -> None:
    import torch

    from benchmarks.run_suite import dinov2_s14

    torch.manual_seed(0)
    dinov2_s14(folder, quick)


MODELS: dict[str, tuple[str, Callable[[Path], None]]] = {
    "dinov2-s14": ("DINOv2-S/14 (facebook/dinov2-small config, random weights, 224 crop)",
                   lambda folder: build_dinov2(folder, quick=False)),
    "vit-s16": ("ViT-S/16 (ViTModel, width 384, 12 layers, random weights, 224)", build_vit_s16),
    "tiny": ("tiny DINOv2 (2 layers, width 32, 56 crop): a wiring check", lambda folder: build_dinov2(folder, True)),
}


def embed_batch_size() -> int:
    """`vlmedge embed`'s --batch-size default, read from the command itself."""
    import inspect

    from vlmedge import cli

    default = inspect.signature(cli.embed).parameters["batch_size"].default
    return int(getattr(default, "default", default))


def exported(work: Path, model: str, target: str, precision: str = "fp32") -> Path:
    """The model's artifact in work/, exported once per model, target and vlmedge version."""
    import vlmedge

    name = f"{model}-{target}" + ("" if precision == "fp32" else f"-{precision}")
    out = work / name
    stamp = {"model": model, "target": target, "precision": precision, "vlmedge": vlmedge.__version__}
    stamp_file = work / f"{name}.stamp.json"  # beside it: an artifact holds only what its manifest lists
    if (out / "manifest.json").is_file() and stamp_file.is_file() and json.loads(stamp_file.read_text()) == stamp:
        return out
    source = work / f"{model}-source"
    source.mkdir(parents=True, exist_ok=True)
    stamp_file.unlink(missing_ok=True)
    MODELS[model][1](source)
    started = time.perf_counter()
    vlmedge.export(str(source), out, to=[target], precision=list(dict.fromkeys(["fp32", precision])), strict=True,
                   progress=lambda message: print(f"  {message}"))
    print(f"exported {model} to {target} in {time.perf_counter() - started:.0f} s")
    stamp_file.write_text(json.dumps(stamp))
    return out


def photos(work: Path, count: int) -> Path:
    """A folder of ``count`` photo-like JPEGs (smooth colour fields, edges, sensor noise) of
    several camera sizes, made with Pillow; reused when present."""
    from PIL import Image, ImageDraw, ImageFilter

    folder = work / f"photos-{count}"
    if folder.is_dir() and len(list(folder.glob("*.jpg"))) == count:
        return folder
    folder.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(0)
    for i in range(count):
        width, height = PHOTO_SIZES[i % len(PHOTO_SIZES)]
        coarse = rng.integers(0, 256, size=(6, 8, 3), dtype=np.uint8)
        image = Image.fromarray(coarse).resize((width, height), Image.BICUBIC)
        draw = ImageDraw.Draw(image)
        for _ in range(12):
            x, y = int(rng.integers(0, width)), int(rng.integers(0, height))
            r = int(rng.integers(10, max(11, width // 5)))
            draw.ellipse((x - r, y - r, x + r, y + r), fill=tuple(int(c) for c in rng.integers(0, 256, 3)))
        image = image.filter(ImageFilter.GaussianBlur(1.5))
        noisy = np.asarray(image, dtype=np.int16) + rng.normal(0, 6, size=(height, width, 3)).astype(np.int16)
        Image.fromarray(np.clip(noisy, 0, 255).astype(np.uint8)).save(folder / f"photo{i:04d}.jpg", quality=88)
    return folder


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--model", choices=list(MODELS), default="dinov2-s14")
    parser.add_argument("--images", type=int, default=200, help="photos in the folder (default 200)")
    parser.add_argument("--backend", choices=["onnxruntime", "openvino"], default="onnxruntime")
    parser.add_argument("--precision", choices=["fp32", "bf16", "int8"], default="fp32",
                        help="the variant both (a) and (b) run (bf16: OpenVINO only)")
    parser.add_argument("--rounds", type=int, default=3, help="round-robin rounds; the median is reported")
    parser.add_argument("--decode-workers", type=int, default=None, help="(b)'s workers (default: vlmedge's)")
    parser.add_argument("--work", type=Path, default=Path(tempfile.gettempdir()) / "vlmedge-bench-embed-throughput")
    parser.add_argument("--out", type=Path, default=HERE / "results")
    args = parser.parse_args(argv)

    from benchmarks.quantization import cpu_name, machine_name
    from vlmedge.preprocess.parallel import DEFAULT_WORKERS, check_workers

    workers = check_workers(args.decode_workers)
    load_at_start = os.getloadavg()
    cores = len(os.sched_getaffinity(0))
    if load_at_start[0] > cores:
        print(f"warning: load average {load_at_start[0]:.1f} on {cores} cores: other work shares them; "
              "the ratios will be off")
    args.work.mkdir(parents=True, exist_ok=True)
    target = "onnx" if args.backend == "onnxruntime" else "openvino"
    if args.precision == "bf16" and target != "openvino":
        parser.error("bf16 is an OpenVINO inference precision: add --backend openvino")
    artifact = exported(args.work, args.model, target, args.precision)
    folder = photos(args.work, args.images)
    batch = embed_batch_size()
    result = measure(artifact, folder, args.backend, args.precision, batch, workers, args.rounds, args.work,
                     hf_processor(args.work / f"{args.model}-source"))
    result.update(
        schema="vlmedge-embed-throughput", model=args.model, model_description=MODELS[args.model][0],
        images=args.images, photo_sizes=[f"{w}x{h}" for w, h in PHOTO_SIZES], backend=args.backend,
        batch_size=batch, decode_workers=workers, default_decode_workers=DEFAULT_WORKERS, rounds=args.rounds,
        cpu=cpu_name(), cores=cores, load_average_start=[round(x, 2) for x in load_at_start],
        load_average_end=[round(x, 2) for x in os.getloadavg()],
        measured=datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"), goal=GOAL,
    )
    name = (f"embed-throughput-{machine_name()}-{args.backend}" + ("" if args.precision == "fp32" else f"-{args.precision}")
            + ("-quick" if args.model == "tiny" else ""))
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / f"{name}.json").write_text(json.dumps(result, indent=2) + "\n")
    (args.out / f"{name}.md").write_text(markdown(result))
    print(markdown(result))
    print(f"wrote {args.out / (name + '.json')} and .md")
    return 0


def hf_processor(source: Path) -> Any:
    """transformers' own Pillow image processor of the exported model, from its saved configuration
    (read, and its class named, as vlmedge's export reads it)."""
    import transformers

    from vlmedge.exporters.sources.hf.processor import processor_config
    from vlmedge.preprocess.image.hf import processor_kind

    kind = processor_kind(processor_config(source))
    return getattr(transformers, f"{kind}ImageProcessorPil").from_pretrained(source)


def measure(artifact: Path, folder: Path, backend: str, precision: str, batch: int, workers: int, rounds: int,
            work: Path, processor: Any) -> dict[str, Any]:
    """Round-robin timing of every entry; per entry the median images/s over the rounds."""
    from transformers.image_utils import load_image as hf_load_image

    import vlmedge
    from vlmedge.bulk.inputs import collect
    from vlmedge.bulk.job import make_job
    from vlmedge.bulk.local import iter_local, local_batches
    from vlmedge.bulk.writers import NpyWriter
    from vlmedge.preprocess.image import load_image, preprocess_images
    from vlmedge.preprocess.parallel import prepare_ordered

    pipeline = vlmedge.load(artifact, backend=backend, precision=precision)
    found = collect([str(folder)], "image", absolute=False)
    count = len(found.files)
    job = make_job(artifact, "embed", backend=backend, precision=precision)
    pixels = preprocess_images([load_image(f) for f in found.files[:batch]], pipeline.spec)
    batches = -(-count // batch)

    def model_only() -> None:
        for _ in range(batches):
            pipeline.embed_prepared(pixels)

    def embed_folder(decode_workers: int) -> Callable[[], None]:
        def run() -> None:  # what `vlmedge embed ARTIFACT FOLDER --out x.npy` runs once the model is loaded
            with NpyWriter(work / f"bench-{decode_workers}.npy", artifact) as writer:
                for results in iter_local(job, local_batches(found, batch), None, pipeline, decode_workers):
                    writer.add(results, job)
        return run

    def decode_only(decode_workers: int) -> Callable[[], None]:
        def run() -> None:
            for _ in prepare_ordered(lambda f: preprocess_images([load_image(f)], pipeline.spec)[0], found.files,
                                     decode_workers, ahead=2 * batch):
                pass
        return run

    def read_only() -> None:  # decoding the file alone: what preprocess_images adds is the rest
        for file in found.files:
            load_image(file)

    def hf_pixels(file: Any) -> np.ndarray:
        return np.asarray(processor(hf_load_image(str(file)), return_tensors="np")["pixel_values"])

    def hf_decode_only() -> None:
        for file in found.files:
            hf_pixels(file)

    equal_to_hf = all(np.array_equal(preprocess_images([load_image(f)], pipeline.spec), hf_pixels(f))
                      for f in found.files)
    entries = {"model_only": model_only, "embed_folder": embed_folder(workers), "embed_folder_serial": embed_folder(1),
               "decode_only_serial": decode_only(1), "decode_only": decode_only(workers), "read_only_serial": read_only,
               "transformers_decode_serial": hf_decode_only}
    for run in entries.values():  # warm-up: sessions, page cache, thread start-up
        run()
    seconds: dict[str, list[float]] = {name: [] for name in entries}
    loads = []
    for _ in range(rounds):
        loads.append(round(os.getloadavg()[0], 2))
        for name, run in entries.items():
            started = time.perf_counter()
            run()
            seconds[name].append(time.perf_counter() - started)
    images = {name: count if name != "model_only" else batches * batch for name in entries}
    rate = {name: round(images[name] / statistics.median(values), 2) for name, values in seconds.items()}
    same = np.array_equal(np.load(work / f"bench-{workers}.npy"), np.load(work / "bench-1.npy"))
    return {
        "artifact": str(artifact), "provider": pipeline.model.provider, "precision": pipeline.model.precision,
        "images_per_s": rate, "seconds": {k: [round(s, 3) for s in v] for k, v in seconds.items()},
        "ratio_embed_to_model": round(rate["embed_folder"] / rate["model_only"], 3),
        "ratio_parallel_to_serial": round(rate["embed_folder"] / rate["embed_folder_serial"], 3),
        "serial_and_parallel_outputs_equal": bool(same), "load_average_per_round": loads,
        "transformers_processor": type(processor).__name__, "preprocessing_equal_to_transformers": equal_to_hf,
        "ratio_decode_to_transformers": round(rate["decode_only_serial"] / rate["transformers_decode_serial"], 3),
    }


def cpu_bound(rate: dict[str, float], cores: int) -> float:
    """The images/s the cores allow when decoding and the model share them: each image costs
    the model cores / (a) core-seconds (were it to keep every core busy) and decoding
    1 / (decode, 1 thread) core-seconds, and the pipeline has the cores for their sum."""
    return cores / (cores / rate["model_only"] + 1 / rate["decode_only_serial"])


def markdown(r: dict[str, Any]) -> str:
    rate = r["images_per_s"]
    bound = cpu_bound(rate, r["cores"])
    verdict = "meets" if r["ratio_embed_to_model"] >= r["goal"] else "misses"
    lines = [
        f"# End-to-end embedding throughput: {r['model_description']}",
        "",
        f"Measured {r['measured']} on {r['cpu']} ({r['cores']} cores), {r['backend']} ({r['provider']}, "
        f"{r['precision']}), batch {r['batch_size']}, {r['images']} JPEG photos ({', '.join(r['photo_sizes'])}), "
        f"median of {r['rounds']} round-robin rounds. Load average {r['load_average_start'][0]:.2f} at the start, "
        f"{r['load_average_per_round']} per round, {r['load_average_end'][0]:.2f} at the end.",
        "",
        "| entry | images/s |",
        "|---|---:|",
        f"| (a) model only (`embed_prepared` on pre-made batches) | {rate['model_only']:.1f} |",
        f"| (b) `vlmedge embed FOLDER`, {r['decode_workers']} decode workers | {rate['embed_folder']:.1f} |",
        f"| (c) `vlmedge embed FOLDER --decode-workers 1` | {rate['embed_folder_serial']:.1f} |",
        f"| decode + preprocess only, 1 thread | {rate['decode_only_serial']:.1f} |",
        f"| decode + preprocess only, {r['decode_workers']} workers | {rate['decode_only']:.1f} |",
        *([f"| decode only (`load_image`: the file to an RGB image), 1 thread | {rate['read_only_serial']:.1f} |"]
          if "read_only_serial" in rate else []),
        *([f"| transformers' `load_image` + `{r['transformers_processor']}`, 1 thread | "
           f"{rate['transformers_decode_serial']:.1f} |"] if "transformers_decode_serial" in rate else []),
        "",
        f"(b)/(a) = **{r['ratio_embed_to_model']:.3f}** ({verdict} the goal of {r['goal']:.2f}); "
        f"(b)/(c) = **{r['ratio_parallel_to_serial']:.3f}**. "
        f"(b) and (c) wrote equal embeddings: {r['serial_and_parallel_outputs_equal']}.",
        *(["", f"vlmedge's decoding + preprocessing (1 thread) runs **{r['ratio_decode_to_transformers']:.2f}x** "
           f"the images/s of transformers' own, and gave arrays equal to it bit for bit on every photo: "
           f"{r['preprocessing_equal_to_transformers']}."] if "ratio_decode_to_transformers" in r else []),
        "",
        f"What bounds (b): decoding and the model share {r['cores']} cores. An image costs the model "
        f"{1e3 * r['cores'] / rate['model_only']:.1f} core-ms and its decoding {1e3 / rate['decode_only_serial']:.1f} "
        f"core-ms, so, were the model to keep every core busy, no overlap could pass {bound:.1f} images/s = "
        f"{bound / rate['model_only']:.3f} of (a); (b) reaches {rate['embed_folder'] / bound:.0%} of that bound "
        "(above 100%: decoding fills core time the model leaves idle).",
        *([f"Of the decoding's {1e3 / rate['decode_only_serial']:.1f} core-ms, reading the file takes "
           f"{1e3 / rate['read_only_serial']:.1f}; the rest is `preprocess_images` (resizing, cropping, the "
           "value lookup)."] if "read_only_serial" in rate else []),
        "",
    ]
    return "\n".join(lines)


if __name__ == "__main__":
    raise SystemExit(main())
