"""The published vlmedge figures: ViT-B/16, Swin-T, DINOv2-S/14, CLIP ViT-B/32 (both towers)
and AST-base, built from their published configs with seeded random weights (no hub is
touched; latency does not depend on the weights' values), exported with vlmedge.export to
every target and precision this machine can build, and measured with `vlmedge.bench` on
every backend present, PyTorch eager in the same run. Optimum's ONNX export of ViT-B/16, and
its O2-optimised and int8 forms, are "peer" rows when its own virtualenv can be built
(benchmarks/optimum_peer.sh).

    .venv/bin/python benchmarks/run_suite.py            # the published figures
    .venv/bin/python benchmarks/run_suite.py --quick    # tiny configs of the same classes: checks the wiring

Writes benchmarks/results/<machine>.json (a list of bench results, each valid against
benchmarks/bench.schema.json) and <machine>.md, with a chart per model when matplotlib is
installed (<machine>-<model>.png). A model whose task this vlmedge cannot
export yet, or whose export fails, is skipped with the reason printed and recorded.
Artifacts are kept in benchmarks/.work/ and reused when the model's config, the variants
and the vlmedge version are unchanged, so a rerun measures without exporting again.
"""

from __future__ import annotations

import argparse
import dataclasses
import datetime
import hashlib
import importlib.util
import json
import math
import os
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

HERE = Path(__file__).resolve().parent
REPO = HERE.parent
sys.path.insert(0, str(REPO))  # tests.text_fixtures builds the real CLIP tokenizer from open_clip's BPE file
os.environ.setdefault("HF_HUB_OFFLINE", "1")

IMAGENET_MEAN, IMAGENET_STD = [0.485, 0.456, 0.406], [0.229, 0.224, 0.225]
CLIP_MEAN, CLIP_STD = [0.48145466, 0.4578275, 0.40821073], [0.26862954, 0.26130258, 0.27577711]


def _labels(n: int) -> dict[str, Any]:
    names = {i: f"class_{i}" for i in range(n)}
    return {"num_labels": n, "id2label": names, "label2id": {v: k for k, v in names.items()}}


def _processor(name: str) -> Any:
    """transformers 5's Pillow image processor class (no torchvision needed), else the classic one."""
    import transformers

    return getattr(transformers, f"{name}Pil", None) or getattr(transformers, name)


HEAD_SCALE = 8.0


def _spread_head(model: Any) -> None:
    """Random heads give near-tied logits, so top-1 agreement would measure float noise;
    a wider head (as trained ones are) keeps the parity gates meaningful."""
    import torch

    with torch.no_grad():
        for name, param in model.named_parameters():
            if name.startswith("classifier"):
                param.mul_(HEAD_SCALE)


def suite_gates() -> dict[str, Any]:
    """benchmarks/quantization.py's gates for random weights, and the fp32 gate's absolute
    error bound scaled as the widened heads scale the logits (cosine and top-1 unchanged)."""
    from benchmarks.quantization import random_weight_gates
    from vlmedge.parity import GATES

    fp32 = GATES["fp32"]
    return {**random_weight_gates(), "fp32": dataclasses.replace(fp32, max_abs=fp32.max_abs * HEAD_SCALE)}


def vit_b16(folder: Path, quick: bool) -> None:
    """google/vit-base-patch16-224."""
    import transformers as t

    size = dict(hidden_size=32, num_hidden_layers=2, num_attention_heads=2, intermediate_size=64, image_size=64) \
        if quick else dict(hidden_size=768, num_hidden_layers=12, num_attention_heads=12, intermediate_size=3072,
                           image_size=224)
    model = t.ViTForImageClassification(t.ViTConfig(patch_size=16, **size, **_labels(1000)))
    _spread_head(model)
    model.eval().save_pretrained(folder)
    side = size["image_size"]
    _processor("ViTImageProcessor")(size={"height": side, "width": side}, resample=2, image_mean=[0.5] * 3,
                        image_std=[0.5] * 3).save_pretrained(folder)


