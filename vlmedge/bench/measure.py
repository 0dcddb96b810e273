"""The measuring of `vlmedge bench`: open each model file of the artifact (or a peer's ONNX
or OpenVINO file), time it on every batch size, and record a Row or a Skip with its reason in
the Plan.

A variant that fails to load or run becomes a Skip, never an aborted benchmark: one
broken file should not hide the figures of the others.
"""

from __future__ import annotations

import functools
import time
from pathlib import Path
from typing import Any, Callable

from vlmedge.bench.plan import Plan
from vlmedge.bench.result import Latency, Parity, Row, Skip, threads_text
from vlmedge.bench.timing import Baseline, first_call, round_robin, timed_samples
from vlmedge.errors import VlmedgeError, exception_line
from vlmedge.parity import GATES, Gate, parity_report, recorded_gate, run_in_batches
from vlmedge.runtimes.base import BACKENDS, Session, backend_for_file, backend_named, open_session, unavailable_reason
from vlmedge.runtimes.select import ModelSessions, open_entry


def skip(plan: Plan, backend: str, why: str, graph: str | None = None, precision: str | None = None,
         batch: int | None = None) -> None:
    """Records (and says) what was not measured and why; the same skip is said once."""
    entry = Skip(graph=graph, backend=backend, precision=precision, batch_size=batch, reason=why)
    if entry not in plan.skipped:  # the same reason for every thread count is said once
        plan.skipped.append(entry)
        what = " ".join(x for x in (backend, precision, f"[{graph}]" if graph else None,
                                    f"batch {batch}" if batch else None) if x)
        plan.say(f"not measured: {what}: {why}")


def pipeline(plan: Plan, backend: str, precision: str, sessions: dict[str, Session]) -> Any:
    """The artifact's task pipeline over the given sessions, for end-to-end timing."""
    from vlmedge.registry import task_named

    sessions = ModelSessions(plan.artifact, backend, precision, plan.settings.device, sessions)
    return task_named(plan.task).pipeline_class()(sessions)


def measure_graph(plan: Plan, graph: str, session: Session, *, backend: str, precision: str, threads: int,
                  label: str, load_s: float, baseline: Baseline, file: str | None, model_mb: float | None,
                  parity: Parity, pipeline: Any = None, peer: str | None = None) -> None:
    """One row per batch size: the session's own call (model-only), or the pipeline's
    method for the graph on the sample files (end-to-end, when `pipeline` is given)."""
    settings = plan.settings
    whose = f"peer {peer}: " if peer else ""  # a peer's skip names it: its row shares the artifact's columns
    for batch in settings.batch_sizes:
        static = session.inputs[0].shape[0] if session.inputs else None
        if isinstance(static, int) and static >= 0 and static != batch:
            skip(plan, backend, f"{whose}the {graph} graph takes batch {static} only", graph, precision, batch)
            continue
        try:
            if pipeline is not None:
                method = plan.method(graph)
                items = plan.samples.get(method.input) or []
                if not items:
                    skip(plan, backend, f"the artifact bundles no {method.input} samples to run end to end", graph,
                         precision)
                    return
                # the first sample repeated, as the model-only rows: the same work per item at every batch size
                call = functools.partial(getattr(pipeline, method.name), [items[0]] * batch)
                inputs = f"the first sample {'text' if method.input == 'text' else 'file'} repeated to {batch}"
            else:
                feeds, inputs = plan.feeds(graph, batch, session)
                session.check_feeds(feeds)  # once, untimed: only the backend's own call is timed
                call = functools.partial(session.run, feeds, check=False)
            first_ns = first_call(call, settings.warmup)
            samples = None if settings.rounds else timed_samples(call, settings.iterations, settings.duration_s or 0.0,
                                                                 settings.min_iterations or 1)
        except Exception as exc:  # a backend that cannot run this batch: say why, measure the rest
            skip(plan, backend, whose + exception_line(exc), graph, precision, batch)
            continue
        fields = dict(
            graph=graph, backend=backend, precision=precision, batch_size=batch, threads=threads,
            mode=settings.mode, label=label, provider=session.provider, device=settings.device, file=file,
            model_mb=model_mb, load_s=round(load_s, 4), load_cache=session.cache_status,
            first_inference_ms=round(first_ns / 1e6, 3), peak_rss_increase_mb=plan.memory.increase(baseline),
            anonymous_increase_mb=plan.memory.anonymous_increase(baseline), parity=parity, inputs=inputs, peer=peer,
        )
        if samples is None:  # timed later with every other row (time_round_robin); the call keeps the session
            plan.waiting.append((fields, call))
            plan.say(f"{label} [{graph}] batch {batch}, {threads_text(threads)}: warmed up, to be timed round-robin")
        else:
            _add_row(plan, fields, samples)


