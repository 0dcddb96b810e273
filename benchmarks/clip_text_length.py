"""CLIP ViT-B/32's text tower at the longest caption of each batch instead of the full
77-token context (issue 19): what the dynamic sequence axis of CLIP-style text graphs buys.

vlmedge tokenizes every caption to the context (77 for CLIP), and a text graph exported with
a dynamic sequence axis (towers that pool at EOS or CLS under an attention mask; not SigLIP)
runs each batch without the padding all its captions end with (vlmedge.runtimes.base.
trim_padding). This times, round-robin in one process, end to end from the caption strings
(tokenizing included), the suite's CLIP ViT-B/32 (benchmarks/run_suite.py: its published config,
seeded random weights, the real CLIP BPE tokenizer):

    PyTorch fp32 (SDPA)   the tokenizer with padding=True (to the longest caption, as Hugging
                          Face's examples call it) and with padding="max_length", then
                          get_text_features
    vlmedge               every variant's embed_texts, at the longest caption (what it does now)
                          and at the full context (what it did before: the same file and
                          pipeline, the trimming turned off)

The captions are the 16 bundled ones (exporters/sample_data/captions.txt, 8-30 tokens): batch 1
cycles through them one at a time, batch 16 embeds them all. Each variant's two ways are
compared too: the smallest cosine between their embeddings.

    .venv/bin/python benchmarks/clip_text_length.py          # ~15 min on 2 cores (the export: ~8)
    .venv/bin/python benchmarks/clip_text_length.py --quick  # tiny configs: checks the wiring

Writes benchmarks/results/clip-text-length-<machine>.md and .json.
"""

from __future__ import annotations

import itertools
import os
import sys
import time
from pathlib import Path
from typing import Any, Callable

import numpy as np

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parent))

from benchmarks.quantization import (Timer, cosine_min, machine_fields, parse_timing_args, timing_parser,  # noqa: E402
                                     write_results)
from benchmarks.quantization_models import calibration_folder, user_model  # noqa: E402
from benchmarks.run_suite import MODELS, suite_gates  # noqa: E402

CAPTIONS = [line for line in (HERE.parent / "exporters/sample_data/captions.txt").read_text(encoding="utf-8").splitlines()
            if line.strip()]
BATCHES = (1, 16)


def export(work: Path, quick: bool, calibration: int) -> Path:
    """The suite's CLIP ViT-B/32 exported to ONNX and OpenVINO, fp32 and int8, with the suite's gates
    for random weights (kept in `work`)."""
    import vlmedge
    from vlmedge.exporters.calibration import calibration_feeds
    from vlmedge.exporters.sources import resolve

    folder, artifact = work / "hf", work / "artifact"
    if not (folder / "config.json").is_file():
        next(m for m in MODELS if m.name == "clip-b32").build(folder, quick)
    if not (artifact / "manifest.json").is_file():
        feeds = calibration_feeds(calibration_folder(work, "clip", calibration), resolve(str(folder)), size=calibration)
        t0 = time.time()
        vlmedge.export(str(folder), artifact, to=["onnx", "openvino"], precision=["fp32", "int8"], calibration=feeds,
                       gates=suite_gates(), progress=print)
        print(f"exported in {time.time() - t0:.0f}s")
    return folder


def batches(batch: int) -> Callable[[], list[str]]:
    """Each call's captions: the next `batch` of the bundled ones, round and round."""
    cycle = itertools.cycle(CAPTIONS)
    return lambda: [next(cycle) for _ in range(batch)]


def pytorch_embed(model: Any, tokenizer: Any, padding: Any) -> Callable[[list[str]], np.ndarray]:
    import torch

    def embed(captions: list[str]) -> np.ndarray:
        tokens = tokenizer(captions, padding=padding, truncation=True, return_tensors="pt")
        with torch.inference_mode():
            out = model.get_text_features(input_ids=tokens["input_ids"], attention_mask=tokens["attention_mask"])
        return (out if isinstance(out, torch.Tensor) else out.pooler_output).numpy()

    return embed


