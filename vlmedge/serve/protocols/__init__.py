"""The field's protocols beside vlmedge's own /v1/models/{model}/{endpoint} routes, over the
same models, batchers, limits and metrics:

    v2       Open Inference Protocol v2 (KServe V2 / Triton) over HTTP/REST, with Triton's
             binary tensor data extension: task-level BYTES inputs (encoded files, UTF-8
             text) or the artifact's own graph inputs (graph.py)
    openai   OpenAI-compatible POST /v1/embeddings
"""

from __future__ import annotations

from typing import Any


def routes(state: Any) -> list:
    """The routes of every protocol, for the app's shared state."""
    from vlmedge.serve.protocols import openai, v2

    return v2.routes(state) + openai.routes(state)
