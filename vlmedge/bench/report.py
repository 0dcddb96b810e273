"""Bench results as people read them (rich tables, Markdown) and compared (a CI gate).

`compare(base, new)` matches rows by (graph, backend, precision, batch, threads, mode,
peer) and calls a row a regression when new/base of the latency metric exceeds
`max_slowdown` (for throughput: base/new).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from rich.console import Console
from rich.markup import escape
from rich.table import Table

from vlmedge.bench.peak import GEMM_DEPTH
from vlmedge.bench.result import BASELINE, HIGH_COV, BenchResult, Row, threads_text
from vlmedge.bench.timing import round_share
from vlmedge.errors import UsageError
from vlmedge.tables import print_rows

METRICS = ("p50_ms", "mean_ms", "p90_ms", "p95_ms", "p99_ms", "min_ms", "throughput")
LATENCY_COLUMNS = ("min", "mean", "std", "CoV", "p50", "p90", "p95", "p99", "max")
OTHER_COLUMNS = ("items/s", "vs torch", "load s", "first ms", "peak RSS +MiB", "anon +MiB", "size MB", "provider",
                 "parity")
ROOFLINE_COLUMNS = ("GOP/call", "GOP/s", "computes in", "peak GOP/s", "% of peak", "ops/byte", "ridge", "bound")


def parity_text(row: Row) -> str:
    p = row.parity
    if p.passed is None:
        return "not verified"
    verdict = "pass" if p.passed else "FAIL"
    text = f"{verdict} cos {p.cosine_min:.6f}" if p.cosine_min is not None else verdict
    if p.top1 is not None:
        text += f" top1 {p.top1:.0%}"
    if p.max_abs is not None:
        text += f" abs {p.max_abs:.1e}"
    return text + (" (checked now)" if p.source == "live" else "")


def _speedup(row: Row) -> str:
    if row.backend == BASELINE and row.peer is None:
        return "1.00x (base)"
    return f"{row.speedup_vs_torch:.2f}x" if row.speedup_vs_torch is not None else "-"


def _latency_cells(row: Row) -> list[str]:
    lat = row.latency
    return [f"{lat.min_ms:.3f}", f"{lat.mean_ms:.3f}", f"{lat.std_ms:.3f}", f"{lat.cov:.1%}" + (" !" if lat.cov > HIGH_COV else ""),
            f"{lat.p50_ms:.3f}", f"{lat.p90_ms:.3f}", f"{lat.p95_ms:.3f}", f"{lat.p99_ms:.3f}", f"{lat.max_ms:.3f}"]


def _load_cell(row: Row) -> str:
    """Load seconds, with the compiled-model cache's part in it when there was one."""
    cached = f" ({row.load_cache})" if row.load_cache in ("hit", "miss") else ""
    return f"{row.load_s:.3f}{cached}"


def _other_cells(row: Row) -> list[str]:
    return [f"{row.throughput_per_s:.1f}", _speedup(row), _load_cell(row), f"{row.first_inference_ms:.2f}",
            "-" if row.peak_rss_increase_mb is None else f"{row.peak_rss_increase_mb:.1f}",
            "-" if row.anonymous_increase_mb is None else f"{row.anonymous_increase_mb:.1f}",
            "-" if row.model_mb is None else f"{row.model_mb:.2f}", row.provider, parity_text(row)]


def _roofline_cells(row: Row) -> list[str]:
    r = row.roofline
    if r is None or r.ops is None:
        return ["-"] * (len(ROOFLINE_COLUMNS) - 1) + [r.note if r else "not computed"]
    number = lambda x, fmt: "-" if x is None else format(x, fmt)  # noqa: E731
    return [f"{r.ops / 1e9:.4g}", f"{r.gops_per_s:.4g}", r.compute_precision, number(r.peak_gops, ".4g"),
            number(r.percent_of_peak, ".1f"), number(r.intensity, ".3g"), number(r.ridge, ".3g"),
            f"{r.bound}-bound" if r.bound else "-"]


