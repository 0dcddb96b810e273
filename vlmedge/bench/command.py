"""The `vlmedge bench` command (registered on the app in vlmedge.cli).

Only typer, rich and the option defaults (vlmedge.bench.settings) are imported here; the
measuring code and every backend load when the command runs, so `vlmedge --help` stays light.
"""

from __future__ import annotations

import importlib.util
import json
import tempfile
from pathlib import Path
from typing import Any, Optional

import typer
from rich.console import Console

from vlmedge import choices
from vlmedge.bench.settings import DEFAULT_BATCHES, DEFAULT_DURATION, DEFAULT_WARMUP, MIN_ITERATIONS, SWEEPS, peer_files
from vlmedge.errors import BackendUnavailableError, InputError, UsageError
from vlmedge.signals import sigterm_as_interrupt
from vlmedge.tables import TerminalConsole, print_json

# As vlmedge.cli's consoles: each line of the report, a warning, a progress line is one line in a
# log; the tables are laid out to the width.
console, err_console = TerminalConsole(), TerminalConsole(stderr=True)


def _ints(value: Optional[str], option: str) -> list[int] | None:
    if not value:
        return None
    try:  # every comma separates a number: "1,,8" is a typo, not 1,8
        numbers = [int(part) for part in value.split(",")]
    except ValueError:
        numbers = []
    if not numbers or min(numbers) < 1:
        raise typer.BadParameter(f"give comma-separated positive integers, e.g. 1,8,32, not {value!r}", param_hint=option)
    return numbers


PLOT_SUFFIXES = (".png", ".svg", ".pdf")  # what matplotlib writes without extra backends


def _peers(values: Optional[list[str]]) -> dict[str, str]:
    peers = {}
    for value in values or []:
        name, sep, path = value.partition("=")
        if not sep or not name or not path:
            raise typer.BadParameter(f"give NAME=FILE or NAME:PRECISION=FILE (an .onnx file or an OpenVINO .xml), not {value!r}", param_hint="--peer")
        try:  # NAME:PRECISION checked before anything is exported or measured
            peer_files({name: path})
        except (InputError, UsageError) as exc:
            raise typer.BadParameter(str(exc), param_hint="--peer") from None
        if name in peers:
            raise typer.BadParameter(f"{name} is given twice; give each peer a name of its own", param_hint="--peer")
        peers[name] = path
    return peers


def _check_options(backend: Optional[str], precision: Optional[str], sweep: Optional[str], metric: str,
                   max_slowdown: float, plot_path: Optional[Path], outputs: dict[str, Any]) -> None:
    """Every option value, before anything is exported, loaded or measured; `outputs`: the
    files a run writes, by option (a folder there would be found only after measuring)."""
    from vlmedge.bench.report import METRICS, check_max_slowdown

    for option, path in outputs.items():
        if path and path != "-":  # a path found unwritable only after every row was measured would waste the run
            choices.check_writable_file(Path(path), f"{option} {path}")
    if plot_path and Path(plot_path).suffix.lower() not in PLOT_SUFFIXES:
        raise UsageError(f"--plot writes {', '.join(PLOT_SUFFIXES)} files, not {Path(plot_path).name}.")

    if backend:
        choices.check_backends("--backend", backend, ["torch", *choices.backend_names()])
    if precision:
        choices.choose("--precision", precision, choices.precision_names())
    if sweep:
        choices.choose("--sweep", sweep, SWEEPS)
    choices.choose("--metric", metric, METRICS, many=False)
    check_max_slowdown(max_slowdown, "--max-slowdown")
    if plot_path and importlib.util.find_spec("matplotlib") is None:
        raise BackendUnavailableError("--plot needs matplotlib (pip install 'vlmedge[plot]'), which is not "
                                      "installed; nothing was measured.")


