"""Bulk results: which columns each kind of result fills, and as Arrow the result columns'
fixed types, so that every batch of every engine has one schema."""

from __future__ import annotations

from typing import Any

import numpy as np

from vlmedge.errors import printable

# result kind (the registry's Method.result) -> the columns it fills, before "error"
RESULT_COLUMNS: dict[str, tuple[str, ...]] = {
    "ranked": ("labels", "indices", "scores"),
    "tags": ("labels", "indices", "scores", "duration"),
    "embedding": ("embedding",),
}


def written_by(result: str) -> tuple[str, ...]:
    """The columns a result kind writes, "error" last (an input's columns of those names are refused)."""
    return RESULT_COLUMNS[result] + ("error",)


def result_types() -> dict[str, Any]:
    import pyarrow as pa

    return {"labels": pa.list_(pa.string()), "indices": pa.list_(pa.int32()), "scores": pa.list_(pa.float32()),
            "duration": pa.float64(), "embedding": pa.list_(pa.float32()), "error": pa.string()}


def to_arrow(columns: dict[str, Any], written: tuple[str, ...]):
    """Result columns as a pyarrow Table, the `written` ones (written_by) with fixed types;
    passed-through input columns keep their own types."""
    import pyarrow as pa

    types = result_types()
    arrays, names = [], []
    for name, values in columns.items():
        if name in written:
            if name == "embedding":
                values = [None if v is None else np.asarray(v, dtype=np.float32) for v in values]
            elif name == "error":  # a message that quotes a file name that is not UTF-8
                values = [printable(v) for v in values]
            arrays.append(pa.array(list(values), type=types[name]))
        elif isinstance(values, np.ndarray) and values.ndim > 1:  # a tensor column of a Ray Dataset
            from ray.data.extensions import ArrowTensorArray

            arrays.append(ArrowTensorArray.from_numpy(values))
        else:
            arrays.append(_passed_through(list(values) if isinstance(values, np.ndarray) else values))
        names.append(name)
    return pa.Table.from_arrays(arrays, names=names)


def column_names(batch: Any) -> list[str]:
    """The columns of a batch of results: a dict of columns (the local engine's) or a
    pyarrow Table or RecordBatch (the Ray engine's)."""
    return list(batch) if isinstance(batch, dict) else list(batch.column_names)


def column(batch: Any, name: str) -> list[Any]:
    """One column of a batch of results as a list."""
    values = batch[name] if isinstance(batch, dict) else batch.column(name)
    return values.to_pylist() if is_arrow(values) else list(values)  # an Arrow column: a table's, as read


def is_arrow(values: Any) -> bool:
    """Whether a column is an Arrow array (pyarrow imported only where one may be)."""
    return type(values).__module__.startswith("pyarrow")


def _passed_through(values: Any):
    """An input column as Arrow (a table's column already is: as it was read), its non-UTF-8
    file names escaped (printable)."""
    import pyarrow as pa

    if is_arrow(values):
        return values
    try:
        return pa.array(values)
    except UnicodeEncodeError:
        return pa.array([printable(v) for v in values])
