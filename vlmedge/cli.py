"""The `vlmedge` command: export, predict, info, check.

User errors (VlmedgeError) print as one sentence with exit code 1, never a traceback;
bad usage exits with 2.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Any, Optional

import typer
from rich.console import Console
from rich.table import Table

from vlmedge.errors import VlmedgeError

app = typer.Typer(
    help="Export, verify and run vision, vision-language and audio transformers on edge hardware.",
    no_args_is_help=True,
    pretty_exceptions_enable=False,
    add_completion=False,
)
console = Console()
err_console = Console(stderr=True)


def _split(value: str) -> list[str]:
    return [part.strip() for part in value.split(",") if part.strip()]


@app.command()
def export(
    model: str = typer.Argument(..., help="Hugging Face folder or cached id, or builtin:NAME."),
    output: Path = typer.Option(..., "-o", "--output", help="Artifact folder to write."),
    to: str = typer.Option("onnx", "--to", help="Comma-separated targets: onnx, openvino, tensorrt."),
    precision: str = typer.Option("fp32", "--precision", help="Comma-separated precisions: fp32, fp16, bf16, int8."),
    task: Optional[str] = typer.Option(None, "--task", help="Task, when the architecture does not imply it."),
    opset: int = typer.Option(18, "--opset", help="ONNX opset (>= 17)."),
    image_size: Optional[str] = typer.Option(
        None, "--image-size", help="Image encoders: export resolution, e.g. 448 or 448x336 (height x width)."),
    calibration: Optional[Path] = typer.Option(
        None, "--calibration", help="int8 calibration data: a folder of images or audio files, or a .txt of captions."),
    calibration_size: int = typer.Option(300, "--calibration-size", min=1, help="How many calibration items to use."),
    evaluation: Optional[Path] = typer.Option(
        None, "--eval", help="Labelled data (one folder per class): accuracy of every file, judged by the gate."),
) -> None:
    """Export MODEL to a verified artifact: files per target and precision, each checked against the source."""
    from vlmedge.exporters.pipeline import export as run_export

    with console.status("exporting") as status:
        def progress(message: str) -> None:
            console.print(f"  {message}", markup=False)  # "[image] ..." is a graph name, not a style
            status.update(message)

        artifact = run_export(model, output, to=_split(to), precision=_split(precision), task=task,
                              opset=opset, progress=progress, calibration=calibration,
                              calibration_size=calibration_size, evaluation=evaluation,
                              **({"image_size": image_size} if image_size else {}))
    console.print(f"[green]export success[/green]: {artifact.root}")
    labels_hint = ' --labels "cat,dog,car"' if artifact.task == "clip" else ""
    console.print(f"next: vlmedge info {output}   |   vlmedge predict {output} IMAGE{labels_hint}   |   vlmedge check {output}")


@app.command()
def predict(
    artifact: Path = typer.Argument(..., help="Artifact folder."),
    inputs: list[str] = typer.Argument(..., help="Input files (images or audio)."),
    top_k: int = typer.Option(5, "--top-k", min=1, help="How many labels to show per input."),
    labels: Optional[str] = typer.Option(None, "--labels", help="CLIP zero-shot: comma-separated candidate labels."),
    template: Optional[list[str]] = typer.Option(None, "--template", help="CLIP zero-shot prompt template(s), e.g. 'a photo of a {}.'"),
    window_hop: Optional[float] = typer.Option(None, "--window-hop", help="Audio: seconds between analysis windows."),
    aggregate: str = typer.Option("max", "--aggregate", help="Audio: clip-level aggregate of windows, max or mean."),
    attention: Optional[Path] = typer.Option(None, "--attention", help="Image encoders: write attention heat maps to this PNG."),
    backend: str = typer.Option("auto", "--backend", help="auto, onnxruntime, openvino or tensorrt."),
    precision: Optional[str] = typer.Option(None, "--precision", help="fp32, fp16, bf16, int8; default: fastest verified."),
    as_json: bool = typer.Option(False, "--json", help="Print JSON instead of a table."),
    out: Optional[Path] = typer.Option(None, "--out", help="Bulk: write every result to this .parquet (folders and .parquet/.csv tables of paths allowed)."),
    engine: str = typer.Option("local", "--engine", help="Bulk engine: local (this process) or ray (Ray Data; pip install 'vlmedge[ray]')."),
    address: Optional[str] = typer.Option(None, "--address", help="--engine ray: cluster address (auto, ray://head:10001); default: start a local Ray."),
    batch_size: int = typer.Option(32, "--batch-size", min=1, help="Bulk: inputs per model call."),
    concurrency: Optional[int] = typer.Option(None, "--concurrency", min=1, help="--engine ray: inference actors (default: one, or one per GPU)."),
    gpus_per_worker: float = typer.Option(0, "--gpus-per-worker", min=0, help="--engine ray: GPUs per inference actor."),
) -> None:
    """Run ARTIFACT on input files and print the results."""
    from vlmedge.bulk import command as bulk

    if bulk.wants_bulk(engine, out, address, concurrency, gpus_per_worker):
        options = dict(top_k=top_k, labels=labels, templates=template, window_hop=window_hop, aggregate=aggregate,
                       attention=attention)
        return bulk.predict(artifact, list(inputs), out, engine, address, batch_size, concurrency, gpus_per_worker,
                            backend, precision, options, console, err_console)
    from vlmedge.registry import task_named
    from vlmedge.tasks import load

    pipeline = load(artifact, backend=backend, precision=precision)
    method = task_named(pipeline.task).method("predict")
    options = dict(top_k=top_k, labels=labels, templates=template, window_hop=window_hop, aggregate=aggregate,
                   attention=attention)
    rows = ROWS[method.result](pipeline, method, list(inputs), **options)
    if as_json:
        print(json.dumps(rows, indent=2))
        return
    title = f"{artifact} ({pipeline.model.backend}, {pipeline.model.precision}, {pipeline.model.provider})"
    console.print(TABLES.get(method.result, _results_table)(rows, title))
    if any(len(row.get("windows") or []) > 1 for row in rows):
        console.print(_windows_table(rows))


def _results_table(rows: list[dict[str, Any]], title: str) -> Table:
    """One row per (input, rank): rows are {"input": ..., "predictions": [{label, score, ...}]}."""
    table = Table(title=title)
    for column in ("input", "rank", "label", "score"):
        table.add_column(column, justify="right" if column in ("rank", "score") else "left")
    for row in rows:
        for rank, p in enumerate(row["predictions"], 1):
            table.add_row(row["input"] if rank == 1 else "", str(rank), str(p["label"]), f"{p['score']:.4f}")
    return table


def _ranked_rows(pipeline: Any, method: Any, inputs: list[str], top_k: int, labels: Optional[str] = None,
                 templates: Optional[list[str]] = None, **_: Any) -> list[dict[str, Any]]:
    """Ranked labels per input; a zero-shot method ranks against the --labels, through the
    --template prompts."""
    call = getattr(pipeline, method.name)
    if "labels" not in method.options:
        results = call(inputs, top_k=top_k)
    else:
        candidates = _split(labels or "")
        if not candidates:
            raise typer.BadParameter("a CLIP artifact classifies zero-shot against labels you give; pass them, "
                                     "e.g. --labels \"cat,dog,car\" (and optionally --template 'a photo of a {}.').",
                                     param_hint="--labels")
        results = call(inputs, candidates, list(templates) if templates else ["a photo of a {}."], top_k=top_k)
    return [{"input": name, "predictions": [p._asdict() for p in preds]} for name, preds in zip(inputs, results)]


def _tag_rows(pipeline: Any, method: Any, inputs: list[str], top_k: int, window_hop: Optional[float] = None,
              aggregate: str = "max", **_: Any) -> list[dict[str, Any]]:
    results = getattr(pipeline, method.name)(inputs, top_k=top_k, window_hop=window_hop, aggregate=aggregate)
    return [{"input": name, "duration": round(clip.duration, 3),
             "predictions": [t._asdict() for t in clip.tags],
             "windows": [{"start": round(w.start, 3), "end": round(w.end, 3),
                          "predictions": [t._asdict() for t in w.tags]} for w in clip.windows]}
            for name, clip in zip(inputs, results)]


def _windows_table(rows: list[dict[str, Any]]) -> Table:
    """Audio clips longer than one model window: the top tag of each window."""
    table = Table(title="windows")
    for column in ("input", "start s", "end s", "top label", "score"):
        table.add_column(column, justify="left" if column in ("input", "top label") else "right")
    for row in rows:
        for i, w in enumerate(row.get("windows") or []):
            top = w["predictions"][0] if w["predictions"] else {"label": "", "score": float("nan")}
            table.add_row(row["input"] if i == 0 else "", f"{w['start']:.2f}", f"{w['end']:.2f}",
                          str(top["label"]), f"{top['score']:.4f}")
    return table


def _attention_paths(attention: Path, inputs: list[str]) -> list[Path]:
    """One input: the path as given; several: out-<stem>.png per input (numbered on a clash)."""
    if len(inputs) == 1:
        return [attention]
    suffix = attention.suffix or ".png"
    paths, seen = [], set()
    for i, name in enumerate(inputs):
        path = attention.with_name(f"{attention.stem}-{Path(name).stem}{suffix}")
        if path in seen:
            path = attention.with_name(f"{attention.stem}-{Path(name).stem}-{i}{suffix}")
        seen.add(path)
        paths.append(path)
    return paths


def _embedding_rows(pipeline: Any, method: Any, inputs: list[str], attention: Optional[Path] = None,
                    **_: Any) -> list[dict[str, Any]]:
    import numpy as np

    raw = getattr(pipeline, method.name)(inputs, normalize=False)
    rows = [{"input": name, "pooling": pipeline.default_pooling, "dim": int(vector.shape[0]),
             "norm": float(np.linalg.norm(vector)), "first": [round(float(v), 5) for v in vector[:4]]}
            for name, vector in zip(inputs, raw)]
    if attention is not None:
        for row, name, path in zip(rows, inputs, _attention_paths(attention, inputs)):
            row["attention"] = str(pipeline.render_attention(name, path))
    return rows


def _embedding_table(rows: list[dict[str, Any]], title: str) -> Table:
    table = Table(title=title)
    columns = ["input", "pooling", "dim", "norm", "first values"] + (["attention"] if "attention" in rows[0] else [])
    for column in columns:
        table.add_column(column, justify="right" if column in ("dim", "norm") else "left")
    for row in rows:
        cells = [row["input"], row["pooling"], str(row["dim"]), f"{row['norm']:.4f}",
                 " ".join(f"{v:+.4f}" for v in row["first"]) + " ..."]
        table.add_row(*cells, *([row["attention"]] if "attention" in row else []))
    return table


# the registry's result kind of the "predict" method -> function(pipeline, method, inputs,
# **options) -> rows for the table or JSON
ROWS = {"ranked": _ranked_rows, "tags": _tag_rows, "embedding": _embedding_rows}
# result kind -> function(rows, title) -> Table, where the rows are not ranked labels
TABLES = {"embedding": _embedding_table}


@app.command()
def embed(
    artifact: Path = typer.Argument(..., help="Artifact folder (image-embedding, or clip)."),
    inputs: Optional[list[str]] = typer.Argument(None, help="Image files, or folders searched recursively (sorted)."),
    out: Path = typer.Option(..., "--out", help="The .npy to write; the row list goes beside it as <name>.files.json."),
    text: Optional[list[str]] = typer.Option(None, "--text", help="CLIP: a text to embed (repeatable); text rows follow the images."),
    pooling: Optional[str] = typer.Option(None, "--pooling", help="Image encoders: cls, mean, cls+mean or pooled; default: the model's own."),
    normalize: bool = typer.Option(True, "--normalize/--no-normalize", help="L2-normalise each embedding."),
    batch_size: int = typer.Option(32, "--batch-size", min=1, help="Images per model call."),
    backend: str = typer.Option("auto", "--backend", help="auto, onnxruntime, openvino or tensorrt."),
    precision: Optional[str] = typer.Option(None, "--precision", help="fp32, fp16, bf16, int8; default: fastest verified."),
    engine: str = typer.Option("local", "--engine", help="local (this process) or ray (Ray Data; pip install 'vlmedge[ray]'); --out may be a .parquet."),
    address: Optional[str] = typer.Option(None, "--address", help="--engine ray: cluster address (auto, ray://head:10001); default: start a local Ray."),
    concurrency: Optional[int] = typer.Option(None, "--concurrency", min=1, help="--engine ray: inference actors (default: one, or one per GPU)."),
    gpus_per_worker: float = typer.Option(0, "--gpus-per-worker", min=0, help="--engine ray: GPUs per inference actor."),
) -> None:
    """Embed many images (and, for CLIP, texts) into one (N, D) .npy, skipping unreadable files."""
    from vlmedge.bulk import command as bulk

    bulk.embed(artifact, inputs, out, engine, address, batch_size, concurrency, gpus_per_worker, backend, precision,
               pooling, normalize, list(text or []), console, err_console)


@app.command()
def info(
    artifact: Path = typer.Argument(..., help="Artifact folder."),
    as_json: bool = typer.Option(False, "--json", help="Print the manifest as JSON."),
) -> None:
    """Show an artifact's task, source, files, preprocessing and parity results."""
    from vlmedge.artifact import Artifact

    art = Artifact.open(artifact)
    m = art.manifest
    if as_json:
        print(json.dumps(m, indent=2))
        return
    source = m.get("source", {})
    console.print(f"[bold]{artifact}[/bold]  task: {m['task']}  schema: v{m['schema_version']}")
    console.print(f"source: {source.get('reference')} ({source.get('architecture')})  created: {m.get('created')}")
    labels = m.get("labels") or []
    if labels:
        shown = ", ".join(labels[:8]) + (" ..." if len(labels) > 8 else "")
        console.print(f"labels ({len(labels)}): {shown}")
    for kind, spec in m["preprocess"].items():
        console.print(f"preprocess[{kind}]: " + ", ".join(f"{k}={v}" for k, v in spec.items()))
    table = Table(title="files")
    for column in ("path", "role", "target", "precision", "size", "parity", "speed (export machine)"):
        table.add_column(column)
    for entry in art.files:
        table.add_row(entry["path"], entry["role"], entry.get("target", ""), entry.get("precision", ""),
                      f"{entry['size'] / 1e6:.2f} MB", _parity_cell(entry.get("parity")), _speed_cell(entry.get("parity")))
    console.print(table)
    versions = ", ".join(f"{k} {v}" for k, v in m.get("versions", {}).items())
    console.print(f"made with: {versions}")


