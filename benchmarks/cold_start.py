"""Cold start and load memory: how long `vlmedge.load` + the first call take with an empty
compiled-model cache and with a warm one, and the peak memory of a load against the size of
the model file, per backend and precision.

Every measurement runs in a fresh Python process (imports, allocator and backend state do not
carry over; the compiled-model cache on disk and the OS page cache do):

    cold     an empty VLMEDGE_CACHE_DIR: the backend compiles and saves its compiled model
    warm     the same folder again: the backend loads what the cold run saved
    nocache  cache=False, for reference: what every load cost before the cache existed

Peak RSS is the child's peak resident set over load + first call (VmHWM, restarted once numpy,
vlmedge and the backend are imported; ru_maxrss where /proc is missing, which also counts
what the parent held) minus its RSS at that point. Goals: warm >= 3x faster than cold; peak RSS <= 1.5x
the model file size (the model file plus its weights file) on the cold and warm loads, the default
(cache=False is measured for reference).

Several processes serving one model (Ray Serve replicas, workers) each load it: --processes N
(default 2) holds warm loads after their first call in 1, then N processes at once, and
reports what each process after the first adds to the machine's memory (the growth of their
summed proportional set size, in which a page mapped by k processes counts 1/k in each;
Linux's smaps_rollup) against the model file: weights a backend maps from its cache are
shared, weights it copies to its heap are not.

Peak RSS counts the clean pages of the mapped model file, which the kernel drops under memory
pressure; --memory-cap RATIO asks the question a small device asks instead: does a cold load
+ first call still run when the process may hold only RATIO x the model file more than after
its imports? One more child per row runs in a memory cgroup with that limit (root and the
cgroup memory controller, v1 or v2, are needed; the page cache is dropped first so the model's
pages are read, and charged, inside the cap). It either answers, or is killed by the cap, or
thrashes past --cap-timeout seconds (counted as not running).

The model is transformers.ViTForImageClassification(ViTConfig()) with torch.manual_seed(0),
as benchmarks/quantization.py builds it (nothing downloaded); --model small is a 4-layer,
192-wide ViT for a quick smoke run.

    .venv/bin/python benchmarks/cold_start.py                       # ViT-B/16, fp32, both backends
    .venv/bin/python benchmarks/cold_start.py --precision fp32,int8 --rounds 3 --work /tmp/cold
    .venv/bin/python benchmarks/cold_start.py --model small --rounds 1   # smoke run
    sudo .venv/bin/python benchmarks/cold_start.py --precision fp32,int8 --memory-cap 1.5

Writes benchmarks/results/cold-start-<machine>.json and .md (cold-start-<machine>-<model>.* for
the smaller models; -<backend> appended when --backends names one).
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parent))  # run from a checkout without installing
sys.path.insert(0, str(HERE))

from quantization import build_model, machine_name, random_weight_gates  # noqa: E402

BACKEND_PACKAGES = {"onnxruntime": "onnxruntime", "openvino": "openvino"}
MODES = ("cold", "warm", "nocache")


# --model: ViTConfig sizes of the smaller ViTs at 224 (vit-b16 is ViTConfig() itself)
SIZES = {"small": dict(hidden_size=192, num_hidden_layers=4, num_attention_heads=3, intermediate_size=768),
         "vit-s16": dict(hidden_size=384, num_hidden_layers=12, num_attention_heads=6, intermediate_size=1536)}


def build_small_model(name: str, seed: int = 0):
    """A ViT of the real class at 224 of one of SIZES, seeded: "small" (~2M parameters) for
    smoke runs, "vit-s16" (~22M)."""
    import torch
    from transformers import ViTConfig, ViTForImageClassification

    torch.manual_seed(seed)
    names = {i: f"class_{i}" for i in range(1000)}
    config = ViTConfig(**SIZES[name], attn_implementation="eager", num_labels=1000, id2label=names,
                       label2id={v: k for k, v in names.items()})
    return ViTForImageClassification(config).eval()


def export_artifact(folder: Path, model_name: str, precisions: list[str]) -> None:
    import vlmedge
    from vlmedge.exporters.sources.hf.classifier import LogitsOnly
    from vlmedge.preprocess.image import ImagePreprocessSpec

    model = build_model() if model_name == "vit-b16" else build_small_model(model_name)
    preprocess = ImagePreprocessSpec(size={"height": 224, "width": 224}, resample="bilinear")
    vlmedge.export(LogitsOnly(model), folder, to=["onnx", "openvino"], precision=precisions, preprocess=preprocess,
                   labels=[model.config.id2label[i] for i in range(model.config.num_labels)],
                   name=f"{model_name} (random weights, seed 0)", gates=random_weight_gates(), progress=print)


def child(artifact: str, backend: str, precision: str, cache: bool, cgroup: str = "", hold: bool = False) -> None:
    """One load + first call, in this fresh process; prints one JSON line. With `cgroup`, the
    process joins that memory cgroup once imported, so only the load and call are charged;
    with `hold`, it keeps the model loaded until its standard input closes."""
    import importlib

    import numpy as np

    import vlmedge

    importlib.import_module(BACKEND_PACKAGES[backend])
    import vlmedge.runtimes.select  # noqa: F401  (imports, not loading, are left out)
    import vlmedge.tasks  # noqa: F401

    if backend == "openvino":  # device discovery loads the CPU plugin's library: an import, in effect
        from vlmedge.runtimes.openvino import core

        core().available_devices
    from vlmedge.bench.timing import Memory  # bench's own peak-RSS probe (VmHWM reset after imports)

    if cgroup:
        Path(cgroup, "cgroup.procs").write_text(str(os.getpid()))
    memory = Memory()
    baseline = memory.start()
    image = np.random.default_rng(0).integers(0, 256, (224, 224, 3), dtype=np.uint8)
    t0 = time.perf_counter()
    classifier = vlmedge.load(artifact, backend=backend, precision=precision, cache=cache)
    t1 = time.perf_counter()
    classifier.classify([image], top_k=1)
    t2 = time.perf_counter()
    peak_increase = memory.increase(baseline) * 1024**2
    statuses = sorted({s.cache_status for s in classifier.model.sessions.values()})
    print(json.dumps({"load_s": t1 - t0, "first_call_s": t2 - t1, "total_s": t2 - t0,
                      "peak_rss_delta": peak_increase, "rss_after_imports": baseline.rss_mb * 1024**2,
                      # what stays resident and cannot be dropped: the mapped files' clean pages in RSS
                      # can be evicted under memory pressure, anonymous memory cannot
                      "anon_delta_after": (memory.anonymous_increase(baseline) or 0.0) * 1024**2,
                      "cache_status": ",".join(statuses), "provider": classifier.model.provider}), flush=True)
    if hold:
        sys.stdin.read()


def child_command(artifact: Path, backend: str, precision: str, cache_dir: Path, cache: bool,
                  cgroup: Path | None = None, hold: bool = False) -> tuple[list[str], dict[str, str]]:
    env = {**os.environ, "VLMEDGE_CACHE_DIR": str(cache_dir)}
    env.pop("VLMEDGE_NO_CACHE", None)
    return [sys.executable, __file__, "--child", str(artifact), backend, precision, str(int(cache)),
            str(cgroup or ""), str(int(hold))], env


def run_child(artifact: Path, backend: str, precision: str, cache_dir: Path, cache: bool) -> dict[str, Any]:
    command, env = child_command(artifact, backend, precision, cache_dir, cache)
    done = subprocess.run(command, capture_output=True, text=True, env=env, timeout=1800)
    if done.returncode != 0:
        raise SystemExit(f"child {backend} {precision} failed:\n{done.stderr[-3000:]}")
    return json.loads(done.stdout.strip().splitlines()[-1])


class MemoryCgroup:
    """A memory cgroup of this machine's (v2, else v1) with a byte limit, removed on exit."""

    def __init__(self, limit: int) -> None:
        v2_controllers = Path("/sys/fs/cgroup/cgroup.controllers")
        if v2_controllers.is_file() and "memory" in v2_controllers.read_text().split():
            self.path, limit_file = Path("/sys/fs/cgroup/vlmedge-memory-cap"), "memory.max"
        elif Path("/sys/fs/cgroup/memory").is_dir():
            self.path, limit_file = Path("/sys/fs/cgroup/memory/vlmedge-memory-cap"), "memory.limit_in_bytes"
        else:
            raise SystemExit("--memory-cap needs the cgroup memory controller (v1 or v2), which this machine lacks.")
        try:
            self.path.mkdir(exist_ok=True)
            (self.path / limit_file).write_text(str(limit))
            Path("/proc/sys/vm/drop_caches").write_text("1")  # the model's pages are read, and charged, in the cap
        except PermissionError:
            raise SystemExit("--memory-cap needs root (it makes a memory cgroup and drops the page cache).") from None

    def __enter__(self) -> MemoryCgroup:
        return self

    def __exit__(self, *exc: object) -> None:
        self.path.rmdir()


