"""The category-head study's world (`SceneSpace(category_cues=True)`, docs/LEARNING_STUDY.md): every category
an image is annotated with shows in its pixels.

The reference is read from the drawn image alone (colour pixel masks), not from the scene: S = the two
objects side by side, A = an outlined object (its box centre is background), T = a trail (pixels of a
lighter tint), P = two sizes (the objects' extents differ by > 30%). H (a triangle) is the default world's
rule, tested with it in test_data_synthetic.py. The learning runs themselves take ~20 min per seed on a
shared CPU and are not repeated here: bench/study_category_heads.py.
"""

from __future__ import annotations

import numpy as np
import pytest

from reasonclip_llava.data.categories import CATEGORIES
from reasonclip_llava.data.synthetic import COLOURS, DEFAULT_SPACE, SceneSpace, make_item

SIZE = 128  # outlines 4 px wide, small radius ~13 px: the pixel rules below have room
WHITE = np.array([255, 255, 255])


def _mask(pixels: np.ndarray, rgb) -> np.ndarray:  # noqa: ANN001
    return np.all(pixels == np.array(rgb), axis=-1)


def _box(mask: np.ndarray) -> tuple[int, int, int, int]:
    ys, xs = np.nonzero(mask)
    return xs.min(), xs.max(), ys.min(), ys.max()


def cues_from_pixels(pixels: np.ndarray, colours: list[str]) -> set[str]:
    boxes = [_box(_mask(pixels, COLOURS[c])) for c in colours]
    centres = [((x0 + x1) / 2, (y0 + y1) / 2) for x0, x1, y0, y1 in boxes]
    extents = [max(x1 - x0, y1 - y0) + 1 for x0, x1, y0, y1 in boxes]
    known = np.zeros(pixels.shape[:2], dtype=bool)
    for c in colours:
        known |= _mask(pixels, COLOURS[c])
    known |= _mask(pixels, WHITE)
    cues = set()
    if abs(centres[0][0] - centres[1][0]) > abs(centres[0][1] - centres[1][1]):
        cues.add("S")
    if any((pixels[int(round(cy)), int(round(cx))] == WHITE).all() for cx, cy in centres):
        cues.add("A")
    if (~known).any():  # any pixel neither background nor an object's own colour: a trail's tint
        cues.add("T")
    if max(extents) / min(extents) > 1.3:
        cues.add("P")
    return cues


def test_every_annotated_category_shows_in_the_pixels():
    space = SceneSpace(category_cues=True)
    counts = dict.fromkeys(CATEGORIES, 0)
    n = 200
    for index in range(n):
        item = make_item(3, index, image_size=SIZE, space=space)
        pixels = np.asarray(item.image.convert("RGB")).astype(int)
        seen = cues_from_pixels(pixels, [o.colour for o in item.scene.objects])
        annotated = set(item.trp_image)
        assert len(item.trp_image) == 3
        assert seen == annotated - {"H"}, (index, item.scene, item.trp_image)
        assert ("H" in annotated) == any(o.shape == "triangle" for o in item.scene.objects)
        for c in annotated:
            counts[c] += 1
    # 3 of 5 drawn alike: each category on 60% of images (binomial sd 3.5 points at n = 200)
    assert all(0.48 < counts[c] / n < 0.72 for c in CATEGORIES), counts


def test_default_world_keeps_its_annotation_rule():
    for index in range(100):  # H and T where present, S / A / P random top-ups
        item = make_item(0, index, image_size=32, space=DEFAULT_SPACE)
        assert ("H" in item.trp_image) == any(o.shape == "triangle" for o in item.scene.objects)
        assert ("T" in item.trp_image) == (item.scene.mover is not None)


@pytest.mark.parametrize("change", [dict(shapes=("circle", "square")), dict(sizes=("large",)), dict(fills=("filled",)),
                                    dict(relations=("left of", "right of"))])
def test_a_space_without_a_cue_is_refused(change):
    with pytest.raises(ValueError, match="category_cues"):
        SceneSpace(category_cues=True, **change)
