"""The torch baseline of `vlmedge bench`: the artifact's source model in PyTorch eager,
rebuilt from the reference its manifest records (vlmedge.exporters.reference) and timed
like the exported files, on the same inputs, in the same process.

torch, transformers and the sources are imported only here (and torch by vlmedge.bench.peak
for the baseline's peak GEMM rate), and only when the baseline is asked for (the default
asks for it when torch is installed).
"""

from __future__ import annotations

import importlib.util
import time

from vlmedge.bench.measure import live_parity, measure_graph, pipeline, skip
from vlmedge.errors import exception_line
from vlmedge.bench.plan import Plan
from vlmedge.bench.result import BASELINE, BASELINE_PRECISION as PRECISION


def _rebuild(plan: Plan, threads: int) -> None:
    """Rebuilds the source once into plan.torch_cache (its load time and memory are those
    of rebuilding it); on failure, the reason."""
    cache = plan.torch_cache
    if importlib.util.find_spec("torch") is None:
        cache["error"] = "torch is not installed (pip install 'vlmedge[export]')"
        return
    # Libraries are imported before the memory baseline: their import is not the model's load.
    import torch  # noqa: F401
    import transformers  # noqa: F401

    import vlmedge.exporters.sources.hf  # noqa: F401
    from vlmedge.exporters.pipeline import quiet_progress_bars
    from vlmedge.exporters.reference import open_reference

    baseline = plan.memory.start()
    t0 = time.perf_counter()
    try:
        with quiet_progress_bars():  # transformers' "Loading weights" bar, in a CLI table or a notebook cell
            cache["sessions"] = open_reference(plan.artifact, threads=threads, device=plan.settings.device)
        cache.update(load_s=time.perf_counter() - t0, baseline=baseline, parity={})
    except Exception as exc:
        cache["error"] = exception_line(exc)


def measure_torch(plan: Plan, threads: int) -> None:
    """Every graph of the source model at one thread count, with its parity against the
    outputs stored at export checked once per graph."""
    cache = plan.torch_cache
    if "sessions" not in cache and "error" not in cache:
        _rebuild(plan, threads)
    if "error" in cache:
        return skip(plan, BASELINE, cache["error"], precision=PRECISION)
    from vlmedge.exporters.reference import TorchSession

    sessions = {g: TorchSession(s.module, s.inputs, s.outputs, device=s.device, threads=threads)
                for g, s in cache["sessions"].items()}
    for graph, session in sessions.items():
        if graph not in cache["parity"]:
            summary, report = live_parity(plan, graph, session)
            cache["parity"][graph] = summary
            if report is not None and not report["passed"]:
                plan.warnings.append(
                    f"the rebuilt torch source does not reproduce the outputs stored at export for graph '{graph}' "
                    f"({'; '.join(report['failures'])}): the baseline may not be the model the artifact came from")
    built = None
    if plan.settings.mode == "end-to-end":
        try:
            built = pipeline(plan, BASELINE, PRECISION, sessions)
        except Exception as exc:
            return skip(plan, BASELINE, f"the {plan.task} pipeline cannot be built: {exception_line(exc)}", precision=PRECISION)
    for graph, session in sessions.items():
        model_mb = round(sum(t.numel() * t.element_size() for t in
                             list(session.module.parameters()) + list(session.module.buffers())) / 1e6, 3)
        measure_graph(plan, graph, session, backend=BASELINE, precision=PRECISION, threads=threads,
                      label=f"{BASELINE} {PRECISION}", load_s=cache["load_s"], baseline=cache["baseline"], file=None,
                      model_mb=model_mb, parity=cache["parity"][graph], pipeline=built)