def capped_run(artifact: Path, backend: str, precision: str, size: int, ratio: float, timeout: float,
               scratch: Path) -> dict[str, Any]:
    """A cold load + first call with at most ratio x `size` bytes more than after the imports."""
    cache_dir = scratch / f"cache-capped-{backend}-{precision}"  # empty: the strictest load, a cold one
    os.sync()
    with MemoryCgroup(int(ratio * size)) as cgroup:
        command, env = child_command(artifact, backend, precision, cache_dir, True, cgroup.path)
        try:
            done = subprocess.run(command, capture_output=True, text=True, env=env, timeout=timeout)
        except subprocess.TimeoutExpired:  # run's timeout kills the child before the cgroup goes
            return {"ratio": ratio, "runs": False, "why": f"thrashed past {timeout:.0f} s"}
    if done.returncode == 0:
        return {"ratio": ratio, "runs": True, "total_s": json.loads(done.stdout.strip().splitlines()[-1])["total_s"]}
    killed = done.returncode == -9
    if not killed:
        raise SystemExit(f"capped child {backend} {precision} failed:\n{done.stderr[-3000:]}")
    return {"ratio": ratio, "runs": False, "why": "killed by the cap"}


def proportional_set_mb(pid: int) -> float:
    """A process's proportional set size (Linux's /proc/PID/smaps_rollup), MB."""
    for line in Path(f"/proc/{pid}/smaps_rollup").read_text().splitlines():
        if line.startswith("Pss:"):
            return int(line.split()[1]) / 1024
    raise SystemExit(f"no Pss in /proc/{pid}/smaps_rollup")