def measure(folder: Path, artifact: Path, rounds: int, runs: int) -> dict[str, Any]:
    import torch
    import transformers

    import vlmedge
    from vlmedge.artifact import Artifact

    torch.set_num_threads(len(os.sched_getaffinity(0)))
    model = user_model(folder)
    tokenizer = transformers.AutoTokenizer.from_pretrained(folder)
    embedders: dict[str, Callable[[list[str]], np.ndarray]] = {
        "PyTorch fp32 (SDPA), padding=True": pytorch_embed(model, tokenizer, True),
        "PyTorch fp32 (SDPA), padding=max_length": pytorch_embed(model, tokenizer, "max_length"),
    }
    agreement = {}
    for entry in Artifact.open(artifact).model_entries(graph="text"):
        backend = {"onnx": "onnxruntime", "openvino": "openvino"}[entry["target"]]
        longest = vlmedge.load(artifact, backend=backend, precision=entry["precision"])
        full = vlmedge.load(artifact, backend=backend, precision=entry["precision"])
        if not longest._text.trims_padding:
            raise SystemExit(f"{artifact}'s text graph has a fixed length; re-export it with this vlmedge")
        full._text.trims_padding = False  # what vlmedge did before: every caption at the full context
        name = f"vlmedge {entry['target']} {entry['precision']}"
        embedders[f"{name}, longest caption"] = longest.embed_texts
        embedders[f"{name}, full context"] = full.embed_texts
        agreement[name] = cosine_min(longest.embed_texts(CAPTIONS), full.embed_texts(CAPTIONS))
    reference = embedders["PyTorch fp32 (SDPA), padding=max_length"](CAPTIONS)
    vs_pytorch = {label: cosine_min(embed(CAPTIONS), reference) for label, embed in embedders.items()}
    lengths = tokenizer(CAPTIONS, padding=False)["input_ids"]
    results = {}
    for batch in BATCHES:
        timer = Timer(rounds, runs)
        for label, embed in embedders.items():
            next_captions = batches(batch)
            timer.add(label, lambda e=embed, n=next_captions: e(n()))
        results[batch] = {"timings": timer.run(), "load": timer.load}
        print(markdown_batch(batch, results[batch]["timings"], results[batch]["load"]))
    return {"results": results, "agreement": agreement, "cosine_vs_pytorch_max_length": vs_pytorch,
            "caption_tokens": [len(ids) for ids in lengths]}


def markdown_batch(batch: int, timings: dict[str, dict[str, float]], load: tuple[float, float]) -> str:
    base = timings["PyTorch fp32 (SDPA), padding=True"]["median_ms"]
    lines = [f"### Batch {batch} (load average {load[0]:.2f}-{load[1]:.2f} while timing)", "",
             "| variant | median ms a call | vs PyTorch padding=True | longest vs full context |",
             "|---|---:|---:|---:|"]
    for label, t in timings.items():
        gain = ""
        if label.endswith(", longest caption"):
            gain = f"**{timings[label.replace('longest caption', 'full context')]['median_ms'] / t['median_ms']:.2f}x**"
        lines.append(f"| {label} | {t['median_ms']:.2f} | {base / t['median_ms']:.2f}x | {gain} |")
    return "\n".join(lines)


def markdown(summary: dict[str, Any]) -> str:
    tokens = summary["caption_tokens"]
    lines = [f"# CLIP ViT-B/32 text tower: the longest caption vs the full 77-token context ({summary['machine']})", "",
             f"CPU: {summary['cpu']}, {summary['cores']} cores ({', '.join(summary['cpu_flags'])}); load average "
             f"{summary['load_average_at_start']:.2f} at the start; {summary['rounds']} rounds x {summary['runs_per_round']} "
             f"calls per variant, round-robin, medians. The 16 bundled captions, {min(tokens)}-{max(tokens)} tokens "
             "with BOS and EOS; end to end from the strings (tokenizing included).", "",
             f"Command: `{summary['command']}`", ""]
    for batch, result in summary["results"].items():
        lines += [markdown_batch(int(batch), result["timings"], tuple(result["load"])), ""]
    lines += ["### Agreement", "", "| variant | cosine: longest vs full context | cosine vs PyTorch (max_length) |",
              "|---|---:|---:|"]
    for name, cosine in summary["agreement"].items():
        lines.append(f"| {name} | {cosine:.6f} | {summary['cosine_vs_pytorch_max_length'][name + ', longest caption']:.6f} |")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = timing_parser(__doc__, "vlmedge-bench-clip-text", rounds=5, runs=4,
                           calibration_help="calibration items for the int8 files")
    args = parse_timing_args(parser, argv)
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    started = time.time()
    args.work.mkdir(parents=True, exist_ok=True)
    folder = export(args.work, args.quick, args.calibration)
    load_at_start = os.getloadavg()[0]
    measured = measure(folder, args.work / "artifact", args.rounds, args.runs)
    summary = {**machine_fields(args, "clip_text_length.py", argv), "load_average_at_start": round(load_at_start, 2),
               **measured, "wall_seconds": round(time.time() - started, 1)}
    write_results(args.out / f"clip-text-length-{args.machine}", summary, markdown(summary))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
