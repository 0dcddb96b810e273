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
    to: str = typer.Option("onnx", "--to", help="Comma-separated targets: onnx."),
    precision: str = typer.Option("fp32", "--precision", help="Comma-separated precisions: fp32."),
    task: Optional[str] = typer.Option(None, "--task", help="Task, when the architecture does not imply it."),
    opset: int = typer.Option(18, "--opset", help="ONNX opset (>= 17)."),
) -> None:
    """Export MODEL to a verified artifact: files per target and precision, each checked against the source."""
    from vlmedge.exporters.pipeline import export as run_export

    with console.status("exporting") as status:
        def progress(message: str) -> None:
            console.print(f"  {message}")
            status.update(message)

        artifact = run_export(model, output, to=_split(to), precision=_split(precision), task=task,
                              opset=opset, progress=progress)
    console.print(f"[green]export success[/green]: {artifact.root}")
    console.print(f"next: vlmedge info {output}   |   vlmedge predict {output} IMAGE   |   vlmedge check {output}")


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
) -> None:
    """Run ARTIFACT on input files and print the results."""
    import vlmedge

    pipeline = vlmedge.load(artifact, backend=backend, precision=precision)
    options = dict(top_k=top_k, labels=labels, templates=template, window_hop=window_hop, aggregate=aggregate,
                   attention=attention)
    rows = PREDICTORS[pipeline.task](pipeline, list(inputs), **options)
    if as_json:
        print(json.dumps(rows, indent=2))
        return
    title = f"{artifact} ({pipeline.model.backend}, {pipeline.model.precision}, {pipeline.model.provider})"
    console.print(_results_table(rows, title))


def _results_table(rows: list[dict[str, Any]], title: str) -> Table:
    """One row per (input, rank): rows are {"input": ..., "predictions": [{label, score, ...}]}."""
    table = Table(title=title)
    for column in ("input", "rank", "label", "score"):
        table.add_column(column, justify="right" if column in ("rank", "score") else "left")
    for row in rows:
        for rank, p in enumerate(row["predictions"], 1):
            table.add_row(row["input"] if rank == 1 else "", str(rank), str(p["label"]), f"{p['score']:.4f}")
    return table


def _predict_classification(pipeline: Any, inputs: list[str], top_k: int, **_: Any) -> list[dict[str, Any]]:
    results = pipeline.classify(inputs, top_k=top_k)
    return [{"input": name, "predictions": [p._asdict() for p in preds]} for name, preds in zip(inputs, results)]


# task -> function(pipeline, inputs, **options) -> rows for the table or JSON
PREDICTORS = {
    "image-classification": _predict_classification,
}


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
    for column in ("path", "role", "target", "precision", "size", "parity"):
        table.add_column(column)
    for entry in art.files:
        table.add_row(entry["path"], entry["role"], entry.get("target", ""), entry.get("precision", ""),
                      f"{entry['size'] / 1e6:.2f} MB", _parity_cell(entry.get("parity")))
    console.print(table)
    versions = ", ".join(f"{k} {v}" for k, v in m.get("versions", {}).items())
    console.print(f"made with: {versions}")


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


def main(argv: list[str] | None = None) -> None:
    try:
        app(args=argv, prog_name="vlmedge")
    except VlmedgeError as exc:
        err_console.print(f"[red]error:[/red] {exc}", highlight=False)
        sys.exit(1)


if __name__ == "__main__":
    main()
