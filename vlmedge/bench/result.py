"""The typed result of `vlmedge bench`, its versioned JSON form, and what is read off its
rows (speed-ups over the torch baseline, warnings, recommended settings).

JSON schema: benchmarks/bench.schema.json ("schema": "vlmedge-bench", "schema_version": 4;
version 1, without the roofline, 2, without the anonymous memory, and 3, without
settings.rounds, are read too).
Times are milliseconds (`*_ms`) or seconds (`*_s`), memory and sizes megabytes (10^6
bytes for files, MiB for resident memory: `*_mb`), throughput items per second.
"""

from __future__ import annotations

import contextlib
import dataclasses
import json
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Sequence

import numpy as np

from vlmedge.bench.peak import MachinePeaks, Peak
from vlmedge.choices import written_path
from vlmedge.environment import Environment, Gpu
from vlmedge.errors import InputError, OutputError

SCHEMA = "vlmedge-bench"
SCHEMA_VERSION = 4
READ_VERSIONS = (1, 2, 3, 4)  # version 1: no roofline per row, no peaks; 2: no anonymous memory; 3: no rounds
# The backend name and precision of the PyTorch source's rows (not a backend of vlmedge.runtimes).
BASELINE = "torch"
BASELINE_PRECISION = "fp32"
HIGH_COV = 0.10  # std/mean above this: the figure is noisy


@dataclass
class Latency:
    """Statistics of the timed calls of one row, in milliseconds; cov is std / mean."""

    iterations: int
    min_ms: float
    mean_ms: float
    std_ms: float
    cov: float
    p50_ms: float
    p90_ms: float
    p95_ms: float
    p99_ms: float
    max_ms: float

    @classmethod
    def from_ns(cls, samples_ns: Sequence[int]) -> "Latency":
        ms = np.asarray(samples_ns, dtype=np.float64) / 1e6
        p50, p90, p95, p99 = np.percentile(ms, [50, 90, 95, 99])
        mean = float(ms.mean())
        std = float(ms.std(ddof=1)) if len(ms) > 1 else 0.0
        r = lambda x: round(float(x), 4)  # noqa: E731 - sub-microsecond digits are noise
        return cls(iterations=len(ms), min_ms=r(ms.min()), mean_ms=r(mean), std_ms=r(std),
                   cov=round(std / mean, 4) if mean > 0 else 0.0, p50_ms=r(p50), p90_ms=r(p90), p95_ms=r(p95),
                   p99_ms=r(p99), max_ms=r(ms.max()))


@dataclass
class Parity:
    """The parity of the file measured: from its export report ("export"), measured now
    against the stored source outputs ("live": torch and peer rows), or unknown ("none")."""

    passed: bool | None
    cosine_min: float | None
    max_abs: float | None
    top1: float | None
    samples: int | None
    source: str

    @classmethod
    def from_report(cls, report: dict[str, Any] | None, source: str) -> "Parity":
        """The summary of a parity report (vlmedge.parity.parity_report or a manifest entry's
        "parity"): the worst figure over its outputs; source "none" when there is no report."""
        if not report or not report.get("outputs"):
            return cls(passed=None, cosine_min=None, max_abs=None, top1=None, samples=None, source="none")
        outputs = [m for m in report["outputs"].values() if "cosine_min" in m]
        top1 = [m["top1"] for m in outputs if "top1" in m]
        return cls(
            passed=report.get("passed"),
            cosine_min=min((m["cosine_min"] for m in outputs), default=None),
            max_abs=max((m["max_abs"] for m in outputs), default=None),
            top1=min(top1) if top1 else None,
            samples=report.get("samples"),
            source=source,
        )


@dataclass
class Roofline:
    """One row against what the machine can do (vlmedge.bench.roofline): operations per call
    (2 x MACs of MatMul/Gemm/Conv/Einsum), achieved GOP/s over p50, the measured peak of the
    precision it computes in, bytes moved (a stated model), ops per byte and the ridge point
    (peak GOP/s / bandwidth GB/s): below it, memory-bound. None where it cannot be said."""

    ops: int | None
    macs: int | None
    gops_per_s: float | None
    compute_precision: str
    peak_gops: float | None
    percent_of_peak: float | None
    bytes: int | None
    intensity: float | None
    bandwidth_gbs: float | None
    ridge: float | None
    attainable_gops: float | None
    bound: str | None
    count_source: str | None
    note: str


