"""Default input images for the example graphs that start from a picture (img2img, inpainting)
on the default model: drawn with the training data's own renderer, so the model knows them.

    tools/reference/.venv/bin/python tools/train/make_inputs.py

writes `graphs/inputs/shapes.png` (a blue square on a white background, for img2img),
`graphs/inputs/blue.png` (a plain blue background, for inpainting) and
`graphs/inputs/center-mask.png` (white, the region to repaint, over the centre).
"""

import pathlib

from PIL import Image, ImageDraw

import shapes

SIZE = 64
OUT = pathlib.Path(__file__).resolve().parents[2] / "graphs" / "inputs"


def main():
    OUT.mkdir(parents=True, exist_ok=True)
    c = SIZE / 2
    square = ("square", shapes.COLOURS["blue"], c, c, 0.26 * SIZE, 0.0)
    shapes.draw(SIZE, shapes.COLOURS["white"], [square]).save(OUT / "shapes.png")
    shapes.draw(SIZE, shapes.COLOURS["blue"], []).save(OUT / "blue.png")
    mask = Image.new("L", (SIZE, SIZE), 0)
    ImageDraw.Draw(mask).rectangle([16, 16, 47, 47], fill=255)
    mask.save(OUT / "center-mask.png")
    print(f"wrote {OUT}")


if __name__ == "__main__":
    main()
