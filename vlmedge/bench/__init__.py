"""`vlmedge bench`: latency, throughput, start-up time and memory of every model file of
an artifact, per backend, precision, batch size and thread count, with the PyTorch source
measured in the same process on the same inputs as the baseline.

What is timed is stated in every result (`settings.scope`):
    model-only (default)  time.perf_counter_ns around the backend's own call
                          (Session.run(feeds, check=False)), after warm-up, on inputs already
                          checked once and in the backend's dtype;
    end-to-end            the task pipeline's method for each graph on the artifact's real
                          sample files: decoding, preprocessing, the model, postprocessing.

Torch-free unless the "torch" baseline is asked for (the default includes it when torch is
installed). The result is typed (vlmedge.bench.result.BenchResult) and saves as versioned
JSON (benchmarks/bench.schema.json).

The modules, in the order data flows:
    command   the `vlmedge bench` CLI command
    settings  the options: defaults, checks, what to measure
    plan      the Plan: inputs per graph and batch, and the rows and skips found so far
    measure   timing each exported file (and a peer's ONNX or OpenVINO file) into rows
    baseline  the torch source as the baseline row
    timing    the timing loop and the peak-memory sampling
    peak      what the machine can do: peak GEMM rate per precision and backend, bandwidth (cached)
    roofline  operations counted from the graph; each row against the peak of its precision
    result    the dataclasses, their JSON form, speed-ups and recommendations
    report    tables, Markdown and comparison of results; plot: the PNG

`import vlmedge` imports this package (for `vlmedge.bench`, the function below), so only the
stdlib and vlmedge.bench.settings are imported here; the rest loads when bench() runs.
"""

from __future__ import annotations

import os
from typing import TYPE_CHECKING, Callable, Sequence

from vlmedge.bench.settings import DEFAULT_WARMUP, MIN_ITERATIONS

if TYPE_CHECKING:
    from vlmedge.artifact import Artifact
    from vlmedge.bench.result import BenchResult

__all__ = ["bench"]