def roofline_text(row: Row) -> str:
    """The row's roofline in one line."""
    r = row.roofline
    if r is None:
        return "not computed"
    if r.ops is None:
        return f"unknown ({r.note})"
    text = f"{r.ops / 1e9:.4g} GOP/call, {r.gops_per_s:.4g} GOP/s"
    if r.percent_of_peak is not None:
        text += f" = {r.percent_of_peak:.1f}% of the {r.compute_precision} peak {r.peak_gops:.4g} GOP/s"
    else:
        text += f" (computes in {r.compute_precision}; no peak)"
    if r.bound:
        text += (f"; {r.intensity:.3g} ops/byte {'>=' if r.bound == 'compute' else '<'} ridge {r.ridge:.3g}: "
                 f"{r.bound}-bound")
    return text + (f" ({r.note})" if r.note else "")


def peak_lines(result: BenchResult) -> list[str]:
    """The machine's measured peaks, one line per backend and thread count."""
    lines = []
    for m in result.peaks:
        have = ", ".join(f"{p.precision} {p.gops:.4g}" for p in m.peaks if p.gops is not None)
        missing = "; ".join(f"{p.precision}: {p.note}" for p in m.peaks if p.gops is None)
        measured = f"{have} GOP/s ({GEMM_DEPTH} chained {m.gemm_size}^3 GEMMs)" if have else "no GEMM peak measured"
        lines.append(f"peak {m.backend} {m.backend_version}, {threads_text(m.threads)}: {measured}; bandwidth {m.bandwidth_gbs} GB/s ({m.bandwidth_method}); "
                     f"{'cached, ' if m.cached else ''}measured {m.measured} at load "
                     f"{', '.join(map(str, m.load_average)) or 'n/a'}" + (f"; n/a: {missing}" if missing else ""))
    return lines


def _key_cells(row: Row) -> list[str]:
    return [row.graph, row.label, str(row.batch_size), str(row.threads)]


def header_lines(result: BenchResult) -> list[str]:
    s, env = result.settings, result.environment
    rounds = s.rounds or 1  # a round's share is rounded up: 50 calls in 3 rounds are 51
    timing = (f"{round_share(s.iterations, rounds) * rounds} timed calls" if s.iterations else
              f"{s.duration_s:g} s of timed calls per row (at least {round_share(s.min_iterations, rounds) * rounds})")
    if s.rounds:
        timing += f", every row timed round-robin in {s.rounds} rounds (each a share, after one untimed call)"
    versions = ", ".join(f"{k} {v}" for k, v in env.versions.items())
    return [
        f"artifact: {result.artifact.path} ({result.artifact.task}, {result.artifact.reference})",
        f"scope: {s.mode} - {s.scope}",
        f"inputs: {'seeded random inputs' if s.inputs == 'random' else 'the artifact real samples'}; "
        f"threads: {', '.join(map(str, s.threads))}; warm-up: {s.warmup} calls; {timing}",
        f"machine: {env.summary()}; load average at start: {', '.join(map(str, env.load_average)) or 'n/a'}; "
        f"finished {result.created}",
        f"versions: {versions}",
        f"latency: ms per call of one batch; items/s = batch / mean latency; vs torch = torch p50 / p50; "
        f"peak RSS: {s.memory_method}; anon: the anonymous memory (RssAnon) the session holds after the row, "
        "over that before it was opened (peak RSS less the file pages the kernel can drop)",
        *(["roofline: GOP/call = 2 x MACs of MatMul/Gemm/Conv counted from the graph; GOP/s over p50; % of the "
           "measured peak of the precision the row computes in; below the ridge (peak / bandwidth, ops/byte): "
           "memory-bound"] if result.peaks else []),
        *peak_lines(result),
    ]


