"""What this machine can do, measured: the peak GEMM rate per compute precision through each
backend, and the memory bandwidth, the ceilings against which `vlmedge bench` places every
row (vlmedge.bench.roofline).

The peak of a precision is the best of repeated calls of a chain of GEMM_DEPTH square GEMMs
(M = N = K = GEMM_SIZE, each by its own weight) opened through vlmedge's own session for the
backend, as a model file is, with the same thread count. A chain, not one GEMM: where matrix
units (AMX) make one GEMM take about as long as copying its input in and its output out, a
single GEMM measures the copies (a third to half of the unit's rate on AMX); a model's many
layers, like the chain, pass activations on inside the backend.
    fp32, fp16  MatMuls of a float input by float weights;
    bf16        OpenVINO only, with INFERENCE_PRECISION_HINT bf16, on CPUs that compute in it
                (ONNX Runtime's CPU provider has no bf16 GEMM);
    torch       fp32 only, torch.matmul in eager mode, for the baseline's rows;
    int8        u8 activations x s8 weights: ONNX Runtime's MatMulInteger, each result
                requantised to u8 for the next (QuantizeLinear); OpenVINO's FakeQuantize'd
                (u8) inputs by dequantised s8 weights, which it lowers to int8 GEMMs.
One operation is a multiply or an add: a GEMM does 2*M*N*K. The bandwidth is the best
read + write rate of copying a BANDWIDTH_MB array with numpy, split over the threads, cached
apart from the GEMMs (one figure per thread count for every backend).

Results are cached in peaks.json in the user cache folder (vlmedge.user_cache.cache_root:
$VLMEDGE_CACHE_DIR, else $XDG_CACHE_HOME/vlmedge, else ~/.cache/vlmedge), keyed by CPU
model and flags, thread count, backend and its version and the GEMM size; `remeasure=True`
(`vlmedge bench --remeasure-peak`) measures again; `keep_higher=True` (what bench does when
a row ran above a cached peak) measures again and keeps, per precision, the higher of the
cached and the new figure; VLMEDGE_NO_CACHE=1 neither reads nor writes it. ONNX graphs are
built with the `onnx` package, imported only here and only when a peak is measured: without
it the ONNX Runtime peaks are reported unavailable.
"""

from __future__ import annotations

import importlib.metadata
import importlib.util
import json
import os
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, Callable

import numpy as np

GEMM_SIZE = 1024
GEMM_DEPTH = 8  # GEMMs chained in one peak graph
BANDWIDTH_MB = 256
PRECISIONS = ("fp32", "fp16", "bf16", "int8")
MIN_SECONDS = 0.25  # timed calls per precision: at least this long and MIN_CALLS calls, at most MAX_CALLS
MIN_CALLS, MAX_CALLS = 5, 50
CACHE_FILE = "peaks.json"
CACHE_VERSION = 3  # raised when the way a peak is measured changes: older entries are measured again


@dataclass
class Peak:
    """The measured GEMM rate of one compute precision through one backend (None: not
    measurable here, `note` says why)."""

    backend: str
    precision: str
    gops: float | None
    note: str


@dataclass
class MachinePeaks:
    """Every precision's peak through one backend at one thread count, and the bandwidth."""

    backend: str
    backend_version: str
    threads: int
    gemm_size: int
    peaks: list[Peak]
    bandwidth_gbs: float | None
    bandwidth_method: str
    measured: str  # ISO time the figures were measured
    load_average: list[float]  # 1, 5, 15-minute load when they were measured: a busy machine understates them
    cached: bool  # read from the cache file in this run

    def gops(self, precision: str) -> float | None:
        return next((p.gops for p in self.peaks if p.precision == precision), None)


def cpu_signature() -> str:
    """The CPU model name and a digest of its feature flags (what decides which kernels run)."""
    from vlmedge.environment import cpu_key

    cpu = cpu_key()
    return f"{cpu['machine']} {cpu['model']} flags:{cpu['flags']}"


