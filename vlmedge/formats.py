"""What this install can export and run (`vlmedge formats`). The option checks against the
same tables are in vlmedge.choices.

Everything is looked up where it is declared: tasks in vlmedge.registry, backends and
targets in runtimes.base.BACKENDS, precisions in vlmedge.parity.PRECISIONS, the built-in
models in exporters/sources/builtin.py, the extras in the package metadata. Nothing here
imports torch, transformers or a backend. A new section is one function added to SECTIONS.
"""

from __future__ import annotations

import importlib.metadata
import importlib.util
from typing import Any, Callable

from vlmedge.environment import extra_packages
from vlmedge.errors import UsageError


def _installed(distribution: str) -> bool:
    try:
        importlib.metadata.version(distribution)
        return True
    except importlib.metadata.PackageNotFoundError:
        return False


def tasks() -> list[dict[str, Any]]:
    from vlmedge.registry import TASKS

    return [{"name": t.name, "summary": t.summary, "inputs": list(t.input_kinds),
             "methods": [{"name": m.name, "input": m.input, "options": list(m.options)} for m in t.methods],
             "cli_predict": t.aliases.get("predict", t.methods[0].name)} for t in TASKS.values()]


def backends() -> list[dict[str, Any]]:
    from vlmedge.runtimes.base import BACKENDS, unavailable_reason

    return [{"name": b.name, "target": b.target, "package": b.package,
             "installed": importlib.util.find_spec(b.package) is not None,
             "runs_here": unavailable_reason(b) is None, "reason": unavailable_reason(b),
             "install": b.install_hint(), "needs": b.needs or None, "never_runs": dict(b.lacks),
             "session_options": [{"name": o.name, "meaning": o.meaning} for o in b.options]} for b in BACKENDS.values()]


def precisions() -> list[dict[str, Any]]:
    from vlmedge.parity import GATES

    return [{"name": name, "gate": gate.to_dict()} for name, gate in GATES.items()]


def builtin_models() -> list[str]:
    """The built-in models (exporters.sources.builtin), or none without the exporters;
    importing that module needs no torch."""
    if importlib.util.find_spec("vlmedge.exporters") is None:
        return []
    from vlmedge.exporters.sources.builtin import builtin_names

    return builtin_names()


def export_extra() -> dict[str, Any]:
    packages = extra_packages("export")
    missing = [p for p in packages if not _installed(p)]
    return {"installed": bool(packages) and not missing, "packages": packages, "missing": missing,
            "install": "pip install 'vlmedge[export]'"}


# name -> function returning the section (JSON-safe); `vlmedge formats` shows them in this order.
SECTIONS: dict[str, Callable[[], Any]] = {
    "tasks": tasks,
    "backends": backends,
    "precisions": precisions,
    "builtin_models": builtin_models,
    "export": export_extra,
}


def architectures() -> list[dict[str, Any]]:
    """The Hugging Face architectures of every task vlmedge exports from a model folder
    (image-classification, clip, image-embedding, audio-classification), each exported or
    refused with the reason or what the export needs (vlmedge.exporters.sources.
    supported_architectures: the export's own checks). Needs the export extra (torch,
    transformers), so it is asked for separately."""
    if export_extra()["missing"]:
        raise UsageError("Listing the architectures needs the export extra (torch, transformers); "
                         "install it with: pip install 'vlmedge[export]'.")
    from vlmedge.exporters.sources import supported_architectures

    return [{"architecture": a.architecture, "task": a.task,
             "exports": "yes" if a.supported else "no", "reason": a.reason or ""}
            for a in supported_architectures()]


def describe(with_architectures: bool = False) -> dict[str, Any]:
    """Every section of SECTIONS, with the vlmedge version (and the architecture table when asked)."""
    from vlmedge.version import __version__

    facts = {"version": __version__, **{name: section() for name, section in SECTIONS.items()}}
    if with_architectures:
        facts["architectures"] = architectures()
    return facts


def architectures_markdown(rows: list[dict[str, Any]]) -> str:
    """The README's architecture table: what `vlmedge formats --architectures` lists."""
    lines = ["| architecture | task | exports | why not, or what it needs |", "|---|---|---|---|"]
    lines += [f"| {r['architecture']} | {r['task']} | {r['exports']} | {r['reason'].replace('|', '/')} |"
              for r in rows]
    return "\n".join(lines)