def bench(artifact: str | os.PathLike | Artifact, backends: Sequence[str] | None = None,
          precisions: Sequence[str] | None = None, batch_sizes: Sequence[int] | None = None,
          threads: int | None = None, warmup: int = DEFAULT_WARMUP, iterations: int | None = None,
          duration: float | None = None, min_iterations: int = MIN_ITERATIONS, end_to_end: bool = False,
          random_inputs: bool = False, sweep: Sequence[str] = (), device: str = "cpu",
          peers: dict[str, str | os.PathLike] | None = None,
          progress: Callable[[str], None] | None = None, roofline: bool = True,
          remeasure_peak: bool = False, rounds: int | None = None) -> BenchResult:
    """Measures every graph of an artifact on each backend, precision, batch size and thread count.

    A variant that cannot be loaded or run is reported in `skipped` with its reason; it
    does not stop the others.

    Args:
        artifact: the artifact folder (or an opened Artifact).
        backends: any of "torch", "onnxruntime", "openvino", "tensorrt"; default: torch (when
            installed and the source can be rebuilt) and every backend with files here.
        precisions: any of "fp32", "fp16", "bf16", "int8"; default: every precision the
            artifact holds (torch always runs fp32).
        batch_sizes: default (1, 8); with sweep "batch" (1, 2, 4, 8, 16).
        threads: intra-op threads for every backend, torch included; default: the cores
            this process may use. With sweep "threads", 1, 2, 4 ... up to them.
        warmup: untimed calls after the first one.
        iterations: timed calls per row; or `duration` seconds per row (default 3 s, at
            least `min_iterations` calls, default 10). Not both.
        duration: seconds of timed calls per row, instead of `iterations`.
        min_iterations: with a duration, the fewest timed calls per row.
        end_to_end: time the task pipeline on the artifact's sample files instead of the
            model call alone.
        random_inputs: seeded noise instead of the stored real samples.
        sweep: "threads" and/or "batch": measure a grid and recommend settings.
        device: the device the exported files run on ("cpu", "cuda", ...).
        peers: name -> a model file exported by another tool, as extra rows: an ONNX file
            run on ONNX Runtime, an OpenVINO IR (.xml) on OpenVINO; "NAME:int8" (or :fp16,
            :bf16) for a file of that precision, whose parity is then judged by the gate this
            artifact's own files of it passed (an IR runs in the precision it is said to be).
        progress: called with a line of text per row and per skip.
        roofline: give every row its operations per call, achieved GOP/s, % of the peak
            of the precision it computes in, and whether it is compute- or memory-bound
            (vlmedge.bench.roofline); the peaks are measured once per machine, backend and
            thread count (a few seconds) and cached in the user cache folder.
        remeasure_peak: measure the peaks again instead of reading the cache.
        rounds: time every row round-robin in this many rounds, each a share of the
            iterations or duration, once all are opened and warmed up: a machine whose
            speed drifts during the run (a shared host) then slows every row alike, so the
            ratios between rows hold. Every session stays open until the end, so the memory
            needed is that of all of them together. None: each row in turn (the default).

    Returns:
        A BenchResult: one Row per graph, variant, batch size and thread count measured,
        the Skips with their reasons, recommended settings and warnings, and the machine
        peaks used. `result.save(path)` writes its JSON form.

    Raises:
        UsageError: an option is invalid (unknown backend, precision or sweep; iterations
            with duration; a batch size, thread count or warm-up that is not a count).
        ArtifactError: `artifact` is not a readable vlmedge artifact.

    Example:
        >>> import vlmedge
        >>> result = vlmedge.bench("out/my-vit", backends=["onnxruntime"], batch_sizes=[1, 8], iterations=100)
        >>> [(r.label, r.batch_size, r.latency.p50_ms) for r in result.rows]  # doctest: +SKIP
    """
    import datetime

    from vlmedge.version import __version__
    from vlmedge.artifact import Artifact
    from vlmedge.bench.baseline import measure_torch
    from vlmedge.bench.measure import measure_backend, measure_peer, time_round_robin
    from vlmedge.bench.plan import Plan
    from vlmedge.bench.result import BASELINE, SCHEMA, SCHEMA_VERSION, ArtifactInfo, BenchResult, annotate, recommend
    from vlmedge.bench.settings import check_settings, peer_files
    from vlmedge.bench.timing import Memory
    from vlmedge.environment import describe
    from vlmedge.tasks.base import check_flag, check_progress

    check_progress(progress)
    roofline, remeasure_peak = check_flag("roofline", roofline), check_flag("remeasure_peak", remeasure_peak)
    art = artifact if isinstance(artifact, Artifact) else Artifact.open(artifact)
    memory = Memory()
    settings = check_settings(art, backends=backends, precisions=precisions, batch_sizes=batch_sizes, threads=threads,
                              warmup=warmup, iterations=iterations, duration=duration, min_iterations=min_iterations,
                              end_to_end=end_to_end, random_inputs=random_inputs, sweep=sweep, device=device,
                              memory_method=memory.method, rounds=rounds)
    peer_list = peer_files(peers)
    environment = describe()
    plan = Plan.create(art, settings, progress or (lambda message: None), memory, asked_precisions=bool(precisions))
    cores = environment.cores_available
    if environment.load_average and environment.load_average[0] > cores:
        plan.warnings.append(
            f"load average {environment.load_average[0]:.1f} on {cores} available cores: other processes compete "
            "for the CPU, so these figures are slower and noisier than this machine can do"
        )
    if max(settings.threads) > cores:
        plan.warnings.append(f"{max(settings.threads)} threads on {cores} available cores: the threads take turns, "
                             "so those rows are slower and noisier than with at most one thread a core")
    for backend in settings.backends:
        for t in settings.threads:
            if backend == BASELINE:
                measure_torch(plan, t)
            else:
                measure_backend(plan, backend, t)
    for name, precision, path in peer_list:
        for t in settings.threads:
            measure_peer(plan, name, path, t, precision)
    time_round_robin(plan)  # the rows left waiting when rounds is set
    plan.warnings += annotate(plan.rows, settings.rounds)
    peaks = []
    if roofline:
        from vlmedge.bench.roofline import add_roofline

        peaks = add_roofline(plan, remeasure=remeasure_peak)
    return BenchResult(
        schema=SCHEMA, schema_version=SCHEMA_VERSION,
        created=datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
        vlmedge_version=__version__,
        artifact=ArtifactInfo(path=str(art.root), task=art.task,
                              reference=str((art.manifest.get("source") or {}).get("reference", "")),
                              graphs=plan.graphs()),
        settings=settings, environment=environment, rows=plan.rows, skipped=plan.skipped,
        recommendations=recommend(plan.rows), warnings=plan.warnings, peaks=peaks,
    )