def held_memory_mb(artifact: Path, backend: str, precision: str, cache_dir: Path, processes: int) -> float:
    """The summed proportional set size of `processes` warm loads held at once after their first call."""
    command, env = child_command(artifact, backend, precision, cache_dir, True, hold=True)
    children = [subprocess.Popen(command, stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True, env=env)
                for _ in range(processes)]
    try:
        for c in children:
            if not c.stdout.readline().startswith("{"):
                raise SystemExit(f"held child {backend} {precision} failed (exit {c.wait()})")
        return sum(proportional_set_mb(c.pid) for c in children)
    finally:
        for c in children:
            c.stdin.close()
            c.wait(timeout=120)


def shared_run(artifact: Path, backend: str, precision: str, cache_dir: Path, processes: int) -> dict[str, Any]:
    """What each warm process after the first adds to the machine's memory, held in 1 and then
    in `processes` processes at once (the cache entry is warm already)."""
    one = held_memory_mb(artifact, backend, precision, cache_dir, 1)
    many = held_memory_mb(artifact, backend, precision, cache_dir, processes)
    return {"processes": processes, "pss_one_mb": one, "pss_many_mb": many,
            "per_extra_process_mb": (many - one) / (processes - 1)}


def model_bytes(artifact: Path, backend: str, precision: str) -> int:
    from vlmedge.artifact import Artifact
    from vlmedge.runtimes.base import backend_named

    art = Artifact.open(artifact, verify=False)
    total = 0
    for entry in art.model_entries(target=backend_named(backend).target, precision=precision):
        stem = entry["path"].rsplit(".", 1)[0] + "."
        total += sum(e["size"] for e in art.files if e["path"] == entry["path"]
                     or (e.get("role") == "weights" and e["path"].startswith(stem)))
    return total


def measure(artifact: Path, backend: str, precision: str, rounds: int, scratch: Path,
            processes: int) -> dict[str, Any]:
    runs: dict[str, list[dict[str, Any]]] = {m: [] for m in MODES}
    for r in range(rounds):
        cache_dir = scratch / f"cache-{backend}-{precision}-{r}"  # empty: a cold start
        runs["cold"].append(run_child(artifact, backend, precision, cache_dir, True))
        runs["warm"].append(run_child(artifact, backend, precision, cache_dir, True))
        runs["nocache"].append(run_child(artifact, backend, precision, cache_dir, False))
    size = model_bytes(artifact, backend, precision)
    row: dict[str, Any] = {"backend": backend, "precision": precision, "model_bytes": size,
                           "provider": runs["cold"][0]["provider"]}
    for mode, found in runs.items():
        row[mode] = {key: statistics.median(r[key] for r in found)
                     for key in ("load_s", "first_call_s", "total_s", "peak_rss_delta", "anon_delta_after")}
        row[mode]["cache_status"] = sorted({r["cache_status"] for r in found})
        row[mode]["rss_ratio"] = row[mode]["peak_rss_delta"] / size
        row[mode]["anon_ratio"] = row[mode]["anon_delta_after"] / size
    if processes > 1:
        row["shared"] = shared_run(artifact, backend, precision, scratch / f"cache-{backend}-{precision}-0", processes)
        row["shared"]["per_extra_process_ratio"] = row["shared"]["per_extra_process_mb"] * 1024**2 / size
    row["warm_speedup"] = row["cold"]["total_s"] / row["warm"]["total_s"]
    row["warm_vs_nocache_speedup"] = row["nocache"]["total_s"] / row["warm"]["total_s"]
    row["goals"] = goals(row)
    return row


