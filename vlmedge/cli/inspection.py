"""The commands that read an artifact or this install and change nothing: info, check, formats,
cache."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import typer
from rich.markup import escape

from vlmedge import choices, formats
from vlmedge.cli.base import Command, app, console, err_console, show
from vlmedge.cli.rows import check_summary
from vlmedge.errors import BackendUnavailableError, ParityError, one_line
from vlmedge.tables import print_json


@app.command(cls=Command)
def info(
    artifact: Path = typer.Argument(..., metavar="ARTIFACT", help="Artifact folder."),
    as_json: bool = typer.Option(False, "--json", help="Print the manifest as JSON (full paths, every figure)."),
) -> None:
    """Show an artifact's task, source, files, preprocessing, parity results and the variants left out."""
    from vlmedge.artifact import Artifact

    art = Artifact.open(artifact)
    m = art.manifest
    if as_json:
        print_json(m)
        return
    source = m.get("source", {})
    say = lambda text: console.print(text, markup=False, highlight=False)  # noqa: E731
    console.print(f"[bold]{escape(str(artifact))}[/bold]  task: {m['task']}  schema: v{m['schema_version']} "
                  f"(revision {m.get('format_revision', 1)})")
    say(f"source: {source.get('reference')} ({source.get('architecture')})  created: {m.get('created')}")
    labels = m.get("labels") or []
    if labels:
        say(f"labels ({len(labels)}): " + ", ".join(map(one_line, labels[:8])) + (" ..." if len(labels) > 8 else ""))
    for kind, spec in m["preprocess"].items():
        say(f"preprocess[{kind}]: " + ", ".join(f"{k}={v}" for k, v in spec.items()))
    show([{"path": escape(e["path"]), "role": e["role"], "target": e.get("target", ""),
           "precision": e.get("precision", ""), "size": f"{e['size'] / 1e6:.2f} MB", "parity": _parity_cell(e.get("parity")),
           "verified on": escape((e.get("parity") or {}).get("provider", "")),  # OpenVINO: what the floats ran in
           "speed (export machine)": _speed_cell(e.get("parity")),
           "runs with": escape(", ".join(f"{k}={v}" for k, v in (e.get("session_options") or {}).items()))}
          for e in art.files], "files", right=("size",))
    for entry in m.get("export", {}).get("dropped", []):
        console.print(f"[yellow]left out[/yellow] {entry['target']} {entry['precision']} (missed its gate): "
                      f"{escape(entry['reason'])}", highlight=False)
    say("made with: " + ", ".join(f"{k} {v}" for k, v in m.get("versions", {}).items()))


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
    if report["passed"] and "gate_default" in report:  # judged by the exporter's own gate, not vlmedge's default
        verdict = "[yellow]pass (own gate)[/yellow]"
    text = f"{verdict} cos {worst_cos:.6f} abs {worst_abs:.1e}"
    return text + (f" top1 {min(top1):.0%}" if top1 else "") + f" (n={report['samples']})"


@app.command(cls=Command)
def check(
    artifact: Path = typer.Argument(..., metavar="ARTIFACT", help="Artifact folder."),
    device: str = typer.Option("cpu", "--device", metavar="DEVICE", help="Device to run on."),
    backend: str = typer.Option("all", "--backend", metavar="BACKEND",
                                help=f"Check only this backend's files: {', '.join(choices.backend_names())}; "
                                     "default: every file."),
    as_json: bool = typer.Option(False, "--json", help="Print the reports as JSON."),
) -> None:
    """Re-run the artifact's stored parity inputs on this machine against the stored source outputs (exit 3 on a miss)."""
    from vlmedge.check import check_artifact

    if backend != "all":
        choices.check_backends("--backend", backend, choices.backend_names(), many=False)
    reports = check_artifact(artifact, device=device, backend=None if backend == "all" else backend)
    failed = [r for r in reports if r.get("passed") is False]
    if not as_json:
        show([{"file": escape(r["file"]), "backend": r["backend"], "precision": r["precision"],
               "result": f"skipped: {escape(r['skipped'])}" if "skipped" in r else _parity_cell(r)} for r in reports],
             f"parity check of {artifact}")
    for r in failed:  # on stderr with --json too, as every failure is, and before it (a stdout that fails)
        for failure in r["failures"]:
            err_console.print(f"[red]{escape(one_line(r['file']))}[/red]: {escape(one_line(failure))}", highlight=False)
    if as_json:
        print_json(reports)
    else:
        console.print(check_summary(reports), highlight=False)  # last: what `| tail -1` of a log shows
    if failed:
        raise typer.Exit(ParityError.exit_code)
    if all("skipped" in r for r in reports):  # a check that checked nothing must not read as passed
        raise BackendUnavailableError(f"No file of {artifact} could be checked here: every one was skipped (the reasons are above); install the backend it needs or choose another device.")


