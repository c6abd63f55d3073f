"""Draw the zoo's sample picture, ``data/sample.png``, procedurally with Pillow.

The picture ships with the package; this script is how it was made, so anyone can see
what it contains and make it again (``python -m edgekiln.zoo.make_sample [PATH]``). It is a
224x224 RGB landscape (sky, sun, hills, a lake, a tree, a house) with smooth gradients and
flat shapes: it exercises resizing, cropping and normalization with realistic colour
statistics and stays small as a PNG. Nothing here runs on import.
"""

from __future__ import annotations

import sys
from pathlib import Path

SIZE = 224


def draw_sample(size: int = SIZE):
    """Draw the sample picture and return it as a ``PIL.Image.Image`` (RGB, size x size)."""
    import numpy as np
    from PIL import Image, ImageDraw, ImageFilter

    y, x = np.mgrid[0:size, 0:size].astype(np.float32) / (size - 1)
    # Sky: a vertical gradient from deep blue to pale haze at the horizon.
    top, horizon = np.array([40, 90, 170], np.float32), np.array([200, 220, 235], np.float32)
    sky = top + (horizon - top) * (y[..., None] / 0.62)
    pixels = np.clip(sky, 0, 255).astype(np.uint8)
    image = Image.fromarray(pixels, "RGB")
    draw = ImageDraw.Draw(image)

    s = size / 224  # every coordinate below is for 224 pixels, then scaled
    draw.ellipse([160 * s, 24 * s, 196 * s, 60 * s], fill=(255, 214, 90))
    # Two hill ranges from sampled sine curves, the nearer one darker.
    for base, amp, freq, phase, colour in (
        (132, 22, 2.1, 0.4, (96, 130, 96)),
        (150, 14, 3.3, 1.7, (60, 110, 60)),
    ):
        ridge = [(i * s, (base + amp * np.sin(freq * np.pi * i / 224 + phase)) * s) for i in range(0, 225, 4)]
        draw.polygon([(0, size), *ridge, (size, size)], fill=colour)
    # A lake with a lighter band for the reflection of the sky.
    draw.ellipse([20 * s, 168 * s, 150 * s, 212 * s], fill=(70, 120, 170))
    draw.ellipse([40 * s, 176 * s, 120 * s, 190 * s], fill=(140, 180, 210))
    # A tree: trunk and a round crown.
    draw.rectangle([176 * s, 140 * s, 184 * s, 186 * s], fill=(100, 70, 40))
    draw.ellipse([156 * s, 104 * s, 204 * s, 152 * s], fill=(40, 120, 50))
    # A house: walls, roof, door and window.
    draw.rectangle([96 * s, 120 * s, 140 * s, 156 * s], fill=(220, 200, 170))
    draw.polygon([(90 * s, 122 * s), (118 * s, 98 * s), (146 * s, 122 * s)], fill=(170, 60, 50))
    draw.rectangle([112 * s, 136 * s, 122 * s, 156 * s], fill=(110, 70, 40))
    draw.rectangle([126 * s, 128 * s, 136 * s, 138 * s], fill=(150, 200, 230))
    # A slight blur so edges are not aliased steps, as in a photograph.
    return image.filter(ImageFilter.GaussianBlur(radius=0.8))


def main(argv: list[str] | None = None) -> int:
    """Write the sample picture to the given path (default: the package's data/sample.png)."""
    args = sys.argv[1:] if argv is None else argv
    path = Path(args[0]) if args else Path(__file__).with_name("data") / "sample.png"
    draw_sample().save(path, format="PNG", optimize=True)
    print(f"wrote {path} ({path.stat().st_size} bytes)")
    return 0


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
