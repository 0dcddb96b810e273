"""The two writers of bulk results (batches of columns or Arrow tables, from either engine):

    ParquetWriter  every column of every row, streamed into one .parquet
    NpyWriter      the embeddings of the readable rows as one (N, D) float32 .npy, and
                   beside it <name>.files.json: which input each row is, in order (images,
                   then texts), and the inputs that could not be read, with the reason

Each checks where it writes before any input is read, writes under a temporary name and
renames into place only when complete; used as a context manager, it leaves nothing behind
when the run fails.
"""

from __future__ import annotations

import contextlib
import json
import os
import re
import stat
from pathlib import Path
from typing import Any

import numpy as np

from vlmedge.bulk.inputs import input_column
from vlmedge.bulk.job import BulkJob
from vlmedge.bulk.table import column, column_names, to_arrow, written_by
from vlmedge.build_locks import abandoned, lock_path
from vlmedge.choices import check_writable_file, written_path
from vlmedge.errors import InputError, OutputError, printable
from vlmedge.user_cache import owned_by_me

# the suffixes (in any case) of the files bulk results go to, and their formats
OUT_FORMATS = {".parquet": "parquet", ".npy": "npy"}


def out_format(out: str | os.PathLike) -> str | None:
    """"parquet" or "npy" for a results path of that suffix (in any case), else None."""
    return OUT_FORMATS.get(Path(out).suffix.lower())


def check_out(path: Path) -> None:
    """Refuses a results path that could not be written (choices.check_writable_file)."""
    check_writable_file(path, str(path), f", e.g. {path / ('results' + (path.suffix.lower() or '.parquet'))}")


def _write_failed(path: Path, exc: OSError) -> OutputError:
    return OutputError(f"Could not write {path} ({exc.strerror or exc}); nothing was written, free space or choose "
                       "another path and run again.")


class _Writer:
    out: Path
    _temporary: list[Path]
    _locks: list[int]  # descriptors holding the temporary files' locks (abort releases them)

    def __enter__(self):
        return self

    def __exit__(self, kind, *_: Any) -> None:
        try:
            if kind is None:
                self.close()
        finally:
            self.abort()

    def close(self) -> None:  # pragma: no cover - every writer has its own
        raise NotImplementedError

    def abort(self) -> None:
        """Removes what was written under temporary names (nothing once closed)."""
        for tmp in self._temporary:
            tmp.unlink(missing_ok=True)
        for fd in self._locks:
            os.close(fd)
        self._locks = []

    def _tmp(self, path: Path, suffix: str = "") -> Path:
        _remove_abandoned_partials(path, suffix)
        tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}{suffix}")
        self._temporary.append(tmp)
        return tmp

    def _hold(self, tmp: Path) -> None:
        """Locks a temporary file just made, while this run writes it, so that another run to
        that path (in another container too, where its pid means nothing) tells it from a
        killed run's."""
        lock = lock_path(tmp)
        if lock is not None:
            self._locks.append(lock)


def _remove_abandoned_partials(path: Path, suffix: str) -> None:
    """Removes this user's partial results of `path` whose writers were killed (SIGKILL, a power
    cut: nothing ran to remove them), told by their locks (vlmedge.build_locks); a run still
    writing one (another terminal's or container's, to the same path) keeps its own."""
    pattern = re.compile(rf"\.{re.escape(path.name)}\.tmp-(\d+){re.escape(suffix)}")
    try:
        siblings = list(path.parent.iterdir())
    except OSError:
        return
    for sibling in siblings:
        writer = pattern.fullmatch(sibling.name)
        if writer is None or int(writer.group(1)) == os.getpid() or not abandoned(sibling, int(writer.group(1))):
            continue
        with contextlib.suppress(OSError):
            info = sibling.lstat()
            if stat.S_ISREG(info.st_mode) and owned_by_me(info):
                sibling.unlink()