def _speed_cell(report: dict[str, Any] | None) -> str:
    """Batch-1 latency measured at export, the speed-up over fp32 ONNX Runtime, the int8 recipe."""
    if not report or not report.get("latency_ms"):
        return ""
    text = f"{report['latency_ms']:.1f} ms"
    if "speedup_vs_onnx_fp32" in report:
        text += f" x{report['speedup_vs_onnx_fp32']:.2f}" + (" [yellow]not faster[/yellow]" if report.get("not_faster") else "")
    if "accuracy" in report:
        text += f" acc {report['accuracy']['top1']:.1%}"
    quantization = report.get("quantization")
    if quantization:
        text += f" {quantization['method']} L{quantization['level']}"
    return text


def _parity_cell(report: dict[str, Any] | None) -> str:
    if not report:
        return ""
    worst_cos = min(o.get("cosine_min", 1.0) for o in report["outputs"].values())
    worst_abs = max(o.get("max_abs", 0.0) for o in report["outputs"].values())
    top1 = [o["top1"] for o in report["outputs"].values() if "top1" in o]
    verdict = "[green]pass[/green]" if report["passed"] else "[red]FAIL[/red]"
    text = f"{verdict} cos {worst_cos:.6f} abs {worst_abs:.1e}"
    return text + (f" top1 {min(top1):.0%}" if top1 else "") + f" (n={report['samples']})"


