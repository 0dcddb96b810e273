"""`vlmedge bench --plot`: a PNG with p50 latency per variant (p90 whiskers; each bar notes its
% of the measured peak and whether it is compute- or memory-bound) and throughput against
batch size. Needs matplotlib (pip install 'vlmedge[plot]')."""

from __future__ import annotations

import importlib.util
import os
from collections import defaultdict
from pathlib import Path

from vlmedge.bench.result import BenchResult, Row
from vlmedge.errors import BackendUnavailableError

# One colour family per backend (fp32 darkest), so a variant keeps its colour in both charts.
COLOUR_MAPS = {"torch": "Greys", "onnxruntime": "Blues", "openvino": "Purples", "tensorrt": "Greens", "peer": "Oranges"}
PRECISION_SHADE = {"fp32": 0.85, "fp16": 0.68, "bf16": 0.55, "int8": 0.42}


def _series(row: Row) -> str:
    graph = f"[{row.graph}] " if row.graph != "model" else ""
    return f"{graph}{row.label}, {row.threads} thr"


def _colour(row: Row):
    import matplotlib

    family = "peer" if row.peer else row.backend
    return matplotlib.colormaps[COLOUR_MAPS.get(family, "Greys")](PRECISION_SHADE.get(row.precision, 0.7))


def plot(result: BenchResult, path: str | os.PathLike, title: str | None = None) -> Path:
    """Writes the two charts side by side and returns the path."""
    if importlib.util.find_spec("matplotlib") is None:
        raise BackendUnavailableError("--plot needs matplotlib, which is not installed; pip install 'vlmedge[plot]'.")
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    rows = result.rows
    if not rows:
        raise BackendUnavailableError("There are no measured rows to plot.")
    height = max(3.5, 0.32 * len(rows) + 1.8)
    fig, (bars, lines) = plt.subplots(1, 2, figsize=(14, height), gridspec_kw={"width_ratios": [1.25, 1]})
    labels = [f"{_series(r)}, batch {r.batch_size}" for r in rows]
    p50 = [r.latency.p50_ms for r in rows]
    whisker = [[0] * len(rows), [r.latency.p90_ms - r.latency.p50_ms for r in rows]]
    y = list(range(len(rows)))[::-1]  # first row at the top, as in the table
    bars.barh(y, p50, xerr=whisker, color=[_colour(r) for r in rows], capsize=3, error_kw={"elinewidth": 1})
    bars.set_yticks(y, labels, fontsize=8)
    bars.set_xlabel("latency per call, ms (bar: p50, whisker: p90)")
    bars.set_title("Latency per variant")
    if max(p50) / max(min(p50), 1e-9) > 50:
        bars.set_xscale("log")
        bars.set_xlabel("latency per call, ms, log scale (bar: p50, whisker: p90)")
    for yi, r in zip(y, rows):
        note = f" {r.latency.p50_ms:.2f} ms" + (f", {r.speedup_vs_torch:.1f}x torch" if r.speedup_vs_torch and r.backend != "torch" else "")
        if r.roofline and r.roofline.percent_of_peak is not None:
            note += f", {r.roofline.percent_of_peak:.0f}% of {r.roofline.compute_precision} peak"
            note += f" ({r.roofline.bound}-bound)" if r.roofline.bound else ""
        bars.text(r.latency.p90_ms, yi, note, va="center", fontsize=7)
    bars.grid(axis="x", alpha=0.3)

    groups: dict[str, list[Row]] = defaultdict(list)
    for r in rows:
        groups[_series(r)].append(r)
    styles = ["-o", "--s", "-.^", ":D", "-v", "--P"]
    for i, (name, group) in enumerate(groups.items()):
        group = sorted(group, key=lambda r: r.batch_size)
        lines.plot([r.batch_size for r in group], [r.throughput_per_s for r in group], styles[i % len(styles)],
                   color=_colour(group[0]), label=name, markersize=5)
    batches = sorted({r.batch_size for r in rows})
    if len(batches) > 1 and batches[-1] / batches[0] >= 8:
        lines.set_xscale("log", base=2)
    lines.set_xticks(batches, [str(b) for b in batches])
    lines.set_xlabel("batch size")
    lines.set_ylabel("items / s")
    lines.set_title("Throughput vs batch size")
    lines.grid(alpha=0.3)
    lines.legend(fontsize=7, loc="best")
    env = result.environment
    title = title or f"{Path(result.artifact.path).name} ({result.artifact.task})"
    fig.suptitle(f"{title} - {result.settings.mode} - {env.cpu_model}, {env.cores_available} cores", fontsize=10)
    fig.tight_layout()
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path
