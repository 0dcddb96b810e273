"""The accuracy and speed side of a variant's parity report.

- speed: batch-1 latency after warm-up (median), next to the fp32 ONNX Runtime file of the
  same graph, with a flag when a reduced-precision file is not faster. It is measured at
  export time on the exporting machine; `vlmedge bench` measures on the target.
- accuracy: top-1 accuracy on labelled data (--eval) of the source model and of each
  file, and the drop, judged against the gate's max_accuracy_drop; and the share of those
  inputs on which the file's top-1 is the source's, judged against min_eval_agreement.
"""

from __future__ import annotations

import os
import statistics
import time
from typing import Any

import numpy as np

from vlmedge.exporters.calibration import EvalSet
from vlmedge.parity import Gate, feed_batches, run_in_batches


def measure_latency(session: Any, feeds: dict[str, np.ndarray], warmup: int = 3, runs: int = 15,
                    max_seconds: float = 4.0) -> dict[str, Any]:
    """Median batch-1 latency of `session` on the first row of `feeds`, after warm-up; a text
    graph that takes any length runs that caption without its padding, as the runtime does.

    Between 3 and `runs` timed runs, stopping after `max_seconds`; a model slower than a
    second a call gets one warm-up call (CPU fp16 files can take tens of seconds). The load
    average is recorded because a busy machine inflates every figure.
    """
    return measure_latencies([session], feeds, warmup, runs, max_seconds)[0]


def measure_latencies(sessions: list[Any], feeds: dict[str, np.ndarray], warmup: int = 3, runs: int = 15,
                      max_seconds: float = 4.0) -> list[dict[str, Any]]:
    """measure_latency of several sessions of one graph, taken round-robin, one run of each
    in turn: a CPU whose speed drifts within a minute (another process, a frequency or
    memory-bandwidth mode) then slows every candidate alike, where one after the other it
    slowed some (an AST-base int8 file timed 1.8% apart in its two float precisions, one
    after the other, and 14% apart interleaved). Stops after `runs` rounds, or after
    `max_seconds` per session once each has 3 runs."""
    one = {name: np.ascontiguousarray(value) for name, value in next(feed_batches(feeds, 1)).items()}
    for session in sessions:
        for _ in range(max(1, warmup)):
            t0 = time.perf_counter()
            session.run(one, non_finite_outputs=True)
            if time.perf_counter() - t0 > 1.0:
                break
    times: list[list[float]] = [[] for _ in sessions]
    started, budget = time.perf_counter(), max_seconds * len(sessions)
    while len(times[0]) < runs and (len(times[0]) < 3 or time.perf_counter() - started < budget):
        for session, taken in zip(sessions, times):
            t0 = time.perf_counter()
            session.run(one, non_finite_outputs=True)
            taken.append((time.perf_counter() - t0) * 1000)
    load = round(os.getloadavg()[0], 2)
    return [{"median_ms": round(statistics.median(taken), 3), "min_ms": round(min(taken), 3), "runs": len(taken),
             "batch_size": 1, "load_average": load} for taken in times]


def speed_fields(latency: dict[str, Any], precision: str, baseline: dict[str, Any] | None) -> dict[str, Any]:
    """The report's top-level speed fields: latency_ms (what `load(precision=None)` ranks by),
    the fp32 ONNX Runtime file's latency (`baseline`, measure_latency's), the speed-up over it,
    and the not-faster flag, which compares the fastest calls: the two files are timed one after
    the other, and by their medians another process's load flagged a file in one export of the
    same command and not in the next, so that identical files were loaded by default or not."""
    fields: dict[str, Any] = {"latency_ms": latency["median_ms"], "latency": latency}
    if baseline:
        fields["onnx_fp32_latency_ms"] = baseline["median_ms"]
        fields["speedup_vs_onnx_fp32"] = round(baseline["median_ms"] / latency["median_ms"], 3)
        if precision != "fp32":
            fields["not_faster"] = latency["min_ms"] >= baseline["min_ms"]
    return fields


def accuracy_fields(outputs: dict[str, np.ndarray], evaluation: EvalSet, gate: Gate | None) -> tuple[dict[str, Any], list[str]]:
    """{"accuracy": {...}} for a report, and the failures against the gate's accuracy budget."""
    accuracy = evaluation.accuracy(outputs)
    entry: dict[str, Any] = {"samples": int(len(evaluation.labels)), "classes": evaluation.classes,
                             "top1": round(accuracy, 6)}
    failures = []
    if evaluation.source_predictions is not None:
        agreement = float((evaluation.predictions(outputs) == evaluation.source_predictions).mean())
        entry["agreement"] = round(agreement, 6)  # top-1 equal to the source's
        least = getattr(gate, "min_eval_agreement", None)
        if least is not None:
            entry["min_agreement"] = least
            if agreement < least - 1e-9:
                failures.append(f"top-1 on {entry['samples']} labelled inputs agrees with the source's on "
                                f"{agreement:.2%} of them (at least {least:.0%} needed)")
    if evaluation.source_accuracy is not None:
        drop = evaluation.source_accuracy - accuracy
        entry.update(source_top1=round(evaluation.source_accuracy, 6), drop=round(drop, 6))
        limit = getattr(gate, "max_accuracy_drop", None)
        if limit is not None:
            entry["max_drop"] = limit
            if drop > limit + 1e-9:
                failures.append(
                    f"accuracy on {entry['samples']} labelled inputs {accuracy:.2%} is {drop * 100:.2f} points "
                    f"below the source's {evaluation.source_accuracy:.2%} (budget {limit * 100:.2f} points)"
                )
    return {"accuracy": entry}, failures


def evaluate(session: Any, evaluation: EvalSet, gate: Gate | None, batch_size: int = 16) -> tuple[dict[str, Any], list[str]]:
    """Runs `session` over the labelled set; see accuracy_fields."""
    return accuracy_fields(run_in_batches(session, evaluation.feeds, batch_size), evaluation, gate)


def add_accuracy(report: dict[str, Any], session: Any, evaluation: EvalSet | None, gate: Gate | None) -> None:
    """Adds the accuracy section to a parity report and fails it when over budget."""
    if evaluation is None:
        return
    fields, failures = evaluate(session, evaluation, gate)
    report.update(fields)
    if failures:
        report["failures"] = list(report.get("failures", [])) + failures
        report["passed"] = False
