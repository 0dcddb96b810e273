"""Parity gates and the numpy comparison behind them (torch-free, so `vlmedge check`
runs on the edge device)."""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Any, Iterator

import numpy as np



@dataclass(frozen=True)
class Gate:
    """Thresholds one exported file must meet against the source model."""

    min_cosine: float
    # the most absolute error per unit of the output's magnitude: an output whose largest
    # reference value |ref| is above 1 may differ by max_abs * max|ref| (relative error)
    max_abs: float | None
    min_top1: float
    # the most top-1 accuracy (a fraction) a file may lose against the source on labelled
    # data, when the export is given some (--eval)
    max_accuracy_drop: float | None = None
    # the least share of labelled inputs on which a file's top-1 must equal the source's
    min_eval_agreement: float | None = None

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


GATES = {
    "fp32": Gate(min_cosine=0.99999, max_abs=1e-3, min_top1=1.0),
    "fp16": Gate(min_cosine=0.999, max_abs=None, min_top1=0.99, max_accuracy_drop=0.005, min_eval_agreement=0.99),
    "bf16": Gate(min_cosine=0.999, max_abs=None, min_top1=0.99, max_accuracy_drop=0.005, min_eval_agreement=0.99),
    "int8": Gate(min_cosine=0.99, max_abs=None, min_top1=0.95, max_accuracy_drop=0.005, min_eval_agreement=0.99),
}
# Every precision vlmedge exports and runs, from the widest to the narrowest: fp32 is the reference.
PRECISIONS: tuple[str, ...] = tuple(GATES)


def recorded_gate(entry: dict[str, Any]) -> Gate | None:
    """The gate a manifest file entry's parity report says it was verified with (an export
    may loosen the defaults: a suite's random weights); None where it records none."""
    gate = (entry.get("parity") or {}).get("gate")
    return Gate(**gate) if gate else None


def _softmax(x: np.ndarray) -> np.ndarray:
    e = np.exp(x - x.max(axis=-1, keepdims=True))
    return e / e.sum(axis=-1, keepdims=True)


