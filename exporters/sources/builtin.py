"""builtin:NAME — small models of real Hugging Face classes trained by this project on
data it generates (see exporters/builtin/ for the data, training scripts and model cards)."""

from __future__ import annotations

from pathlib import Path

from vlmedge.errors import ModelNotFoundError

MODELS_DIR = Path(__file__).resolve().parent.parent / "builtin" / "models"


def builtin_names() -> list[str]:
    return sorted(p.name for p in MODELS_DIR.iterdir() if (p / "config.json").is_file()) if MODELS_DIR.is_dir() else []


def builtin_folder(name: str) -> Path:
    folder = MODELS_DIR / name
    if not (folder / "config.json").is_file():
        raise ModelNotFoundError(
            f"There is no built-in model '{name}'; the built-in models are: {', '.join(builtin_names()) or 'none'}."
        )
    return folder