@dataclass
class Row:
    """One (graph, backend, precision, batch size, thread count) measurement."""

    graph: str
    backend: str
    precision: str
    batch_size: int
    threads: int | None
    mode: str
    label: str
    provider: str
    device: str
    file: str | None
    model_mb: float | None
    load_s: float
    first_inference_ms: float
    latency: Latency
    throughput_per_s: float
    peak_rss_increase_mb: float | None
    parity: Parity
    inputs: str
    peer: str | None = None
    speedup_vs_torch: float | None = None
    warnings: list[str] = field(default_factory=list)
    roofline: Roofline | None = None
    # What the compiled-model cache did for this row's load (Session.cache_status: "hit",
    # "miss", "unsaved", "off"), so that load_s reads right: a hit skipped the compilation.
    load_cache: str | None = None
    # The anonymous memory the session holds after the row's calls (Memory.anonymous_increase):
    # peak RSS less what the kernel can drop, the memory a small device must really have.
    anonymous_increase_mb: float | None = None

    @property
    def key(self) -> tuple:
        return (self.graph, self.backend, self.precision, self.batch_size, self.threads, self.mode, self.peer)


@dataclass
class Skip:
    """A combination that was asked for (or would be by default) but not measured, and why."""

    graph: str | None
    backend: str
    precision: str | None
    batch_size: int | None
    reason: str


@dataclass
class Settings:
    mode: str
    scope: str
    inputs: str
    warmup: int
    iterations: int | None
    min_iterations: int | None
    duration_s: float | None
    threads: list[int]
    batch_sizes: list[int]
    backends: list[str]
    precisions: list[str]
    device: str
    sweep: list[str]
    memory_method: str
    # timed round-robin in this many rounds, every session open at once (schema version 4);
    # None: each row timed in turn, its session closed before the next opens
    rounds: int | None = None


@dataclass
class Recommendation:
    """The best measured setting of a graph for an objective ("latency" or "throughput"),
    among rows that did not fail parity."""

    graph: str
    objective: str
    label: str
    backend: str
    precision: str
    batch_size: int
    threads: int | None
    p50_ms: float
    throughput_per_s: float


@dataclass
class ArtifactInfo:
    path: str
    task: str
    reference: str
    graphs: list[str]


@dataclass
class BenchResult:
    schema: str
    schema_version: int
    created: str
    vlmedge_version: str
    artifact: ArtifactInfo
    settings: Settings
    environment: Environment
    rows: list[Row]
    skipped: list[Skip]
    recommendations: list[Recommendation]
    warnings: list[str]
    peaks: list[MachinePeaks] = field(default_factory=list)

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    def save(self, path: str | os.PathLike) -> Path:
        """Writes the JSON form (atomically: a partial file never replaces a good one)."""
        return write_report(Path(path), json.dumps(self.to_dict(), indent=2))

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> "BenchResult":
        if not isinstance(d, dict) or d.get("schema") != SCHEMA:
            raise InputError("This is not a vlmedge bench result (no \"schema\": \"vlmedge-bench\"); "
                             "pass a file written by `vlmedge bench --json`.")
        if d.get("schema_version") not in READ_VERSIONS:
            raise InputError(f"This bench result has schema version {d.get('schema_version')!r}; this vlmedge reads "
                             f"versions {', '.join(map(str, READ_VERSIONS))}. Re-run the benchmark with this version.")
        try:
            env = dict(d["environment"])
            env["gpus"] = [Gpu(**g) for g in env.get("gpus", [])]
            rows = []
            for r in d["rows"]:
                r = dict(r)
                _check_figures(r)
                r["latency"], r["parity"] = Latency(**r["latency"]), Parity(**r["parity"])
                r["roofline"] = Roofline(**r["roofline"]) if r.get("roofline") else None
                rows.append(Row(**r))
            return cls(
                schema=d["schema"], schema_version=d["schema_version"], created=d["created"],
                vlmedge_version=d["vlmedge_version"], artifact=ArtifactInfo(**d["artifact"]),
                settings=Settings(**d["settings"]), environment=Environment(**env), rows=rows,
                skipped=[Skip(**s) for s in d["skipped"]],
                recommendations=[Recommendation(**x) for x in d["recommendations"]], warnings=list(d["warnings"]),
                peaks=[MachinePeaks(**{**p, "peaks": [Peak(**x) for x in p["peaks"]]}) for p in d.get("peaks", [])],
            )
        except (KeyError, TypeError) as exc:
            raise InputError(f"This bench result is malformed ({exc}); re-run `vlmedge bench --json`.") from None

    @classmethod
    def load(cls, path: str | os.PathLike) -> "BenchResult":
        try:
            data = json.loads(Path(path).read_text(encoding="utf-8"))
        except FileNotFoundError:
            raise InputError(f"No bench result at {path}.") from None
        except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
            raise InputError(f"{path} is not a JSON bench result ({exc}).") from None
        try:
            return cls.from_dict(data)
        except InputError as exc:
            raise InputError(f"{path}: {exc}") from None