def swin_t(folder: Path, quick: bool) -> None:
    """microsoft/swin-tiny-patch4-window7-224."""
    import transformers as t

    size = dict(embed_dim=16, depths=[1, 1], num_heads=[1, 2], window_size=4, image_size=64) if quick else \
        dict(embed_dim=96, depths=[2, 2, 6, 2], num_heads=[3, 6, 12, 24], window_size=7, image_size=224)
    model = t.SwinForImageClassification(t.SwinConfig(patch_size=4, mlp_ratio=4.0, **size, **_labels(1000)))
    _spread_head(model)
    model.eval().save_pretrained(folder)
    side = size["image_size"]
    _processor("ViTImageProcessor")(size={"height": side, "width": side}, resample=3, image_mean=IMAGENET_MEAN,
                        image_std=IMAGENET_STD).save_pretrained(folder)


def dinov2_s14(folder: Path, quick: bool) -> None:
    """facebook/dinov2-small (embeddings at the processor's 224 crop)."""
    import transformers as t

    size = dict(hidden_size=32, num_hidden_layers=2, num_attention_heads=2) if quick else \
        dict(hidden_size=384, num_hidden_layers=12, num_attention_heads=6)
    t.Dinov2Model(t.Dinov2Config(patch_size=14, image_size=518, mlp_ratio=4, layerscale_value=1.0, **size)) \
        .eval().save_pretrained(folder)
    crop = 56 if quick else 224
    _processor("BitImageProcessor")(size={"shortest_edge": crop * 8 // 7}, crop_size={"height": crop, "width": crop}, resample=3,
                        image_mean=IMAGENET_MEAN, image_std=IMAGENET_STD, do_convert_rgb=True).save_pretrained(folder)


def clip_b32(folder: Path, quick: bool) -> None:
    """openai/clip-vit-base-patch32, with the real CLIP BPE tokenizer."""
    import transformers as t

    from tests.text_fixtures import clip_tokenizer_dir

    tokenizer = t.CLIPTokenizer.from_pretrained(clip_tokenizer_dir(folder.parent / f"{folder.name}-tokenizer"))
    text = dict(hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=2) if quick else \
        dict(hidden_size=512, intermediate_size=2048, num_hidden_layers=12, num_attention_heads=8)
    vision = dict(hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=2) if quick else \
        dict(hidden_size=768, intermediate_size=3072, num_hidden_layers=12, num_attention_heads=12)
    config = t.CLIPConfig(
        text_config=dict(vocab_size=49408, max_position_embeddings=77, bos_token_id=0, eos_token_id=2, pad_token_id=1,
                         **text),
        vision_config=dict(image_size=224, patch_size=32, **vision),
        projection_dim=16 if quick else 512, logit_scale_init_value=math.log(100.0))
    t.CLIPModel(config).eval().save_pretrained(folder)
    processor = _processor("CLIPImageProcessor")(size={"shortest_edge": 224}, crop_size={"height": 224, "width": 224}, resample=3,
                                     image_mean=CLIP_MEAN, image_std=CLIP_STD)
    t.CLIPProcessor(image_processor=processor, tokenizer=tokenizer).save_pretrained(folder)


def ast_base(folder: Path, quick: bool) -> None:
    """MIT/ast-finetuned-audioset-10-10-0.4593 (527 AudioSet labels, multi-label)."""
    import transformers as t

    size = dict(hidden_size=32, num_hidden_layers=2, num_attention_heads=2, intermediate_size=64, max_length=128) \
        if quick else dict(hidden_size=768, num_hidden_layers=12, num_attention_heads=12, intermediate_size=3072,
                           max_length=1024)
    model = t.ASTForAudioClassification(t.ASTConfig(patch_size=16, frequency_stride=10, time_stride=10, num_mel_bins=128,
                                                    problem_type="multi_label_classification", **size, **_labels(527)))
    _spread_head(model)
    model.eval().save_pretrained(folder)
    t.ASTFeatureExtractor(sampling_rate=16000, num_mel_bins=128, max_length=size["max_length"], do_normalize=True,
                          mean=-4.2677393, std=4.5689974).save_pretrained(folder)


@dataclass
class Model:
    name: str
    title: str
    published: str
    builder: Callable[[Path, bool], None]
    task: str
    batch_sizes: tuple[int, ...] = (1, 8)
    peer_task: str | None = None  # optimum-cli task when Optimum exports it as a peer

    def build(self, folder: Path, quick: bool) -> None:
        """Saves the model to `folder` with the suite's weights: every script that builds it seeds the
        same way, so their figures and gates are of one model."""
        import torch

        torch.manual_seed(0)
        self.builder(folder, quick)


MODELS = [
    Model("vit-b16", "ViT-B/16", "google/vit-base-patch16-224", vit_b16, "image-classification",
          peer_task="image-classification"),
    Model("swin-t", "Swin-T", "microsoft/swin-tiny-patch4-window7-224", swin_t, "image-classification"),
    Model("dinov2-s14", "DINOv2-S/14", "facebook/dinov2-small", dinov2_s14, "image-embedding"),
    Model("clip-b32", "CLIP ViT-B/32", "openai/clip-vit-base-patch32", clip_b32, "clip"),
    # AST-base sees 1,212 patches per 10 s clip (six times ViT-B/16's 197): batch 2 keeps it in the time budget.
    Model("ast-base", "AST-base (AudioSet)", "MIT/ast-finetuned-audioset-10-10-0.4593", ast_base,
          "audio-classification", batch_sizes=(1, 2)),
]


def not_exportable(task: str) -> str | None:
    """Why this vlmedge cannot export `task` yet, or None."""
    from vlmedge.exporters.sources.hf import BUILDERS

    if task not in BUILDERS:
        return f"this vlmedge has no exporter for the task '{task}'"
    module = BUILDERS[task][0]
    if importlib.util.find_spec(module) is None:
        return f"the {task} exporter ({module}) is not part of this vlmedge yet"
    from vlmedge.registry import TASKS

    if task not in TASKS:
        return f"this vlmedge has no runtime for the task '{task}'"
    return None


def buildable_variants(quick: bool, precisions: list[str] | None) -> list[tuple[str, str]]:
    """(target, precision) pairs this vlmedge can build here; TensorRT only with its package."""
    from vlmedge.exporters.pipeline import VARIANT_BUILDERS

    variants = [v for v in VARIANT_BUILDERS if v[0] != "tensorrt" or importlib.util.find_spec("tensorrt")]
    if precisions:
        variants = [v for v in variants if v[1] in precisions or v == ("onnx", "fp32")]
    if ("openvino", "bf16") in variants:
        try:  # bf16 on a CPU without native bf16 would only measure emulation
            from vlmedge.runtimes.openvino import supports_precision

            if not supports_precision("bf16"):
                variants.remove(("openvino", "bf16"))
        except Exception:
            variants.remove(("openvino", "bf16"))
    return variants


def export_with_fallback(folder: Path, out: Path, variants: list[tuple[str, str]], say) -> tuple[Any, list[str]]:
    """Exports every variant it can. A variant that misses its gate is left out by export
    itself, that target and precision only (OpenVINO int8 stays when ONNX Runtime's int8
    misses), with the figure that failed; a variant whose build raises (a converter error)
    has its precision (or, for fp32, its target) dropped with the reason and the export
    retried, down to the fp32 ONNX file alone. The gates are suite_gates(), recorded in every
    report."""
    import vlmedge
    from vlmedge.errors import VlmedgeError

    dropped: list[str] = []
    targets = sorted({t for t, _ in variants}, key=["onnx", "openvino", "tensorrt"].index)
    precisions = sorted({p for _, p in variants}, key=["fp32", "fp16", "bf16", "int8"].index)
    while True:
        try:
            say(f"export {folder.name}: to {', '.join(targets)}; {', '.join(precisions)}")
            artifact = vlmedge.export(str(folder), out, to=targets, precision=precisions, progress=say,
                                      gates=suite_gates(), strict=False)
        except VlmedgeError as exc:
            failed = getattr(exc, "variant", None)  # the file whose build raised, set by export
            if failed is None or failed == ("onnx", "fp32"):
                raise
            target, precision = failed
            if precision != "fp32" and len(precisions) > 1:
                precisions.remove(precision)
                what = f"{precision} (every target; {target} {precision} failed)"
            else:
                targets.remove(target)
                what = f"{target} (every precision; {target} {precision} failed)"
            dropped.append(f"{what}: {str(exc).splitlines()[0][:300]}")
            say(f"dropped {dropped[-1]}")
            # export builds targets x precisions: keep only precisions some remaining target builds
            precisions = [p for p in precisions if any((t, p) in variants for t in targets)]
            continue
        missed = artifact.manifest.get("export", {}).get("dropped", [])
        return artifact, dropped + [f"{d['target']} {d['precision']} (missed its gate): {d['reason'][:300]}" for d in missed]


def optimum_peer(folder: Path, work: Path, task: str, say) -> tuple[dict[str, Path], str | None]:
    """Optimum's files of the folder from benchmarks/optimum_peer.sh, as vlmedge.bench's peers
    ({"NAME[:PRECISION]": file}: the export, and its O2-optimised and int8 forms where Optimum
    made them), and why any was not made. An earlier run's files are reused while the model
    folder, the script and the task are unchanged (the export and quantization take ~30 s)."""
    out = work / "optimum-onnx"
    log = work / "optimum-peer.log"
    record = work / "optimum-peer.json"
    key = _peer_key(folder, task)
    earlier = json.loads(record.read_text()) if record.is_file() else {}
    if earlier.get("key") == key and all(Path(p).is_file() for p in earlier.get("peers", {}).values()):
        say(f"optimum peer: {earlier['versions']}; reusing {', '.join(earlier['peers'])} from {record}")
        return {name: Path(p) for name, p in earlier["peers"].items()}, earlier.get("skipped")
    record.unlink(missing_ok=True)
    say("optimum peer: benchmarks/optimum_peer.sh (creates benchmarks/.optimum-venv on first use)")
    try:
        with open(log, "w") as f:
            done = subprocess.run(["bash", str(HERE / "optimum_peer.sh"), str(folder), str(out), task],
                                  stdout=subprocess.PIPE, stderr=f, text=True, timeout=1800)
    except (OSError, subprocess.TimeoutExpired) as exc:
        return {}, f"optimum_peer.sh did not finish: {exc}"
    lines = done.stdout.strip().splitlines()
    peers = {key: Path(path) for key, _, path in (line.partition("=") for line in lines[1:] if "=" in line)}
    if done.returncode != 0 or not peers:
        tail = [line for line in log.read_text(errors="replace").splitlines() if line.strip()][-1:] or ["no output"]
        return {}, f"optimum_peer.sh failed (exit {done.returncode}; see {log}): {tail[0][:300]}"
    say(f"optimum peer: {lines[0]}; {', '.join(peers)}")
    skipped = [line.split("skipped ", 1)[1] for line in log.read_text(errors="replace").splitlines()
               if line.startswith("optimum_peer: skipped ")]
    why = "; ".join(skipped) or None
    files = {name: str(path.resolve()) for name, path in peers.items()}
    record.write_text(json.dumps({"key": key, "versions": lines[0], "peers": files, "skipped": why}, indent=2) + "\n")
    return peers, why


def _peer_key(folder: Path, task: str) -> str:
    """What Optimum's files depend on: the model folder's files (content of its config, size
    and mtime of the rest), optimum_peer.sh itself and the task."""
    digest = hashlib.sha256((HERE / "optimum_peer.sh").read_bytes() + task.encode())
    for path in sorted(p for p in folder.rglob("*") if p.is_file()):
        info = path.stat()
        digest.update(f"{path.relative_to(folder)}:{info.st_size}:{info.st_mtime_ns}".encode())
    digest.update((folder / "config.json").read_bytes())
    return digest.hexdigest()[:16]


def _fingerprint(folder: Path, variants: list[tuple[str, str]]) -> str:
    import vlmedge

    digest = hashlib.sha256((folder / "config.json").read_bytes())
    digest.update(json.dumps([sorted(variants), vlmedge.__version__]).encode())
    return digest.hexdigest()[:16]


def reusable(artifact: Path, stamp: Path, fingerprint: str, folder: Path) -> bool:
    """Whether an earlier run's artifact is this model's, with these variants, and exported from
    this folder: `vlmedge bench` rebuilds its PyTorch baseline from the source folder the
    manifest records (resolved at export), so an artifact left behind by a moved work folder
    would lose that row."""
    if not ((artifact / "manifest.json").is_file() and stamp.is_file()
            and stamp.read_text().split("\n")[0] == fingerprint):
        return False
    source = json.loads((artifact / "manifest.json").read_text()).get("source") or {}
    return source.get("folder") == str(folder.resolve())


QUIET_LOAD = 1.5  # the 1-minute load average a model's timing starts under (issue 19)


def wait_for_quiet(say, limit_s: float = 180.0) -> None:
    """Waits, up to `limit_s`, for the 1-minute load average to fall below QUIET_LOAD before a
    model is timed: an export or the model before leaves it near the number of cores. The
    bench result records the load it started under either way, and warns when it was high."""
    t0 = time.perf_counter()
    while os.getloadavg()[0] >= QUIET_LOAD and time.perf_counter() - t0 < limit_s:
        time.sleep(5)
    say(f"load average {os.getloadavg()[0]:.2f} before timing (waited {time.perf_counter() - t0:.0f} s)")


def run_model(model: Model, work: Path, args: argparse.Namespace, say) -> dict[str, Any]:
    import vlmedge

    record: dict[str, Any] = {"name": model.name, "title": model.title, "published_config": model.published,
                              "task": model.task, "status": "skipped", "reason": None, "export_s": None,
                              "dropped_variants": [], "peer": None, "result": None}
    reason = not_exportable(model.task)
    if reason:
        record["reason"] = reason
        return record
    folder = work / model.name / "hf"
    if not (folder / "config.json").is_file():
        folder.mkdir(parents=True, exist_ok=True)
        model.build(folder, args.quick)
    variants = buildable_variants(args.quick, args.precision)
    artifact = work / model.name / "artifact"
    stamp = work / model.name / "artifact.fingerprint"
    fingerprint = _fingerprint(folder, variants)
    if reusable(artifact, stamp, fingerprint, folder):
        say(f"{model.name}: reusing {artifact}")
        record["dropped_variants"] = json.loads(stamp.read_text().split("\n", 1)[1] or "[]")
    else:
        t0 = time.perf_counter()
        try:
            _, dropped = export_with_fallback(folder, artifact, variants, say)
        except Exception as exc:  # the model is skipped, the suite goes on
            record["reason"] = f"export failed: {type(exc).__name__}: {str(exc).splitlines()[0][:400]}"
            return record
        record["export_s"] = round(time.perf_counter() - t0, 1)
        record["dropped_variants"] = dropped
        stamp.write_text(fingerprint + "\n" + json.dumps(dropped))
    peers = {}
    if model.peer_task and not args.no_peer:
        peers, why = optimum_peer(folder, work / model.name, model.peer_task, say)
        record["peer"] = {"name": "optimum", "files": {key: str(path) for key, path in peers.items()}, "skipped": why}
        if why:
            say(f"optimum peer skipped: {why}")
    if not args.quick:  # --quick checks the wiring; its figures are not kept
        wait_for_quiet(say)
    result = vlmedge.bench(artifact, batch_sizes=list(model.batch_sizes), threads=args.threads, warmup=args.warmup,
                           duration=args.duration, min_iterations=args.min_iterations, peers=peers, progress=say,
                           rounds=args.rounds or None)
    record.update(status="measured", result=result.to_dict())
    return record


def write_outputs(records: list[dict[str, Any]], environment: Any, started: float, args: argparse.Namespace,
                  out_dir: Path) -> tuple[Path, Path]:
    import dataclasses

    from vlmedge.bench.report import markdown
    from vlmedge.bench.result import BenchResult

    name = environment.machine_name + ("-quick" if args.quick else "")
    json_path, md_path = out_dir / f"{name}.json", out_dir / f"{name}.md"
    # A run of some models updates their entries and keeps the others' (each result says when it ran).
    order = [m.name for m in MODELS]
    try:
        kept = [r for r in json.loads(json_path.read_text())["models"] if r["name"] not in {x["name"] for x in records}]
    except (OSError, ValueError, KeyError, TypeError):
        kept = []
    records = sorted(kept + records, key=lambda r: order.index(r["name"]) if r["name"] in order else len(order))
    document = {
        "schema": "vlmedge-bench-suite", "schema_version": 1,
        "created": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
        "machine": name, "command": " ".join([Path(sys.executable).name, *sys.argv]),
        "wall_s": round(time.perf_counter() - started, 1), "quick": args.quick,
        "environment": dataclasses.asdict(environment), "models": records,
    }
    out_dir.mkdir(parents=True, exist_ok=True)
    json_path.write_text(json.dumps(document, indent=2) + "\n", encoding="utf-8")
    lines = [f"# vlmedge benchmark suite: {name}", "",
             f"- last command: `{document['command']}` ({document['wall_s'] / 60:.1f} min, {document['created']}); "
             "each model's table says when it ran",
             f"- machine: {environment.summary()}",
             "- weights: seeded random, from each model's published config (latency does not depend on the values)",
             "- every row: latency of one call of one batch on the artifact's real samples (model-only), "
             "PyTorch eager measured in the same process as the baseline", ""]
    if args.quick:
        lines += ["**Quick mode: tiny configs of the same classes. These figures say nothing about the real models.**", ""]
    for record in records:
        if record["status"] != "measured":
            lines += [f"## {record['title']}", "", f"Skipped: {record['reason']}", ""]
            continue
        result = BenchResult.from_dict(record["result"])
        lines.append(markdown(result, title=f"{record['title']} ({record['published_config']} config)"))
        if importlib.util.find_spec("matplotlib"):
            from vlmedge.bench.plot import plot

            png = plot(result, out_dir / f"{name}-{record['name']}.png", title=record["title"])
            lines.append(f"![{record['title']}]({png.name})")
        for drop in record["dropped_variants"]:
            lines.append(f"- not exported: {drop}")
        if record["peer"] and record["peer"]["skipped"]:
            lines.append(f"- Optimum peer files not measured: {record['peer']['skipped']}")
        lines.append("")
    md_path.write_text("\n".join(lines) + "\n", encoding="utf-8")
    return json_path, md_path


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0], formatter_class=argparse.RawTextHelpFormatter)
    parser.add_argument("--models", default=",".join(m.name for m in MODELS), help="comma-separated subset of: "
                        + ", ".join(m.name for m in MODELS))
    parser.add_argument("--precision", default=None, help="comma-separated precisions to build (default: all buildable)")
    parser.add_argument("--quick", action="store_true", help="tiny configs of the same classes: a wiring check, not figures")
    parser.add_argument("--threads", type=int, default=None, help="threads for every backend (default: all available)")
    parser.add_argument("--warmup", type=int, default=2)
    parser.add_argument("--duration", type=float, default=2.0, help="seconds of timed calls per row")
    parser.add_argument("--min-iterations", type=int, default=5, help="timed calls per row at least")
    parser.add_argument("--budget-min", type=float, default=40.0,
                        help="skip models not started within this many minutes (reported as skipped)")
    parser.add_argument("--no-peer", action="store_true", help="do not build the Optimum peer")
    parser.add_argument("--rounds", type=int, default=5, help="vlmedge bench's rounds: every row of a model timed "
                        "round-robin, so that this host's drift slows them alike (0: one row after another)")
    parser.add_argument("--work", type=Path, default=HERE / ".work", help="model folders and artifacts (reused)")
    parser.add_argument("--out", type=Path, default=HERE / "results")
    args = parser.parse_args(argv)
    args.precision = [p.strip() for p in args.precision.split(",")] if args.precision else None
    chosen = [m.strip() for m in args.models.split(",") if m.strip()]
    unknown = set(chosen) - {m.name for m in MODELS}
    if unknown:
        parser.error(f"unknown model(s) {', '.join(sorted(unknown))}")
    from vlmedge.environment import describe

    started = time.perf_counter()
    environment = describe()
    say = lambda message: print(f"  {message}", flush=True)  # noqa: E731
    work = args.work / ("quick" if args.quick else "full")
    records = []
    print(f"vlmedge suite on {environment.summary()}; load average {environment.load_average}", flush=True)
    for model in [m for m in MODELS if m.name in chosen]:
        elapsed = (time.perf_counter() - started) / 60
        if elapsed > args.budget_min:
            records.append({"name": model.name, "title": model.title, "published_config": model.published,
                            "task": model.task, "status": "skipped", "dropped_variants": [], "peer": None,
                            "result": None, "export_s": None,
                            "reason": f"time budget: {elapsed:.0f} of {args.budget_min:g} minutes spent before it"})
            print(f"[{model.name}] skipped: {records[-1]['reason']}", flush=True)
            continue
        print(f"[{model.name}] {model.title} from the {model.published} config", flush=True)
        record = run_model(model, work, args, say)
        if record["status"] != "measured":
            print(f"[{model.name}] skipped: {record['reason']}", flush=True)
        records.append(record)
    json_path, md_path = write_outputs(records, environment, started, args, args.out)
    measured = sum(r["status"] == "measured" for r in records)
    print(f"wrote {json_path} and {md_path}: {measured} of {len(records)} models measured in "
          f"{(time.perf_counter() - started) / 60:.1f} min", flush=True)
    return 0 if measured else 1


if __name__ == "__main__":
    sys.exit(main())