@app.command()
def check(
    artifact: Path = typer.Argument(..., help="Artifact folder."),
    device: str = typer.Option("cpu", "--device", help="Device to run on."),
    as_json: bool = typer.Option(False, "--json", help="Print the reports as JSON."),
) -> None:
    """Re-run the artifact's stored parity inputs on this machine against the stored source outputs."""
    from vlmedge.check import check_artifact

    reports = check_artifact(artifact, device=device)
    failed = [r for r in reports if r.get("passed") is False]
    if as_json:
        print(json.dumps(reports, indent=2))
    else:
        table = Table(title=f"parity check of {artifact}")
        for column in ("file", "backend", "precision", "result"):
            table.add_column(column)
        for r in reports:
            result = f"skipped: {r['skipped']}" if "skipped" in r else _parity_cell(r)
            table.add_row(r["file"], r["backend"], r["precision"], result)
        console.print(table)
        for r in failed:
            for failure in r["failures"]:
                err_console.print(f"[red]{r['file']}[/red]: {failure}")
    if failed:
        raise typer.Exit(1)


from vlmedge.bench.command import bench as _bench_command  # noqa: E402 - typer and rich only

app.command(name="bench")(_bench_command)

from vlmedge.serve.command import serve as _serve_command  # noqa: E402 - typer only; the server loads when run

app.command(name="serve")(_serve_command)


def main(argv: list[str] | None = None) -> None:
    try:
        app(args=argv, prog_name="vlmedge")
    except VlmedgeError as exc:
        from rich.markup import escape  # messages name extras such as vlmedge[ray]: not markup

        err_console.print(f"[red]error:[/red] {escape(str(exc))}", highlight=False, soft_wrap=True)
        sys.exit(1)


if __name__ == "__main__":
    main()