def tables(result: BenchResult) -> list[Table]:
    latency = Table(title="latency per call (ms)", title_justify="left")
    other = Table(title="throughput, start-up, memory, parity", title_justify="left")
    roof = Table(title="roofline: against the measured peak of the precision each row computes in", title_justify="left")
    for table, columns in ((latency, LATENCY_COLUMNS), (other, OTHER_COLUMNS), (roof, ROOFLINE_COLUMNS)):
        for name in ("graph", "variant", "batch", "threads") + columns:
            table.add_column(name, justify="left" if name in ("graph", "variant", "provider", "parity") else "right",
                             overflow="fold")
    for row in result.rows:
        latency.add_row(*map(escape, _key_cells(row) + _latency_cells(row)))
        other.add_row(*map(escape, _key_cells(row) + _other_cells(row)))
        roof.add_row(*map(escape, _key_cells(row) + _roofline_cells(row)))
    return [latency, other] + ([roof] if any(r.roofline for r in result.rows) else [])


def recommendation_lines(result: BenchResult) -> list[str]:
    return [f"[{r.graph}] lowest latency: {r.label}, batch {r.batch_size}, {threads_text(r.threads)} "
            f"(p50 {r.p50_ms:.3f} ms)"
            if r.objective == "latency" else
            f"[{r.graph}] highest throughput: {r.label}, batch {r.batch_size}, {threads_text(r.threads)} "
            f"({r.throughput_per_s:.1f} items/s)" for r in result.recommendations]


def skip_lines(result: BenchResult) -> list[str]:
    lines = []
    for s in result.skipped:
        what = " ".join(x for x in (s.backend, s.precision or "", f"[{s.graph}]" if s.graph else "",
                                    f"batch {s.batch_size}" if s.batch_size else "") if x)
        lines.append(f"{what}: {s.reason}")
    return lines


# The two tables need about this many columns; a narrower console (a log is 80) gets one
# block per row instead, every figure on a labelled line.
TABLE_WIDTH = 150


def row_block(row: Row) -> list[str]:
    """One measured row as lines of `name value` pairs, readable at 80 columns."""
    latency = dict(zip(LATENCY_COLUMNS, _latency_cells(row)))
    other = dict(zip(OTHER_COLUMNS, _other_cells(row)))
    graph, label, batch, _ = _key_cells(row)
    return [f"[{graph}] {label}, batch {batch}, {threads_text(row.threads)}",
            "  latency ms: " + "  ".join(f"{k} {latency[k]}" for k in ("p50", "p90", "p95", "p99")),
            "              " + "  ".join(f"{k} {latency[k]}" for k in ("min", "mean", "max", "std", "CoV")),
            f"  items/s {other['items/s']}  vs torch {other['vs torch']}  load {other['load s']} s  "
            f"first {other['first ms']} ms",
            f"  peak RSS +{other['peak RSS +MiB']} MiB  anon +{other['anon +MiB']} MiB  size {other['size MB']} MB",
            f"  provider {other['provider']}",
            f"  parity: {other['parity']}"] + ([f"  roofline: {roofline_text(row)}"] if row.roofline else [])


def print_result(result: BenchResult, console: Console) -> None:
    for line in header_lines(result):
        console.print(line, highlight=False, markup=False)
    if console.width >= TABLE_WIDTH:
        for table in tables(result):
            console.print(table)
    else:
        for row in result.rows:
            for line in row_block(row):
                console.print(line, highlight=False, markup=False)
    for line in recommendation_lines(result):
        console.print(f"recommended {line}", highlight=False, markup=False)
    for line in skip_lines(result):
        console.print(f"[dim]not measured:[/dim] {escape(line)}", highlight=False)
    for warning in result.warnings:
        console.print(f"[yellow]warning:[/yellow] {escape(warning)}", highlight=False)


def _md_table(headers: list[str], rows: list[list[str]]) -> list[str]:
    cell = lambda text: str(text).replace("|", "\\|")  # noqa: E731
    right = {"batch", "threads", "items/s", "vs torch", "load s", "first ms", "peak RSS +MiB", "anon +MiB", "size MB",
             *LATENCY_COLUMNS, *ROOFLINE_COLUMNS[:2], *ROOFLINE_COLUMNS[3:7]}
    lines = ["| " + " | ".join(headers) + " |",
             "|" + "|".join("---:" if h in right else "---" for h in headers) + "|"]
    return lines + ["| " + " | ".join(cell(c) for c in row) + " |" for row in rows]


