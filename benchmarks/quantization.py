"""ViT-B/16 at 224, batch 1, on this machine's CPU: the plain tools against vlmedge's variants.

One process measures, side by side and round-robin (so a change in machine load hits every
entry alike):

    plain tools   PyTorch fp32 (its default SDPA attention, as users run it); ONNX Runtime fp32; OpenVINO fp32 (f32 forced) and its
                  default (bf16 on CPUs with AMX); OpenVINO bf16; ONNX Runtime quantize_dynamic
                  int8 with default arguments; NNCF int8 with its transformer defaults
    vlmedge       every file of `vlmedge.export(..., to=onnx,openvino, precision=fp32,fp16,bf16,int8)`,
                  opened as `vlmedge.load(..., backend, precision)` opens it

The model is transformers.ViTForImageClassification(ViTConfig()) - the ViT-B/16 224
architecture - with seeded random weights (torch.manual_seed(0)); nothing is downloaded.
Times are the model call only (preprocessing excluded), batch 1, after warm-up, median.

    .venv/bin/python benchmarks/quantization.py            # ~15 min on 2 cores
    .venv/bin/python benchmarks/quantization.py --rounds 3 --runs 5 --reuse   # re-time an existing export

Writes benchmarks/results/quantization-<machine>.md and .json.
"""

from __future__ import annotations

import argparse
import functools
import json
import logging
import os
import re
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any, Callable

import numpy as np

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parent))  # run from a checkout without installing

from vlmedge.environment import Environment, cpu_flags, describe  # noqa: E402


@functools.cache
def _machine() -> Environment:
    """describe() once per process (it runs nvidia-smi and reads every package's version);
    the CPU and its name do not change while a benchmark runs."""
    return describe()


def cpu_name() -> str:
    return _machine().cpu_model


def machine_name() -> str:
    """e.g. 'intel-xeon-processor-amx-2c': vlmedge.environment's name, as run_suite.py uses."""
    return _machine().machine_name


def timing_parser(doc: str, work: str, rounds: int, runs: int, calibration_help: str,
                  quick: bool = True) -> argparse.ArgumentParser:
    """The options the side-by-side timing scripts share: where they work and write, the
    machine's name, rounds x runs, calibration items and (where `quick`) the wiring check."""
    parser = argparse.ArgumentParser(description=doc.split("\n\n")[0])
    parser.add_argument("--work", type=Path, default=Path(tempfile.gettempdir()) / work)
    parser.add_argument("--out", type=Path, default=HERE / "results")
    parser.add_argument("--machine", default=machine_name())
    parser.add_argument("--rounds", type=int, default=rounds)
    parser.add_argument("--runs", type=int, default=runs)
    parser.add_argument("--calibration", type=int, default=40, help=calibration_help)
    if quick:
        parser.add_argument("--quick", action="store_true", help="tiny configs of the same classes: checks the wiring")
    return parser


def parse_timing_args(parser: argparse.ArgumentParser, argv: list[str] | None) -> argparse.Namespace:
    """The parsed options; --quick works in its own folder, once, and keeps its wiring
    figures out of results/."""
    args = parser.parse_args(argv)
    if getattr(args, "quick", False):
        args.work = args.work.with_name(args.work.name + "-quick")
        args.out, args.rounds, args.runs = args.work / "out", 1, 2
    return args


def machine_fields(args: argparse.Namespace, script: str, argv: list[str] | None) -> dict[str, Any]:
    """What every summary says of the machine and the run: its name, CPU, cores and flags,
    rounds x runs, and the command that made it."""
    return {"machine": args.machine, "cpu": cpu_name(), "cores": len(os.sched_getaffinity(0)), "cpu_flags": cpu_flags(),
            "rounds": args.rounds, "runs_per_round": args.runs,
            "command": f"python benchmarks/{script} " + " ".join(argv if argv is not None else sys.argv[1:])}


