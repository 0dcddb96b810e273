"""`vlmedge bench`: latency, throughput, start-up time and memory of every model file of
an artifact, per backend, precision, batch size and thread count, with the PyTorch source
measured in the same process on the same inputs as the baseline.

What is timed is stated in every result (`settings.scope`):
    model-only (default)  time.perf_counter_ns around the backend's own call (Session._run),
                          after warm-up, on inputs already checked and in the backend's dtype;
    end-to-end            the task pipeline's call on the artifact's real sample files:
                          decoding, preprocessing, the model, postprocessing.
Inputs are the real samples stored in samples/parity.npz (the first rows; exporters/samples.py
writes the bundled files first), tiled to the batch size; `random_inputs` uses seeded noise.

Torch-free unless the "torch" backend is asked for (the default includes it when torch is
installed). The result is typed (BenchResult) and saves as versioned JSON
(benchmarks/bench.schema.json); vlmedge.bench_report renders and compares results.
"""

from __future__ import annotations

import datetime
import gc
import os
import resource
import sys
import time
import types
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Sequence

import numpy as np

from vlmedge.bench_types import (SCHEMA, SCHEMA_VERSION, ArtifactInfo, BenchResult, Latency, Parity, Row,
                                 Settings, Skip, recommend)
from vlmedge.artifact import Artifact
from vlmedge.environment import describe
from vlmedge.errors import InputError, VlmedgeError

__all__ = ["bench", "BenchResult", "Row", "Latency", "Parity", "Skip", "Settings", "SCHEMA_VERSION"]

BACKEND_ORDER = ("torch", "onnxruntime", "openvino", "tensorrt")
PRECISION_ORDER = ("fp32", "fp16", "bf16", "int8")
TARGET_OF = {"onnxruntime": "onnx", "openvino": "openvino", "tensorrt": "tensorrt"}
DEFAULT_BATCHES = (1, 8)
SWEEP_BATCHES = (1, 2, 4, 8, 16)
DEFAULT_WARMUP = 5
DEFAULT_DURATION = 3.0
MIN_ITERATIONS = 10  # with a duration: at least this many timed calls, however long they take
MAX_ITERATIONS = 100_000
HIGH_COV = 0.10  # std/mean above this: the figure is noisy
IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png", ".webp", ".bmp", ".gif", ".tif", ".tiff")
AUDIO_SUFFIXES = (".wav", ".flac", ".ogg")

# task -> graph -> (the kind of sample it takes, the pipeline call timed end to end)
END_TO_END: dict[str, dict[str, tuple[str, Callable[[Any, list], Any]]]] = {
    "image-classification": {"model": ("image", lambda p, items: p.classify(items, top_k=5))},
    "image-embedding": {"model": ("image", lambda p, items: p.embed(items))},
    "audio-classification": {"model": ("audio", lambda p, items: p.tag(items, top_k=5))},
    "clip": {"image": ("image", lambda p, items: p.embed_images(items)),
             "text": ("text", lambda p, items: p.embed_texts(items))},
}


class _Memory:
    """Peak resident memory per row. Linux: VmHWM, reset through /proc/self/clear_refs
    before each session is opened; elsewhere the growth of ru_maxrss (a lower bound: it
    reads 0 for a row that stays below an earlier row's peak)."""

    def __init__(self) -> None:
        self.resettable = self._reset() and self._status("VmHWM") is not None
        self.method = ("VmHWM reset before each session is opened, minus VmRSS before it" if self.resettable
                       else "growth of getrusage ru_maxrss (a lower bound)")
        self.method += "; each backend's one-time library start-up is done before, by a throwaway session"

    @staticmethod
    def _reset() -> bool:
        try:
            with open("/proc/self/clear_refs", "w") as f:
                f.write("5")
            return True
        except OSError:
            return False

    @staticmethod
    def _status(key: str) -> float | None:
        try:
            with open("/proc/self/status", encoding="ascii") as f:
                for line in f:
                    if line.startswith(key + ":"):
                        return int(line.split()[1]) / 1024
        except (OSError, ValueError):
            pass
        return None

    @staticmethod
    def _maxrss_mb() -> float:
        value = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
        return value / 1024**2 if sys.platform == "darwin" else value / 1024

    def start(self) -> float:
        """Marks the start of a session's life; returns the baseline to pass to increase()."""
        gc.collect()
        if self.resettable:
            self._reset()
            return self._status("VmRSS") or 0.0
        return self._maxrss_mb()

    def increase(self, baseline: float) -> float:
        peak = self._status("VmHWM") if self.resettable else self._maxrss_mb()
        return round(max(0.0, (peak or 0.0) - baseline), 1)


