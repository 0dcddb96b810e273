"""The `vlmedge serve` command (typer only at import; the server's packages load when it runs)."""

from __future__ import annotations

import errno
import json
import socket
import time
from typing import Any, Optional

import typer

from vlmedge import choices
from vlmedge.environment import distribution_of
from vlmedge.errors import BackendUnavailableError, UsageError, first_line
from vlmedge.serve.config import REPLICA_CPUS, BatchConfig, Limits
from vlmedge.serve.problems import Problem
from vlmedge.signals import sigterm_as_interrupt
from vlmedge.tables import stdout_written

RAY_APP = "vlmedge"  # the Ray Serve application's name
# Fewer open files than this, each connection being one, and a burst of clients meets resets.
LOW_OPEN_FILES = 256


def _require_extra() -> None:
    missing = []
    for module in ("starlette", "anyio", "uvicorn", "multipart", "prometheus_client"):
        try:
            __import__(module)
        except ImportError:
            missing.append(module)
    if missing:
        raise BackendUnavailableError(f"`vlmedge serve` needs {', '.join(map(distribution_of, missing))}; install the "
                                      "'serve' extra: pip install 'vlmedge[serve]'.")


# The most bytes a request's head (its request line and headers) may take: uvicorn's httptools
# parser has no limit, and builds a long header in time that grows with its square (one of 60 MB
# stalled every client 2.6 s); nginx takes 32 KB by default.
MAX_HEAD_BYTES = 1 << 20
_HEAD_TOO_LARGE = json.dumps(Problem(431, "head_too_large", "The request line and headers take more than 1 MiB; "
                                                          "send large values in the body.").body()).encode()
HEAD_TOO_LARGE = (b"HTTP/1.1 431 Request Header Fields Too Large\r\ncontent-type: application/json\r\n"
                  b"connection: close\r\ncontent-length: %d\r\n\r\n%s" % (len(_HEAD_TOO_LARGE), _HEAD_TOO_LARGE))


def protocol_with_head_timeout(timeout_s: float) -> type:
    """uvicorn's HTTP protocol (httptools where installed, else h11), closing a connection whose
    request has not sent its head within `timeout_s` (--timeout-s, the time a request has from
    its arrival) of the connection, or of the answer before it, answering 431 to a head past
    MAX_HEAD_BYTES, and closing a connection whose request was answered before its body was all
    received: uvicorn times out only idle keep-alive connections, and data cancels that, so a
    client that sent nothing, or its headers a byte at a time (first, or after an answer on a
    kept-alive connection), or the rest of a body already answered, held a connection (an open
    file) for ever, and enough of them refused everyone else."""
    from uvicorn.protocols.http.auto import AutoHTTPProtocol

    class HeadTimeoutProtocol(AutoHTTPProtocol):  # type: ignore[misc,valid-type]
        # A request's cycle is made at the end of its head (the latest one's, pipelined).
        def connection_made(self, transport: Any) -> None:
            super().connection_made(transport)
            self._last_head, self._head_bytes = self.cycle, 0
            self._wait_for_a_head()

        def _wait_for_a_head(self) -> None:
            self._answered = self.cycle
            self._head_timer = self.loop.call_later(timeout_s, self._close_without_a_head)

        def _close_without_a_head(self) -> None:
            cycle = self.cycle  # no head since the answer: the same cycle, answered (or none yet)
            if cycle is self._answered and (cycle is None or cycle.response_complete):
                self.transport.close()

        def data_received(self, data: bytes) -> None:
            cycle = self.cycle  # the latest request's body is in: what comes is the next head
            if (cycle is None or not cycle.more_body) and not self.transport.is_closing():
                self._head_bytes += len(data)
                if self._head_bytes > MAX_HEAD_BYTES:  # refused before the parser reads it
                    if cycle is None or cycle.response_complete:  # no answer owed on this connection
                        self.transport.write(HEAD_TOO_LARGE)
                    self.transport.close()
                    return
            super().data_received(data)
            if self.cycle is not self._last_head:  # a head ended in this data
                self._last_head, self._head_bytes = self.cycle, 0

        def on_response_complete(self) -> None:
            super().on_response_complete()
            cycle = self.cycle
            if cycle is not None and cycle.response_complete and cycle.more_body:  # answered before its body was in
                self.transport.close()
            self._head_timer.cancel()
            self._wait_for_a_head()

        def connection_lost(self, exc: Any) -> None:
            self._head_timer.cancel()
            super().connection_lost(exc)

    return HeadTimeoutProtocol


def bind(host: str, port: int) -> socket.socket:
    """A listening socket on host:port (port 0: a free one), made before the server starts so
    that the address printed is the one in use."""
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    try:
        return socket.create_server((host, port), family=family, backlog=2048)
    except OSError as exc:
        if exc.errno in (errno.EADDRINUSE, errno.EACCES):
            raise BackendUnavailableError(f"Cannot listen on {host}:{port} ({exc.strerror}); choose another --port "
                                          "or stop what is using it.") from None
        raise BackendUnavailableError(f"Cannot listen on {host}:{port} ({exc.strerror}); give --host an address of "
                                      "this machine (127.0.0.1, 0.0.0.0 for every interface, ::1, ::).") from None