def build_model(seed: int = 0):
    """google/vit-base-patch16-224's config: ViTConfig()'s ViT-B/16 at 224 with its 1000 labels,
    seeded random weights, the head widened x8 as benchmarks/run_suite.py does."""
    import torch
    from transformers import ViTConfig, ViTForImageClassification

    torch.manual_seed(seed)
    names = {i: f"class_{i}" for i in range(1000)}
    config = ViTConfig(num_labels=1000, id2label=names,
                       label2id={v: k for k, v in names.items()})
    model = ViTForImageClassification(config).eval()
    with torch.no_grad():
        for name, param in model.named_parameters():
            if name.startswith("classifier"):
                param.mul_(8.0)
    return model


def photo_crops(folder: Path, count: int) -> Path:
    """`count` crops of a real photograph (matplotlib's grace_hopper.jpg: random crops, flips
    and colour gains), the int8 calibration data of both vlmedge and plain NNCF."""
    import matplotlib
    from PIL import Image

    if folder.is_dir() and len(list(folder.glob("*.jpg"))) == count:
        return folder
    folder.mkdir(parents=True, exist_ok=True)
    photo = Image.open(Path(matplotlib.__file__).parent / "mpl-data/sample_data/grace_hopper.jpg").convert("RGB")
    rng = np.random.default_rng(0)
    width, height = photo.size
    for i in range(count):
        scale = rng.uniform(0.3, 1.0)
        w, h = int(width * scale), int(height * scale)
        x, y = int(rng.integers(0, width - w + 1)), int(rng.integers(0, height - h + 1))
        crop = photo.crop((x, y, x + w, y + h))
        if rng.random() < 0.5:
            crop = crop.transpose(Image.FLIP_LEFT_RIGHT)
        pixels = np.asarray(crop).astype(np.float32) * rng.uniform(0.6, 1.3, size=3)
        Image.fromarray(np.clip(pixels, 0, 255).astype(np.uint8)).save(folder / f"{i:03d}.jpg")
    return folder


def random_weight_gates():
    """The default gates without top-1 agreement: with random weights one parity input has
    its top two logits 0.02 apart (of a norm near 140), a tie any reduced precision flips.
    Cosine is gated as usual; accuracy is gated on the trained built-in model instead
    (tests/test_quantize.py). The loosened gate is recorded in every report."""
    from vlmedge.parity import GATES, Gate

    return {p: Gate(min_cosine=GATES[p].min_cosine, max_abs=None, min_top1=0.0) for p in ("fp16", "bf16", "int8")}


# NNCF as its documentation shows it, and with its transformer preset; both calibrated on
# the same photo crops as vlmedge, neither gated.
PLAIN_NNCF = {
    "plain: NNCF int8, nncf.quantize(model, dataset)": {},
    "plain: NNCF int8, model_type=TRANSFORMER": {"model_type": "transformer"},
}


def cosine_min(got: np.ndarray, want: np.ndarray) -> float:
    got, want = got.astype(np.float64), want.astype(np.float64)
    return float(((got * want).sum(1) / np.linalg.norm(got, axis=1) / np.linalg.norm(want, axis=1)).min())


class Timer:
    """Round-robin timing of several callables: every round runs each `runs` times."""

    def __init__(self, rounds: int, runs: int, warmup: int = 3) -> None:
        self.rounds, self.runs, self.warmup = rounds, runs, warmup
        self.entries: dict[str, Callable[[], Any]] = {}
        self.times: dict[str, list[float]] = {}

    def add(self, name: str, call: Callable[[], Any]) -> None:
        for _ in range(self.warmup):
            call()
        self.entries[name] = call
        self.times[name] = []

    def run(self) -> dict[str, dict[str, float]]:
        loads = []
        for _ in range(self.rounds):
            loads.append(os.getloadavg()[0])
            for name, call in self.entries.items():
                for _ in range(self.runs):
                    t0 = time.perf_counter()
                    call()
                    self.times[name].append((time.perf_counter() - t0) * 1000)
        self.load = (min(loads), max(loads))
        return {name: {"median_ms": statistics.median(t), "min_ms": min(t), "runs": len(t)}
                for name, t in self.times.items()}