def _check_figures(row: dict[str, Any]) -> None:
    """A stored row's latency figures and throughput are numbers, not below zero (KeyError or
    TypeError otherwise, which from_dict words as a malformed result)."""
    figures = {f"latency.{k}": v for k, v in dict(row["latency"]).items()}
    figures["throughput_per_s"] = row["throughput_per_s"]
    for name, value in figures.items():
        if isinstance(value, bool) or not isinstance(value, (int, float)) or not value >= 0:
            raise TypeError(f"row {row.get('label', '?')!r} has {name} {value!r}, not a number from 0 up")


def recommend(rows: list[Row]) -> list[Recommendation]:
    """Per graph: lowest p50 at the smallest batch measured, and highest throughput."""
    found = []
    for graph in dict.fromkeys(r.graph for r in rows):
        candidates = [r for r in rows if r.graph == graph and r.parity.passed is not False]
        if not candidates:
            continue
        smallest = min(r.batch_size for r in candidates)
        fastest = min((r for r in candidates if r.batch_size == smallest), key=lambda r: r.latency.p50_ms)
        busiest = max(candidates, key=lambda r: r.throughput_per_s)
        for objective, r in (("latency", fastest), ("throughput", busiest)):
            found.append(Recommendation(graph=graph, objective=objective, label=r.label, backend=r.backend,
                                        precision=r.precision, batch_size=r.batch_size, threads=r.threads,
                                        p50_ms=r.latency.p50_ms, throughput_per_s=r.throughput_per_s))
    return found


def annotate(rows: list[Row], rounds: int | None = None) -> list[str]:
    """Sets each row's speed-up over the torch row of the same graph, batch, threads and mode,
    and its warnings (noisy figures, a failed parity gate, a lower precision that is not
    faster than fp32); returns those warnings as lines for the whole result. `rounds`: the
    round-robin rounds the rows were timed in (None: each row on its own)."""
    by_key = {r.key: r for r in rows}
    remedy = (f"more --rounds than {rounds}" if rounds else
              "time the rows round-robin (--rounds) so that they compare")
    for row in rows:
        torch_row = by_key.get((row.graph, BASELINE, BASELINE_PRECISION, row.batch_size, row.threads, row.mode, None))
        if torch_row is not None:
            row.speedup_vs_torch = float(f"{torch_row.latency.p50_ms / row.latency.p50_ms:.4g}")
        if row.latency.cov > HIGH_COV:
            row.warnings.append(f"noisy: CoV {row.latency.cov:.0%} > {HIGH_COV:.0%}; "
                                f"close other programs, raise --iterations/--duration, or {remedy}")
        if row.parity.passed is False:
            row.warnings.append("fails its parity gate: its outputs differ from the source model's")
        base = by_key.get((row.graph, row.backend, "fp32", row.batch_size, row.threads, row.mode, row.peer))
        if row.precision != "fp32" and base is not None and row.latency.p50_ms >= base.latency.p50_ms:
            row.warnings.append(f"{row.precision} is not faster than fp32 here "
                                f"(p50 {row.latency.p50_ms:.2f} vs {base.latency.p50_ms:.2f} ms)")
    return [f"{row.label} [{row.graph}] batch {row.batch_size}, {threads_text(row.threads)}: {w}"
            for row in rows for w in row.warnings]


def threads_text(threads: int) -> str:
    """'1 thread', '2 threads': how reports and progress lines name a thread count."""
    return "1 thread" if threads == 1 else f"{threads} threads"


def write_report(path: Path, text: str) -> Path:
    """Writes a report file (JSON, Markdown), its folders made, atomically: a partial file never
    replaces a good one, and a failure is one OutputError, not a traceback."""
    path = written_path(path)
    tmp = path.with_name(f".{path.name}.tmp{os.getpid()}")
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp.write_text(text + "\n", encoding="utf-8")
        os.replace(tmp, path)
    except OSError as exc:
        with contextlib.suppress(OSError):
            tmp.unlink(missing_ok=True)
        raise OutputError(f"Cannot write {path} ({exc.strerror or exc}); give a file path in a folder you can "
                          "write.") from None
    return path
