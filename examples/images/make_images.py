"""Make the example images offline: scikit-learn's two sample photos, crops of them, and Pillow-drawn shapes.

    .venv/bin/python examples/images/make_images.py      # writes examples/images/data/*.jpg|png

Deterministic; nothing is downloaded (the photos ship inside scikit-learn, which is optional:
without it only the drawn shapes are made).
"""

from __future__ import annotations

from pathlib import Path

from PIL import Image, ImageDraw

DATA = Path(__file__).resolve().parent / "data"
COLOURS = {"red": (220, 30, 30), "green": (30, 160, 60), "blue": (30, 60, 220), "yellow": (240, 210, 20)}
SIZE = 160


def shape(kind: str, colour: tuple[int, int, int], offset: int = 0, background: str = "white") -> Image.Image:
    image = Image.new("RGB", (SIZE, SIZE), background)
    draw = ImageDraw.Draw(image)
    lo, hi = 30 + offset, 130 + offset
    if kind == "circle":
        draw.ellipse((lo, lo, hi, hi), fill=colour)
    elif kind == "square":
        draw.rectangle((lo, lo, hi, hi), fill=colour)
    else:  # triangle
        draw.polygon([(lo, hi), ((lo + hi) // 2, lo), (hi, hi)], fill=colour)
    return image


def photos() -> dict[str, Image.Image]:
    try:
        from sklearn.datasets import load_sample_images
    except ImportError:
        return {}
    found = {}
    for name, array in zip(("china", "flower"), load_sample_images().images):
        photo = Image.fromarray(array)
        width, height = photo.size
        found[name] = photo
        found[f"{name}_left"] = photo.crop((0, 0, width * 2 // 3, height))
        found[f"{name}_mirror"] = photo.transpose(Image.Transpose.FLIP_LEFT_RIGHT)
    return found


def make() -> list[Path]:
    DATA.mkdir(exist_ok=True)
    written = []
    for name, photo in photos().items():
        path = DATA / f"{name}.jpg"
        photo.save(path, quality=90)
        written.append(path)
    for kind in ("circle", "square", "triangle"):
        for colour_name, colour in COLOURS.items():
            path = DATA / f"{colour_name}_{kind}.png"
            shape(kind, colour).save(path)
            written.append(path)
    return sorted(written)


if __name__ == "__main__":
    for path in make():
        print(path.relative_to(DATA.parent))
