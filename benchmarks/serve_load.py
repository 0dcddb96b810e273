"""Load test of `vlmedge serve` on loopback: throughput, latency percentiles, errors and
server memory at several levels of concurrency, with dynamic batching and without.

    .venv/bin/python benchmarks/serve_load.py                  # 60 s per level: 8, 32, 128 clients
    .venv/bin/python benchmarks/serve_load.py --seconds 20 --levels 8,32
    .venv/bin/python benchmarks/serve_load.py --protocol v2-binary --levels 1,2,8   # KServe V2, binary tensors
    .venv/bin/python benchmarks/serve_load.py --engine ray --replicas 2             # through Ray Serve
    .venv/bin/python benchmarks/serve_load.py --threads 1                           # vlmedge serve --threads 1

For each server configuration (--max-batch N, then --max-batch 1 as the baseline) it starts
`vlmedge serve` in a subprocess on 127.0.0.1 at a free port, waits for /readyz, and runs
each level for --seconds: that many clients, each on its own keep-alive connection, posting
one image to /v1/models/<name>/classify as soon as its previous answer arrived (a closed
loop); with --protocol v2 (or v2-binary) the same image goes to /v2/models/<name>/infer as
a KServe V2 BYTES tensor in JSON (base64) or as Triton binary tensor data. Low levels (1, 2
clients) show what preparing each request's image in its own thread gains when batches
stay small. Every request targets 127.0.0.1 only; each level stops after --seconds or
--max-requests, whichever comes first. The clients are a small asyncio HTTP/1.1 writer of
pre-encoded requests, so that the load generator takes as little of the CPU it shares with
the server as it can.

The model is the built-in classifier: builtin:shapes-vit exported once into
benchmarks/.work/serve-load/ if the built-in model is present, else a ViT of the same
architecture (64x64 input, patch 8, width 128, 4 layers, 4 heads) with seeded random weights;
the result says which. Output: a table on stdout and benchmarks/results/serve-load-<machine>.json
(and .md).

With --engine ray the server is `vlmedge serve --engine ray --replicas N` (a local Ray and
Ray Serve's HTTP proxy on a free fixed port; --max-batch is each replica's @serve.batch
size), the levels and output are the same, RSS is that of the whole process tree (the
command, Ray's GCS and raylet, the proxy, the ingress and the replicas), the mean batch is
not measured (Ray Serve batches inside the replicas), and the result file names end in
-ray<N>.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import platform
import re
import signal
import socket
import subprocess
import sys
import threading
import time
import urllib.request
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))  # run from a checkout without installing

from vlmedge.environment import describe  # noqa: E402

WORK = ROOT / "benchmarks" / ".work" / "serve-load"
RESULTS = ROOT / "benchmarks" / "results"
SAMPLE = ROOT / "exporters" / "sample_data" / "red-circle.jpg"
HOST = "127.0.0.1"  # never anything else


# -- the model -------------------------------------------------------------------------------


def builtin_present() -> bool:
    return (ROOT / "exporters" / "builtin" / "models" / "shapes-vit" / "config.json").is_file()


def prepare_artifact() -> tuple[Path, str]:
    """builtin:shapes-vit if shipped, else a seeded ViT of its architecture; exported once."""
    import vlmedge

    if builtin_present():
        out, source, what = WORK / "shapes-vit", "builtin:shapes-vit", "builtin:shapes-vit"
    else:
        out, what = WORK / "shapes-vit-arch", "ViT of shapes-vit's architecture, seeded random weights"
        source = WORK / "shapes-vit-arch-source"
        if not (source / "config.json").is_file():
            import torch
            from transformers import ViTConfig, ViTForImageClassification, ViTImageProcessor

            torch.manual_seed(0)
            names = ["circle", "square", "triangle", "star", "cross", "diamond"]
            config = ViTConfig(image_size=64, patch_size=8, hidden_size=128, num_hidden_layers=4,
                               num_attention_heads=4, intermediate_size=512, num_labels=len(names),
                               id2label=dict(enumerate(names)), label2id={n: i for i, n in enumerate(names)})
            ViTForImageClassification(config).eval().save_pretrained(source)
            ViTImageProcessor(size={"height": 64, "width": 64}, image_mean=[0.5] * 3,
                              image_std=[0.5] * 3).save_pretrained(source)
    if not (out / "manifest.json").is_file():
        print(f"exporting {source} -> {out}", flush=True)
        vlmedge.export(str(source), out)
    return out, what


# -- the server ------------------------------------------------------------------------------


def rss_mb(pid: int) -> float:
    with open(f"/proc/{pid}/status", encoding="ascii") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024
    return float("nan")


def tree_rss_mb(pid: int) -> float:
    """The RSS of a process and all its descendants (a Ray cluster started by the command)."""
    children: dict[int, list[int]] = {}
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                stat = (entry / "stat").read_text()
            except OSError:
                continue
            ppid = int(stat.rsplit(")", 1)[1].split()[1])
            children.setdefault(ppid, []).append(int(entry.name))
    total, todo = 0.0, [pid]
    while todo:
        current = todo.pop()
        todo.extend(children.get(current, []))
        try:
            total += rss_mb(current)
        except OSError:  # gone meanwhile
            pass
    return total


def free_port() -> int:
    with socket.socket() as s:
        s.bind((HOST, 0))
        return s.getsockname()[1]


def get(url: str, timeout: float = 10) -> tuple[int, str]:
    try:
        with urllib.request.urlopen(url, timeout=timeout) as r:  # noqa: S310 - 127.0.0.1 only
            return r.status, r.read().decode()
    except urllib.error.HTTPError as e:
        return e.code, e.read().decode()


class Server:
    """`vlmedge serve` in a subprocess on 127.0.0.1:<free port> (engine "local" or "ray")."""

    def __init__(self, artifact: Path, name: str, max_batch: int, max_delay_ms: float, max_queue: int,
                 engine: str = "local", replicas: int = 1, threads: int | None = None) -> None:
        self.engine = engine
        # Ray Serve's proxy needs a fixed port: take a free one
        port = str(free_port()) if engine == "ray" else "0"
        command = [sys.executable, "-m", "vlmedge.cli", "serve", f"{name}={artifact}", "--host", HOST, "--port", port,
                   "--max-batch", str(max_batch), "--max-delay-ms", str(max_delay_ms), "--max-queue", str(max_queue)]
        if engine == "ray":
            command += ["--engine", "ray", "--replicas", str(replicas)]
        if threads:
            command += ["--threads", str(threads)]
        env = {k: v for k, v in os.environ.items() if k != "RAY_ADDRESS"}  # a local Ray, never a cluster's
        self.proc = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                                     env={**env, "PYTHONUNBUFFERED": "1"}, start_new_session=True)
        self.url = None
        deadline = time.monotonic() + (300 if engine == "ray" else 120)
        while self.url is None:
            line = self.proc.stdout.readline()
            if not line or time.monotonic() > deadline:
                self.stop()
                raise RuntimeError("the server did not start")
            match = re.match(r"serving .* (?:on|at) (http://127\.0\.0\.1:\d+)", line)
            if match:
                self.url = match.group(1)
        # keep reading what the server prints (Ray forwards its workers' logs), so that a full
        # pipe never blocks it
        threading.Thread(target=self.proc.stdout.read, daemon=True).start()
        while get(f"{self.url}/readyz")[0] != 200:
            if time.monotonic() > deadline:
                self.stop()
                raise RuntimeError("the server did not become ready")
            time.sleep(0.1)
        self.port = int(self.url.rsplit(":", 1)[1])

    def rss_mb(self) -> float:
        return tree_rss_mb(self.proc.pid) if self.engine == "ray" else rss_mb(self.proc.pid)

    def batch_stats(self, name: str) -> dict[str, float]:
        _, text = get(f"{self.url}/metrics")
        values = {}
        for key in ("vlmedge_batch_size_sum", "vlmedge_batch_size_count", "vlmedge_queue_rejected_total"):
            match = re.search(rf'^{key}{{model="{re.escape(name)}"}} (\S+)$', text, re.M)
            values[key] = float(match.group(1)) if match else 0.0
        return values

    def stop(self) -> None:
        if self.proc.poll() is None:
            # Ray's driver shuts its local cluster down on Ctrl-C (KeyboardInterrupt), not on SIGTERM
            self.proc.send_signal(signal.SIGINT if self.engine == "ray" else signal.SIGTERM)
            try:
                self.proc.wait(60)
            except subprocess.TimeoutExpired:
                os.killpg(self.proc.pid, signal.SIGKILL)
                self.proc.wait(10)


# -- the clients -----------------------------------------------------------------------------


PROTOCOLS = ("v1", "v2", "v2-binary")


def classify_request(name: str, image: bytes, protocol: str = "v1") -> bytes:
    """One pre-encoded HTTP/1.1 request classifying `image` (top 1) through `protocol`."""
    import base64
    import struct

    extra = ""
    if protocol == "v1":
        path = f"/v1/models/{name}/classify"
        body = json.dumps({"images": [base64.b64encode(image).decode()], "top_k": 1}).encode()
    elif protocol == "v2":
        path = f"/v2/models/{name}/infer"
        body = json.dumps({"inputs": [{"name": "image", "datatype": "BYTES", "shape": [1],
                                       "data": [base64.b64encode(image).decode()]}],
                           "parameters": {"top_k": 1}}).encode()
    else:  # v2-binary: the JSON header, then the BYTES element (4-byte little-endian length, bytes)
        path = f"/v2/models/{name}/infer"
        blob = struct.pack("<I", len(image)) + image
        header = json.dumps({"inputs": [{"name": "image", "datatype": "BYTES", "shape": [1],
                                         "parameters": {"binary_data_size": len(blob)}}],
                             "parameters": {"top_k": 1}}).encode()
        body = header + blob
        extra = f"Inference-Header-Content-Length: {len(header)}\r\n"
    content_type = "application/octet-stream" if protocol == "v2-binary" else "application/json"
    head = (f"POST {path} HTTP/1.1\r\nHost: {HOST}\r\nContent-Type: {content_type}\r\n{extra}"
            f"Content-Length: {len(body)}\r\n\r\n").encode()
    return head + body


async def _client(port: int, request: bytes, stop_at: float, budget: list[int], out: list) -> None:
    """One keep-alive connection, one request at a time, until the time or the count runs out."""
    reader, writer = await asyncio.open_connection(HOST, port)
    try:
        while time.perf_counter() < stop_at and budget[0] > 0:
            budget[0] -= 1
            start = time.perf_counter()
            try:
                writer.write(request)
                await writer.drain()
                status_line = await reader.readline()
                if not status_line:
                    raise ConnectionError("closed")
                length = 0
                while (line := await reader.readline()) not in (b"\r\n", b""):
                    if line.lower().startswith(b"content-length:"):
                        length = int(line.split(b":", 1)[1])
                await reader.readexactly(length)
                out.append((start, time.perf_counter() - start, int(status_line.split()[1])))
            except (ConnectionError, asyncio.IncompleteReadError):  # recorded as status 0; reconnect
                out.append((start, time.perf_counter() - start, 0))
                writer.close()
                reader, writer = await asyncio.open_connection(HOST, port)
    finally:
        writer.close()


async def run_level(port: int, request: bytes, clients: int, seconds: float, max_requests: int) -> list:
    out: list = []
    budget = [max_requests]
    stop_at = time.perf_counter() + seconds
    await asyncio.gather(*[_client(port, request, stop_at, budget, out) for _ in range(clients)])
    return out


def summarise(samples: list, seconds: float) -> dict:
    statuses: dict[str, int] = {}
    for _, _, status in samples:
        statuses[str(status)] = statuses.get(str(status), 0) + 1
    ok = np.array([latency for _, latency, status in samples if status == 200]) * 1000
    span = (max(s + l for s, l, _ in samples) - min(s for s, _, _ in samples)) if samples else seconds
    return {
        "requests": len(samples),
        "ok": int(ok.size),
        "statuses": statuses,
        "throughput_rps": round(ok.size / span, 1) if span else 0.0,
        "p50_ms": round(float(np.percentile(ok, 50)), 2) if ok.size else None,
        "p90_ms": round(float(np.percentile(ok, 90)), 2) if ok.size else None,
        "p99_ms": round(float(np.percentile(ok, 99)), 2) if ok.size else None,
    }


def markdown(result: dict) -> str:
    """The result as a Markdown table, one row per configuration and level."""
    how = {"v1": "/v1 JSON, base64", "v2": "KServe V2 JSON, base64",
           "v2-binary": "KServe V2 binary tensor data"}[result.get("protocol", "v1")]
    engine = (f"Ray Serve, {result['replicas']} replicas (RSS: the whole Ray process tree); "
              if result.get("engine") == "ray" else "")
    lines = [f"{engine}Model: {result['model']}; one {result['image']} per request ({how}), "
             f"{result['seconds_per_level']:g} s per level; {result['machine']}; load average at start "
             f"{result['load_average_at_start'][0]:.1f}, at end {result['load_average_at_end'][0]:.1f}.", "",
             "| --max-batch | clients | requests/s | p50 ms | p99 ms | mean batch | statuses | RSS MB before -> after |",
             "|---:|---:|---:|---:|---:|---:|---|---|"]
    for config in result["configs"]:
        for row in config["levels"]:
            statuses = ", ".join(f"{k}: {v}" for k, v in sorted(row["statuses"].items()))
            lines.append(f"| {config['max_batch']} | {row['clients']} | {row['throughput_rps']:.1f} | {row['p50_ms']} | "
                         f"{row['p99_ms']} | {row['mean_batch']} | {statuses} | "
                         f"{config['rss_mb_before']} -> {row['rss_mb_after']} |")
    gain = ", ".join(f"{k} clients x{v}" for k, v in result["batching_gain"].items())
    lines += ["", f"Throughput gain of batching over --max-batch {result['configs'][1]['max_batch']}: {gain}."]
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--seconds", type=float, default=60.0, help="per concurrency level")
    parser.add_argument("--levels", default="8,32,128", help="concurrent clients, comma-separated")
    parser.add_argument("--max-batch", type=int, default=16, help="the batching configuration")
    parser.add_argument("--baseline-max-batch", type=int, default=1, help="the configuration to compare with")
    parser.add_argument("--max-delay-ms", type=float, default=5.0)
    parser.add_argument("--max-queue", type=int, default=64)
    parser.add_argument("--max-requests", type=int, default=1_000_000, help="per level, a bound beside the time")
    parser.add_argument("--artifact", type=Path, help="serve this artifact instead of the built-in classifier")
    parser.add_argument("--image", type=Path, default=SAMPLE)
    parser.add_argument("--protocol", choices=PROTOCOLS, default="v1",
                        help="v1 (vlmedge's route), v2 (KServe V2 JSON) or v2-binary (Triton binary tensor data)")
    parser.add_argument("--engine", choices=("local", "ray"), default="local",
                        help="local (one process) or ray (vlmedge serve --engine ray, a local Ray Serve)")
    parser.add_argument("--replicas", type=int, default=2, help="with --engine ray: replicas of the model")
    parser.add_argument("--threads", type=int, help="vlmedge serve --threads (default: the backend's own)")
    parser.add_argument("--out", type=Path, help="JSON result (default benchmarks/results/serve-load-<machine>"
                                                 "[-<protocol>][-ray<N>].json)")
    args = parser.parse_args(argv)
    levels = [int(x) for x in args.levels.split(",") if x.strip()]

    artifact, model_desc = (args.artifact, str(args.artifact)) if args.artifact else prepare_artifact()
    name = "classifier"
    request = classify_request(name, args.image.read_bytes(), args.protocol)
    result = {"schema": "vlmedge-serve-load", "machine": describe().machine_name, "model": model_desc, "protocol": args.protocol,
              "engine": args.engine, **({"replicas": args.replicas} if args.engine == "ray" else {}),
              "threads": args.threads,
              "artifact": str(artifact), "image": args.image.name, "seconds_per_level": args.seconds,
              "levels": levels, "load_average_at_start": os.getloadavg(), "started": time.strftime("%Y-%m-%d %H:%M:%S"),
              "python": platform.python_version(), "configs": []}
    for max_batch in (args.max_batch, args.baseline_max_batch):
        server = Server(artifact, name, max_batch, args.max_delay_ms, args.max_queue, args.engine, args.replicas,
                        args.threads)
        try:
            asyncio.run(run_level(server.port, request, 4, 2.0, 10_000))  # warm-up, not recorded
            config = {"max_batch": max_batch, "max_delay_ms": args.max_delay_ms, "max_queue": args.max_queue,
                      "rss_mb_before": round(server.rss_mb(), 1), "levels": []}
            for clients in levels:
                before = server.batch_stats(name)
                samples = asyncio.run(run_level(server.port, request, clients, args.seconds, args.max_requests))
                after = server.batch_stats(name)
                batches = after["vlmedge_batch_size_count"] - before["vlmedge_batch_size_count"]
                row = {"clients": clients, **summarise(samples, args.seconds),
                       "mean_batch": round((after["vlmedge_batch_size_sum"] - before["vlmedge_batch_size_sum"])
                                           / batches, 2) if batches else None,
                       "rss_mb_after": round(server.rss_mb(), 1), "load_average": os.getloadavg()[0]}
                config["levels"].append(row)
                print(f"max_batch={max_batch:<3} clients={clients:<4} {row['throughput_rps']:>8.1f} req/s  "
                      f"p50 {row['p50_ms']} ms  p99 {row['p99_ms']} ms  mean batch {row['mean_batch']}  "
                      f"statuses {row['statuses']}  RSS {row['rss_mb_after']} MB", flush=True)
            config["rss_mb_after"] = round(server.rss_mb(), 1)
        finally:
            server.stop()
        result["configs"].append(config)
    batched, base = result["configs"]
    result["batching_gain"] = {str(b["clients"]): round(b["throughput_rps"] / a["throughput_rps"], 2)
                               for b, a in zip(batched["levels"], base["levels"]) if a["throughput_rps"]}
    result["load_average_at_end"] = os.getloadavg()
    suffix = ("" if args.protocol == "v1" else f"-{args.protocol}") + (f"-ray{args.replicas}" if args.engine == "ray"
                                                                        else "")
    out = args.out or RESULTS / f"serve-load-{result['machine']}{suffix}.json"
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(result, indent=2) + "\n")
    out.with_suffix(".md").write_text(markdown(result))
    print(markdown(result))
    print(f"batching gain (throughput, max_batch {args.max_batch} / {args.baseline_max_batch}): "
          f"{result['batching_gain']}\nwrote {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
