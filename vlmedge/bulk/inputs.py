"""What the user pointed at: files, folders (walked once, here), and .parquet / .csv / .txt
tables of paths or captions; and the column of a table or Dataset that holds the inputs."""

from __future__ import annotations

import collections
import contextlib
import dataclasses
import os
from pathlib import Path
from typing import Any, Iterable, Iterator, Sequence

from vlmedge.bulk.job import BulkJob
from vlmedge.bulk.table import written_by
from vlmedge.errors import InputError, UsageError
from vlmedge.preprocess import visible_paths

TABLE_SUFFIXES = (".parquet", ".csv")
TEXT_SUFFIXES = (".txt",)
PATH_COLUMNS = ("path",)
TEXT_COLUMNS = ("text", "caption")
TABLE_FORMATS = {".parquet": "parquet", ".csv": "csv", ".txt": "text"}


@dataclasses.dataclass
class Inputs:
    """What the user pointed at, resolved on the driver.

    ``files``: media files in order (folders expanded, recursively, in sorted order);
    ``missing``: named files that do not exist; ``tables``: Parquet / CSV / text files of
    paths or captions.
    """

    files: list[str] = dataclasses.field(default_factory=list)
    missing: list[str] = dataclasses.field(default_factory=list)
    tables: list[str] = dataclasses.field(default_factory=list)
    # files of the walked folders that are not of the kind (an image folder's .wav), by suffix:
    # left out, and said so (passed_over_note), not read as unreadable inputs
    passed_over: collections.Counter = dataclasses.field(default_factory=collections.Counter)
    # symbolic links to folders inside the walked folders: not followed (a link may loop)
    linked_folders: list[str] = dataclasses.field(default_factory=list)
    # folders inside (or named) that could not be listed: "PATH (REASON)"
    unreadable_folders: list[str] = dataclasses.field(default_factory=list)

    def passed_over_note(self, kind: str) -> str | None:
        """One line on what the folder walks left out, or None when they left nothing out."""
        notes = []
        if self.passed_over:
            counts = ", ".join(f"{suffix or '(no suffix)'} {n}" for suffix, n in self.passed_over.most_common(5))
            more = ", ..." if len(self.passed_over) > 5 else ""
            notes.append(f"left out {sum(self.passed_over.values())} file(s) of the folders that are not {kind} "
                         f"files ({counts}{more})")
        if self.linked_folders:
            notes.append(f"did not follow {len(self.linked_folders)} link(s) to folders ({self.linked_folders[0]}"
                         f"{', ...' if len(self.linked_folders) > 1 else ''}); name a linked folder as an input to "
                         "include it")
        if self.unreadable_folders:
            notes.append(f"could not read {len(self.unreadable_folders)} folder(s) ({self.unreadable_folders[0]}"
                         f"{', ...' if len(self.unreadable_folders) > 1 else ''}), whose files were left out; check "
                         "their permissions")
        return "; ".join(notes) or None

    @property
    def table_format(self) -> str | None:
        return TABLE_FORMATS[_suffix(self.tables[0])] if self.tables else None


def _suffix(path: str) -> str:
    return os.path.splitext(path.rstrip("/"))[1].lower()


def is_uri(path: str) -> bool:
    """s3://..., gs://... (read by Ray Data's readers), but not file://."""
    return "://" in path and not path.startswith("file://")


def media_suffixes(kind: str) -> set[str]:
    """The file suffixes a folder walk picks up for inputs of this kind."""
    if kind == "audio":
        from vlmedge.preprocess.audio import AUDIO_SUFFIXES

        return set(AUDIO_SUFFIXES)
    from vlmedge.preprocess.image import image_suffixes

    return image_suffixes()