def markdown(result: BenchResult, title: str | None = None, level: int = 2) -> str:
    """The result as Markdown: settings and peaks, the tables, recommendations, skips, warnings."""
    h = "#" * level
    out = [f"{h} {title or result.artifact.reference or result.artifact.path}", ""]
    out += [f"- {line}" for line in header_lines(result)] + [""]
    keys = ["graph", "variant", "batch", "threads"]
    out += [f"{h}# Latency per call (ms)", ""]
    out += _md_table(keys + list(LATENCY_COLUMNS), [_key_cells(r) + _latency_cells(r) for r in result.rows]) + [""]
    out += [f"{h}# Throughput, start-up, memory, parity", ""]
    out += _md_table(keys + list(OTHER_COLUMNS), [_key_cells(r) + _other_cells(r) for r in result.rows]) + [""]
    if any(r.roofline for r in result.rows):
        out += [f"{h}# Roofline", ""]
        out += _md_table(keys + list(ROOFLINE_COLUMNS), [_key_cells(r) + _roofline_cells(r) for r in result.rows])
        out += [""] + [f"- {_key_cells(r)[1]} [{r.graph}] batch {r.batch_size}: {r.roofline.note}"
                       for r in result.rows if r.roofline and r.roofline.ops and r.roofline.note] + [""]
    for heading, lines in (("Recommended settings", recommendation_lines(result)),
                           ("Not measured", skip_lines(result)), ("Warnings", result.warnings)):
        if lines:
            out += [f"{h}# {heading}", ""] + [f"- {line}" for line in lines] + [""]
    return "\n".join(out)


@dataclass
class ComparedRow:
    key: tuple
    label: str
    base: float
    new: float
    slowdown: float
    regression: bool


@dataclass
class Comparison:
    metric: str
    max_slowdown: float
    rows: list[ComparedRow]
    only_base: list[str] = field(default_factory=list)
    only_new: list[str] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)
    uncompared: list[str] = field(default_factory=list)  # matching rows with no ratio, each with why

    @property
    def regressions(self) -> list[ComparedRow]:
        return [r for r in self.rows if r.regression]

    @property
    def passed(self) -> bool:
        """No regression, and every row of BASE measured again and compared (a variant that
        failed to run in NEW, or a row that did other work, must not pass a CI gate)."""
        return not self.regressions and not self.only_base and not self.uncompared


def _value(row: Row, metric: str) -> float:
    return row.throughput_per_s if metric == "throughput" else getattr(row.latency, metric)


def _describe(key: tuple, row: Row) -> str:
    graph, _, _, batch, threads, mode, _ = key
    return f"{row.label} [{graph}] batch {batch}, {threads_text(threads)}, {mode}"


def check_max_slowdown(value: float, name: str = "max_slowdown") -> None:
    """The largest slowdown that is not a regression is a ratio from 1.0 up (`name`: the
    option as its caller spells it)."""
    if not value >= 1.0:
        raise UsageError(f"{name} must be at least 1.0 (1.10 allows 10% slower), not {value!r}.")