def backend_version(backend: str) -> str:
    """The version of the distribution that installed the backend's package, whatever it is
    called: onnxruntime-gpu, onnxruntime-openvino and others install `onnxruntime`."""
    for distribution in (backend, *sorted(importlib.metadata.packages_distributions().get(backend, []))):
        try:
            return importlib.metadata.version(distribution)
        except importlib.metadata.PackageNotFoundError:
            continue
    return "not installed"


def cache_key(backend: str, version: str, threads: int, size: int) -> str:
    return f"{cpu_signature()} | {threads} threads | {backend} {version} | gemm {size} | v{CACHE_VERSION}"


def best_seconds(call: Callable[[], Any]) -> float:
    """The fastest of repeated calls, after two untimed ones."""
    call()
    call()
    times: list[float] = []
    deadline = time.perf_counter() + MIN_SECONDS
    while len(times) < MAX_CALLS and (len(times) < MIN_CALLS or time.perf_counter() < deadline):
        t0 = time.perf_counter_ns()
        call()
        times.append((time.perf_counter_ns() - t0) / 1e9)
    return min(times)


def _onnx_gemm(precision: str, size: int, folder: Path) -> tuple[Path, np.ndarray]:
    """An ONNX chain of GEMM_DEPTH GEMMs and its input: MatMuls, or for int8 MatMulIntegers
    whose int32 results are requantised to u8 for the next."""
    import onnx
    from onnx import TensorProto, helper, numpy_helper

    rng = np.random.default_rng(0)
    nodes, weights = [], []
    if precision == "int8":
        feed = rng.integers(0, 256, (size, size), dtype=np.uint8)
        in_type, out_type = TensorProto.UINT8, TensorProto.INT32
        # requantising by 1 / (size * 64) keeps an int32 sum of size u8 x s8 products in u8's range
        weights.append(numpy_helper.from_array(np.array(1.0 / (size * 64), np.float32), "scale"))
        weights.append(numpy_helper.from_array(np.array(0, np.uint8), "zero"))
        x = "a"
        for i in range(GEMM_DEPTH):
            weights.append(numpy_helper.from_array(rng.integers(-127, 128, (size, size), dtype=np.int8), f"w{i}"))
            acc = "y" if i == GEMM_DEPTH - 1 else f"acc{i}"
            nodes.append(helper.make_node("MatMulInteger", [x, f"w{i}"], [acc]))
            if acc != "y":
                nodes.append(helper.make_node("Cast", [acc], [f"f{i}"], to=TensorProto.FLOAT))
                nodes.append(helper.make_node("QuantizeLinear", [f"f{i}", "scale", "zero"], [f"q{i}"]))
                x = f"q{i}"
    else:
        dtype, kind = (np.float32, TensorProto.FLOAT) if precision == "fp32" else (np.float16, TensorProto.FLOAT16)
        feed = rng.standard_normal((size, size)).astype(dtype)
        in_type = out_type = kind
        x = "a"
        for i in range(GEMM_DEPTH):
            # weights of variance 1/size keep the chain's values near unit scale (no inf in fp16)
            weights.append(numpy_helper.from_array((rng.standard_normal((size, size)) / np.sqrt(size)).astype(dtype), f"w{i}"))
            y = "y" if i == GEMM_DEPTH - 1 else f"y{i}"
            nodes.append(helper.make_node("MatMul", [x, f"w{i}"], [y]))
            x = y
    graph = helper.make_graph(nodes, "gemm", [helper.make_tensor_value_info("a", in_type, [size, size])],
                              [helper.make_tensor_value_info("y", out_type, [size, size])], weights)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8  # read by every onnxruntime vlmedge supports
    path = folder / f"gemm-{precision}.onnx"
    onnx.save(model, str(path))
    return path, feed


