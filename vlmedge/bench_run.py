"""The measuring loop of `vlmedge bench`: open each model file (or the torch source, or a
peer's ONNX file), time it on every batch size, and record a Row or a Skip with its reason.

A variant that fails to load or run becomes a Skip, never an aborted benchmark: one
broken file should not hide the figures of the others.
"""

from __future__ import annotations

import functools
import importlib
import importlib.util
import time
from pathlib import Path
from typing import Any

from vlmedge.bench import END_TO_END, TARGET_OF, _Plan, _tile, _timed_calls, _parity_summary
from vlmedge.bench_types import Latency, Parity, Row, Skip
from vlmedge.parity import GATES, parity_report, run_in_batches
from vlmedge.runtimes.base import BACKENDS, open_session
from vlmedge.runtimes.onnx_external import check_external_data


def _reason(exc: BaseException) -> str:
    text = str(exc).strip().splitlines()[0] if str(exc).strip() else ""
    return f"{type(exc).__name__}: {text}" if text else type(exc).__name__


def _skip(plan: _Plan, backend: str, reason: str, graph: str | None = None, precision: str | None = None,
          batch: int | None = None) -> None:
    skip = Skip(graph=graph, backend=backend, precision=precision, batch_size=batch, reason=reason)
    if skip not in plan.skipped:  # the same reason for every thread count is said once
        plan.skipped.append(skip)
        what = " ".join(x for x in (backend, precision, f"[{graph}]" if graph else None, f"batch {batch}" if batch else None) if x)
        plan.say(f"not measured: {what}: {reason}")


def _model_mb(plan: _Plan, entry: dict[str, Any]) -> float:
    stem = entry["path"].rsplit(".", 1)[0]
    side = [e["size"] for e in plan.artifact.files
            if e.get("role") == "weights" and e.get("graph") == entry.get("graph") and e["path"].startswith(stem)]
    return round((entry["size"] + sum(side)) / 1e6, 3)


def _open_file(plan: _Plan, path: Path, backend: str, threads: int, options: dict[str, Any]):
    if path.suffix.lower() == ".onnx" or backend in ("onnxruntime", "peer"):  # ORT parses any file name
        check_external_data(path, path.parent if backend == "peer" else plan.artifact.root)
    backend = "onnxruntime" if backend == "peer" else backend
    try:
        return open_session(path, backend=backend, device=plan.settings.device, threads=threads, **options)
    except TypeError as exc:  # a backend whose sessions take no thread count
        if "threads" not in str(exc):
            raise
        plan.warnings.append(f"the {backend} backend takes no thread count; it ran with its own default")
        return open_session(path, backend=backend, device=plan.settings.device, **options)


def _pipeline(plan: _Plan, backend: str, precision: str, sessions: dict[str, Any]):
    from vlmedge.tasks import TASKS
    from vlmedge.tasks.base import ModelSessions

    module_name, class_name = TASKS[plan.task]
    pipeline_class = getattr(importlib.import_module(module_name), class_name)
    return pipeline_class(ModelSessions(plan.artifact, backend, precision, plan.settings.device, sessions))


def _measure_graph(plan: _Plan, graph: str, session: Any, *, backend: str, precision: str, threads: int,
                   label: str, load_s: float, baseline: float, file: str | None, model_mb: float | None,
                   parity: Parity, pipeline: Any = None, peer: str | None = None) -> None:
    settings = plan.settings
    for batch in settings.batch_sizes:
        static = session.inputs[0].shape[0] if session.inputs else None
        if isinstance(static, int) and static >= 0 and static != batch:
            _skip(plan, backend, f"the {graph} graph takes batch {static} only", graph, precision, batch)
            continue
        try:
            if pipeline is not None:
                kind, call_pipeline = END_TO_END[plan.task][graph]
                items = plan.samples.get(kind) or []
                if not items:
                    _skip(plan, backend, f"the artifact bundles no {kind} samples to run end to end", graph, precision)
                    return
                call = functools.partial(call_pipeline, pipeline, _tile(items, batch))
                inputs = f"{len(items)} sample {kind} {'texts' if kind == 'text' else 'files'} tiled to {batch}"
            else:
                feeds, inputs = plan.feeds(graph, batch, session)
                session._check_feeds(feeds)  # once, untimed: only the backend's own call is timed
                call = functools.partial(session._run, feeds)
            first_ns, samples = _timed_calls(call, settings.warmup, settings.iterations, settings.duration_s or 0.0,
                                             settings.min_iterations or 1)
        except Exception as exc:  # a backend that cannot run this batch: say why, measure the rest
            _skip(plan, backend, _reason(exc), graph, precision, batch)
            continue
        latency = Latency.from_ns(samples)
        row = Row(
            graph=graph, backend=backend, precision=precision, batch_size=batch, threads=threads,
            mode=settings.mode, label=label, provider=session.provider, device=settings.device, file=file,
            model_mb=model_mb, load_s=round(load_s, 4), first_inference_ms=round(first_ns / 1e6, 3),
            latency=latency, throughput_per_s=float(f"{batch * 1e3 / latency.mean_ms:.5g}"),
            peak_rss_increase_mb=plan.memory.increase(baseline), parity=parity, inputs=inputs, peer=peer,
        )
        plan.rows.append(row)
        plan.say(f"{label} [{graph}] batch {batch}, {threads} threads: p50 {latency.p50_ms:.2f} ms, "
                 f"{row.throughput_per_s:.1f} items/s")


