"""The options of `vlmedge bench`: their defaults, their checks, and the Settings they come
to for one artifact (which backends, precisions, batch sizes and thread counts to measure).

Imported by `import vlmedge` (through vlmedge.bench): stdlib only at module level; the
backend and precision tables are read when options are checked.
"""

from __future__ import annotations

import numbers
from pathlib import Path
from typing import TYPE_CHECKING, Any, Sequence

from vlmedge.errors import InputError, UsageError

if TYPE_CHECKING:
    from vlmedge.artifact import Artifact
    from vlmedge.bench.result import Settings

DEFAULT_BATCHES = (1, 8)
SWEEP_BATCHES = (1, 2, 4, 8, 16)
SWEEPS = ("threads", "batch")
DEFAULT_WARMUP = 5
DEFAULT_DURATION = 3.0
MIN_ITERATIONS = 10  # with a duration: at least this many timed calls, however long they take


def _backend_names() -> tuple[str, ...]:
    """What `backends` takes, in the order rows are measured: the torch baseline first."""
    from vlmedge.bench.result import BASELINE
    from vlmedge.runtimes.base import BACKENDS

    return (BASELINE, *BACKENDS)


def _positive(name: str, values: Sequence[Any]) -> list[int]:
    out = []
    for v in values:
        if isinstance(v, bool) or not isinstance(v, numbers.Integral) or v < 1:
            raise UsageError(f"{name} must be positive integers, not {v!r}.")
        out.append(int(v))
    return sorted(dict.fromkeys(out))


def _as_list(value: Any) -> list[Any] | None:
    """A list option given one value (backends="onnxruntime", batch_sizes=8) as a list of it,
    not iterated into characters or refused; None stays None (the default)."""
    if value is None or isinstance(value, (str, numbers.Number)):
        return None if value is None else [value]
    return list(value)


def _thread_grid(cores: int) -> list[int]:
    grid, n = [], 1
    while n < cores:
        grid.append(n)
        n *= 2
    return grid + [cores]


def _known(kind: str, given: Sequence[str] | None, known: Sequence[str]) -> None:
    unknown = [x for x in given or () if x not in known]
    if unknown:
        raise UsageError(f"Unknown {kind} {', '.join(map(str, unknown))}; choose from {', '.join(known)}.")


def peer_files(peers: dict[str, Any] | None) -> list[tuple[str, str, Path]]:
    """(name, precision, file) of each peer given as {"NAME[:PRECISION]": FILE} (an .onnx file
    or an OpenVINO .xml): an int8 or fp16 file exported by another tool says so after a colon,
    so that its parity is judged by that precision's gate and its roofline against that
    precision's peak (fp32 when not said)."""
    from vlmedge.parity import PRECISIONS
    from vlmedge.runtimes.base import BACKENDS, backend_for_file

    found = []
    for key, path in (peers or {}).items():
        name, _, precision = str(key).rpartition(":") if ":" in str(key) else (str(key), "", "fp32")
        if not name or precision not in PRECISIONS:
            raise UsageError(f"A peer is named NAME or NAME:PRECISION with a precision of {', '.join(PRECISIONS)}, "
                             f"not {key!r}.")
        readers = [b for b in BACKENDS.values() if b.module]
        if backend_for_file(Path(path)) not in readers:
            raise InputError(f"Peer {name}'s file {path} is not a model file bench can run; give "
                             f"{' or '.join(f'a {b.file_suffix} file ({b.name})' for b in readers)}.")
        if not Path(path).is_file():
            raise InputError(f"Peer {name}'s file {path} does not exist; check the path.")
        found.append((name, precision, Path(path)))
    return found


def check_settings(artifact: Artifact, *, backends: Sequence[str] | None, precisions: Sequence[str] | None,
                   batch_sizes: Sequence[int] | None, threads: int | None, warmup: int, iterations: int | None,
                   duration: float | None, min_iterations: int, end_to_end: bool, random_inputs: bool,
                   sweep: Sequence[str], device: str, memory_method: str, rounds: int | None = None) -> Settings:
    """Checks the options of vlmedge.bench.bench (a UsageError of one sentence for a bad
    one) and fills in the defaults from the artifact and this machine."""
    from vlmedge.bench.result import BASELINE, Settings
    from vlmedge.environment import available_cores
    from vlmedge.parity import PRECISIONS
    from vlmedge.runtimes.base import BACKENDS
    from vlmedge.tasks.base import check_flag

    end_to_end, random_inputs = check_flag("end_to_end", end_to_end), check_flag("random_inputs", random_inputs)
    if iterations is not None and duration is not None:
        raise UsageError("Give either iterations or duration, not both.")
    _positive("iterations", ([iterations] if iterations is not None else []) + [min_iterations])
    if duration is not None and not (isinstance(duration, (int, float)) and duration > 0):
        raise UsageError(f"duration must be a positive number of seconds, not {duration!r}.")
    if isinstance(warmup, bool) or not isinstance(warmup, int) or warmup < 0:
        raise UsageError(f"warmup must be a non-negative integer, not {warmup!r}.")
    backends, precisions, batch_sizes = _as_list(backends), _as_list(precisions), _as_list(batch_sizes)
    sweep = list(dict.fromkeys(_as_list(sweep)))
    if set(sweep) - set(SWEEPS):
        raise UsageError(f"sweep takes 'threads' and/or 'batch', not {', '.join(sorted(set(sweep) - set(SWEEPS)))}.")
    if rounds is not None:
        _positive("rounds", [rounds])
        memory_method += ("; with rounds, read after the warm-up calls, each session staying open until the "
                          "round-robin timing ends")
    _known("backend", backends, _backend_names())
    _known("precision", precisions, PRECISIONS)
    cores = available_cores()
    thread_grid = (_thread_grid(cores) if "threads" in sweep
                   else _positive("threads", [cores if threads is None else threads]))  # 0 is refused, not the default
    batches = _positive("batch sizes", batch_sizes or (SWEEP_BATCHES if "batch" in sweep else DEFAULT_BATCHES))
    have = artifact.model_entries()
    chosen_backends = [b for b in _backend_names() if (b in backends if backends else b == BASELINE or
                                                      any(e["target"] == BACKENDS[b].target for e in have))]
    chosen_precisions = [p for p in PRECISIONS if (p in precisions if precisions else
                                                   any(e["precision"] == p for e in have))]
    return Settings(
        mode="end-to-end" if end_to_end else "model-only",
        scope=("task pipeline on the artifact's sample files: decoding, preprocessing, model, postprocessing"
               if end_to_end else "the backend's model call only; no preprocessing or postprocessing"),
        inputs="random" if random_inputs else "samples",
        warmup=warmup, iterations=iterations, min_iterations=None if iterations else min_iterations,
        duration_s=None if iterations else float(duration or DEFAULT_DURATION),
        threads=thread_grid, batch_sizes=batches, backends=chosen_backends, precisions=chosen_precisions,
        device=device, sweep=sweep, memory_method=memory_method, rounds=rounds,
    )