def _openvino_gemm(precision: str, size: int, folder: Path) -> tuple[Path, np.ndarray]:
    """An OpenVINO IR chain of GEMM_DEPTH GEMMs and its input; int8 is the quantised pattern
    NNCF writes (FakeQuantize to u8 on each input, s8 weights converted and scaled) that the
    CPU plugin lowers to u8 x s8 GEMMs."""
    from vlmedge.runtimes.openvino import ov  # imported without its telemetry
    import openvino.opset13 as ops

    rng = np.random.default_rng(0)
    feed = np.abs(rng.standard_normal((size, size))).astype(np.float32)
    x = ops.parameter([size, size], ov.Type.f32, name="a")
    y = x
    for _ in range(GEMM_DEPTH):
        if precision == "int8":
            low, high = ops.constant(np.float32(0.0)), ops.constant(np.float32(4.0))
            w_q = ops.constant(rng.integers(-127, 128, (size, size), dtype=np.int8))
            scale = ops.constant(np.full((1, size), 0.05 / np.sqrt(size), np.float32))
            weight = ops.multiply(ops.convert(w_q, ov.Type.f32), scale)
            y = ops.matmul(ops.fake_quantize(y, low, high, low, high, 256), weight, False, False)
        else:
            weight = (rng.standard_normal((size, size)) / np.sqrt(size)).astype(np.float32)
            y = ops.matmul(y, ops.constant(weight), False, False)
    y.output(0).get_tensor().set_names({"y"})
    path = folder / f"gemm-{precision}.xml"
    ov.save_model(ov.Model([y], [x], "gemm"), str(path), compress_to_fp16=False)
    return path, feed


def _unavailable(backend: str, precision: str) -> str | None:
    """Why a precision has no peak through a backend here, or None."""
    if backend == "onnxruntime":
        if importlib.util.find_spec("onnx") is None:
            return "the onnx package builds the GEMM graph and is not installed (pip install onnx)"
        if precision == "bf16":
            return "ONNX Runtime's CPU provider has no bf16 GEMM"
    elif backend == "openvino":
        from vlmedge.runtimes.openvino import supports_precision

        if precision in ("bf16", "fp16") and not supports_precision(precision):
            return f"this CPU does not compute in {precision} (OpenVINO reports no {precision.upper()} capability)"
    elif backend == "torch":
        if precision != "fp32":
            return "the torch baseline runs fp32 only"
    else:
        return f"no peak measurement for the {backend} backend"
    return None


def _torch_gemm_seconds(size: int, threads: int) -> float:
    """The best time of a chain of GEMM_DEPTH fp32 torch.matmuls in eager mode at `threads`
    (restored after)."""
    import torch

    before = torch.get_num_threads()
    torch.set_num_threads(threads)
    try:
        generator = torch.Generator().manual_seed(0)
        a = torch.randn(size, size, generator=generator)
        weights = [torch.randn(size, size, generator=generator) / size**0.5 for _ in range(GEMM_DEPTH)]

        def chain() -> Any:
            y = a
            for w in weights:
                y = torch.matmul(y, w)
            return y

        with torch.inference_mode():
            return best_seconds(chain)
    finally:
        torch.set_num_threads(before)