def collect(inputs: Any, kind: str, absolute: bool = True, allow_empty: bool = False) -> Inputs:
    """Resolves paths, folders, tables and URIs into an ``Inputs``.

    Folders are walked recursively for ``kind``'s suffixes, hidden files and folders left
    out, sorted by their path inside the folder. ``absolute``: local paths made absolute
    (what the engines read and write); else kept as given (the plain ``vlmedge embed``
    listing). ``allow_empty``: finding nothing is not an error (the caller says what to do).
    """
    if isinstance(inputs, (str, os.PathLike)):
        inputs = [inputs]
    if not isinstance(inputs, (list, tuple)) or (not inputs and not allow_empty):
        raise UsageError("Give at least one input: files, folders, or Parquet/CSV files of paths or captions.")
    suffixes = media_suffixes(kind)
    found = Inputs()
    for raw in inputs:
        if not isinstance(raw, (str, os.PathLike)):
            raise UsageError(f"Inputs must be paths, not {type(raw).__name__}; for data in memory build a "
                             "ray.data Dataset with a 'path', 'bytes' or 'text' column.")
        name = os.fspath(raw)
        local = name if is_uri(name) or not absolute else os.path.abspath(name)
        suffix = _suffix(name)
        if suffix in TABLE_SUFFIXES or (kind == "text" and suffix in TEXT_SUFFIXES):
            found.tables.append(local)
        elif suffix in TEXT_SUFFIXES:  # read as an image it was "not a readable JPEG, PNG, ..."
            raise UsageError(f"{name} is a .txt file: captions, one per line, which a CLIP artifact embeds as texts; "
                             f"list {kind} files in a .csv or .parquet with a 'path' column instead.")
        elif is_uri(name):
            found.files.append(name)
        elif os.path.isdir(name):
            root = Path(name).resolve() if absolute else Path(name)
            # a dangling symbolic link is kept, so that its row says why it cannot be read
            walked = visible_paths(root, found.unreadable_folders)
            # so is a FIFO or device, so that its row says it is not a regular file, as when it is named
            hits = [p for p in walked if p.suffix.lower() in suffixes and not p.is_dir()]
            found.files.extend(str(p) for p in sorted(hits, key=lambda p: p.relative_to(root).parts))
            found.passed_over.update(p.suffix.lower() for p in walked if p.suffix.lower() not in suffixes and p.is_file())
            found.linked_folders.extend(str(p) for p in walked if p.is_symlink() and p.is_dir())
        elif os.path.exists(name):  # a file, or a FIFO or device that its row says is not a regular file
            found.files.append(local)
        else:
            found.missing.append(local)
    if found.tables and (found.files or found.missing):
        raise UsageError("Give either media files and folders or tables (.parquet/.csv) of paths or captions, "
                         "not both.")
    if len({_suffix(t) for t in found.tables}) > 1:
        raise UsageError("Give tables of one format at a time (all .parquet, all .csv or all .txt).")
    if kind == "text" and not found.tables:
        raise UsageError("Captions come from a .parquet or .csv file with a 'text' (or 'caption') column, "
                         "or a .txt file with one caption per line.")
    if not (found.files or found.missing or found.tables) and not allow_empty:
        unread = f" (could not read {', '.join(found.unreadable_folders)}; check its permissions)" \
            if found.unreadable_folders else ""
        raise UsageError(f"No {kind} files found in {', '.join(map(os.fspath, inputs))}{unread}.")
    return found


def holds_captions(inputs: Sequence[str]) -> bool:
    """Whether inputs are captions: .txt files, or tables with a text/caption column (and no path column)."""
    for name in inputs:
        suffix = _suffix(name)
        if suffix in TEXT_SUFFIXES:
            return True
        if suffix in TABLE_SUFFIXES and os.path.isfile(name):
            columns = table_columns(name)
            return any(c in columns for c in TEXT_COLUMNS) and "path" not in columns
    return False


def input_column(job: BulkJob, columns: Iterable[str] | None) -> str:
    """The column that holds the inputs: the job's ``column``, else ``bytes`` (files read by
    Ray), ``text``/``caption`` (captions) or ``path`` (paths of media files)."""
    if columns is None:
        raise InputError("The input Dataset is empty (it has no rows and so no columns).")
    columns = list(columns)
    if job.column is not None:
        if job.column not in columns:
            raise InputError(f"The input has no column {job.column!r}; its columns are {', '.join(columns)}.")
        return job.column
    wanted = TEXT_COLUMNS if job.kind == "text" else ("bytes",) + PATH_COLUMNS + ("image",) * (job.kind == "image")
    for name in wanted:
        if name in columns:
            return name
    # the command line names a column of paths only: captions come from a text or caption column
    naming = "column= in Python" if job.kind == "text" else "--column on the command line, column= in Python"
    # a CLIP artifact's captions come from their own columns (a named column is one of paths)
    captions = "; captions are read from a 'text' or 'caption' column" if job.method == "embed_images" else ""
    raise InputError(f"The input has columns {', '.join(columns)}; {job.method} reads a "
                     f"{' or '.join(repr(w) for w in wanted)} column (or name one: {naming}){captions}.")


def source_column(job: BulkJob, columns: Iterable[str] | None) -> str:
    """input_column() of an input before it is run: its other columns pass through to the
    output, so one that the results would write (a table's own 'labels') is refused by name
    rather than dropped or overwritten."""
    column = input_column(job, columns)
    written = [name for name in written_by(job.result) if name in list(columns or ())]
    if written:
        raise InputError(f"The input has a column {written[0]!r}, which the results of {job.method} write; rename it "
                         "in the input (its other columns are kept in the output).")
    return column