def main(argv: list[str] | None = None) -> int:
    parser = timing_parser(__doc__, "vlmedge-bench-quantization", rounds=5, runs=6, quick=False,
                           calibration_help="photo crops calibrating int8 (vlmedge and plain NNCF)")
    parser.add_argument("--reuse", action="store_true", help="re-time the artifact of an earlier run in --work")
    args = parse_timing_args(parser, argv)

    import onnxruntime as ort
    import openvino as ov
    import torch

    import vlmedge
    from vlmedge.artifact import Artifact
    from vlmedge.preprocess.image import ImagePreprocessSpec

    started = time.time()
    load_at_start = os.getloadavg()[0]
    if load_at_start > 2.5:
        print(f"warning: load average {load_at_start:.1f}: other work shares these cores; figures will be inflated")
    args.work.mkdir(parents=True, exist_ok=True)
    artifact_dir = args.work / "vit-b16"
    model = build_model()
    preprocess = ImagePreprocessSpec(size={"height": 224, "width": 224}, resample="bilinear")
    crops = photo_crops(args.work / "calibration", count=args.calibration)
    if not (args.reuse and (artifact_dir / "manifest.json").is_file()):
        t0 = time.time()
        from vlmedge.exporters.sources.hf.classifier import LogitsOnly

        vlmedge.export(LogitsOnly(model), artifact_dir, to=["onnx", "openvino"], precision=["fp32", "fp16", "bf16", "int8"],
                       preprocess=preprocess, labels=[model.config.id2label[i] for i in range(model.config.num_labels)],
                       name="ViT-B/16 (ViTConfig(), random weights, seed 0)", gates=random_weight_gates(),
                       calibration=crops, progress=print)
        export_seconds = time.time() - t0
    else:
        export_seconds = None
    artifact = Artifact.open(artifact_dir)
    base = artifact.path_of(artifact.model_entries(target="onnx", precision="fp32")[0])

    pixels = np.random.default_rng(0).standard_normal((1, 3, 224, 224)).astype(np.float32)
    feeds = {"pixel_values": pixels}
    timer = Timer(args.rounds, args.runs)

    # ---- plain tools
    torch.set_num_threads(os.cpu_count() or 1)
    tensor = torch.from_numpy(pixels)

    def pytorch():
        with torch.inference_mode():
            return model(pixel_values=tensor).logits

    timer.add("plain: PyTorch fp32 (SDPA)", pytorch)
    ort_fp32 = ort.InferenceSession(str(base), providers=["CPUExecutionProvider"])
    timer.add("plain: ONNX Runtime fp32", lambda: ort_fp32.run(None, feeds))
    core = ov.Core()
    ov_model = core.read_model(str(base))
    plain_ov = {
        "plain: OpenVINO fp32 (f32 forced)": {"INFERENCE_PRECISION_HINT": "f32"},
        "plain: OpenVINO default (bf16 where AMX)": {},
        "plain: OpenVINO bf16": {"INFERENCE_PRECISION_HINT": "bf16"},
    }
    for name, config in plain_ov.items():
        request = core.compile_model(ov_model, "CPU", config).create_infer_request()
        timer.add(name, lambda r=request: r.infer(feeds))
    from onnxruntime.quantization import quantize_dynamic

    dynamic = args.work / "plain-dynamic.onnx"
    if not dynamic.exists():
        quantize_dynamic(str(base), str(dynamic))
    ort_dynamic = ort.InferenceSession(str(dynamic), providers=["CPUExecutionProvider"])
    timer.add("plain: ONNX Runtime quantize_dynamic int8", lambda: ort_dynamic.run(None, feeds))
    import nncf

    nncf.set_log_level(logging.ERROR)
    from vlmedge.preprocess.image import load_image, preprocess_images

    calibration = preprocess_images([load_image(p) for p in sorted(crops.glob("*.jpg"))], preprocess)
    dataset = nncf.Dataset([{"pixel_values": calibration[i:i + 1]} for i in range(len(calibration))])
    parity = np.load(artifact.path_of("samples/parity.npz"))
    plain_parity = {}
    for name, options in PLAIN_NNCF.items():
        xml = args.work / f"plain-{re.sub(r'[^a-z0-9]+', '-', name.lower()).strip('-')}.xml"
        if not xml.exists():
            quantized = nncf.quantize(core.read_model(str(base)), dataset, subset_size=len(calibration),
                                      **{k: nncf.ModelType(v) for k, v in options.items()})
            ov.save_model(quantized, str(xml), compress_to_fp16=False)
        request = core.compile_model(str(xml), "CPU").create_infer_request()
        plain_parity[name] = cosine_min(
            np.concatenate([request.infer({0: x[None]})[0] for x in parity["model.input.pixel_values"]]),
            parity["model.reference.logits"])
        timer.add(name, lambda r=request: r.infer(feeds))

    # ---- vlmedge's variants, opened the way vlmedge.load opens them
    variants, untimed = {}, {}
    fp32_ms = artifact.model_entries(target="onnx", precision="fp32")[0]["parity"]["latency_ms"]
    for entry in artifact.model_entries():
        if entry["parity"]["latency_ms"] > 5 * fp32_ms:  # ONNX Runtime's CPU fp16: seconds a call, not worth rounds
            untimed[f"vlmedge: {entry['target']} {entry['precision']}"] = entry
            continue
        backend = {"onnx": "onnxruntime", "openvino": "openvino"}[entry["target"]]
        pipeline = vlmedge.load(artifact_dir, backend=backend, precision=entry["precision"])
        (session,) = pipeline.model.sessions.values()
        name = f"vlmedge: {entry['target']} {entry['precision']}"
        variants[name] = (entry, session.provider)
        timer.add(name, lambda s=session: s.run(feeds))

    results = timer.run()
    eager_ms = results["plain: PyTorch fp32 (SDPA)"]["median_ms"]
    dynamic_ms = results["plain: ONNX Runtime quantize_dynamic int8"]["median_ms"]
    untimed_results = {name: {"median_ms": e["parity"]["latency"]["median_ms"], "min_ms": e["parity"]["latency"]["min_ms"],
                              "runs": e["parity"]["latency"]["runs"], "note": "export-time measurement only"}
                       for name, e in untimed.items()}
    rows = []
    for name, timing in {**results, **untimed_results}.items():
        row: dict[str, Any] = {"name": name, **{k: round(v, 2) if isinstance(v, float) else v for k, v in timing.items()},
                               "speedup_vs_pytorch": round(eager_ms / timing["median_ms"], 2)}
        if name in variants or name in untimed:
            entry, provider = variants[name] if name in variants else (untimed[name], untimed[name]["parity"]["provider"])
            report = entry["parity"]
            row.update(provider=provider, passed=report["passed"], file=entry["path"],
                       cosine_min=round(min(o["cosine_min"] for o in report["outputs"].values()), 6),
                       top1=min((o["top1"] for o in report["outputs"].values() if "top1" in o), default=None),
                       recipe=(report.get("quantization") or {}).get("method"),
                       level=(report.get("quantization") or {}).get("level"))
        if name in plain_parity:  # what the int8 gate would say of it (not applied)
            row.update(cosine_min=round(plain_parity[name], 6), passed=plain_parity[name] >= 0.99, top1=None,
                       plain=True)
        rows.append(row)
    int8 = [r for r in rows if r["name"].startswith("vlmedge") and r["name"].endswith("int8") and r["passed"]
            and not r.get("note")]
    plain_nncf_ms = min(results[name]["median_ms"] for name in PLAIN_NNCF)
    bf16 = [r for r in rows if r["name"] == "vlmedge: openvino bf16"]
    best_int8 = min(int8, key=lambda r: r["median_ms"]) if int8 else None
    goals = {
        "best_int8": best_int8 and {"name": best_int8["name"], "median_ms": round(best_int8["median_ms"], 2),
                                    "speedup_vs_pytorch": round(eager_ms / best_int8["median_ms"], 2),
                                    "speedup_vs_plain_quantize_dynamic": round(dynamic_ms / best_int8["median_ms"], 2),
                                    "speedup_vs_best_plain_nncf": round(plain_nncf_ms / best_int8["median_ms"], 2)},
        "bf16_ms": bf16[0]["median_ms"] if bf16 else None,
    }
    summary = {
        **machine_fields(args, "quantization.py", argv),
        "load_average_during_timing": [round(x, 2) for x in timer.load], "load_average_at_start": round(load_at_start, 2),
        "model": "transformers.ViTForImageClassification(ViTConfig()), torch.manual_seed(0), 224x224, batch 1",
        "calibration": args.calibration, "export_seconds": export_seconds,
        "versions": artifact.manifest.get("versions"), "goals": goals, "results": rows,
        "wall_seconds": round(time.time() - started, 1),
    }
    write_results(args.out / f"quantization-{args.machine}", summary, markdown(summary))
    return 0


