"""Rendered scenes with captions: the offline stand-in for CoCo in the tutorial's training examples.

Each scene is one shape on a plain background: a shape (circle, square, triangle, star), a colour
(six), a size (small, large) and a position (left, right, top, bottom, middle), drawn with a little
jitter in place, size and shade, on a lightly tinted background. Its caption says all four, in one of
a dozen phrasings ("a small red circle on the left", "there is a large blue star at the top of the
picture", ...). `scene` keeps the four attributes as one string, so a search can be judged: a text
query found the right image when the image's attributes are the ones the query names.

Everything is a pure function of a seed: the same call makes the same images, on any machine.
"""

from __future__ import annotations

import io
import math
from dataclasses import dataclass

import numpy as np
from PIL import Image, ImageDraw

SIZE = 224
SHAPES = ("circle", "square", "triangle", "star")
COLOURS = {"red": (220, 40, 40), "green": (40, 170, 60), "blue": (40, 80, 220),
           "yellow": (235, 215, 40), "purple": (140, 50, 170), "orange": (245, 140, 30)}
SIZES = {"small": 0.1, "large": 0.19}  # radius as a share of the image side
POSITIONS = {"left": (0.27, 0.5), "right": (0.73, 0.5), "top": (0.5, 0.27), "bottom": (0.5, 0.73),
             "middle": (0.5, 0.5)}
PLACE_WORDS = {"left": ["on the left", "to the left", "on the left side"],
               "right": ["on the right", "to the right", "on the right side"],
               "top": ["at the top", "near the top", "up at the top"],
               "bottom": ["at the bottom", "near the bottom", "down at the bottom"],
               "middle": ["in the middle", "in the centre", "in the center"]}
TEMPLATES = ("a {size} {colour} {shape} {place}",
             "{size} {colour} {shape} {place}",
             "there is a {size} {colour} {shape} {place}",
             "a {colour} {shape}, {size}, {place}",
             "a picture of a {size} {colour} {shape} {place}",
             "an image with a {size} {colour} {shape} {place}",
             "{place} a {size} {colour} {shape}",
             "one {size} {colour} {shape} {place} of the picture",
             "a {size} {shape} coloured {colour} {place}",
             "the {shape} is {colour} and {size} and sits {place}",
             "a {size} {colour} {shape} drawn {place}",
             "a drawing of a {colour} {shape} {place}, {size}")


@dataclass(frozen=True)
class Scene:
    shape: str
    colour: str
    size: str
    position: str

    @property
    def key(self) -> str:
        return f"{self.size} {self.colour} {self.shape} {self.position}"

    @property
    def tags(self) -> list[str]:
        return sorted([self.shape, self.colour, self.size, self.position])


def all_scenes() -> list[Scene]:
    return [Scene(shape, colour, size, position) for shape in SHAPES for colour in COLOURS
            for size in SIZES for position in POSITIONS]


def caption(scene: Scene, rng: np.random.Generator) -> str:
    template = TEMPLATES[rng.integers(len(TEMPLATES))]
    place = PLACE_WORDS[scene.position][rng.integers(len(PLACE_WORDS[scene.position]))]
    return template.format(size=scene.size, colour=scene.colour, shape=scene.shape, place=place)


def render(scene: Scene, rng: np.random.Generator) -> Image.Image:
    tint = rng.integers(200, 256, size=3)
    image = Image.new("RGB", (SIZE, SIZE), tuple(int(t) for t in tint))
    draw = ImageDraw.Draw(image)
    cx, cy = POSITIONS[scene.position]
    cx = (cx + rng.uniform(-0.05, 0.05)) * SIZE
    cy = (cy + rng.uniform(-0.05, 0.05)) * SIZE
    radius = SIZES[scene.size] * SIZE * rng.uniform(0.85, 1.15)
    shade = np.clip(np.array(COLOURS[scene.colour]) + rng.integers(-20, 21, size=3), 0, 255)
    fill = tuple(int(c) for c in shade)
    if scene.shape == "circle":
        draw.ellipse((cx - radius, cy - radius, cx + radius, cy + radius), fill=fill)
    elif scene.shape == "square":
        half = radius * 0.85
        draw.rectangle((cx - half, cy - half, cx + half, cy + half), fill=fill)
    elif scene.shape == "triangle":
        draw.polygon(_polygon(cx, cy, radius, 3, -math.pi / 2), fill=fill)
    else:
        draw.polygon(_star(cx, cy, radius), fill=fill)
    return image


def _polygon(cx: float, cy: float, radius: float, sides: int, start: float) -> list[tuple[float, float]]:
    return [(cx + radius * math.cos(start + 2 * math.pi * i / sides),
             cy + radius * math.sin(start + 2 * math.pi * i / sides)) for i in range(sides)]


def _star(cx: float, cy: float, radius: float) -> list[tuple[float, float]]:
    points = []
    for i in range(10):
        r = radius if i % 2 == 0 else radius * 0.45
        angle = -math.pi / 2 + math.pi * i / 5
        points.append((cx + r * math.cos(angle), cy + r * math.sin(angle)))
    return points


def png(image: Image.Image) -> bytes:
    out = io.BytesIO()
    image.save(out, format="PNG", optimize=False)
    return out.getvalue()


def documents(n: int, seed: int = 0) -> list[dict]:
    """n scene documents: `img` (typed image content, PNG bytes), `caption`, `scene`, `tags`."""
    from bson.binary import Binary

    rng = np.random.default_rng(seed)
    scenes = all_scenes()
    docs = []
    for i in range(n):
        scene = scenes[i % len(scenes)] if i < len(scenes) else scenes[rng.integers(len(scenes))]
        docs.append({"img": {"_content": {"bytes": Binary(png(render(scene, rng))), "type": "image"}},
                     "caption": caption(scene, rng), "scene": scene.key})
    order = rng.permutation(n)
    return [docs[i] for i in order]


# -- a user metric (registry: `metrics: [jaccard, "scenes:attributes_named"]`) ---------------------------------

_ATTRIBUTE_OF = {**{s: s for s in SHAPES}, **{c: c for c in COLOURS}, **{s: s for s in SIZES},
                 **{w: place for place, phrases in PLACE_WORDS.items() for phrase in phrases
                    for w in phrase.split() if w in {"left", "right", "top", "bottom", "middle", "centre", "center"}}}


def attributes(text: str | list[str]) -> set[str]:
    """The scene attributes a caption (or a list of tags) names: shape, colour, size, position."""
    tokens = text.lower().replace(",", " ").split() if isinstance(text, str) else [t.lower() for t in text]
    return {_ATTRIBUTE_OF[t] for t in tokens if t in _ATTRIBUTE_OF}


def attributes_named(prediction: str | list[str], truth: str | list[str]) -> float:
    """The share of the true caption's attributes that the prediction names (word order and phrasing aside)."""
    wanted = attributes(truth)
    return len(attributes(prediction) & wanted) / len(wanted) if wanted else 1.0
