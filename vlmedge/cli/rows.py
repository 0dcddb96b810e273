"""What `vlmedge predict` prints: the rows of each result kind of the registry ("ranked",
"tags", "embedding") from a pipeline's answers, and the table cells shown for them."""

from __future__ import annotations

from pathlib import Path
from typing import Any, Optional

from rich.markup import escape

from vlmedge.errors import UsageError
from vlmedge.choices import split


# An input, or an audio window, none of whose labels scored at least --threshold.
NONE_ABOVE = "(none at or above the threshold)"


def ranked_table(rows: list[dict[str, Any]]) -> list[dict[str, str]]:
    """One row per (input, rank): rows are {"input": ..., "predictions": [{label, score, ...}]}."""
    return [{"input": escape(row["input"]) if rank == 1 else "", "rank": str(rank), "label": escape(str(p["label"])),
             "score": f"{p['score']:.4f}"} if p else {"input": escape(row["input"]), "rank": "", "label": NONE_ABOVE,
                                                      "score": ""}
            for row in rows for rank, p in enumerate(row["predictions"] or [None], 1)]


def ranked_rows(pipeline: Any, method: Any, inputs: list[str], top_k: int | None, labels: Optional[str] = None,
                 templates: Optional[list[str]] = None, **_: Any) -> list[dict[str, Any]]:
    """Ranked labels per input; a zero-shot method ranks against the --labels, through the
    --template prompts."""
    call = getattr(pipeline, method.name)
    if "labels" not in method.options:
        results = call(inputs, top_k=top_k)
    else:
        candidates = split(labels or "")
        if not candidates:
            raise UsageError("A CLIP artifact classifies zero-shot against labels you give; pass them, "
                             "e.g. --labels \"cat,dog,car\" (and optionally --template 'a photo of a {}.').")
        results = call(inputs, candidates, list(templates) if templates else None, top_k=top_k)
    return [{"input": name, "predictions": [p._asdict() for p in preds]} for name, preds in zip(inputs, results)]


def tag_rows(pipeline: Any, method: Any, inputs: list[str], top_k: int | None, window_hop: Optional[float] = None,
             aggregate: Optional[str] = None, threshold: Optional[float] = None, **_: Any) -> list[dict[str, Any]]:
    results = getattr(pipeline, method.name)(inputs, top_k=top_k, window_hop=window_hop, aggregate=aggregate,
                                             threshold=threshold)
    return [{"input": name, "duration": round(clip.duration, 3),
             "predictions": [t._asdict() for t in clip.tags],
             "windows": [{"start": round(w.start, 3), "end": round(w.end, 3),
                          "predictions": [t._asdict() for t in w.tags]} for w in clip.windows]}
            for name, clip in zip(inputs, results)]


def windows_table(rows: list[dict[str, Any]]) -> list[dict[str, str]]:
    """Audio clips longer than one model window: the top tag of each window."""
    table = []
    for row in rows:
        for i, w in enumerate(row.get("windows") or []):
            top = w["predictions"][0] if w["predictions"] else None
            table.append({"input": escape(row["input"]) if i == 0 else "", "start s": f"{w['start']:.2f}",
                          "end s": f"{w['end']:.2f}", "top label": escape(str(top["label"])) if top else NONE_ABOVE,
                          "score": f"{top['score']:.4f}" if top else ""})
    return table


def attention_paths(attention: Path, inputs: list[str]) -> list[Path]:
    """One input: the path as given (.png added to a name without a suffix); several:
    out-<stem>.png per input (numbered on a clash)."""
    suffix = attention.suffix or ".png"
    if len(inputs) == 1:
        return [attention.with_suffix(suffix)]
    paths, seen = [], set()
    for i, name in enumerate(inputs):
        path, n = attention.with_name(f"{attention.stem}-{Path(name).stem}{suffix}"), i
        while path in seen:  # numbered, past the names taken (another input's own name may end in -N)
            path, n = attention.with_name(f"{attention.stem}-{Path(name).stem}-{n}{suffix}"), n + 1
        seen.add(path)
        paths.append(path)
    return paths