def measure_gemm(backend: str, precision: str, threads: int, size: int = GEMM_SIZE) -> Peak:
    """The best GOP/s of a chain of GEMM_DEPTH size^3 GEMMs in `precision` through the
    backend's own session (torch: torch.matmul, imported only for the torch baseline's rows)."""
    from vlmedge.runtimes.base import open_session

    why = _unavailable(backend, precision)
    if why:
        return Peak(backend, precision, None, why)
    ops = 2 * GEMM_DEPTH * size**3  # what the chain does, a GEMM 2*M*N*K
    if backend == "torch":
        seconds = _torch_gemm_seconds(size, threads)
        return Peak(backend, precision, round(ops / seconds / 1e9, 1),
                    f"fp32 torch.matmul {size}^3 x {GEMM_DEPTH} chained in eager mode, best of repeated calls")
    with tempfile.TemporaryDirectory(prefix="vlmedge-peak-") as tmp:
        options: dict[str, Any] = {"threads": threads}
        if backend == "onnxruntime":
            path, feed = _onnx_gemm(precision, size, Path(tmp))
        else:
            path, feed = _openvino_gemm(precision, size, Path(tmp))
            if precision != "int8":
                options["inference_precision"] = precision
        try:
            session = open_session(path, backend=backend, **options)
            feeds = {session.inputs[0].name: feed}
            seconds = best_seconds(lambda: session.run(feeds, check=False))
        except Exception as exc:  # a kernel this build lacks: say so, measure the rest
            first = (str(exc).strip().splitlines() or [type(exc).__name__])[0][:200]
            return Peak(backend, precision, None, f"the GEMM did not run: {first}")
        ran = getattr(session, "provider", backend)
    method = {"int8": "u8 x s8 MatMulInteger" if backend == "onnxruntime" else "FakeQuantize u8 x s8 MatMul"}
    note = f"{method.get(precision, f'{precision} MatMul')} {size}^3 x {GEMM_DEPTH} chained, best of repeated calls, {ran}"
    return Peak(backend, precision, round(ops / seconds / 1e9, 1), note)


def measure_bandwidth(threads: int, megabytes: int = BANDWIDTH_MB) -> float:
    """GB/s (10^9 bytes): bytes read plus bytes written by the best numpy copy of an array
    of `megabytes` MiB, split in `threads` parts copied at once (numpy releases the GIL)."""
    n = megabytes * 2**20 // 8
    src, dst = np.ones(n), np.empty(n)
    edges = np.linspace(0, n, threads + 1, dtype=np.int64)
    parts = list(zip(edges[:-1], edges[1:]))
    with ThreadPoolExecutor(threads) as pool:
        seconds = best_seconds(lambda: list(pool.map(lambda p: np.copyto(dst[p[0]:p[1]], src[p[0]:p[1]]), parts)))
    return round(2 * src.nbytes / seconds / 1e9, 1)


def _cache_path() -> Path | None:
    """The cache file, or None when VLMEDGE_NO_CACHE turns caching off."""
    from vlmedge.user_cache import cache_enabled, cache_root

    return cache_root() / CACHE_FILE if cache_enabled() else None


def _cached(key: str) -> Any:
    path = _cache_path()
    if path is None:
        return None
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
        return data.get(key) if isinstance(data, dict) else None
    except (OSError, UnicodeDecodeError, json.JSONDecodeError):
        return None  # none yet, or unreadable: measure again and rewrite it


def _store(key: str, value: Any, warnings: list[str] | None) -> None:
    """Adds one entry to the cache file, atomically; a cache that cannot be written only
    costs measuring again next time (said in `warnings`)."""
    path = _cache_path()
    if path is None:
        return
    try:
        data = json.loads(path.read_text(encoding="utf-8"))  # another process may have added entries
    except (OSError, UnicodeDecodeError, json.JSONDecodeError):
        data = {}
    data = {**(data if isinstance(data, dict) else {}), key: value}
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_name(f".{path.name}.tmp{os.getpid()}")
        tmp.write_text(json.dumps(data, indent=2) + "\n", encoding="utf-8")
        os.replace(tmp, path)
    except OSError as exc:
        if warnings is not None:
            warnings.append(f"the peaks could not be cached in {path} ({exc.strerror or exc})")


def _sound(peaks: MachinePeaks) -> bool:
    """A cached entry whose figures are numbers (an edited or damaged file is measured again),
    and which measured every precision this backend can run: one that could not (a package
    missing then) is measured again rather than kept."""
    for peak in peaks.peaks:
        if peak.gops is None:
            if _unavailable(peaks.backend, peak.precision) is None:
                return False
        elif isinstance(peak.gops, bool) or not isinstance(peak.gops, (int, float)) or not peak.gops > 0:
            return False
    return True


def _said_if_busy(peaks: MachinePeaks, warnings: list[str] | None) -> MachinePeaks:
    """Warns when the peaks were measured on a machine busier than their thread count."""
    load = peaks.load_average
    if warnings is not None and load and load[0] > peaks.threads:
        warnings.append(f"the {peaks.backend} peaks were measured at load average {load[0]:.1f} with {peaks.threads} "
                        "threads: they understate this machine; measure them on a quiet machine with --remeasure-peak")
    return peaks