def _live_parity(plan: _Plan, graph: str, session: Any) -> tuple[Parity, dict[str, Any] | None]:
    """The session's outputs on the stored parity inputs against the stored source outputs."""
    data = plan.stored.get(graph) or {}
    if not data.get("input") or not data.get("reference"):
        return _parity_summary(None, "none"), None
    names = {o.name for o in session.outputs}
    reference = {k: v for k, v in data["reference"].items() if k in names}
    if not reference or {i.name for i in session.inputs} != set(data["input"]):
        return _parity_summary(None, "none"), None
    dtypes = {i.name: i.dtype for i in session.inputs}
    feeds = {k: v.astype(dtypes[k], copy=False) for k, v in data["input"].items()}
    actual = run_in_batches(session, feeds)
    report = parity_report(reference, actual, plan.compare_kinds(graph), GATES["fp32"], graph=graph)
    return _parity_summary(report, "live"), report


def _prime(plan: _Plan, backend: str, path: Path, graph: str | None, options: dict[str, Any]) -> None:
    """Opens and runs a throwaway session once per backend, so that the library's one-time
    start-up (its environment, allocators, code pages: ~30 MB and ~0.3 s for ONNX Runtime)
    is not charged to whichever row happens to come first."""
    if backend in plan.primed:
        return
    plan.primed.add(backend)
    try:
        session = _open_file(plan, path, backend, plan.settings.threads[0], options)
        if graph is not None and plan.stored.get(graph):
            feeds, _ = plan.feeds(graph, 1, session)
            session.run(feeds)
    except Exception:  # the real rows will report the error
        pass


def measure_backend(plan: _Plan, backend: str, threads: int) -> None:
    """Every graph and precision of one backend at one thread count."""
    if backend == "torch":
        return _measure_torch(plan, threads)
    target = TARGET_OF[backend]
    _, package, extra = BACKENDS[backend]
    if importlib.util.find_spec(package) is None:
        return _skip(plan, backend, f"{package} is not installed (pip install '{extra}')")
    if not plan.artifact.model_entries(target=target):
        return _skip(plan, backend, f"the artifact has no {target} files (export it with --to {target})")
    end_to_end = plan.settings.mode == "end-to-end"
    for precision in plan.settings.precisions:
        entries = {g: plan.artifact.model_entries(graph=g, target=target, precision=precision) for g in plan.graphs()}
        if not any(entries.values()):
            if plan.asked_precisions:  # else: that precision exists for another backend only
                _skip(plan, backend, f"the artifact has no {precision} {target} files", precision=precision)
            continue
        label = f"{backend} {precision}"
        first = next(iter(e for found in entries.values() for e in found))
        _prime(plan, backend, plan.artifact.path_of(first), first.get("graph"), dict(first.get("session_options") or {}))
        opened: dict[str, tuple[Any, float, dict[str, Any]]] = {}
        baseline = plan.memory.start()
        for graph, found in entries.items():
            if not found:
                _skip(plan, backend, f"the artifact has no {precision} {target} file for this graph", graph, precision)
                continue
            try:
                t0 = time.perf_counter()
                session = _open_file(plan, plan.artifact.path_of(found[0]), backend, threads,
                                     dict(found[0].get("session_options") or {}))
                opened[graph] = (session, time.perf_counter() - t0, found[0])
                session = None
            except Exception as exc:
                _skip(plan, backend, _reason(exc), graph, precision)
                continue
            if not end_to_end:  # model-only: one session in memory at a time
                _measure_opened(plan, backend, precision, threads, label, graph, opened.pop(graph), baseline, None)
                baseline = plan.memory.start()
        if end_to_end and opened:
            _measure_end_to_end(plan, backend, precision, threads, label, opened, baseline)


def _measure_opened(plan: _Plan, backend: str, precision: str, threads: int, label: str, graph: str,
                    opened: tuple[Any, float, dict[str, Any]], baseline: float, pipeline: Any) -> None:
    session, load_s, entry = opened
    _measure_graph(plan, graph, session, backend=backend, precision=precision, threads=threads, label=label,
                   load_s=load_s, baseline=baseline, file=entry["path"], model_mb=_model_mb(plan, entry),
                   parity=_parity_summary(entry.get("parity"), "export"), pipeline=pipeline)