def _timed_calls(call: Callable[[], Any], warmup: int, iterations: int | None, duration: float,
                 min_iterations: int = MIN_ITERATIONS) -> tuple[int, list[int]]:
    """(first call in ns, timed calls in ns). The garbage collector is paused while timing
    so its pauses land in no sample."""
    start = time.perf_counter_ns()
    call()
    first = time.perf_counter_ns() - start
    for _ in range(warmup):
        call()
    samples: list[int] = []
    enabled = gc.isenabled()
    gc.disable()
    try:
        deadline = time.perf_counter_ns() + int(duration * 1e9)
        while (len(samples) < iterations if iterations else
               (len(samples) < min_iterations or time.perf_counter_ns() < deadline) and len(samples) < MAX_ITERATIONS):
            t0 = time.perf_counter_ns()
            call()
            samples.append(time.perf_counter_ns() - t0)
    finally:
        if enabled:
            gc.enable()
    return first, samples


def _positive(name: str, values: Sequence[Any]) -> list[int]:
    out = []
    for v in values:
        if isinstance(v, bool) or not isinstance(v, (int, np.integer)) or v < 1:
            raise InputError(f"{name} must be positive integers, not {v!r}.")
        out.append(int(v))
    return sorted(dict.fromkeys(out))


def _thread_grid(cores: int) -> list[int]:
    grid, n = [], 1
    while n < cores:
        grid.append(n)
        n *= 2
    return grid + [cores]


def _sample_items(artifact: Artifact) -> dict[str, list[Any]]:
    """The artifact's bundled sample inputs by kind: image and audio paths, text lines."""
    items: dict[str, list[Any]] = {"image": [], "audio": [], "text": []}
    for entry in artifact.files:
        if entry.get("role") != "sample":
            continue
        path = artifact.path_of(entry)
        suffix = path.suffix.lower()
        if suffix in IMAGE_SUFFIXES:
            items["image"].append(str(path))
        elif suffix in AUDIO_SUFFIXES:
            items["audio"].append(str(path))
        elif suffix == ".txt":
            items["text"] += [line.strip() for line in path.read_text(encoding="utf-8").splitlines() if line.strip()]
    return items


def _tile(items: Sequence[Any], n: int) -> list[Any]:
    return [items[i % len(items)] for i in range(n)]


def _parity_summary(report: dict[str, Any] | None, source: str) -> Parity:
    if not report or not report.get("outputs"):
        return Parity(passed=None, cosine_min=None, max_abs=None, top1=None, samples=None, source="none")
    outputs = [m for m in report["outputs"].values() if "cosine_min" in m]
    top1 = [m["top1"] for m in outputs if "top1" in m]
    return Parity(
        passed=report.get("passed"),
        cosine_min=min((m["cosine_min"] for m in outputs), default=None),
        max_abs=max((m["max_abs"] for m in outputs), default=None),
        top1=min(top1) if top1 else None,
        samples=report.get("samples"),
        source=source,
    )


@dataclass
class _Plan:
    artifact: Artifact
    settings: Settings
    say: Callable[[str], None]
    memory: _Memory
    stored: dict[str, dict[str, dict[str, np.ndarray]]]
    samples: dict[str, list[Any]]
    rows: list[Row] = field(default_factory=list)
    skipped: list[Skip] = field(default_factory=list)
    warnings: list[str] = field(default_factory=list)
    torch_cache: dict[str, Any] = field(default_factory=dict)
    primed: set[str] = field(default_factory=set)
    asked_precisions: bool = False  # given explicitly: a backend without them is reported, not passed over

    @property
    def task(self) -> str:
        return self.artifact.task

    def graphs(self) -> list[str]:
        return list(self.artifact.manifest["graphs"])

    def kind(self, graph: str) -> str | None:
        return END_TO_END.get(self.task, {}).get(graph, (None,))[0]

    def compare_kinds(self, graph: str) -> dict[str, str]:
        for entry in self.artifact.model_entries(graph=graph):
            outputs = (entry.get("parity") or {}).get("outputs", {})
            if outputs:
                return {n: "logits" if "top1" in m else "embedding" for n, m in outputs.items()}
        return {}

    def feeds(self, graph: str, batch: int, session: Any) -> tuple[dict[str, np.ndarray], str]:
        """The model inputs for one batch, in the session's dtypes, and what they are."""
        stored = self.stored.get(graph, {}).get("input")
        if not stored:
            raise VlmedgeError(f"the artifact stores no parity inputs for graph '{graph}'")
        n = len(next(iter(stored.values())))
        if self.settings.inputs == "random":
            rng = np.random.default_rng(0)
            feeds = {}
            for name, array in stored.items():
                shape = (batch, *array.shape[1:])
                if array.dtype.kind == "f":
                    feeds[name] = rng.standard_normal(shape).astype(array.dtype)
                elif set(np.unique(array).tolist()) <= {0, 1}:
                    feeds[name] = np.ones(shape, array.dtype)  # masks
                else:
                    feeds[name] = rng.integers(array.min(), array.max() + 1, size=shape).astype(array.dtype)
            described = f"seeded random inputs, batch {batch}"
        else:
            real = len(self.samples.get(self.kind(graph) or "", []))
            use = real if 0 < real <= n else n
            index = np.arange(batch) % use
            feeds = {name: np.ascontiguousarray(array[index]) for name, array in stored.items()}
            described = f"{use} {'real samples' if use == real else 'stored parity inputs'} tiled to {batch}"
        dtypes = {info.name: info.dtype for info in session.inputs}
        feeds = {k: v if v.dtype == np.dtype(dtypes.get(k, v.dtype)) else v.astype(dtypes[k]) for k, v in feeds.items()}
        return feeds, described