def _higher(new: Peak, earlier: dict[str, Any]) -> Peak:
    """`new`, or the cached peak of the same precision where that was higher."""
    try:
        old = next(p for p in earlier["peaks"] if p.get("precision") == new.precision)
        if isinstance(old.get("gops"), (int, float)) and old["gops"] > (new.gops or 0):
            note = str(old.get("note", ""))
            if "; measured " not in note:  # kept before: the note already says when it was measured
                note += f"; measured {earlier.get('measured', 'earlier')}, higher than now"
            return Peak(new.backend, new.precision, float(old["gops"]), note)
    except (KeyError, StopIteration, TypeError, AttributeError):
        pass  # an entry of another shape: the new figure stands
    return new


# Bandwidth measured or read by this process, per (threads, megabytes): every backend's rows
# use the same figure; a remeasure measures it again.
_bandwidth_now: dict[tuple[int, int], float] = {}


def machine_bandwidth(threads: int, remeasure: bool = False, warnings: list[str] | None = None) -> float:
    """The cached memory bandwidth at a thread count (GB/s), measured when absent or asked."""
    if not remeasure and (threads, BANDWIDTH_MB) in _bandwidth_now:
        return _bandwidth_now[(threads, BANDWIDTH_MB)]
    key = f"{cpu_signature()} | {threads} threads | numpy copy {BANDWIDTH_MB} MiB | v{CACHE_VERSION}"
    found = None if remeasure else _cached(key)
    if not isinstance(found, (int, float)) or isinstance(found, bool) or found <= 0:
        found = measure_bandwidth(threads)
        _store(key, found, warnings)
    _bandwidth_now[(threads, BANDWIDTH_MB)] = float(found)
    return float(found)


def machine_peaks(backend: str, threads: int, remeasure: bool = False, size: int | None = None,
                  warnings: list[str] | None = None, keep_higher: bool = False) -> MachinePeaks:
    """The cached peaks of a backend at a thread count, measured when absent (or asked).

    `keep_higher`: measured again, each precision keeping its cached figure where that is
    higher. A row ran above the cached peaks, so they were measured in a slower moment: on a
    shared machine the same GEMM varies by a third from one minute to the next, and the peak
    is the best this machine has done."""
    import datetime

    size = size or GEMM_SIZE
    version = backend_version(backend)
    key = cache_key(backend, version, threads, size)
    earlier = _cached(key) if keep_higher else None
    found = None if remeasure or keep_higher else _cached(key)
    if isinstance(found, dict):
        try:
            peaks = MachinePeaks(**{**found, "peaks": [Peak(**p) for p in found["peaks"]], "cached": True,
                                    "bandwidth_gbs": machine_bandwidth(threads, warnings=warnings)})
            if _sound(peaks):
                return _said_if_busy(peaks, warnings)
        except (KeyError, TypeError):
            pass  # an entry of another shape: measure again
    try:
        load = [round(x, 2) for x in os.getloadavg()]
    except (AttributeError, OSError):
        load = []
    result = MachinePeaks(
        backend=backend, backend_version=version, threads=threads, gemm_size=size,
        peaks=[measure_gemm(backend, p, threads, size) for p in PRECISIONS],
        bandwidth_gbs=machine_bandwidth(threads, remeasure, warnings),
        bandwidth_method=f"numpy copy of {BANDWIDTH_MB} MiB over {threads} threads, (read + written bytes) / best time",
        measured=datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"), load_average=load,
        cached=False)
    if isinstance(earlier, dict):
        result.peaks = [_higher(new, earlier) for new in result.peaks]
    _store(key, {k: v for k, v in asdict(result).items() if k not in ("cached", "bandwidth_gbs")}, warnings)
    return _said_if_busy(result, warnings)