def _add_row(plan: Plan, fields: dict[str, Any], samples: list[int]) -> None:
    latency = Latency.from_ns(samples)
    row = Row(**fields, latency=latency, throughput_per_s=float(f"{fields['batch_size'] * 1e3 / latency.mean_ms:.5g}"))
    plan.rows.append(row)
    plan.say(f"{row.label} [{row.graph}] batch {row.batch_size}, {threads_text(row.threads)}: "
             f"p50 {latency.p50_ms:.2f} ms, {row.throughput_per_s:.1f} items/s")


def time_round_robin(plan: Plan) -> None:
    """Times the rows measure_graph left waiting (settings.rounds), all together in rounds
    (vlmedge.bench.timing.round_robin), and adds them in the order they were opened."""
    settings = plan.settings
    waiting, plan.waiting = plan.waiting, []
    if not waiting:
        return
    plan.say(f"timing {len(waiting)} rows round-robin in {settings.rounds} rounds")
    results = round_robin([call for _, call in waiting], settings.rounds, settings.iterations,
                          settings.duration_s or 0.0, settings.min_iterations or 1)
    for (fields, _), result in zip(waiting, results):
        if isinstance(result, Exception):
            skip(plan, fields["backend"], exception_line(result), fields["graph"], fields["precision"],
                 fields["batch_size"])
        else:
            _add_row(plan, fields, result)


def live_parity(plan: Plan, graph: str, session: Session,
                gate: Gate = GATES["fp32"]) -> tuple[Parity, dict[str, Any] | None]:
    """The session's outputs on the stored parity inputs against the stored source outputs."""
    data = plan.stored.get(graph) or {}
    if not data.get("input") or not data.get("reference"):
        return Parity.from_report(None, "none"), None
    names = {o.name for o in session.outputs}
    reference = {k: v for k, v in data["reference"].items() if k in names}
    if not reference or {i.name for i in session.inputs} != set(data["input"]):
        return Parity.from_report(None, "none"), None
    dtypes = {i.name: i.dtype for i in session.inputs}
    feeds = {k: v.astype(dtypes[k], copy=False) for k, v in data["input"].items()}
    first = session.inputs[0].shape[:1]  # a file of a fixed batch (a peer exported at batch 1) runs at that batch
    batch = first[0] if first and isinstance(first[0], int) and first[0] > 0 else 8
    try:
        actual = run_in_batches(session, feeds, batch)
    except VlmedgeError as exc:  # a peer whose inputs differ from the stored ones: its row stands, unjudged
        plan.warnings.append(f"[{graph}] a file's parity could not be checked on the stored inputs: {exception_line(exc)}")
        return Parity.from_report(None, "none"), None
    report = parity_report(reference, actual, plan.compare_kinds(graph), gate, graph=graph)
    return Parity.from_report(report, "live"), report


def _open(plan: Plan, backend: str, threads: int, opener: Callable[..., Session]) -> Session:
    """opener(threads=threads); a backend whose sessions take no thread count runs with its own."""
    if "threads" in backend_named(backend).option_names():
        return opener(threads=threads)
    plan.warnings.append(f"the {backend} backend takes no thread count; it ran with its own default")
    return opener()


def peer_gate(plan: Plan, graph: str, precision: str) -> Gate:
    """The gate the artifact's own files of this graph and precision passed (a suite loosens
    them for random weights), so that a peer is judged as they were; else the default one."""
    recorded = (recorded_gate(e) for e in plan.artifact.model_entries(graph=graph, precision=precision))
    return next((gate for gate in recorded if gate is not None), GATES[precision])


def _prime(plan: Plan, backend: str, opener: Callable[..., Session], graph: str | None) -> None:
    """Opens and runs a throwaway session once per backend, so that the library's one-time
    start-up (its environment, allocators, code pages: ~30 MB and ~0.3 s for ONNX Runtime)
    is not charged to whichever row happens to come first."""
    if backend in plan.primed:
        return
    plan.primed.add(backend)
    try:
        session = _open(plan, backend, plan.settings.threads[0], opener)
        if graph is not None and plan.stored.get(graph):
            feeds, _ = plan.feeds(graph, 1, session)
            session.run(feeds)
    except Exception:  # the real rows will report the error
        pass


def _model_mb(plan: Plan, entry: dict[str, Any]) -> float:
    stem = entry["path"].rsplit(".", 1)[0]
    side = [e["size"] for e in plan.artifact.files
            if e.get("role") == "weights" and e.get("graph") == entry.get("graph") and e["path"].startswith(stem)]
    return round((entry["size"] + sum(side)) / 1e6, 3)