def goals(row: dict[str, Any]) -> dict[str, bool]:
    """The issue's goals for one row. Memory is judged on the loads users get by default,
    cold and warm (the cache is on unless turned off); `cache=False` is reported beside them."""
    return {"warm_3x_faster": row["warm_speedup"] >= 3.0,
            "rss_within_1.5x": all(row[m]["rss_ratio"] <= 1.5 for m in ("cold", "warm"))}


def markdown(result: dict[str, Any]) -> str:
    lines = [f"# Cold start: {result['model']} on {result['machine']}", "",
             f"Load average {result['load_average_start']:.2f} at start, {result['load_average_end']:.2f} at end; "
             f"{result['rounds']} round(s), medians. A cold load includes the sha256 of the files it reads: the "
             "model file and weights file it opens and the artifact's small files (hashing every file of the "
             f"artifact takes {result['artifact_verify_s']:.2f}s here); a warm one finds them in the verified-file "
             "memo of the same cache folder. Times are load + first call (batch 1) in a fresh process; "
             "RSS is the peak over that, less the RSS after imports, against the model file size; anonymous "
             "is the anonymous memory (RssAnon) held after the first call, less that after imports: RSS less "
             "the clean pages of mapped files, which the kernel can drop under memory pressure. The memory "
             "goal is judged on the cold and warm loads (the cache is on by default); no cache is for reference."]
    capped = [row["memory_cap"] for row in result["rows"] if row.get("memory_cap")]
    shared = [row["shared"] for row in result["rows"] if row.get("shared")]
    if shared:
        lines[-1] += (f" Each extra process: warm loads held after their first call in 1, then {shared[0]['processes']} "
                      "processes at once; the growth of their summed proportional set size (a page mapped by k "
                      "processes counts 1/k in each) per process after the first, against the model file.")
    if capped:
        lines[-1] += (f" Under a {capped[0]['ratio']}x cap: a cold load + first call in a memory cgroup limited to "
                      f"{capped[0]['ratio']}x the model file (charged from after the imports, page cache dropped "
                      "first): the time, or why it did not run.")
    lines += ["", "| backend | precision | model MB | cold s | warm s | no cache s | warm speedup | "
              "RSS cold | RSS warm | RSS no cache | anonymous after, warm |"
              + (" each extra process |" if shared else "")
              + (f" under a {capped[0]['ratio']}x cap |" if capped else "") + " goals |",
              "|---|---|---|---|---|---|---|---|---|---|---|" + ("---|" if shared else "") + ("---|" if capped else "")
              + "---|"]
    for row in result["rows"]:
        goals = ", ".join(f"{k} {'yes' if v else 'NO'}" for k, v in row["goals"].items())
        cap = row.get("memory_cap")
        cap_cell = (f" {'runs, %.2f s' % cap['total_s'] if cap['runs'] else 'NO: ' + cap['why']} |" if cap else "")
        shared_cell = ((f" {row['shared']['per_extra_process_ratio']:.2f}x |" if row.get("shared") else " |")
                       if shared else "")
        lines.append(f"| {row['backend']} | {row['precision']} | {row['model_bytes'] / 1e6:.1f} | "
                     f"{row['cold']['total_s']:.2f} | {row['warm']['total_s']:.2f} | {row['nocache']['total_s']:.2f} | "
                     f"{row['warm_speedup']:.1f}x | {row['cold']['rss_ratio']:.2f}x | {row['warm']['rss_ratio']:.2f}x | "
                     f"{row['nocache']['rss_ratio']:.2f}x | {row['warm']['anon_ratio']:.2f}x |{shared_cell}{cap_cell} {goals} |")
    return "\n".join(lines) + "\n"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--model", choices=["vit-b16", *SIZES], default="vit-b16")
    parser.add_argument("--precision", default="fp32", help="comma-separated: fp32,int8")
    parser.add_argument("--backends", default="onnxruntime,openvino")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--work", type=Path, default=None, help="keep (and reuse) the exported artifact here")
    parser.add_argument("--results", type=Path, default=HERE / "results")
    parser.add_argument("--memory-cap", type=float, default=None, metavar="RATIO",
                        help="also run a cold load + first call capped at RATIO x the model file (root; see above)")
    parser.add_argument("--cap-timeout", type=float, default=120.0,
                        help="seconds after which a capped run counts as thrashing (default 120)")
    parser.add_argument("--processes", type=int, default=2,
                        help="also hold warm loads in 1, then N processes at once (Linux; see above; 0: skip)")
    parser.add_argument("--child", nargs=6, metavar=("ARTIFACT", "BACKEND", "PRECISION", "CACHE", "CGROUP", "HOLD"),
                        help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        artifact, backend, precision, cache, cgroup, hold = args.child
        return child(artifact, backend, precision, cache == "1", cgroup, hold == "1")

    precisions = args.precision.split(",")
    load_start = os.getloadavg()[0]
    if load_start > 1.0:
        print(f"warning: load average {load_start:.1f}: other work shares these cores; figures will be inflated")
    with tempfile.TemporaryDirectory(prefix="vlmedge-cold-") as scratch:
        work = args.work or Path(scratch)
        artifact = work / f"{args.model}-{'-'.join(precisions)}"
        if not (artifact / "manifest.json").is_file():
            export_artifact(artifact, args.model, precisions)
        from vlmedge.artifact import Artifact

        t0 = time.perf_counter()
        Artifact.open(artifact, cache=False)  # the sha256 of every file, of which a cold load hashes its own
        verify_s = time.perf_counter() - t0
        print(f"the sha256 of every file of the artifact: {verify_s:.2f}s (a cold load hashes the files it reads; "
              "warm loads use the memo)")
        rows = []
        for backend in args.backends.split(","):
            for precision in precisions:
                row = measure(artifact, backend, precision, args.rounds, Path(scratch), args.processes)
                if args.memory_cap:
                    row["memory_cap"] = capped_run(artifact, backend, precision, row["model_bytes"], args.memory_cap,
                                                   args.cap_timeout, Path(scratch))
                    print(f"{backend:11s} {precision:5s} under a {args.memory_cap}x cap: {row['memory_cap']}", flush=True)
                rows.append(row)
                print(f"{backend:11s} {precision:5s} {row['model_bytes'] / 1e6:7.1f} MB  "
                      f"cold {row['cold']['total_s']:.2f}s ({'/'.join(row['cold']['cache_status'])})  "
                      f"warm {row['warm']['total_s']:.2f}s ({'/'.join(row['warm']['cache_status'])})  "
                      f"no cache {row['nocache']['total_s']:.2f}s  -> warm {row['warm_speedup']:.1f}x faster; "
                      f"peak RSS cold {row['cold']['rss_ratio']:.2f}x, warm {row['warm']['rss_ratio']:.2f}x, "
                      f"no cache {row['nocache']['rss_ratio']:.2f}x the file; anonymous after, warm "
                      f"{row['warm']['anon_ratio']:.2f}x"
                      + (f"; each extra warm process {row['shared']['per_extra_process_mb']:.0f} MB "
                         f"({row['shared']['per_extra_process_ratio']:.2f}x)" if row.get("shared") else ""), flush=True)
    result = {"model": args.model, "machine": machine_name(), "rounds": args.rounds,
              "artifact_verify_s": verify_s, "load_average_start": load_start, "load_average_end": os.getloadavg()[0],
              "created": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()), "rows": rows}
    print(f"load average: {load_start:.2f} at start, {result['load_average_end']:.2f} at end")
    backends = args.backends.split(",")
    name = (f"cold-start-{result['machine']}" + ("" if args.model == "vit-b16" else f"-{args.model}")
            + (f"-{backends[0]}" if len(backends) == 1 else ""))  # a one-backend run keeps the others' file
    args.results.mkdir(parents=True, exist_ok=True)
    (args.results / f"{name}.json").write_text(json.dumps(result, indent=2) + "\n")
    (args.results / f"{name}.md").write_text(markdown(result))
    print(f"wrote {args.results / name}.json and .md")


if __name__ == "__main__":
    main()