def csv_convert_options():
    """Path and caption columns of a CSV are text, even when a value looks like a number."""
    import pyarrow as pa
    import pyarrow.csv as pa_csv

    names = PATH_COLUMNS + TEXT_COLUMNS + ("image", "audio")
    return pa_csv.ConvertOptions(column_types={name: pa.string() for name in names})


def table_columns(path: str) -> list[str]:
    """The column names of a local .parquet (its schema) or .csv (its header line)."""
    with _reading(path, TABLE_FORMATS[_suffix(path)]):
        if _suffix(path) == ".parquet":
            import pyarrow.parquet as pq

            return pq.read_schema(path).names
        with open(path, encoding="utf-8-sig") as f:  # Excel's "CSV UTF-8" starts with a BOM
            return [c.strip().strip('"') for c in f.readline().split(",")]


def read_table(path: str, fmt: str) -> Any:
    """A Parquet / CSV table as a pyarrow Table, read the way the Ray engine reads it; a text
    file of captions as {"text": [caption, ...]}."""
    with _reading(path, fmt):
        if fmt == "text":
            lines = Path(path).read_bytes().decode("utf-8-sig").splitlines()  # a BOM is not a caption
            return {"text": [line for line in lines if line.strip()]}
        if fmt == "parquet":
            import pyarrow.parquet as pq

            return pq.read_table(path)
        import pyarrow.csv as pa_csv

        return pa_csv.read_csv(path, convert_options=csv_convert_options())


@contextlib.contextmanager
def _reading(path: str, fmt: str) -> Iterator[None]:
    """A table that cannot be read (corrupt, empty, not UTF-8, unreadable) as one InputError."""
    from vlmedge.errors import first_line

    what = {"text": "a UTF-8 text file of captions", "csv": "a CSV table", "parquet": "a Parquet table"}[fmt]
    try:
        yield
    except UnicodeDecodeError as exc:
        raise InputError(f"{path} is not UTF-8 text ({exc.reason} at byte {exc.start}); save it as UTF-8.") from None
    except (OSError, ValueError) as exc:  # pyarrow's ArrowInvalid is a ValueError, its ArrowIOError an OSError
        raise InputError(f"{path} could not be read as {what} ({first_line(exc)}); check the file.") from None


def rows_of(inputs: Inputs) -> dict[str, Any]:
    """The input rows as columns, in the engines' order: files, then named files that do not
    exist; or the rows of each table in turn. A Parquet or CSV table's columns stay Arrow
    arrays of their own types (a list of paths or captions of a text file), so that the
    output passes them through as they are."""
    if not inputs.tables:
        return {"path": inputs.files + inputs.missing}
    tables = [read_table(table, inputs.table_format) for table in inputs.tables]
    if inputs.table_format == "text":
        return {"text": [caption for table in tables for caption in table["text"]]}
    names = dict.fromkeys(name for table in tables for name in table.column_names)
    return {name: _joined_column(name, tables, inputs.tables) for name in names}


def _joined_column(name: str, tables: list[Any], paths: list[str]) -> Any:
    """One column of several tables as one Arrow array of the type they give it, null in the
    rows of a table without it (or where it is all null)."""
    import pyarrow as pa

    typed = {path: table.schema.field(name).type for path, table in zip(paths, tables)
             if name in table.column_names and not pa.types.is_null(table.schema.field(name).type)}
    kinds = list(dict.fromkeys(typed.values()))
    if len(kinds) > 1:
        (first, a), (other, b) = next(iter(typed.items())), next((p, t) for p, t in typed.items() if t != kinds[0])
        raise InputError(f"Column {name!r} is {a} in {first} but {b} in {other}; give the column one type in "
                         "every table.")
    kind = kinds[0] if kinds else pa.null()
    parts = [table.column(name).combine_chunks().cast(kind) if name in table.column_names
             else pa.nulls(table.num_rows, kind) for table in tables]
    try:
        return pa.concat_arrays(parts)
    except (pa.ArrowInvalid, pa.ArrowNotImplementedError, pa.ArrowTypeError) as exc:
        raise InputError(f"Column {name!r} of the tables cannot be joined into one ({exc}); give it one type "
                         "in every table.") from None


def batches(columns: dict[str, list[Any]], batch_size: int) -> Iterator[dict[str, list[Any]]]:
    """Columns cut into batches of rows."""
    n = len(next(iter(columns.values()), []))
    for start in range(0, n, batch_size):
        yield {name: values[start:start + batch_size] for name, values in columns.items()}
