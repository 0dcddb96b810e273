"""Parity: an exported file's outputs against the source model's on the same inputs.

The comparison itself is numpy only and lives in vlmedge.parity so that `vlmedge check`
can re-run it on a machine without torch; this module adds the torch side: running the
source model to get the reference outputs.
"""

from __future__ import annotations

import numpy as np
import torch

from vlmedge.exporters.spec import GraphSpec


def reference_outputs(graph: GraphSpec, feeds: dict[str, np.ndarray], batch_size: int = 16) -> dict[str, np.ndarray]:
    """Runs the source module on the parity feeds, in batches, in fp32."""
    graph.module.eval()
    n = len(next(iter(feeds.values())))
    collected: dict[str, list[np.ndarray]] = {name: [] for name in graph.output_names}
    with torch.no_grad():
        for start in range(0, n, batch_size):
            args = [torch.from_numpy(np.ascontiguousarray(feeds[name][start:start + batch_size]))
                    for name in graph.input_names]
            outputs = graph.module(*args)
            if isinstance(outputs, torch.Tensor):
                outputs = (outputs,)
            for name, value in zip(graph.output_names, outputs):
                collected[name].append(value.detach().float().numpy())
    return {name: np.concatenate(parts) for name, parts in collected.items()}