def raise_open_files_limit() -> None:
    """Raises this process's soft limit on open files to its hard limit, and warns when that
    is still low. Every connection holds a file descriptor, and past the soft limit (1024 by
    default, less in some containers) the server can accept none: clients get a connection
    reset and nothing is logged. The hard limit is what the process may raise it to itself."""
    try:
        import resource
    except ImportError:  # Windows: no such limit
        return
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft != hard:
        try:
            resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
            soft = hard
        except (ValueError, OSError):  # a hard limit above what the kernel allows (macOS's unlimited)
            pass
    if soft != resource.RLIM_INFINITY and soft < LOW_OPEN_FILES:
        typer.echo(f"warning: this process may open only {soft} files, one per connection, so clients past that "
                   f"many at once get a connection reset; raise the limit (ulimit -n) to at least {LOW_OPEN_FILES}.",
                   err=True)


def _url(host: str, port: int) -> str:
    """The address a server prints (an IPv6 host in brackets)."""
    return f"http://{'[' + host + ']' if ':' in host else host}:{port}"


def serve(
    artifacts: list[str] = typer.Argument(..., metavar="[NAME=]ARTIFACT", help="Artifact folders, each served under its folder name "
                                                    "(NAME=PATH names one)."),
    host: str = typer.Option("127.0.0.1", "--host", metavar="ADDRESS", help="Address to listen on; the default answers this machine only."),
    port: int = typer.Option(8000, "--port", metavar="PORT", min=0, max=65535, help="Port; 0 picks a free one."),
    backend: str = typer.Option("auto", "--backend", metavar="BACKEND", help="auto, onnxruntime, openvino or tensorrt."),
    precision: Optional[str] = typer.Option(None, "--precision", metavar="PRECISION", help="fp32, fp16, bf16, int8; default: fastest verified."),
    device: str = typer.Option("cpu", "--device", metavar="DEVICE", help="cpu, cuda, or a backend's device name."),
    max_batch: int = typer.Option(16, "--max-batch", metavar="N", min=1, help="Most inputs per model call."),
    max_delay_ms: float = typer.Option(5.0, "--max-delay-ms", metavar="MS", min=0, help="How long a batch waits to fill."),
    max_queue: int = typer.Option(64, "--max-queue", metavar="N", min=1, help="Requests waiting per model before 503."),
    max_body_mb: float = typer.Option(32.0, "--max-body-mb", metavar="MB", min=0.001, help="Largest request body."),
    max_inputs: int = typer.Option(32, "--max-inputs", metavar="N", min=1, help="Most images, clips or captions per request."),
    max_image_pixels: int = typer.Option(40_000_000, "--max-image-pixels", metavar="PIXELS", min=1, help="Largest image (width x height)."),
    max_audio_seconds: float = typer.Option(120.0, "--max-audio-seconds", metavar="SECONDS", min=0.001, help="Longest audio clip."),
    timeout_s: float = typer.Option(60.0, "--timeout-s", metavar="SECONDS", min=0.001, help="Answer 408 after this long."),
    access_log: bool = typer.Option(False, "--access-log/--no-access-log", help="Log every request."),
    engine: str = typer.Option("local", "--engine", metavar="ENGINE", help="local (this process) or ray (a Ray Serve application "
                                                         "on the Ray cluster of RAY_ADDRESS, else a local one)."),
    replicas: int = typer.Option(1, "--replicas", metavar="N", min=1, help="With --engine ray: replicas per model."),
    replica_cpus: float = typer.Option(REPLICA_CPUS, "--replica-cpus", metavar="CPUS", min=0.01, help="With --engine ray: the CPUs Ray "
                                       "reserves per replica (0.5: two replicas share a core)."),
    threads: Optional[int] = typer.Option(None, "--threads", metavar="N", min=1, help="Threads one model call runs on (the "
                                          "backend's session option; default: one per physical core this process may use)."),
    session_option: Optional[list[str]] = typer.Option(None, "--session-option", metavar="NAME=VALUE",
                                                       help=choices.SESSION_OPTION_HELP),
    shutdown_grace_s: float = typer.Option(30.0, "--shutdown-grace-s", metavar="SECONDS", min=0, help="On SIGTERM or Ctrl-C, how long "
                                           "requests in flight may take to finish; those still running then are "
                                           "answered 503."),
) -> None:
    """Serve artifacts over HTTP: a web page at /, API docs at /docs, the API under /v1, the Open Inference
    Protocol v2 under /v2, OpenAI-compatible /v1/embeddings, /metrics, /healthz, /readyz, /openapi.json."""
    _require_extra()
    choices.check_run_options(backend, precision)  # before any artifact is opened, as predict's
    choices.choose("--engine", engine, choices.ENGINES, many=False)
    if engine == "local" and (replicas != 1 or replica_cpus != REPLICA_CPUS):  # else they were ignored without a word
        raise UsageError("--replicas and --replica-cpus apply to --engine ray; one local process serves each model "
                         "once: add --engine ray, or drop them.")
    batch = BatchConfig(max_batch=max_batch, max_delay_ms=max_delay_ms, max_queue=max_queue)
    limits = Limits(max_body_bytes=int(max_body_mb * 1024 * 1024), max_inputs=max_inputs,
                    max_image_pixels=max_image_pixels, max_audio_seconds=max_audio_seconds, request_timeout_s=timeout_s,
                    body_timeout_s=timeout_s)  # the upload counts against --timeout-s alone
    session = choices.session_options(threads, session_option)  # else the backends' own defaults
    if engine == "ray":
        return _serve_on_ray(artifacts, host, port, backend, precision, device, batch, limits, replicas, session,
                             shutdown_grace_s, replica_cpus)
    import uvicorn

    from vlmedge.serve.app import create_app, load_models

    raise_open_files_limit()
    pipelines = load_models(artifacts, backend=backend, precision=precision, device=device, session_options=session)
    app = create_app(pipelines, batch, limits)
    sock = bind(host, port)
    bound_host, bound_port = sock.getsockname()[:2]
    url = _url(bound_host, bound_port)
    with stdout_written():
        for name, pipeline in pipelines.items():
            model = pipeline.model
            typer.echo(f"  {name}: {pipeline.task} on {model.backend} {model.precision} ({model.provider})")
        typer.echo(f"serving {len(pipelines)} model(s) on {url}  (page: {url}/  API: {url}/openapi.json)")
    config = uvicorn.Config(app, log_level="info", access_log=access_log, timeout_graceful_shutdown=shutdown_grace_s,
                            lifespan="on", server_header=False, http=protocol_with_head_timeout(timeout_s))
    uvicorn.Server(config).run(sockets=[sock])


