"""Writes exporters/sample_data/: the real image files every export runs parity on and
bundles in its artifact. Varied size, aspect, format and mode on purpose; every file is named
after its content (colour, shape, then what is unusual about the file), and every shape is of a
colour in shapes.COLORS, so the built-in colour models can name each one.

    python -m vlmedge.exporters.builtin.make_samples   (or python exporters/builtin/make_samples.py)
"""

from __future__ import annotations

import sys
from pathlib import Path

import numpy as np
from PIL import Image

try:
    from vlmedge.exporters.builtin import shapes
except ImportError:  # run as a script from the repository
    sys.path.insert(0, str(Path(__file__).resolve().parent))
    import shapes  # type: ignore[no-redef]

OUT = Path(__file__).resolve().parent.parent / "sample_data"


def main() -> None:
    OUT.mkdir(exist_ok=True)
    rng = np.random.default_rng(2024)
    shapes.render("circle", "red", "large", rng, 160).resize((200, 150)).save(OUT / "red-circle.jpg", quality=92)
    shapes.render("star", "yellow", "large", rng, 128).crop((0, 16, 128, 112)).save(OUT / "yellow-star.png")
    # a grayscale (mode L) file: the triangle is white, a colour the built-in models know
    shapes.render("triangle", "white", "small", rng, 96).convert("L").save(OUT / "white-triangle-grayscale.png")
    rgba = shapes.render("square", "green", "large", rng, 80).convert("RGBA")
    alpha = np.full((80, 80), 255, np.uint8)
    alpha[:, :20] = 0
    rgba.putalpha(Image.fromarray(alpha))
    rgba.save(OUT / "green-square-rgba.png")
    shapes.render("cross", "purple", "large", rng, 300).resize((180, 320)).save(OUT / "purple-cross-portrait.jpg", quality=90)


if __name__ == "__main__":
    main()