def bench(artifact: str | os.PathLike | Artifact, backends: Sequence[str] | None = None,
          precisions: Sequence[str] | None = None, batch_sizes: Sequence[int] | None = None,
          threads: int | None = None, warmup: int = DEFAULT_WARMUP, iterations: int | None = None,
          duration: float | None = None, min_iterations: int = MIN_ITERATIONS, end_to_end: bool = False,
          random_inputs: bool = False,
          sweep: Sequence[str] = (), device: str = "cpu", peers: dict[str, str | os.PathLike] | None = None,
          progress: Callable[[str], None] | None = None) -> BenchResult:
    """Measures every graph of an artifact on each backend, precision, batch size and thread count.

    Args:
        artifact: the artifact folder (or an opened Artifact).
        backends: any of "torch", "onnxruntime", "openvino", "tensorrt"; default: torch (when
            installed and the source can be rebuilt) and every backend with files here.
        precisions: default: every precision the artifact holds (torch always runs fp32).
        batch_sizes: default (1, 8); with sweep "batch" (1, 2, 4, 8, 16).
        threads: intra-op threads for every backend, torch included; default: the cores
            this process may use. With sweep "threads", 1, 2, 4 ... up to them.
        warmup: untimed calls after the first one.
        iterations: timed calls per row; or `duration` seconds per row (default 3 s, at
            least `min_iterations` calls, default 10). Not both.
        end_to_end: time the task pipeline on the artifact's sample files instead of the
            model call alone.
        random_inputs: seeded noise instead of the stored real samples.
        sweep: "threads" and/or "batch": measure a grid and recommend settings.
        peers: name -> ONNX file exported by another tool, run on ONNX Runtime as extra rows.
        progress: called with a line of text per row.
    """
    art = artifact if isinstance(artifact, Artifact) else Artifact.open(artifact)
    if iterations is not None and duration is not None:
        raise InputError("Give either iterations or duration, not both.")
    _positive("iterations", ([iterations] if iterations is not None else []) + [min_iterations])
    if duration is not None and not (isinstance(duration, (int, float)) and duration > 0):
        raise InputError(f"duration must be a positive number of seconds, not {duration!r}.")
    if isinstance(warmup, bool) or not isinstance(warmup, int) or warmup < 0:
        raise InputError(f"warmup must be a non-negative integer, not {warmup!r}.")
    sweep = list(dict.fromkeys(sweep))
    if set(sweep) - {"threads", "batch"}:
        raise InputError(f"sweep takes 'threads' and/or 'batch', not {', '.join(sorted(set(sweep) - {'threads', 'batch'}))}.")
    unknown = [b for b in backends or () if b not in BACKEND_ORDER]
    if unknown:
        raise InputError(f"Unknown backend {', '.join(unknown)}; choose from {', '.join(BACKEND_ORDER)}.")
    unknown = [p for p in precisions or () if p not in PRECISION_ORDER]
    if unknown:
        raise InputError(f"Unknown precision {', '.join(unknown)}; choose from {', '.join(PRECISION_ORDER)}.")
    from vlmedge.environment import available_cores

    cores = available_cores()
    thread_grid = _thread_grid(cores) if "threads" in sweep else _positive("threads", [threads or cores])
    batches = _positive("batch sizes", batch_sizes or (SWEEP_BATCHES if "batch" in sweep else DEFAULT_BATCHES))
    have = art.model_entries()
    chosen_backends = [b for b in BACKEND_ORDER if (b in backends if backends else
                                                    b == "torch" or any(e["target"] == TARGET_OF[b] for e in have))]
    chosen_precisions = [p for p in PRECISION_ORDER if (p in precisions if precisions else
                                                        any(e["precision"] == p for e in have))]
    environment = describe()
    memory = _Memory()
    mode = "end-to-end" if end_to_end else "model-only"
    settings = Settings(
        mode=mode,
        scope=("task pipeline on the artifact's sample files: decoding, preprocessing, model, postprocessing"
               if end_to_end else "the backend's model call only; no preprocessing or postprocessing"),
        inputs="random" if random_inputs else "samples",
        warmup=warmup, iterations=iterations, min_iterations=None if iterations else min_iterations,
        duration_s=None if iterations else float(duration or DEFAULT_DURATION),
        threads=thread_grid, batch_sizes=batches, backends=chosen_backends, precisions=chosen_precisions,
        device=device, sweep=sweep, memory_method=memory.method,
    )
    from vlmedge.check import stored_parity_inputs

    try:
        stored = stored_parity_inputs(art)
    except VlmedgeError:
        stored = {}
    plan = _Plan(art, settings, progress or (lambda message: None), memory, stored, _sample_items(art),
                 asked_precisions=bool(precisions))
    if environment.load_average and environment.load_average[0] > cores:
        plan.warnings.append(
            f"load average {environment.load_average[0]:.1f} on {cores} available cores: other processes compete "
            "for the CPU, so these figures are slower and noisier than this machine can do"
        )
    from vlmedge.bench_run import measure_backend, measure_peer

    for backend in chosen_backends:
        for t in thread_grid:
            measure_backend(plan, backend, t)
    for name, path in (peers or {}).items():
        for t in thread_grid:
            measure_peer(plan, name, Path(path), t)
    _finish(plan)
    return BenchResult(
        schema=SCHEMA, schema_version=SCHEMA_VERSION,
        created=datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
        vlmedge_version=_version(),
        artifact=ArtifactInfo(path=str(art.root), task=art.task,
                              reference=str((art.manifest.get("source") or {}).get("reference", "")),
                              graphs=plan.graphs()),
        settings=settings, environment=environment, rows=plan.rows, skipped=plan.skipped,
        recommendations=recommend(plan.rows), warnings=plan.warnings,
    )


