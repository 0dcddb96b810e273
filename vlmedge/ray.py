"""Scale-out: bulk classification, embedding and tagging on Ray Data (extra "ray").

    import ray, vlmedge.ray
    ray.init()
    ds = vlmedge.ray.run("out/clip", "photos/", "classify", labels=["cat", "dog"], top_k=1)

The public face of the Ray engine, which lives in vlmedge.bulk.ray (the other engine of the
same bulk job as the local one). ``vlmedge.ray`` is this module; Ray itself is imported
absolutely there, so nothing is shadowed.
"""

from __future__ import annotations

from typing import Sequence

from vlmedge.bulk.ray import INSTALL_HINT, init, require_ray, run

__all__: Sequence[str] = ("run", "init", "require_ray", "INSTALL_HINT")
