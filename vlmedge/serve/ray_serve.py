"""`vlmedge serve --engine ray`: the same served models as a Ray Serve application.

    Ray Serve HTTP proxy (every node) -> Ingress deployment: the same Starlette app and routes
        (/v1, /v2, /v1/embeddings, /docs, /metrics); parses and checks requests, and decodes and
        preprocesses their files, as the single-process server does
    -> one ModelReplica deployment per artifact, num_replicas=N: Ray Serve's own @serve.batch
       gathers the jobs reaching a replica, which runs them grouped by batch key

From Python:

    from ray import serve
    from vlmedge.serve.ray_serve import build
    serve.run(build(["out/vit", "clip=out/clip"], replicas=2), route_prefix="/")

Ray Serve queues per deployment (max_queued_requests = --max-queue): a full queue answers
503 with Retry-After. A job whose replica dies under it (killed, out of memory, node lost)
runs once more on another replica, since a model call has no side effects; if that one dies
too the request is answered 503 with Retry-After. Ray Serve's controller replaces the dead
replica. The ingress loads each artifact too (for its preprocessing and metadata); the
model calls run in the replicas. Needs the "ray" extra (ray[serve]).
"""

from __future__ import annotations

import asyncio
import time
from typing import Any, Hashable

from ray import serve

from vlmedge.errors import InputError, UsageError
from vlmedge.serve.batcher import Timing
from vlmedge.serve.config import REPLICA_CPUS, BatchConfig, Limits
from vlmedge.serve.problems import Problem, retry_after


class ModelReplica:
    """One artifact's model in one Ray Serve replica."""

    def __init__(self, name: str, path: str, backend: str, precision: str | None, device: str,
                 batch: BatchConfig, session_options: dict[str, Any] | None = None) -> None:
        from vlmedge.serve.models import serve_pipeline
        from vlmedge.serve.protocols.graph import batch_runner
        from vlmedge.tasks import load

        self.served = serve_pipeline(name, load(path, backend=backend, precision=precision, device=device,
                                                **(session_options or {})), batch.max_batch)
        self._runner = batch_runner(self.served)
        self.run_batch.set_max_batch_size(batch.max_batch)
        self.run_batch.set_batch_wait_timeout_s(batch.max_delay_ms / 1000)

    async def warm_up(self) -> None:
        await asyncio.to_thread(self.served.warm_up)

    async def run(self, key: Hashable, inputs: int, payload: Any) -> tuple[bool, Any, int, int, float]:
        return await self.run_batch(key, inputs, payload)

    @serve.batch(max_batch_size=16, batch_wait_timeout_s=0.005)
    async def run_batch(self, keys: list[Hashable], inputs: list[int], payloads: list[Any]) -> list[tuple]:
        """The jobs Ray Serve gathered, one model call per batch key (in a thread, so the
        replica keeps accepting requests); a failing call is retried per job, so one bad
        input fails only its own request."""
        return await asyncio.to_thread(self._run_groups, keys, inputs, payloads)

    def _run_groups(self, keys: list[Hashable], inputs: list[int], payloads: list[Any]) -> list[tuple]:
        out: list[Any] = [None] * len(keys)
        for key in dict.fromkeys(keys):
            rows = [i for i, k in enumerate(keys) if k == key]
            clock = time.perf_counter()
            try:
                results = [(True, r) for r in self._runner(key, [payloads[i] for i in rows])]
            except Exception:  # noqa: BLE001 - isolated below, per request
                results = []
                for i in rows:
                    try:
                        results.append((True, self._runner(key, [payloads[i]])[0]))
                    except Exception as exc:  # noqa: BLE001 - handed to that request
                        results.append((False, exc))
            seconds = time.perf_counter() - clock
            total = sum(inputs[i] for i in rows)
            for i, (ok, value) in zip(rows, results):
                out[i] = (ok, value, total, len(rows), seconds)
        return out


# times a job is sent again after its replica died under it
REPLICA_RETRIES = 1