@app.command(name="formats", cls=Command)
def formats_command(
    as_json: bool = typer.Option(False, "--json", help="Print everything as JSON."),
    with_architectures: bool = typer.Option(
        False, "--architectures", help="Also list the Hugging Face architectures of every task exported from a model "
                                       "folder, each with its task, exported or refused with the reason or what it "
                                       "needs (needs the export extra; some seconds)."),
) -> None:
    """What this install can export and run: tasks, targets and backends, precisions, built-in models."""
    facts = formats.describe(with_architectures)
    if as_json:
        print_json(facts)
        return
    console.print(f"vlmedge {facts['version']}", highlight=False)
    show([{"task": t["name"], "inputs": ", ".join(t["inputs"]), "predict runs": t["cli_predict"],
           "summary": escape(t["summary"])} for t in facts["tasks"]], "tasks (--task)")
    show([{"backend": b["name"], "target (--to)": b["target"], "status": "ready" if b["runs_here"] else
           escape(b["reason"] or ""), "session options (vlmedge.load)": ", ".join(o["name"] for o in b["session_options"])
           or "none", "never runs": "; ".join(f"{p}: {why}" for p, why in b["never_runs"].items())} for b in facts["backends"]],
         "backends (--backend) and targets (--to)")
    console.print(f"precisions (--precision): {', '.join(p['name'] for p in facts['precisions'])}", highlight=False)
    console.print(f"built-in models (builtin:NAME): {', '.join(facts['builtin_models']) or 'none'}", highlight=False)
    extra = facts["export"]
    console.print("export extra: " + ("installed" if extra["installed"] else escape(
        f"not installed (missing {', '.join(extra['missing'])}); {extra['install']}")), highlight=False)
    shown = ("tasks", "backends", "precisions", "builtin_models", "export")
    for name in [n for n in facts if n not in shown and n != "version"]:
        section = facts[name]  # a section added later: a list of flat dicts shows as a table
        if isinstance(section, list) and section and isinstance(section[0], dict):
            show([{k: escape(str(v)) for k, v in row.items()} for row in section], name)
        else:
            console.print(f"{name}: {escape(str(section))}")


@app.command(name="cache", cls=Command)
def cache_command(
    clear: bool = typer.Option(False, "--clear", help="Delete every compiled model in the cache (each is rebuilt by "
                                                      "its next load); the verified-file memo and measured peaks stay."),
    as_json: bool = typer.Option(False, "--json", help="Print the entries as JSON."),
) -> None:
    """List the compiled models vlmedge keeps (each load's OpenVINO blob or ONNX Runtime optimised model), or delete them."""
    from vlmedge.runtimes.cache import clear_entries, list_entries
    from vlmedge.user_cache import cache_enabled, cache_root

    root = cache_root()
    if clear:
        count, size = clear_entries()
        console.print(f"removed {count} compiled model(s), {size / 1e6:.1f} MB, from {escape(str(root))}", highlight=False)
        return
    entries = list_entries()
    if as_json:
        print_json(entries)
        return
    state = "" if cache_enabled() else " (off here: VLMEDGE_NO_CACHE is set)"
    console.print(f"compiled-model cache{state}: {escape(str(root))}, {len(entries)} model(s), "
                  f"{sum(e['bytes'] for e in entries) / 1e6:.1f} MB; VLMEDGE_CACHE_DIR moves it, "
                  "`vlmedge cache --clear` empties it", highlight=False)
    show([{"model file": escape(e["source"] or "(not recorded)"), "backend": f"{e['backend']} {e['version']}",
           "device": str(e["device"]), "options": escape(", ".join(f"{k}={v}" for k, v in (e["options"] or {}).items())),
           "size": f"{e['bytes'] / 1e6:.1f} MB", "created": str(e["created"])} for e in entries],
         "compiled models, oldest first", right=("size",))