def _artifact_or_export(reference: str, say) -> tuple[Path, tempfile.TemporaryDirectory | None]:
    """An artifact folder as given; a model reference (builtin:NAME, a Hugging Face folder)
    is exported to a temporary artifact first, which is removed afterwards."""
    path = Path(reference)
    if (path / "manifest.json").is_file() or not (reference.startswith("builtin:") or (path / "config.json").is_file()):
        return path, None
    from vlmedge.environment import export_extra_missing
    from vlmedge.runtimes.base import backend_of_target, unavailable_reason

    try:
        from vlmedge.exporters.pipeline import VARIANT_BUILDERS, export
    except ModuleNotFoundError as exc:  # a runtime-only install: said as `vlmedge export` says it
        raise export_extra_missing(exc) or exc from None

    tmp = tempfile.TemporaryDirectory(prefix="vlmedge-bench-")
    # fp32 only: lower precisions need calibration choices that belong to an explicit `vlmedge export`;
    # the targets whose backend is installed here
    targets = [t for t in ("onnx", "openvino")
               if (t, "fp32") in VARIANT_BUILDERS and unavailable_reason(backend_of_target(t)) is None]
    say(f"{reference} is a model, not an artifact: exporting it to a temporary artifact ({', '.join(targets)} fp32); "
        "export once with `vlmedge export` to keep it and to add fp16/int8")
    try:
        export(reference, Path(tmp.name) / "artifact", to=targets, precision=["fp32"], progress=say)
    except BaseException:  # Ctrl-C and SIGTERM too (vlmedge.signals)
        tmp.cleanup()
        raise
    return Path(tmp.name) / "artifact", tmp