class ParquetWriter(_Writer):
    """Streams result tables into one Parquet file. Its schema is set by the first tables: an
    input column that is empty in those (all null, no type yet) holds the tables back until one
    gives it a type, up to PENDING_TABLES of them."""

    PENDING_TABLES = 64

    def __init__(self, out: str | os.PathLike) -> None:
        check_out(Path(out))
        self.out = written_path(Path(out))
        try:
            self.out.parent.mkdir(parents=True, exist_ok=True)
        except OSError as exc:
            raise _write_failed(self.out, exc) from None
        self._temporary, self._locks = [], []
        self._path = self._tmp(self.out)
        self._writer = None
        self._pending: list[Any] = []
        self.rows = 0

    def add(self, batch: Any, job: BulkJob | None = None) -> None:
        import pyarrow as pa

        written = written_by(job.result) if job is not None else ()  # the result columns' fixed types
        table = to_arrow(batch, written) if isinstance(batch, dict) else batch
        if isinstance(table, pa.RecordBatch):
            table = pa.Table.from_batches([table])
        if self._writer is None:
            self._pending.append(table)
            schema = self._pending_schema()
            if any(pa.types.is_null(field.type) for field in schema) and len(self._pending) < self.PENDING_TABLES:
                return
            self._open(schema)
            return
        self._write(table)

    def _pending_schema(self) -> Any:
        """The schema of the tables held back, each column of the type one of them gives it."""
        import pyarrow as pa

        return pa.unify_schemas([t.schema for t in self._pending], promote_options="permissive")

    def _open(self, schema: Any) -> None:
        import pyarrow.parquet as pq

        try:
            self._writer = pq.ParquetWriter(self._path, schema)
            self._hold(self._path)
        except OSError as exc:
            raise _write_failed(self.out, exc) from None
        pending, self._pending = self._pending, []
        for table in pending:
            self._write(table)

    def _write(self, table: Any) -> None:
        import pyarrow as pa

        if table.schema != self._writer.schema:
            try:
                table = table.cast(self._writer.schema)
            except (pa.ArrowInvalid, pa.ArrowNotImplementedError, pa.ArrowTypeError) as exc:
                raise InputError(f"An input column changes type between rows ({exc}); give each column one type "
                                 "in the input.") from None
        try:
            self._writer.write_table(table)
        except OSError as exc:
            raise _write_failed(self.out, exc) from None
        self.rows += table.num_rows

    def close(self) -> None:
        if self._writer is None and self._pending:
            self._open(self._pending_schema())
        if self._writer is None:
            raise InputError("There were no results to write.")
        try:
            self._writer.close()
            self._writer = None
            os.replace(self._path, self.out)
        except OSError as exc:
            raise _write_failed(self.out, exc) from None

    def abort(self) -> None:
        try:
            if self._writer is not None:
                self._writer, writer = None, self._writer
                writer.close()
        finally:
            super().abort()


def side_file(out: Path) -> Path:
    """embeddings.npy -> embeddings.files.json"""
    stem = out.stem if out_format(out) == "npy" else out.name
    return out.with_name(stem + ".files.json")


class NpyWriter(_Writer):
    """Collects the embeddings of readable rows; writes the .npy and its .files.json on close."""

    def __init__(self, out: str | os.PathLike, artifact: str | os.PathLike) -> None:
        out = Path(out)
        out = out if out_format(out) == "npy" else out.with_name(out.name + ".npy")
        check_out(out)
        check_out(side_file(out))
        self.out, self.listing = written_path(out), written_path(side_file(out))  # named as given, beside the link
        self._temporary, self._locks = [], []
        self.meta: dict[str, Any] = {"artifact": str(artifact), "task": None, "shape": None, "dtype": "float32"}
        self.files: list[str] = []
        self.texts: list[str] = []
        self.skipped: list[dict[str, str]] = []
        self._parts: list[np.ndarray] = []
        self._kinds: set[str] = set()  # what the rows were meant to be (for the message)
        self.embeddings = np.zeros((0, 0), dtype=np.float32)

    def add(self, batch: Any, job: BulkJob) -> None:
        """One batch of results of ``job`` (an embedding method): its readable rows in order."""
        names = column(batch, input_column(job, column_names(batch)))
        errors = column(batch, "error")
        kept = [printable(str(name)) for name, error in zip(names, errors) if error is None]
        (self.texts if job.kind == "text" else self.files).extend(kept)
        self.skipped.extend({"input": printable(str(name)), "error": printable(error)}
                            for name, error in zip(names, errors) if error)
        vectors = [np.asarray(v, dtype=np.float32) for v, error in zip(column(batch, "embedding"), errors)
                   if error is None]
        if vectors:
            self._parts.append(np.stack(vectors))
        self._kinds.add(job.kind)
        self.meta["task"] = job.task
        self.meta.update({"pooling": job.options["pooling"], "normalized": job.options["normalize"]}
                         if "pooling" in job.options else {"normalized": True})

    def close(self) -> None:
        if not self.skipped and not self._parts:
            raise InputError("The inputs hold nothing to embed (no files, rows or captions); nothing was written.")
        if not self._parts:
            what = " as an image" if self._kinds == {"image"} else ""
            raise InputError(f"None of the {len(self.skipped)} inputs could be read{what}; nothing was written. "
                             f"First error: {self.skipped[0]['error']}")
        self.embeddings = np.concatenate(self._parts).astype(np.float32, copy=False)
        meta = {**self.meta, "shape": list(self.embeddings.shape), "files": self.files, "texts": self.texts,
                "skipped": self.skipped}
        try:
            self.out.parent.mkdir(parents=True, exist_ok=True)
            npy, listing = self._tmp(self.out, ".npy"), self._tmp(self.listing)
            np.save(npy, self.embeddings)
            listing.write_text(json.dumps(meta, indent=2) + "\n", encoding="utf-8")
            os.replace(npy, self.out)
            os.replace(listing, self.listing)
        except OSError as exc:
            raise _write_failed(self.out, exc) from None