def _version() -> str:
    from vlmedge import __version__

    return __version__


def _finish(plan: _Plan) -> None:
    """Speed-ups over the torch row of the same graph, batch, threads and mode; warnings for
    noisy figures, variants that fail parity, and lower precisions that are not faster."""
    by_key = {r.key: r for r in plan.rows}
    for row in plan.rows:
        torch_row = by_key.get((row.graph, "torch", "fp32", row.batch_size, row.threads, row.mode, None))
        if torch_row is not None:
            row.speedup_vs_torch = float(f"{torch_row.latency.p50_ms / row.latency.p50_ms:.4g}")
        if row.latency.cov > HIGH_COV:
            row.warnings.append(f"noisy: CoV {row.latency.cov:.0%} > {HIGH_COV:.0%}; "
                                "close other programs or raise --iterations/--duration")
        if row.parity.passed is False:
            row.warnings.append("fails its parity gate: its outputs differ from the source model's")
        base = by_key.get((row.graph, row.backend, "fp32", row.batch_size, row.threads, row.mode, row.peer))
        if row.precision != "fp32" and base is not None and row.latency.p50_ms >= base.latency.p50_ms:
            row.warnings.append(f"{row.precision} is not faster than fp32 here "
                                f"(p50 {row.latency.p50_ms:.2f} vs {base.latency.p50_ms:.2f} ms)")
    for row in plan.rows:
        plan.warnings += [f"{row.label} [{row.graph}] batch {row.batch_size}, {row.threads} threads: {w}"
                          for w in row.warnings]


class _CallableModule(types.ModuleType):
    """`import vlmedge.bench` replaces the lazy function vlmedge.bench with this module (the
    import system sets a submodule as an attribute of its package), so the module itself
    is callable: `vlmedge.bench(...)` works before and after that import."""

    def __call__(self, *args: Any, **kwargs: Any) -> BenchResult:
        return bench(*args, **kwargs)


sys.modules[__name__].__class__ = _CallableModule