class RemoteBatcher:
    """What the ingress's routes submit jobs to: the model's Ray Serve deployment."""

    def __init__(self, name: str, handle: Any, metrics: Any = None) -> None:
        self.name = name
        self.handle = handle
        self.metrics = metrics
        self.depth = 0

    def start(self) -> None:
        pass

    def retry_after_s(self) -> float:
        return 1.0  # the replicas' queues are Ray Serve's

    async def stop(self) -> None:
        pass

    def call(self, fn: Any) -> Any:
        """Warm-up: one replica runs its warm-up (the others warm on their first batch)."""
        return asyncio.ensure_future(self.handle.warm_up.remote())

    async def submit(self, key: Hashable, inputs: int, payload: Any, timeout_s: float) -> tuple[Any, Timing]:
        from ray.exceptions import RayActorError
        from ray.serve.exceptions import BackPressureError

        started = time.perf_counter()
        for attempt in range(REPLICA_RETRIES + 1):
            left = max(0.001, timeout_s - (time.perf_counter() - started))
            try:
                ok, value, batch_inputs, batch_requests, seconds = await asyncio.wait_for(
                    self.handle.run.remote(key, inputs, payload), left)
                break
            except BackPressureError:
                raise Problem(503, "queue_full", f"Model '{self.name}' has too many requests waiting (--max-queue); "
                                                 "retry after the Retry-After seconds.", retry_after(1)) from None
            except (asyncio.TimeoutError, TimeoutError):
                raise Problem(408, "timeout", f"Model '{self.name}' did not finish this request within "
                                              f"{timeout_s:.3g} s; send fewer or smaller inputs, or allow a longer "
                                              "timeout_ms.") from None
            except RayActorError:  # ActorDiedError, ActorUnavailableError: the replica is gone
                retry = attempt < REPLICA_RETRIES
                if self.metrics is not None:
                    self.metrics.replica_failures.labels(self.name, "retried" if retry else "refused").inc()
                if not retry:
                    raise Problem(503, "replica_unavailable", f"The replicas of model '{self.name}' running this "
                                                              "request stopped before answering; retry after the "
                                                              "Retry-After seconds.", retry_after(1)) from None
        if not ok:
            raise value
        waited = max(0.0, time.perf_counter() - started - seconds)
        return value, Timing(waited, seconds, batch_inputs, batch_requests)


class Ingress:
    """The HTTP entry: the single-process server's app, with remote batchers."""

    def __init__(self, handles: dict[str, Any], paths: dict[str, str], backend: str, precision: str | None,
                 device: str, batch: BatchConfig, limits: Limits, session_options: dict[str, Any] | None = None) -> None:
        from vlmedge.serve.app import create_app
        from vlmedge.tasks import load

        pipelines = {name: load(path, backend=backend, precision=precision, device=device, **(session_options or {}))
                     for name, path in paths.items()}
        self._app = create_app(pipelines, batch, limits, batchers=lambda name, _: RemoteBatcher(name, handles[name]))
        state = self._app.state.vlmedge
        for batcher in state.batchers.values():
            batcher.metrics = state.metrics

    def __serve_build_asgi_app__(self) -> Any:
        return self._app

    async def drain(self, grace_s: float) -> int:
        """The server's shutdown (SIGTERM): 503 to new requests, grace_s for those in flight
        (the model replicas still running), then 503 to the rest; how many were cut short."""
        return await self._app.state.vlmedge.drain(grace_s)


def _check_cluster_cpus(need: float, what: str) -> None:
    """Replicas the cluster has no CPUs for would wait for them forever, /readyz answering 503."""
    import ray

    have = ray.cluster_resources().get("CPU", 0) if ray.is_initialized() else None
    if have is not None and have < need:
        raise InputError(f"{what} need {need:g} CPUs, but the Ray cluster has {have:g}; lower --replicas or --replica-cpus, or add nodes.")


def build(artifacts: list[str], replicas: int = 1, backend: str = "auto", precision: str | None = None,
          device: str = "cpu", batch: BatchConfig | None = None, limits: Limits | None = None,
          replica_cpus: float = REPLICA_CPUS, session_options: dict[str, Any] | None = None) -> Any:
    """The Ray Serve application (serve.run it): an ingress and one deployment per artifact
    ("name=path" names one), each with `replicas` replicas of `replica_cpus` CPUs;
    session_options: the backend's (vlmedge.load's **options), e.g. {"threads": 2}."""
    from vlmedge.artifact import Artifact
    from vlmedge.runtimes.select import check_load_options
    from vlmedge.serve.app import named_artifacts

    if isinstance(replicas, bool) or not isinstance(replicas, int) or replicas < 1:
        raise UsageError(f"replicas must be a whole number of at least 1, not {replicas!r}.")
    batch = batch or BatchConfig()
    paths = {name: str(path) for name, path in named_artifacts(artifacts).items()}
    for path in paths.values():  # before any replica starts: each would fail on its own
        check_load_options(Artifact.open(path, verify=False), backend, device, session_options or {})
    _check_cluster_cpus(len(paths) * replicas * replica_cpus, f"{len(paths)} model(s) x {replicas} replica(s) of "
                                                               f"{replica_cpus:g} CPU(s)")
    handles = {}
    for name, path in paths.items():
        deployment = serve.deployment(ModelReplica, name=f"model-{name}", num_replicas=replicas,
                                      max_ongoing_requests=max(2 * batch.max_batch, 8),
                                      max_queued_requests=batch.max_queue,
                                      ray_actor_options={"num_cpus": replica_cpus})
        handles[name] = deployment.bind(name, path, backend, precision, device, batch, session_options)
    ingress = serve.deployment(serve.ingress()(Ingress), name="ingress", ray_actor_options={"num_cpus": 0},
                               max_ongoing_requests=max(4 * batch.max_queue, 64))
    return ingress.bind(handles, paths, backend, precision, device, batch, limits or Limits(), session_options)