def _serve_on_ray(artifacts: list[str], host: str, port: int, backend: str, precision: Optional[str], device: str,
                  batch: BatchConfig, limits: Limits, replicas: int, session: dict[str, Any],
                  shutdown_grace_s: float, replica_cpus: float) -> None:
    """The same routes as a Ray Serve application; blocks until Ctrl-C or SIGTERM, then
    shuts down as the local server does (the ingress drains: `_stop_on_ray`)."""
    import os

    try:
        from ray import serve
    except ImportError:
        raise BackendUnavailableError("`vlmedge serve --engine ray` needs Ray Serve; install the 'ray' extra: "
                                      "pip install 'vlmedge[ray]'.") from None
    if port == 0:
        raise BackendUnavailableError("--engine ray needs a fixed --port (Ray Serve's proxy listens on it on every node).")
    from vlmedge.serve.app import named_artifacts
    from vlmedge.serve.ray_serve import build

    named_artifacts(artifacts)  # two artifacts of one name: the one-sentence error, before Ray starts
    from vlmedge.bulk.ray import init

    init(address=os.environ.get("RAY_ADDRESS") or None, configure_logging=False)
    with sigterm_as_interrupt():  # from the start: the proxy answers before serve.run returns
        try:
            # built first: its checks (the options, the cluster's CPUs) refuse before Serve starts
            application = build(list(artifacts), replicas=replicas, backend=backend, precision=precision,
                                device=device, batch=batch, limits=limits, replica_cpus=replica_cpus,
                                session_options=session)
            serve.start(http_options={"host": host, "port": port})
            serve.run(application, name=RAY_APP, route_prefix="/")
            url = _url(host, port)
            typer.echo(f"serving {len(artifacts)} model(s) x {replicas} replica(s) on Ray Serve at {url}  "
                       f"(page: {url}/  docs: {url}/docs)")
            while True:
                time.sleep(3600)
        finally:  # Ctrl-C, SIGTERM or a failed start: Ray's own exit would drop every request in flight
            _stop_on_ray(serve, shutdown_grace_s)


def _stop_on_ray(serve: Any, grace_s: float) -> None:
    """The ingress drains (if it runs), then Ray Serve and a local Ray instance stop."""
    from ray.serve.exceptions import RayServeException

    try:
        try:
            handle = serve.get_app_handle(RAY_APP)
        except RayServeException:  # never deployed: nothing in flight
            return
        typer.echo(f"shutting down: requests in flight have {grace_s:g} s to finish", err=True)
        try:
            cut = handle.drain.remote(grace_s).result(timeout_s=grace_s + 30)
        except Exception as exc:  # noqa: BLE001 - an ingress that failed to start: nothing was in flight
            typer.echo(f"the ingress could not drain ({first_line(exc)})", err=True)
            return
        if cut:
            typer.echo(f"{cut} request(s) still running after {grace_s:g} s were answered 503", err=True)
    finally:
        import ray

        serve.shutdown()
        ray.shutdown()  # stops a local instance; only disconnects from a cluster