def write_results(stem: Path, summary: dict[str, Any], text: str) -> None:
    """<stem>.json and <stem>.md, and the Markdown printed."""
    stem.parent.mkdir(parents=True, exist_ok=True)
    stem.with_suffix(".json").write_text(json.dumps(summary, indent=2) + "\n")
    stem.with_suffix(".md").write_text(text + "\n")
    print(text)


def markdown(summary: dict[str, Any]) -> str:
    lines = [
        f"# ViT-B/16 224, batch 1: plain tools vs vlmedge ({summary['machine']})",
        "",
        f"CPU: {summary['cpu']}, {summary['cores']} cores ({', '.join(summary['cpu_flags'])}); load average while timing "
        f"{summary['load_average_during_timing'][0]}-{summary['load_average_during_timing'][1]}. "
        f"{summary['rounds']} round-robin rounds x {summary['runs_per_round']} runs each, median; model call only.",
        f"Model: {summary['model']}. Command: `{summary['command']}`.",
        "",
        "Gates: the defaults, except that top-1 agreement is not gated for fp16/bf16/int8 (recorded in each report): "
        "with random weights one parity input has its top two of 1000 logits ~0.02 apart, a tie any reduced precision "
        "flips. Accuracy is gated on the trained built-in model (tests/test_quantize.py). int8 is calibrated on "
        f"{summary.get('calibration', 40)} photo crops (matplotlib's grace_hopper.jpg), the same for vlmedge and plain NNCF; "
        "plain NNCF rows show the cosine the int8 gate (0.99) would judge, not applied.",
        "",
        "| entry | median ms | min ms | x PyTorch | parity (cosine, top-1) | recipe | provider |",
        "|---|---:|---:|---:|---|---|---|",
    ]
    for r in summary["results"]:
        parity = "" if "passed" not in r else (
            f"{'pass' if r['passed'] else 'FAIL'} {r['cosine_min']:.6f}, {r['top1']:.0%}" if r["top1"] is not None
            else f"{'pass' if r['passed'] else 'FAIL'} {r['cosine_min']:.6f}")
        recipe = f"{r['recipe']} L{r['level']}" if r.get("recipe") else ""
        note = " (export-time only)" if r.get("note") else ""
        lines.append(f"| {r['name']}{note} | {r['median_ms']:.1f} | {r['min_ms']:.1f} | {r['speedup_vs_pytorch']:.2f} | {parity} "
                     f"| {recipe} | {r.get('provider', '')} |")
    goals = summary["goals"]
    if goals["best_int8"]:
        g = goals["best_int8"]
        lines += ["", f"Best INT8: {g['name']} {g['median_ms']:.1f} ms = {g['speedup_vs_pytorch']:.2f}x PyTorch (SDPA), "
                      f"{g['speedup_vs_plain_quantize_dynamic']:.2f}x plain quantize_dynamic, "
                      f"{g['speedup_vs_best_plain_nncf']:.2f}x the faster plain NNCF (goals: >= 7x PyTorch, >= 1.5x plain NNCF)."]
    if goals["bf16_ms"]:
        lines.append(f"vlmedge OpenVINO bf16: {goals['bf16_ms']:.1f} ms.")
    return "\n".join(lines)


if __name__ == "__main__":
    raise SystemExit(main())