def compare(base: BenchResult, new: BenchResult, max_slowdown: float = 1.10, metric: str = "p50_ms") -> Comparison:
    """Per matching row, how much slower NEW is than BASE; regressions exceed max_slowdown."""
    if metric not in METRICS:
        raise UsageError(f"Unknown metric '{metric}'; choose from {', '.join(METRICS)}.")
    check_max_slowdown(max_slowdown)
    base_rows = {r.key: r for r in base.rows}
    new_rows = {r.key: r for r in new.rows}
    compared, uncompared = [], []
    for key, b in base_rows.items():
        n = new_rows.get(key)
        if n is None:
            continue
        bv, nv = _value(b, metric), _value(n, metric)
        work = [r.roofline.ops if r.roofline else None for r in (b, n)]
        if min(bv, nv) <= 0:  # no ratio: a figure of 0 (a malformed or hand-made file)
            uncompared.append(f"{_describe(key, b)} not compared: its {metric} is 0 in {'BASE' if bv <= 0 else 'NEW'}")
        elif None not in work and abs(work[0] - work[1]) > 0.01 * max(work):
            uncompared.append(f"{_describe(key, b)} not compared: it did other work in NEW ({work[0] / 1e9:.4g} vs "
                              f"{work[1] / 1e9:.4g} GOP/call: other inputs, another model, or a vlmedge that counts "
                              "otherwise)")
        else:
            slowdown = bv / nv if metric == "throughput" else nv / bv
            compared.append(ComparedRow(key, _describe(key, b), bv, nv, round(slowdown, 4), slowdown > max_slowdown))
    result = Comparison(metric, max_slowdown, compared,
                        only_base=[_describe(k, r) for k, r in base_rows.items() if k not in new_rows],
                        only_new=[_describe(k, r) for k, r in new_rows.items() if k not in base_rows],
                        notes=list(uncompared), uncompared=uncompared)
    if base.artifact.reference != new.artifact.reference:
        result.notes.append(f"different models: {base.artifact.reference} vs {new.artifact.reference}")
    if base.settings.inputs != new.settings.inputs:
        result.notes.append(f"different inputs: {base.settings.inputs} vs {new.settings.inputs}")
    be, ne = base.environment, new.environment
    if (be.cpu_model, be.cores_available) != (ne.cpu_model, ne.cores_available):
        result.notes.append(f"different machines: {be.cpu_model} ({be.cores_available} cores) vs "
                            f"{ne.cpu_model} ({ne.cores_available} cores)")
    changed = [f"{k} {be.versions.get(k, '-')} -> {ne.versions.get(k, '-')}"
               for k in sorted(set(be.versions) | set(ne.versions)) if be.versions.get(k) != ne.versions.get(k)]
    if changed:
        result.notes.append("versions changed: " + ", ".join(changed))
    if base.settings.mode != new.settings.mode:
        result.notes.append(f"different scopes: {base.settings.mode} vs {new.settings.mode}")
    if not compared:
        result.notes.append("no row of one file matches a row of the other; nothing was compared")
    return result


def print_comparison(comparison: Comparison, console: Console, names: tuple[str, str] = ("base", "new")) -> None:
    unit = "items/s" if comparison.metric == "throughput" else "ms"
    rows = [{"row": escape(r.label), f"base {unit}": f"{r.base:.3f}", f"new {unit}": f"{r.new:.3f}",
             "slowdown": f"{r.slowdown:.3f}x",
             "verdict": "[red]REGRESSION[/red]" if r.regression else ("faster" if r.slowdown < 1 / comparison.max_slowdown
                                                                       else "ok")} for r in comparison.rows]
    print_rows(console, rows, f"{comparison.metric}: {names[1]} vs {names[0]} (regression above "
                              f"{comparison.max_slowdown:.2f}x slower)", right=(f"base {unit}", f"new {unit}", "slowdown"))
    for line in comparison.only_base:
        console.print(f"[yellow]only in {escape(names[0])}:[/yellow] {escape(line)}", highlight=False)
    for line in comparison.only_new:
        console.print(f"only in {escape(names[1])}: {escape(line)}", highlight=False)
    for note in comparison.notes:
        console.print(f"[yellow]note:[/yellow] {escape(note)}", highlight=False)
    n, missing, unchecked = len(comparison.regressions), len(comparison.only_base), len(comparison.uncompared)
    if not comparison.passed:
        console.print(f"[red]{n} regression(s)[/red]" + (f", [red]{missing} row(s) of {escape(names[0])} not measured "
                                                        f"in {escape(names[1])}[/red]" if missing else "")
                      + (f", [red]{unchecked} row(s) not compared[/red]" if unchecked else ""), highlight=False)
    else:
        console.print(f"[green]no regression[/green] in {len(comparison.rows)} rows", highlight=False)


def as_dict(comparison: Comparison) -> dict[str, Any]:
    return {"metric": comparison.metric, "max_slowdown": comparison.max_slowdown, "passed": comparison.passed,
            "rows": [{"row": r.label, "base": r.base, "new": r.new, "slowdown": r.slowdown, "regression": r.regression}
                     for r in comparison.rows],
            "only_base": comparison.only_base, "only_new": comparison.only_new, "uncompared": comparison.uncompared,
            "notes": comparison.notes}
