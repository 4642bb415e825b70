"""Procedural training data for the default model: coloured shapes with captions.

Every image is drawn from a seeded generator, so the data set is a pure function of the seed.
Captions follow a small grammar that the README and the tests use:

    [count] [size] <colour> <shape>[s] [position] [on a <colour> background]

for example "a red circle on a blue background", "two small green squares", "a large yellow star
on the left on a purple background". A single shape whose caption names no position is drawn
near the centre; words left out of a caption (size, background) are drawn at random, so the
model learns their marginal.
"""

import math
import random

import numpy as np
from PIL import Image, ImageDraw

COLOURS = {
    "red": (220, 30, 35),
    "green": (35, 170, 60),
    "blue": (35, 70, 220),
    "yellow": (245, 215, 35),
    "orange": (250, 135, 25),
    "purple": (145, 50, 185),
    "white": (245, 245, 245),
    "black": (20, 20, 20),
}
SHAPES = ["circle", "square", "triangle", "star"]
COUNTS = {1: "a", 2: "two", 3: "three"}
# (name, radius range as a fraction of the image size)
SIZES = {"small": (0.09, 0.13), "large": (0.22, 0.30)}
POSITIONS = {
    "on the left": (0.27, 0.5),
    "on the right": (0.73, 0.5),
    "at the top": (0.5, 0.27),
    "at the bottom": (0.5, 0.73),
    "in the center": (0.5, 0.5),
}
SUPERSAMPLE = 4


def article(word: str) -> str:
    return "an" if word[0] in "aeiou" else "a"


def plural(shape: str) -> str:
    return shape + "s"


def _polygon(shape: str, cx: float, cy: float, r: float, angle: float):
    if shape == "square":
        k = r / math.sqrt(2) * 1.25
        pts = [(-k, -k), (k, -k), (k, k), (-k, k)]
    elif shape == "triangle":
        pts = [(r * math.cos(a), r * math.sin(a)) for a in (-math.pi / 2, math.pi / 6, 5 * math.pi / 6)]
        pts = [(x * 1.15, y * 1.15 + r * 0.1) for x, y in pts]
    elif shape == "star":
        pts = []
        for i in range(10):
            rr = r * 1.1 if i % 2 == 0 else r * 0.45
            a = -math.pi / 2 + i * math.pi / 5
            pts.append((rr * math.cos(a), rr * math.sin(a)))
    else:
        raise ValueError(shape)
    ca, sa = math.cos(angle), math.sin(angle)
    return [(cx + x * ca - y * sa, cy + x * sa + y * ca) for x, y in pts]


def draw(size: int, background, items):
    """items: (shape, colour rgb, cx, cy, radius, angle) in pixels of the final image."""
    s = SUPERSAMPLE
    img = Image.new("RGB", (size * s, size * s), background)
    d = ImageDraw.Draw(img)
    for shape, rgb, cx, cy, r, angle in items:
        cx, cy, r = cx * s, cy * s, r * s
        if shape == "circle":
            d.ellipse([cx - r, cy - r, cx + r, cy + r], fill=rgb)
        else:
            d.polygon(_polygon(shape, cx, cy, r, angle), fill=rgb)
    return img.resize((size, size), Image.LANCZOS)


def _jitter(rgb, rng: random.Random, amount: int = 12):
    return tuple(max(0, min(255, c + rng.randint(-amount, amount))) for c in rgb)


def sample(rng: random.Random, size: int = 64):
    """One (image as H×W×3 uint8, caption) pair."""
    names = list(COLOURS)
    count = rng.choices([1, 2, 3], weights=[0.6, 0.25, 0.15])[0]
    shape = rng.choice(SHAPES)
    colour = rng.choice(names)
    background = rng.choice([c for c in names if c != colour])
    size_name = rng.choice(list(SIZES)) if count == 1 else "small"
    if count > 1 and rng.random() < 0.3:
        size_name = "small"
    lo, hi = SIZES[size_name]
    radius = rng.uniform(lo, hi) * size
    if count > 1:
        radius = min(radius, size * 0.13)

    position = None
    items = []
    if count == 1:
        position = rng.choice(list(POSITIONS)) if rng.random() < 0.5 else None
        px, py = POSITIONS[position or "in the center"]
        jitter = 0.05 if size_name == "large" else 0.07
        cx = (px + rng.uniform(-jitter, jitter)) * size
        cy = (py + rng.uniform(-jitter, jitter)) * size
        margin = radius * 1.05
        cx = min(max(cx, margin), size - margin)
        cy = min(max(cy, margin), size - margin)
        items.append((shape, _jitter(COLOURS[colour], rng), cx, cy, radius, rng.uniform(-0.2, 0.2)))
    else:
        placed = []
        for _ in range(200):
            if len(placed) == count:
                break
            cx = rng.uniform(radius * 1.1, size - radius * 1.1)
            cy = rng.uniform(radius * 1.1, size - radius * 1.1)
            if all(math.hypot(cx - x, cy - y) > 2.3 * radius for x, y in placed):
                placed.append((cx, cy))
        count = len(placed)
        for cx, cy in placed:
            items.append((shape, _jitter(COLOURS[colour], rng), cx, cy, radius, rng.uniform(-0.2, 0.2)))

    img = draw(size, _jitter(COLOURS[background], rng, 8), items)

    words = [COUNTS.get(count, "a")]
    if rng.random() < 0.6:
        words.append(size_name)
    words.append(colour)
    words.append(shape if count == 1 else plural(shape))
    if position is not None:
        words.append(position)
    if rng.random() < 0.8:
        words.append(f"on {article(background)} {background} background")
    if words[0] == "a":
        words[0] = article(words[1])
    caption = " ".join(words)
    return np.asarray(img, dtype=np.uint8), caption


def dataset(n: int, seed: int, size: int = 64):
    """n pairs from one seeded stream: (N×H×W×3 uint8, captions)."""
    rng = random.Random(seed)
    images = np.empty((n, size, size, 3), dtype=np.uint8)
    captions = []
    for i in range(n):
        images[i], c = sample(rng, size)
        captions.append(c)
    return images, captions


if __name__ == "__main__":
    imgs, caps = dataset(16, 0)
    grid = np.concatenate([np.concatenate(list(imgs[r * 4:(r + 1) * 4]), axis=1) for r in range(4)], axis=0)
    Image.fromarray(grid).resize((512, 512), Image.NEAREST).save("/tmp/shapes_grid.png")
    print("\n".join(caps))