def _measure_end_to_end(plan: _Plan, backend: str, precision: str, threads: int, label: str,
                        opened: dict[str, tuple[Any, float, dict[str, Any]]], baseline: float) -> None:
    if plan.task not in END_TO_END:
        return _skip(plan, backend, f"end-to-end timing does not know the task '{plan.task}'", precision=precision)
    try:
        pipeline = _pipeline(plan, backend, precision, {g: o[0] for g, o in opened.items()})
    except Exception as exc:
        return _skip(plan, backend, f"the {plan.task} pipeline cannot be built: {_reason(exc)}", precision=precision)
    for graph, item in opened.items():
        _measure_opened(plan, backend, precision, threads, label, graph, item, baseline, pipeline)


def _measure_torch(plan: _Plan, threads: int) -> None:
    """The source model in PyTorch eager, rebuilt once (its load time and memory are those
    of rebuilding it), then run at every thread count."""
    cache = plan.torch_cache
    if "sessions" not in cache and "error" not in cache:
        if importlib.util.find_spec("torch") is None:
            cache["error"] = "torch is not installed (pip install 'vlmedge[export]')"
        else:
            # Libraries are imported before the baseline: their import is not the model's load.
            import torch  # noqa: F401
            import transformers  # noqa: F401

            import vlmedge.exporters.sources.hf  # noqa: F401
            from vlmedge.runtimes.torch import open_reference

            baseline = plan.memory.start()
            t0 = time.perf_counter()
            try:
                cache["sessions"] = open_reference(plan.artifact, threads=threads, device=plan.settings.device)
                cache.update(load_s=time.perf_counter() - t0, baseline=baseline, parity={})
            except Exception as exc:
                cache["error"] = _reason(exc)
    if "error" in cache:
        return _skip(plan, "torch", cache["error"], precision="fp32")
    from vlmedge.runtimes.torch import TorchSession

    sessions = {g: TorchSession(s.module, s.inputs, s.outputs, device=s.device, threads=threads)
                for g, s in cache["sessions"].items()}
    for graph, session in sessions.items():
        if graph not in cache["parity"]:
            summary, report = _live_parity(plan, graph, session)
            cache["parity"][graph] = summary
            if report is not None and not report["passed"]:
                plan.warnings.append(
                    f"the rebuilt torch source does not reproduce the outputs stored at export for graph '{graph}' "
                    f"({'; '.join(report['failures'])}): the baseline may not be the model the artifact came from")
    pipeline = None
    if plan.settings.mode == "end-to-end":
        try:
            pipeline = _pipeline(plan, "torch", "fp32", sessions)
        except Exception as exc:
            return _skip(plan, "torch", f"the {plan.task} pipeline cannot be built: {_reason(exc)}", precision="fp32")
    for graph, session in sessions.items():
        model_mb = round(sum(t.numel() * t.element_size() for t in
                             list(session.module.parameters()) + list(session.module.buffers())) / 1e6, 3)
        _measure_graph(plan, graph, session, backend="torch", precision="fp32", threads=threads, label="torch fp32",
                       load_s=cache["load_s"], baseline=cache["baseline"], file=None, model_mb=model_mb,
                       parity=cache["parity"][graph], pipeline=pipeline)


def measure_peer(plan: _Plan, name: str, path: Path, threads: int) -> None:
    """An ONNX file exported by another tool, on ONNX Runtime, against the same inputs."""
    if plan.settings.mode == "end-to-end":
        return _skip(plan, "onnxruntime", f"peer {name} is timed model-only; end-to-end runs artifact pipelines")
    if not path.is_file():
        return _skip(plan, "onnxruntime", f"peer {name}: no file at {path}")
    _prime(plan, "onnxruntime", path, None, {})
    baseline = plan.memory.start()
    try:
        t0 = time.perf_counter()
        session = _open_file(plan, path, "peer", threads, {})
        load_s = time.perf_counter() - t0
    except Exception as exc:
        return _skip(plan, "onnxruntime", f"peer {name}: {_reason(exc)}")
    wanted = [i.name for i in session.inputs]
    graph = next((g for g, d in plan.stored.items() if set(d.get("input", {})) == set(wanted)), None)
    if graph is None:
        return _skip(plan, "onnxruntime", f"peer {name} takes inputs {wanted}, which no graph of the artifact has")
    size = sum(p.stat().st_size for p in path.parent.iterdir()
               if p == path or (p.is_file() and p.name.startswith(path.name) and p.name != path.name))
    parity, _ = _live_parity(plan, graph, session)
    _measure_graph(plan, graph, session, backend="onnxruntime", precision="fp32", threads=threads,
                   label=f"{name} (peer)", load_s=load_s, baseline=baseline, file=str(path),
                   model_mb=round(size / 1e6, 3), parity=parity, peer=name)