def bench(
    artifact: Optional[str] = typer.Argument(None, metavar="ARTIFACT", help="Artifact folder (or builtin:NAME / a Hugging Face folder, exported first)."),
    backend: Optional[str] = typer.Option(None, "--backend", metavar="BACKENDS", help=f"Comma-separated: torch, {', '.join(choices.backend_names())}. Default: torch and every backend with files."),
    precision: Optional[str] = typer.Option(None, "--precision", metavar="PRECISIONS", help=f"Comma-separated: {', '.join(choices.precision_names())}. Default: all the artifact has."),
    batch_size: Optional[str] = typer.Option(None, "--batch-size", metavar="SIZES", help=f"Comma-separated batch sizes. Default: {','.join(map(str, DEFAULT_BATCHES))}."),
    threads: Optional[int] = typer.Option(None, "--threads", metavar="N", min=1, help="Intra-op threads for every backend, torch included. Default: the cores available."),
    warmup: int = typer.Option(DEFAULT_WARMUP, "--warmup", metavar="N", min=0, help="Untimed calls after the first one."),
    iterations: Optional[int] = typer.Option(None, "--iterations", metavar="N", min=1, help="Timed calls per row (instead of --duration)."),
    duration: Optional[float] = typer.Option(None, "--duration", metavar="SECONDS", min=0.001, help=f"Seconds of timed calls per row (default {DEFAULT_DURATION:g}, at least {MIN_ITERATIONS} calls)."),
    end_to_end: bool = typer.Option(False, "--end-to-end", help="Time the task pipeline on the artifact's sample files: decode, preprocess, model, postprocess."),
    random_inputs: bool = typer.Option(False, "--random-inputs", help="Seeded random inputs instead of the artifact's real samples."),
    sweep: Optional[str] = typer.Option(None, "--sweep", metavar="threads,batch", help="threads and/or batch: measure a grid and recommend settings."),
    rounds: Optional[int] = typer.Option(None, "--rounds", metavar="N", min=1, help="Time every row round-robin in N rounds, all sessions open at once (the memory of all of them): ratios between rows then hold on a machine whose speed drifts; --iterations is shared among the rounds, each share rounded up (3 in 5 rounds time 5 calls). Default: each row in turn."),
    device: str = typer.Option("cpu", "--device", metavar="DEVICE", help="Device for the exported files: cpu, cuda, ..."),
    peer: Optional[list[str]] = typer.Option(None, "--peer", metavar="NAME[:PRECISION]=FILE", help="NAME=FILE exported by another tool, timed beside the artifact (repeatable): FILE.onnx on ONNX Runtime, FILE.xml (OpenVINO IR) on OpenVINO; NAME:int8=FILE for a quantized file, judged by the int8 gate."),
    roofline: bool = typer.Option(True, "--roofline/--no-roofline", help="Per row: operations per call, GOP/s, % of this machine's measured peak for its precision, compute- or memory-bound (the peaks are measured once and cached)."),
    remeasure_peak: bool = typer.Option(False, "--remeasure-peak", help="Measure the machine's peak GEMM rates and bandwidth again instead of reading them from the cache."),
    json_path: Optional[str] = typer.Option(None, "--json", metavar="FILE", help="Write the result as JSON to FILE ('-': stdout, tables then go to stderr)."),
    markdown_path: Optional[Path] = typer.Option(None, "--markdown", metavar="FILE", help="Write the result as Markdown to FILE."),
    plot_path: Optional[Path] = typer.Option(None, "--plot", metavar="PNG", help="Write a PNG: p50 per variant with p90 whiskers, throughput vs batch (needs the 'plot' extra: matplotlib)."),
    compare: Optional[tuple[Path, Path]] = typer.Option(None, "--compare", metavar="BASE.json NEW.json", help="BASE.json NEW.json: print per-row ratios; exit 1 on a regression."),
    max_slowdown: float = typer.Option(1.10, "--max-slowdown", metavar="RATIO", help="With --compare: the largest slowdown that is not a regression: new/base for times, base/new for --metric throughput (1.10: 10% slower)."),
    metric: str = typer.Option("p50_ms", "--metric", metavar="METRIC", help="With --compare: p50_ms, mean_ms, p90_ms, p95_ms, p99_ms, min_ms or throughput."),
) -> None:
    """Measure latency, throughput, start-up time and memory per backend, precision and batch, beside PyTorch."""
    out = err_console if json_path == "-" else console
    _check_options(backend, precision, sweep, metric, max_slowdown, plot_path,
                   {"--json": json_path, "--markdown": markdown_path, "--plot": plot_path})
    batches, peers = _ints(batch_size, "--batch-size"), _peers(peer)
    if compare:
        if artifact:
            raise typer.BadParameter("give either ARTIFACT or --compare BASE NEW, not both", param_hint="--compare")
        return _compare(compare, max_slowdown, metric, json_path, out)
    if not artifact:
        raise typer.BadParameter("give an artifact folder (or --compare BASE.json NEW.json)", param_hint="ARTIFACT")
    if iterations is not None and duration is not None:
        raise typer.BadParameter("give --iterations or --duration, not both", param_hint="--iterations")
    from vlmedge.bench import bench as run_bench
    from vlmedge.bench.report import markdown, print_result
    from vlmedge.bench.result import write_report

    # SIGTERM as Ctrl-C: a model exported to a temporary artifact first is removed either way
    with sigterm_as_interrupt("nothing was written."), out.status("benchmarking") as status:
        def say(message: str) -> None:
            out.print(f"  {message}", highlight=False, markup=False)
            status.update(message)

        path, tmp = _artifact_or_export(artifact, say)
        try:
            result = run_bench(path, backends=choices.split(backend) or None, precisions=choices.split(precision) or None,
                               batch_sizes=batches, threads=threads, warmup=warmup,
                               iterations=iterations, duration=duration, end_to_end=end_to_end,
                               random_inputs=random_inputs, sweep=choices.split(sweep), device=device, peers=peers,
                               progress=say, roofline=roofline, remeasure_peak=remeasure_peak, rounds=rounds)
        finally:
            if tmp is not None:
                tmp.cleanup()
    print_result(result, out)
    if json_path == "-":
        print_json(result.to_dict())
    elif json_path:
        out.print(f"wrote {result.save(json_path)}", highlight=False, markup=False)
    if markdown_path:
        out.print(f"wrote {write_report(markdown_path, markdown(result))}", highlight=False, markup=False)
    if plot_path:
        from vlmedge.bench.plot import plot

        out.print(f"wrote {plot(result, plot_path)}", highlight=False, markup=False)
    if not result.rows:
        raise InputError("Nothing was measured; the reasons are listed above under 'not measured'.")
    if json_path and json_path != "-":
        out.print(f"next: vlmedge bench --compare {json_path} NEW.json   (exits 1 when NEW is more than "
                  f"{max_slowdown:.2f}x slower)", highlight=False, markup=False)


def _compare(files: tuple[Path, Path], max_slowdown: float, metric: str, json_path: Optional[str], out: Console) -> None:
    from vlmedge.bench.report import as_dict, compare, print_comparison
    from vlmedge.bench.result import BenchResult, write_report

    base, new = (BenchResult.load(f) for f in files)
    comparison = compare(base, new, max_slowdown=max_slowdown, metric=metric)
    print_comparison(comparison, out, names=(str(files[0]), str(files[1])))
    if json_path == "-":
        print_json(as_dict(comparison))
    elif json_path:
        write_report(Path(json_path), json.dumps(as_dict(comparison), indent=2))
    if not comparison.passed:
        raise typer.Exit(1)