def embedding_rows(pipeline: Any, method: Any, inputs: list[str], attention: Optional[Path] = None,
                    **_: Any) -> list[dict[str, Any]]:
    import numpy as np

    from vlmedge.tasks.base import l2_normalize

    # the values embed() and `embed --out` give (normalised), and the norm they had before
    raw = getattr(pipeline, method.name)(inputs, normalize=False)
    rows = [{"input": name, "pooling": pipeline.default_pooling, "dim": int(vector.shape[0]),
             "norm": float(np.linalg.norm(vector)), "first": [round(float(v), 5) for v in unit[:4]]}
            for name, vector, unit in zip(inputs, raw, l2_normalize(raw))]
    if attention is not None:
        for row, name, path in zip(rows, inputs, attention_paths(attention, inputs)):
            row["attention"] = str(pipeline.render_attention(name, path))
    return rows


def embedding_table(rows: list[dict[str, Any]]) -> list[dict[str, str]]:
    return [{"input": escape(row["input"]), "pooling": row["pooling"], "dim": str(row["dim"]),
             "norm before normalising": f"{row['norm']:.4f}",
             "first values": " ".join(f"{v:+.4f}" for v in row["first"]) + " ...",
             **({"attention": escape(row["attention"])} if "attention" in row else {})} for row in rows]


# the registry's result kind of the "predict" method -> function(pipeline, method, inputs,
# **options) -> rows for the table or JSON
ROWS = {"ranked": ranked_rows, "tags": tag_rows, "embedding": embedding_rows}


def rows_of_readable(result: str, pipeline: Any, method: Any, inputs: list[str],
                     **options: Any) -> tuple[list[dict[str, Any]], list[dict[str, str]]]:
    """(rows of the inputs that ran, {"input", "error"} of those that could not) for several
    inputs of which some cannot be read (or overflow the model): the list call stops at the
    first, so each input is tried alone to find them and the others run as one list again.
    Names are printable (a file name that is not UTF-8 escaped)."""
    from vlmedge.errors import InputError, printable

    make = ROWS[result]
    try:
        rows, failed = make(pipeline, method, inputs, **options), []
    except InputError as exc:
        if len(inputs) == 1:
            raise
        failed = []
        for name in inputs:
            try:
                make(pipeline, method, [name], **{**options, "attention": None})
            except InputError as alone:
                failed.append({"input": name, "error": str(alone)})
        if not failed:  # only the list call failed: say why
            raise exc
        bad = {row["input"] for row in failed}
        readable = [name for name in inputs if name not in bad]
        rows = make(pipeline, method, readable, **options) if readable else []
    for row in rows + failed:
        row.update({key: printable(row[key]) for key in ("input", "error") if key in row})
    return rows, failed


def in_input_order(inputs: list[str], rows: list[dict[str, Any]], failed: list[dict[str, str]]) -> list[dict[str, Any]]:
    """The rows and the failures of rows_of_readable (each in input order) merged back into the
    order of the inputs: an input named twice has two places."""
    from vlmedge.errors import printable

    done, bad = iter(rows), iter(failed)
    failures = {row["input"] for row in failed}
    return [next(bad) if printable(str(name)) in failures else next(done) for name in inputs]
# result kind -> function(rows) -> the rows shown, where they are not ranked labels
TABLES = {"embedding": embedding_table}


def check_summary(reports: list[dict[str, Any]]) -> str:
    """`vlmedge check`'s last line: how many files passed, missed their gate and were skipped."""
    failed = sum(r.get("passed") is False for r in reports)
    skipped = sum("skipped" in r for r in reports)
    passed = len(reports) - failed - skipped
    if failed:
        # each such file passed its gate at export: here it answers otherwise (another CPU, backend or vlmedge)
        return (f"check FAILED: {failed} of {len(reports)} file(s) missed their gate, {passed} passed, {skipped} skipped; "
                "re-export the artifact with this vlmedge (on this machine), or load another precision")
    if passed:
        return f"check passed: {passed} of {len(reports)} file(s), {skipped} skipped"
    return f"nothing checked: {skipped} of {len(reports)} file(s) skipped"