def _rowwise_cosine(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    a = a.reshape(len(a), -1).astype(np.float64)
    b = b.reshape(len(b), -1).astype(np.float64)
    norms = np.linalg.norm(a, axis=1) * np.linalg.norm(b, axis=1)
    dots = (a * b).sum(axis=1)
    # Two all-zero rows are identical; one zero row against a non-zero one is not.
    return np.where(norms > 0, dots / np.maximum(norms, 1e-300), np.where(np.abs(a).sum(1) + np.abs(b).sum(1) == 0, 1.0, 0.0))


def _topk_agreement(reference: np.ndarray, actual: np.ndarray, k: int) -> float:
    k = min(k, reference.shape[-1])
    ref_top = np.argsort(-reference, axis=-1, kind="stable")[:, :k]
    act_top1 = actual.argmax(axis=-1)
    if k == 1:
        return float((ref_top[:, 0] == act_top1).mean())
    act_top = np.argsort(-actual, axis=-1, kind="stable")[:, :k]
    return float(np.mean([set(r) == set(a) for r, a in zip(ref_top, act_top)]))


def compare_output(reference: np.ndarray, actual: np.ndarray, kind: str = "embedding") -> dict[str, Any]:
    """Error metrics of one output: abs error, worst index, cosine, and for logits top-k
    agreement and probability error."""
    if reference.shape != actual.shape:
        return {"shape_mismatch": [list(reference.shape), list(actual.shape)]}
    reference = reference.astype(np.float64)
    actual = actual.astype(np.float64)
    diff = np.abs(reference - actual)
    # values the file leaves non-finite where the source's are finite: an overflow (fp16), which
    # fails any gate (judge); the cosine of such a row reads 0, which a loosened gate would take
    non_finite = int((~np.isfinite(actual) & np.isfinite(reference)).sum())
    if not np.isfinite(actual).all():
        diff = np.where(np.isfinite(actual), diff, np.inf)
    worst = np.unravel_index(int(np.argmax(diff)), diff.shape) if diff.size else ()
    metrics: dict[str, Any] = {
        "max_abs": float(diff.max()) if diff.size else 0.0,
        "reference_max_abs": float(np.abs(reference).max()) if diff.size else 0.0,
        "mean_abs": float(diff.mean()) if diff.size else 0.0,
        "worst_index": [int(i) for i in worst],
        "cosine_min": float(_rowwise_cosine(reference, actual).min()) if diff.size else 1.0,
        "cosine_mean": float(_rowwise_cosine(reference, actual).mean()) if diff.size else 1.0,
    }
    if non_finite:
        metrics["non_finite"] = non_finite
    if kind == "logits" and reference.ndim == 2:
        metrics["top1"] = _topk_agreement(reference, actual, 1)
        metrics["top5"] = _topk_agreement(reference, actual, 5)
        metrics["prob_max_abs"] = float(np.abs(_softmax(reference) - _softmax(actual)).max())
    return metrics


def abs_bound(gate: Gate, metrics: dict[str, Any]) -> float | None:
    """The gate's absolute error bound for one output: max_abs scaled by the output's
    magnitude, max_abs * max(1, max|reference|); None when the gate has no bound."""
    if gate.max_abs is None:
        return None
    return gate.max_abs * max(1.0, float(metrics.get("reference_max_abs", 0.0)))


def judge(metrics: dict[str, dict[str, Any]], gate: Gate) -> list[str]:
    """The gate's failures, each a sentence with the number that failed and the smallest
    tolerance that would have passed."""
    failures = []
    for name, m in metrics.items():
        if "shape_mismatch" in m:
            ref_shape, act_shape = m["shape_mismatch"]
            failures.append(f"output '{name}' has shape {act_shape} but the source gives {ref_shape}")
            continue
        if m.get("non_finite"):  # whatever the gate: no tolerance makes NaN or inf a right answer
            failures.append(f"output '{name}' holds {m['non_finite']} NaN or infinite value(s) where the source's are "
                            "finite: the model's values overflow this precision, so no gate passes it")
            continue
        if m["cosine_min"] < gate.min_cosine:
            failures.append(
                f"output '{name}': cosine similarity {m['cosine_min']:.7f} < {gate.min_cosine} "
                f"(the gate would pass at min_cosine <= {m['cosine_min']:.7f})"
            )
        bound = abs_bound(gate, m)
        if bound is not None and m["max_abs"] > bound:
            scale = max(1.0, m.get("reference_max_abs", 0.0))
            failures.append(
                f"output '{name}': max abs error {m['max_abs']:.3g} > {bound:.3g} ({gate.max_abs:g} x max(1, max|reference| "
                f"{scale:.3g})) at index {tuple(m['worst_index'])} (the gate would pass at max_abs >= "
                f"{m['max_abs'] / scale:.3g}, its factor of max(1, max|reference|))"
            )
        if "top1" in m and m["top1"] < gate.min_top1:
            failures.append(f"output '{name}': top-1 agreement {m['top1']:.2%} < {gate.min_top1:.0%}")
    return failures


def parity_report(reference: dict[str, np.ndarray], actual: dict[str, np.ndarray], compare: dict[str, str],
                  gate: Gate, **context: Any) -> dict[str, Any]:
    """A ParityReport as a JSON-safe dict: context (graph, target, precision, backend ...),
    the gate, per-output metrics, pass/fail and the failures."""
    metrics = {name: compare_output(reference[name], actual[name], compare.get(name, "embedding"))
               for name in reference}
    failures = judge(metrics, gate)
    samples = len(next(iter(reference.values()))) if reference else 0
    return {**context, "samples": samples, "gate": gate.to_dict(), "outputs": metrics,
            "passed": not failures, "failures": failures}


def feed_batches(feeds: dict[str, Any], batch_size: int = 8) -> Iterator[dict[str, np.ndarray]]:
    """Consecutive batches of at most `batch_size` rows of `feeds`, in order.

    A feed is an (N, ...) array, or a list of N per-row arrays when its rows differ in shape
    (raw-waveform windows of clips of different lengths: the model takes each at its own
    length, as the runtime does); a batch then holds only a run of rows of one shape.
    """
    n = len(next(iter(feeds.values())))
    start = 0
    while start < n:
        stop = min(start + batch_size, n)
        for value in feeds.values():
            if isinstance(value, list):
                shape = value[start].shape
                stop = next((i for i in range(start + 1, stop) if value[i].shape != shape), stop)
        yield {name: np.stack(value[start:stop]) if isinstance(value, list) else value[start:stop]
               for name, value in feeds.items()}
        start = stop


def run_in_batches(session: Any, feeds: dict[str, Any], batch_size: int = 8) -> dict[str, np.ndarray]:
    """Runs a session over parity feeds in batches and concatenates the outputs.

    A text graph that takes captions of any length runs without the padding they end with,
    as the session runs it at load (runtimes.base.trim_padding); the references are the
    source's at the full context, so parity covers that trimming too."""
    parts: dict[str, list[np.ndarray]] = {}
    for batch in feed_batches(feeds, batch_size):
        for name, value in session.run(batch, non_finite_outputs=True).items():
            parts.setdefault(name, []).append(value)
    return {name: np.concatenate(values) for name, values in parts.items()}
