"""`vlmedge serve`: an HTTP inference server for artifacts, with dynamic batching.

    request -> read body (size, time limits) -> parse JSON or multipart -> check inputs
            -> decode and preprocess the files (in the request's own thread)
            -> DynamicBatcher (bounded queue; requests for one model and compatible
               options arriving within max_delay_ms run as one `<method>_prepared` call of
               up to max_batch inputs, in the model's worker thread) -> results split per request

Beside /v1/models/{model}/{endpoint}, protocols/ serves the same models over the Open
Inference Protocol v2 (/v2, KServe and Triton clients) and OpenAI's /v1/embeddings;
ray_serve runs the same app as a Ray Serve application (--engine ray).

Needs the "serve" extra (starlette, uvicorn, python-multipart, prometheus-client); the
rest of vlmedge never imports this package.
"""

from __future__ import annotations

from vlmedge.serve.config import BatchConfig, Limits

__all__ = ["BatchConfig", "Limits", "create_app", "load_models"]


def __getattr__(name: str):
    """create_app and load_models are vlmedge.serve.app's own (their signatures and docs in
    help()), imported on first use: `import vlmedge.serve` loads no web framework."""
    if name in ("create_app", "load_models"):
        from vlmedge.serve import app

        return getattr(app, name)
    raise AttributeError(f"module 'vlmedge.serve' has no attribute {name!r}")