def measure_backend(plan: Plan, backend: str, threads: int) -> None:
    """Every graph and precision of one backend's files at one thread count."""
    chosen = BACKENDS[backend]
    target = chosen.target
    why = unavailable_reason(chosen)
    if why:
        return skip(plan, backend, why)
    if not plan.artifact.model_entries(target=target):
        return skip(plan, backend, f"the artifact has no {target} files (export it with --to {target})")
    end_to_end = plan.settings.mode == "end-to-end"
    opener = functools.partial(open_entry, plan.artifact, backend=backend, device=plan.settings.device)
    for precision in plan.settings.precisions:
        entries = {g: plan.artifact.model_entries(graph=g, target=target, precision=precision) for g in plan.graphs()}
        if not any(entries.values()):
            if plan.asked_precisions:  # else: that precision exists for another backend only
                skip(plan, backend, f"the artifact has no {precision} {target} files", precision=precision)
            continue
        label = f"{backend} {precision}"
        first = next(iter(e for found in entries.values() for e in found))
        _prime(plan, backend, functools.partial(opener, first), first.get("graph"))
        opened: dict[str, tuple[Session, float, dict[str, Any]]] = {}
        baseline = plan.memory.start()
        for graph, found in entries.items():
            if not found:
                skip(plan, backend, f"the artifact has no {precision} {target} file for this graph", graph, precision)
                continue
            try:
                t0 = time.perf_counter()
                session = _open(plan, backend, threads, functools.partial(opener, found[0]))
                opened[graph] = (session, time.perf_counter() - t0, found[0])
                session = None
            except Exception as exc:
                skip(plan, backend, exception_line(exc), graph, precision)
                continue
            if not end_to_end:  # model-only: one session in memory at a time
                _measure_opened(plan, backend, precision, threads, label, graph, opened.pop(graph), baseline, None)
                baseline = plan.memory.start()
        if end_to_end and opened:
            _measure_end_to_end(plan, backend, precision, threads, label, opened, baseline)


def _measure_opened(plan: Plan, backend: str, precision: str, threads: int, label: str, graph: str,
                    opened: tuple[Session, float, dict[str, Any]], baseline: Baseline, pipeline: Any) -> None:
    session, load_s, entry = opened
    measure_graph(plan, graph, session, backend=backend, precision=precision, threads=threads, label=label,
                  load_s=load_s, baseline=baseline, file=entry["path"], model_mb=_model_mb(plan, entry),
                  parity=Parity.from_report(entry.get("parity"), "export"), pipeline=pipeline)


def _measure_end_to_end(plan: Plan, backend: str, precision: str, threads: int, label: str,
                        opened: dict[str, tuple[Session, float, dict[str, Any]]], baseline: Baseline) -> None:
    try:
        built = pipeline(plan, backend, precision, {g: o[0] for g, o in opened.items()})
    except Exception as exc:
        return skip(plan, backend, f"the {plan.task} pipeline cannot be built: {exception_line(exc)}", precision=precision)
    for graph, item in opened.items():
        _measure_opened(plan, backend, precision, threads, label, graph, item, baseline, built)


def measure_peer(plan: Plan, name: str, path: Path, threads: int, precision: str = "fp32") -> None:
    """A model file exported by another tool, against the same inputs: an ONNX file on ONNX
    Runtime, an OpenVINO IR (.xml) on OpenVINO in the precision it is said to be (an int8 IR
    with its float parts in OpenVINO's default); its parity judged by that precision's gate
    (peer_gate)."""
    backend = backend_for_file(path).name  # peer_files let only files a runnable backend reads through
    if plan.settings.mode == "end-to-end":
        return skip(plan, backend, f"peer {name} is timed model-only; end-to-end runs artifact pipelines")
    if not path.is_file():
        return skip(plan, backend, f"peer {name}: no file at {path}")
    options = {"inference_precision": precision} if backend == "openvino" and precision != "int8" else {}
    opener = functools.partial(open_session, path, backend=backend, device=plan.settings.device, **options)
    _prime(plan, backend, opener, None)
    baseline = plan.memory.start()
    try:
        t0 = time.perf_counter()
        session = _open(plan, backend, threads, opener)
        load_s = time.perf_counter() - t0
    except Exception as exc:
        return skip(plan, backend, f"peer {name}: {exception_line(exc)}")
    wanted = [i.name for i in session.inputs]
    graph = next((g for g, d in plan.stored.items() if set(d.get("input", {})) == set(wanted)), None)
    if graph is None:
        return skip(plan, backend, f"peer {name} takes inputs {wanted}, which no graph of the artifact has")
    size = sum(p.stat().st_size for p in _peer_files(path) if p.is_file())
    parity, _ = live_parity(plan, graph, session, peer_gate(plan, graph, precision))
    try:
        measure_graph(plan, graph, session, backend=backend, precision=precision, threads=threads,
                      label=peer_label(name, precision), load_s=load_s, baseline=baseline, file=str(path),
                      model_mb=round(size / 1e6, 3), parity=parity, peer=name)
    except VlmedgeError as exc:  # a variant that cannot run is a skip, never an aborted benchmark
        return skip(plan, backend, f"peer {name}: {exception_line(exc)}")


def _peer_files(path: Path) -> list[Path]:
    """A peer file and its side files: the external-data files an ONNX file names, or an IR's weights."""
    if path.suffix == ".xml":
        return [path, path.with_suffix(".bin")]
    from vlmedge.runtimes.onnx_external import model_files

    return model_files(path)


def peer_label(name: str, precision: str) -> str:
    """A peer row's name: its precision shown unless fp32, so one name in two precisions stays two rows."""
    return f"{name}{'' if precision == 'fp32' else ':' + precision} (peer)"
