"""Synthetic compositional data in the ReasonLite / ReasonPro / CC12M-Refined / RCLIP-Bench schemas.

Every image holds two shapes (circle, square, triangle) of different colours and different kinds, each
small or large, filled or outlined, in one unambiguous relation (left of / right of / above / below:
the other axis differs by at most 15% of the image). Triangles point up/down/left/right; sometimes one
shape leaves a faint motion trail (two lighter dots behind it). Everything is a pure function of
(seed, image index): ``generate_synthetic(out, num_images=n)`` yields the same first images for any n.

Files written by ``generate_synthetic(out_dir, ...)`` (image paths are relative to ``out_dir``):

- ``images/000000.png`` ...
- the training rows of the held-in images, in the published schemas and chunk names (METHOD.md), so
  the demo and the tests go through the readers a user's downloaded files do:
  ``cc12m_tb_trl_chunk_00.parquet`` (ReasonLite): ``id: string, image_path: string, tb: list<string> (3),
  trl: list<string> (3)``;
  ``cc12m_trp_chunk_00.parquet`` (ReasonPro): ``image_path: string, trp: string, trp_cls: string`` (the
  caption's letter) ``, trp_cls_ls: list<string> (3)`` (the image's letters; see ``data.categories``);
  ``cc12m_tb_chunk_00.parquet`` (CC12M-Refined): ``image_path: string, tb: list<string> (3)``
- held-out images only (the last ``eval_fraction`` of the indices):
  ``swap_eval.parquet``: ``image_path, caption, negative_caption, swap_type`` with swap_type in
  ``swap_att`` (the two colours exchanged), ``swap_obj`` (the two shapes exchanged), ``swap_rel`` (the two
  noun phrases around the relation exchanged); each negative has exactly the caption's bag of words.
  ``rclip_bench.parquet``: the released RCLIP-Bench format (Hub ``RISys-Lab/RCLIP-Bench``, one HF
  ``datasets`` parquet; here version ``v1``): one row per image, ``id, image_name, text, version,
  sets: list<struct<tag, gt, neg: list<string> (4)>>, image: struct<bytes, path>`` with the PNG bytes
  embedded; one set per annotated category, ``tag`` = its letter.
- with ``write_jsonl=True`` also ``cc12m_tb_trl_chunk_00.jsonl`` / ``cc12m_trp_chunk_00.jsonl`` (same fields).

How the 5 ReasonPro categories are realised (each caption <= 30 words, true of its image):

- S spatial: the relation and what follows from it ("the red circle is left of the blue square, so the
  blue square is right of the red circle"; which side of a shape the other is on; nearer image edge).
- A attribute/state: colour with a world association ("the circle is red, the colour of ripe tomatoes"),
  size comparison, filled/outlined state ("... is outlined, so the white background shows through it").
- H human/action (no people in the images; realised as agent-like action): a triangle "points" like an
  arrow, toward or away from the other shape, "as if chasing / fleeing it".
- T temporal/phase: a motion trail implies where a shape was a moment ago and where it is heading
  ("... leaves a faint trail on its left side, so it is moving right"; getting closer or farther).
- P physical intuition: size as mass ("the large square would be harder to push than the small
  circle"), falling under gravity ("... is above ..., so if it fell straight down it would land on ...").

S, A, P apply to every image, H only with a triangle, T only with a trail. An image's 3 annotated
categories (``trp_cls_ls``) are H and T where present, topped up at random from S, A, P; ``trp`` is a
caption of one of those 3. With ``SceneSpace(category_cues=True)`` (the category-head study) every
category shows instead: 3 categories are drawn alike and the scene shows exactly their cues
(`CATEGORY_CUES`: S side by side, A an outlined object, H a triangle, T a trail, P two sizes). RCLIP-Bench negatives re-render the true caption's template on scenes that
vary the true one along one or two facts (`AXES`: colours or shapes exchanged, the first object's
colour, the relation, sizes, fills, pointing, motion), keeping only captions whose facts differ from the
true one, so every negative is false for the image. The five options are drawn alike from that small
grid of scenes, so the true caption is no centre of its options and a scorer that sees no image picks
it 1 time in 5 (`false_captions`; tests/test_data_synthetic.py checks word-overlap, length and
blank-image CLIP scorers).
"""

from __future__ import annotations

import json
import random
from collections.abc import Callable
from dataclasses import dataclass, replace
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
from PIL import Image, ImageDraw

from .categories import CATEGORIES
from .hard_negatives import stable_seed

# Every colour a scene may use (RGB, far enough apart to tell at 32 px) and what it is the colour of.
# The default world uses the first six (PALETTE); SceneSpace can widen it.
COLOURS: dict[str, tuple[int, int, int]] = {
    "red": (220, 40, 40), "green": (40, 170, 60), "blue": (40, 80, 220),
    "yellow": (235, 200, 30), "purple": (140, 60, 180), "orange": (245, 140, 30),
    "cyan": (40, 200, 210), "pink": (240, 120, 190), "brown": (130, 80, 40), "black": (20, 20, 20),
    "grey": (130, 130, 130), "lime": (160, 230, 40), "navy": (20, 30, 110), "teal": (20, 120, 120),
    "maroon": (120, 10, 30), "olive": (120, 120, 20), "gold": (200, 160, 60), "silver": (195, 195, 205),
    "violet": (200, 130, 240), "magenta": (230, 20, 230), "indigo": (70, 0, 130), "coral": (255, 127, 80),
    "beige": (225, 210, 170), "turquoise": (60, 225, 200),
}
COLOUR_THINGS = {
    "red": "ripe tomatoes", "green": "fresh grass", "blue": "a clear sky",
    "yellow": "a banana", "purple": "grapes", "orange": "a pumpkin",
    "cyan": "a tropical lagoon", "pink": "cherry blossom", "brown": "chocolate", "black": "coal",
    "grey": "storm clouds", "lime": "a lime", "navy": "a sailor's uniform", "teal": "a peacock's neck",
    "maroon": "red wine", "olive": "green olives", "gold": "a gold coin", "silver": "a spoon",
    "violet": "lavender", "magenta": "fuchsia flowers", "indigo": "a night sky", "coral": "a coral reef",
    "beige": "sand", "turquoise": "a turquoise stone",
}
PALETTE: dict[str, tuple[int, int, int]] = {name: COLOURS[name] for name in list(COLOURS)[:6]}
SHAPES = ("circle", "square", "triangle")
SIZE_RADIUS = {"small": 0.10, "large": 0.17}  # radius as a fraction of the image side
FILLS = ("filled", "outlined")
DIRECTIONS = {"left": (-1, 0), "right": (1, 0), "up": (0, -1), "down": (0, 1)}
RELATIONS = {"left of": "left", "right of": "right", "above": "up", "below": "down"}
OPPOSITE = {"left": "right", "right": "left", "up": "down", "down": "up",
            "left of": "right of", "right of": "left of", "above": "below", "below": "above"}
SIDE_WORD = {"left": "left", "right": "right", "up": "top", "down": "bottom"}
SWAP_TYPES = ("swap_att", "swap_obj", "swap_rel")


@dataclass(frozen=True)
class SceneSpace:
    """What a sampled scene may contain; the default is the world of `generate_synthetic` and the demo.

    A narrower or wider space serves learning studies, e.g. 24 colours, large filled shapes and
    left/right relations only: `SceneSpace(colours=tuple(COLOURS), sizes=("large",), fills=("filled",),
    relations=("left of", "right of"))`. The default space samples exactly as the generator always did.
    """

    colours: tuple[str, ...] = tuple(PALETTE)
    shapes: tuple[str, ...] = SHAPES
    sizes: tuple[str, ...] = tuple(SIZE_RADIUS)
    fills: tuple[str, ...] = FILLS
    relations: tuple[str, ...] = tuple(RELATIONS)
    # True: every category an image is annotated with shows in it (`CATEGORY_CUES`), not only H and T
    category_cues: bool = False

    def __post_init__(self) -> None:
        known = {"colours": COLOURS, "shapes": SHAPES, "sizes": SIZE_RADIUS, "fills": FILLS, "relations": RELATIONS}
        for name, allowed in known.items():
            values = getattr(self, name)
            unknown = [v for v in values if v not in allowed]
            if unknown or not values:
                raise ValueError(f"SceneSpace.{name}: {unknown or 'empty'} not among {list(allowed)}")
        for name in ("colours", "shapes"):  # the two objects of a scene differ in both
            if len(set(getattr(self, name))) < 2:
                raise ValueError(f"SceneSpace.{name} needs at least 2 distinct values, got {getattr(self, name)}")
        if self.category_cues:  # each cue must be able to be present and absent
            horizontal = {RELATIONS[r] in ("left", "right") for r in self.relations}
            if "triangle" not in self.shapes or len(self.shapes) < 3 or len(self.sizes) < 2 or len(self.fills) < 2 or len(horizontal) < 2:
                raise ValueError("SceneSpace.category_cues needs the triangle and 2 other shapes, both sizes, both fills "
                                 f"and a horizontal and a vertical relation, got {self}")


DEFAULT_SPACE = SceneSpace()

# What shows each category in an image of a `SceneSpace(category_cues=True)` world: an image is annotated
# with a category exactly when its cue is there (3 of the 5, drawn alike, so each one 60% of images).
CATEGORY_CUES: dict[str, Callable[["Scene"], bool]] = {
    "S": lambda s: RELATIONS[s.relation] in ("left", "right"),  # side by side, not one above the other
    "A": lambda s: any(o.fill == "outlined" for o in s.objects),
    "H": lambda s: any(o.shape == "triangle" for o in s.objects),
    "T": lambda s: s.mover is not None,  # a motion trail
    "P": lambda s: s.objects[0].size != s.objects[1].size,
}


@dataclass(frozen=True)
class SceneObject:
    colour: str
    shape: str
    size: str  # "small" | "large"
    fill: str  # "filled" | "outlined"
    points: str | None = None  # pointing direction, triangles only

    @property
    def name(self) -> str:
        return f"{self.colour} {self.shape}"


@dataclass(frozen=True)
class Scene:
    """Two objects; `relation` says where objects[0] is relative to objects[1]."""

    objects: tuple[SceneObject, SceneObject]
    relation: str
    mover: int | None = None  # index of the object with a motion trail
    motion: str | None = None  # its direction of motion

    def canonical(self) -> tuple:
        """Facts of the scene independent of which object is listed first."""
        a, b = self.objects
        rel = self.relation
        if rel in ("right of", "below"):
            a, b, rel = b, a, OPPOSITE[rel]
        moving = None if self.mover is None else (self.objects[self.mover], self.motion)
        return (a, b, rel, moving)

    def categories(self) -> tuple[str, ...]:
        applicable = ["S", "A", "P"]
        if any(o.shape == "triangle" for o in self.objects):
            applicable.append("H")
        if self.mover is not None:
            applicable.append("T")
        return tuple(c for c in CATEGORIES if c in applicable)


def _a(word: str) -> str:
    return ("an " if word[0] in "aeiou" else "a ") + word


# ---------------------------------------------------------------- caption templates (scene -> text)


def _s_inverse(s: Scene) -> str:
    a, b = s.objects
    return f"the {a.name} is {s.relation} the {b.name}, so the {b.name} is {OPPOSITE[s.relation]} the {a.name}"


def _s_side(s: Scene) -> str:
    a, b = s.objects
    side = SIDE_WORD[RELATIONS[s.relation]]
    return f"the {b.name} has the {a.name} on its {side} side"


def _s_edge(s: Scene) -> str:
    a, b = s.objects
    edge = SIDE_WORD[RELATIONS[s.relation]]
    return f"the {a.name} is {s.relation} the {b.name}, so it is nearer the {edge} edge of the image"


def _a_colour(s: Scene) -> str:
    a = s.objects[0]
    return f"the {a.shape} is {a.colour}, the colour of {COLOUR_THINGS[a.colour]}"


def _a_size(s: Scene) -> str:
    a, b = s.objects
    if a.size == b.size:
        return f"the {a.name} and the {b.name} are the same size"
    comparison = "larger" if a.size == "large" else "smaller"
    return f"the {a.name} is {comparison} than the {b.name}"


def _a_fill(s: Scene) -> str:
    a = s.objects[1]
    if a.fill == "outlined":
        return f"the {a.name} is only outlined, so the white background shows through it"
    return f"the {a.name} is filled in, so no background shows through it"


def _h_pointing(s: Scene) -> str:
    t = 0 if s.objects[0].shape == "triangle" else 1
    tri, other = s.objects[t], s.objects[1 - t]
    towards = RELATIONS[s.relation] if t == 1 else OPPOSITE[RELATIONS[s.relation]]  # from tri to other
    if tri.points == towards:
        return f"the {tri.name} points toward the {other.name}, as if it is chasing it"
    if tri.points == OPPOSITE[towards]:
        return f"the {tri.name} points away from the {other.name}, as if it is fleeing from it"
    return f"the {tri.name} points {tri.points}, so it is not heading for the {other.name}"


def _h_arrow(s: Scene) -> str:
    tri = next(o for o in s.objects if o.shape == "triangle")
    return f"the {tri.name} points {tri.points} like an arrow, so it would go {tri.points} if it moved forward"


def _t_trail(s: Scene) -> str:
    mover = s.objects[s.mover]
    side = SIDE_WORD[OPPOSITE[s.motion]]
    return f"the {mover.name} leaves a faint trail on its {side} side, so it is moving {s.motion}"


def _t_approach(s: Scene) -> str:
    mover, other = s.objects[s.mover], s.objects[1 - s.mover]
    towards = RELATIONS[s.relation] if s.mover == 1 else OPPOSITE[RELATIONS[s.relation]]
    if s.motion == towards:
        return f"the {mover.name} is moving toward the {other.name}, so soon they will be closer together"
    return f"the {mover.name} is moving away from the {other.name}, so soon they will be farther apart"


def _p_push(s: Scene) -> str:
    a, b = s.objects
    if a.size == b.size:
        return f"the {a.name} and the {b.name} are the same size, so they would be about as hard to push"
    big, small = (a, b) if a.size == "large" else (b, a)
    return f"the large {big.name} would be harder to push than the small {small.name}"


def _p_fall(s: Scene) -> str:
    a, b = s.objects
    if s.relation in ("above", "below"):
        upper, lower = (a, b) if s.relation == "above" else (b, a)
        return f"the {upper.name} is above the {lower.name}, so if it fell straight down it would land on it"
    return f"the {a.name} is beside the {b.name}, so if it fell straight down it would miss the {b.name}"


TEMPLATES: dict[str, tuple[Callable[[Scene], str], ...]] = {
    "S": (_s_inverse, _s_side, _s_edge),
    "A": (_a_colour, _a_size, _a_fill),
    "H": (_h_pointing, _h_arrow),
    "T": (_t_trail, _t_approach),
    "P": (_p_push, _p_fall),
}


def descriptive_captions(s: Scene) -> list[str]:
    a, b = s.objects
    return [
        f"{_a(a.name)} and {_a(b.name)}",
        f"{_a(a.size)} {a.fill} {a.name} and {_a(b.size)} {b.fill} {b.name} on a white background",
        f"{_a(a.name)} {s.relation} {_a(b.name)}",
    ]


def relation_caption(s: Scene) -> str:
    a, b = s.objects
    return f"the {a.name} is {s.relation} the {b.name}"


# ---------------------------------------------------------------- perturbations (for false captions)


def _swap_field(s: Scene, name: str) -> Scene:
    a, b = s.objects
    if name == "shape":  # a triangle keeps its pointing direction
        a, b = replace(a, shape=b.shape, points=b.points), replace(b, shape=a.shape, points=a.points)
    else:
        a, b = replace(a, **{name: getattr(b, name)}), replace(b, **{name: getattr(a, name)})
    return replace(s, objects=(a, b))


def _reversed(s: Scene) -> Scene:
    """The same scene with the objects listed the other way round."""
    mover = None if s.mover is None else 1 - s.mover
    return Scene((s.objects[1], s.objects[0]), OPPOSITE[s.relation], mover, s.motion)


def _with_relation(s: Scene, relation: str) -> Scene:
    """s in another relation; a mover keeps moving toward (or away from) the other object, on the new axis."""
    if s.mover is None:
        return replace(s, relation=relation)
    same_way = s.motion == RELATIONS[s.relation]
    return replace(s, relation=relation, motion=RELATIONS[relation] if same_way else OPPOSITE[RELATIONS[relation]])


def _first_colours(s: Scene) -> list[Scene]:
    a, b = s.objects
    palette = PALETTE if a.colour in PALETTE and b.colour in PALETTE else COLOURS
    return [replace(s, objects=(replace(a, colour=c), b)) for c in palette if c != b.colour]


def _pointings(s: Scene) -> list[Scene]:
    if not any(o.points for o in s.objects):
        return [s]
    return [replace(s, objects=tuple(replace(o, points=d) if o.points else o for o in s.objects)) for d in DIRECTIONS]


def _motions(s: Scene) -> list[Scene]:
    if s.mover is None:
        return [s]
    axis = RELATIONS[s.relation]
    return [replace(s, mover=m, motion=d) for m in (0, 1) for d in (axis, OPPOSITE[axis])]


# Ways to vary one fact of a scene: scene -> every value of that fact (the scene itself included), each a
# scene the sampler could have drawn. The options of a 5-way item vary the true scene along one or two of
# these; every value along them is equally likely a priori, so the true caption is one of five captions
# drawn alike from one small grid of scenes, and nothing but the image tells it apart.
AXES: dict[str, Callable[[Scene], list[Scene]]] = {
    "colour order": lambda s: [s, _swap_field(s, "colour")],
    "shape order": lambda s: [s, _swap_field(s, "shape")],
    "first colour": _first_colours,
    "relation": lambda s: [_with_relation(s, r) for r in RELATIONS],
    "sizes": lambda s: [replace(s, objects=(replace(s.objects[0], size=x), replace(s.objects[1], size=y)))
                        for x in SIZE_RADIUS for y in SIZE_RADIUS],
    "fills": lambda s: [replace(s, objects=(replace(s.objects[0], fill=x), replace(s.objects[1], fill=y)))
                        for x in FILLS for y in FILLS],
    "pointing": _pointings,
    "motion": _motions,
}
# Pairs span a product grid, except "colour order" with "first colour": after the swap the first object
# may take every colour but the true first one, so the true pair of colours would be the grid's centre.
AXIS_GROUPS: tuple[tuple[str, ...], ...] = tuple((a,) for a in AXES) + tuple(
    (a, b) for i, a in enumerate(AXES) for b in list(AXES)[i + 1:] if {a, b} != {"colour order", "first colour"})


def _render(template: Callable[[Scene], str], scene: Scene) -> str | None:
    try:
        return template(scene)
    except (StopIteration, TypeError, KeyError):  # the template does not apply to this scene
        return None


def false_captions(s: Scene, template: Callable[[Scene], str], n: int, rng: random.Random) -> list[str]:
    """n distinct captions from `template` that are false for `s`, drawn alike with its true caption.

    One or two axes (AXES) are picked at random among those along which `template` renders at least n
    captions that differ from the truth; the negatives are n of those captions at random. The truth is
    thus no centre of its options (a negative differs from it as much as from another negative), which
    makes any scorer that sees no image pick it 1 time in n + 1. `[]` when no axis group gives n.
    """
    truths = {_render(template, view) for view in (s, _reversed(s))}
    groups = list(AXIS_GROUPS)
    rng.shuffle(groups)
    for group in groups:
        grid = [s]
        for axis in group:
            grid = [varied for scene in grid for varied in AXES[axis](scene)]
        claims: dict[str, set[str | None]] = {}  # false caption -> its phrasings (either object order)
        for scene in grid:
            text = _render(template, scene)
            if text is not None and text not in truths and text not in claims:
                claims[text] = {text, _render(template, _reversed(scene))}
        if len(claims) < n:
            continue
        chosen: list[str] = []
        for text in rng.sample(sorted(claims), len(claims)):
            if not claims[text] & set(chosen):  # never two phrasings of one false claim
                chosen.append(text)
                if len(chosen) == n:
                    return chosen
    return []


# ---------------------------------------------------------------- scene sampling and drawing


def sample_scene(rng: random.Random, space: SceneSpace = DEFAULT_SPACE) -> Scene:
    colours = rng.sample(space.colours, 2)
    shapes = rng.sample(space.shapes, 2)
    objects = tuple(
        SceneObject(
            colour=c,
            shape=sh,
            size=rng.choice(space.sizes),
            fill=rng.choice(space.fills),
            points=rng.choice(tuple(DIRECTIONS)) if sh == "triangle" else None,
        )
        for c, sh in zip(colours, shapes)
    )
    relation = rng.choice(space.relations)
    mover = motion = None
    if rng.random() < 0.5:  # motion only along the relation axis, so "toward/away" is well defined
        mover = rng.randrange(2)
        axis = RELATIONS[relation]
        motion = rng.choice((axis, OPPOSITE[axis]))
    return Scene(objects, relation, mover, motion)  # type: ignore[arg-type]


def _layout(scene: Scene, size: int, rng: random.Random) -> list[tuple[float, float]] | None:
    """Object centres satisfying the relation, inside the image, trails included; None if none found."""
    radii = [SIZE_RADIUS[o.size] * size for o in scene.objects]
    dx, dy = DIRECTIONS[RELATIONS[scene.relation]]
    margin = 0.04 * size
    for _ in range(200):
        centres = [(rng.uniform(r + margin, size - r - margin), rng.uniform(r + margin, size - r - margin)) for r in radii]
        (x0, y0), (x1, y1) = centres
        along = (x0 - x1) * dx + (y0 - y1) * dy  # > 0 when object 0 lies in the relation's direction
        across = abs((x0 - x1) * dy) + abs((y0 - y1) * dx)
        if along < radii[0] + radii[1] + 0.06 * size or across > 0.15 * size:
            continue
        circles = [_circles(scene, i, centres[i], radii[i]) for i in range(2)]
        inside = all(margin <= cx - r and cx + r <= size - margin and margin <= cy - r and cy + r <= size - margin
                     for group in circles for cx, cy, r in group)
        apart = all((ax - bx) ** 2 + (ay - by) ** 2 > (ar + br + 1) ** 2
                    for ax, ay, ar in circles[0] for bx, by, br in circles[1])
        if inside and apart:
            return centres
    return None


def _circles(scene: Scene, i: int, centre: tuple[float, float], r: float) -> list[tuple[float, float, float]]:
    """Bounding circles of object i and of its trail dots."""
    out = [(centre[0], centre[1], r)]
    if scene.mover == i:
        mx, my = DIRECTIONS[scene.motion]
        for dist, radius in ((1.45, 0.3), (2.05, 0.22)):
            out.append((centre[0] - mx * dist * r, centre[1] - my * dist * r, radius * r))
    return out


def _lighter(rgb: tuple[int, int, int], amount: float) -> tuple[int, int, int]:
    return tuple(int(c + (255 - c) * amount) for c in rgb)  # type: ignore[return-value]


def draw_scene(scene: Scene, centres: list[tuple[float, float]], size: int) -> Image.Image:
    image = Image.new("RGB", (size, size), (255, 255, 255))
    draw = ImageDraw.Draw(image)
    width = max(1, round(size / 32))
    for i, (obj, (cx, cy)) in enumerate(zip(scene.objects, centres)):
        r = SIZE_RADIUS[obj.size] * size
        colour = COLOURS[obj.colour]
        for tx, ty, tr in _circles(scene, i, (cx, cy), r)[1:]:
            draw.ellipse((tx - tr, ty - tr, tx + tr, ty + tr), fill=_lighter(colour, 0.6))
        fill = colour if obj.fill == "filled" else None
        if obj.shape == "circle":
            draw.ellipse((cx - r, cy - r, cx + r, cy + r), fill=fill, outline=colour, width=width)
        elif obj.shape == "square":
            h = 0.85 * r
            draw.rectangle((cx - h, cy - h, cx + h, cy + h), fill=fill, outline=colour, width=width)
        else:
            px, py = DIRECTIONS[obj.points]
            apex = (cx + px * r, cy + py * r)
            base = [(cx - px * r * 0.7 + py * r * 0.9, cy - py * r * 0.7 + px * r * 0.9),
                    (cx - px * r * 0.7 - py * r * 0.9, cy - py * r * 0.7 - px * r * 0.9)]
            draw.polygon([apex, *base], fill=fill, outline=colour, width=width)
    return image


# ---------------------------------------------------------------- one image's records


@dataclass
class SyntheticItem:
    image: Image.Image
    scene: Scene
    tb: list[str]
    trl: list[str]
    trp: str
    trp_text: str
    trp_image: list[str]


def make_item(seed: int, index: int, image_size: int = 64, space: SceneSpace = DEFAULT_SPACE) -> SyntheticItem:
    """Image and captions of synthetic image `index`; a pure function of (seed, index, image_size, space)."""
    rng = random.Random(stable_seed("reasonclip-synthetic", seed, index))
    cued = sorted(rng.sample(CATEGORIES, 3), key=CATEGORIES.index) if space.category_cues else None
    while True:
        scene = sample_scene(rng, space)
        if cued is not None and [c for c in CATEGORIES if CATEGORY_CUES[c](scene)] != cued:
            continue  # a scene that shows exactly the drawn categories
        centres = _layout(scene, image_size, rng)
        if centres is not None:
            break
    applicable = scene.categories()
    trl_categories = rng.sample(applicable, 3)
    trl = [rng.choice(TEMPLATES[c])(scene) for c in trl_categories]
    if cued is not None:
        image_categories = cued
    else:
        image_categories = [c for c in ("H", "T") if c in applicable]
        image_categories += rng.sample(["S", "A", "P"], 3 - len(image_categories))
        image_categories = [c for c in CATEGORIES if c in image_categories]
    trp_text = rng.choice(image_categories)
    trp = rng.choice(TEMPLATES[trp_text])(scene)
    return SyntheticItem(
        image=draw_scene(scene, centres, image_size),
        scene=scene,
        tb=descriptive_captions(scene),
        trl=trl,
        trp=trp,
        trp_text=trp_text,
        trp_image=image_categories,
    )


def swap_negatives(scene: Scene) -> dict[str, str]:
    """Bag-of-words-identical false versions of `relation_caption(scene)`, one per swap type."""
    a, b = scene.objects
    return {
        "swap_att": relation_caption(_swap_field(scene, "colour")),
        "swap_obj": relation_caption(_swap_field(scene, "shape")),
        "swap_rel": relation_caption(replace(scene, objects=(b, a))),
    }


def rclip_items(scene: Scene, categories: list[str], rng: random.Random) -> list[dict]:
    """One 5-way item per category: the true caption and 4 false ones from the same template."""
    items = []
    for category in categories:
        templates = list(TEMPLATES[category])
        rng.shuffle(templates)
        for template in templates:
            negatives = false_captions(scene, template, 4, rng)
            if len(negatives) == 4:
                break
        else:  # pragma: no cover - every template has >= 4 perturbations that change its text
            raise RuntimeError(f"no 5-way item for category {category} in scene {scene}")
        options = [template(scene)] + negatives
        order = list(range(5))
        rng.shuffle(order)
        items.append({"category": category, "options": [options[i] for i in order], "answer": order.index(0)})
    return items


# ---------------------------------------------------------------- writer

# The published schemas (METHOD.md) and chunk names of ReasonLite-42M, ReasonPro-16M and CC12M-Refined.
LITE_SCHEMA = pa.schema([("id", pa.string()), ("image_path", pa.string()), ("tb", pa.list_(pa.string())),
                         ("trl", pa.list_(pa.string()))])
PRO_SCHEMA = pa.schema([("image_path", pa.string()), ("trp", pa.string()), ("trp_cls", pa.string()),
                        ("trp_cls_ls", pa.list_(pa.string()))])
REFINED_SCHEMA = pa.schema([("image_path", pa.string()), ("tb", pa.list_(pa.string()))])
TRAIN_FILES = {"reasonlite": "cc12m_tb_trl_chunk_00", "reasonpro": "cc12m_trp_chunk_00", "cc12m_refined": "cc12m_tb_chunk_00"}
SWAP_SCHEMA = pa.schema([(n, pa.string()) for n in ("image_path", "caption", "negative_caption", "swap_type")])
# RCLIP-Bench as the authors' dataset/build_rclip_parquet.py writes it with `datasets`; the
# "huggingface" metadata makes datasets.load_dataset decode `image` as an Image() feature.
_HF_STRING = {"dtype": "string", "_type": "Value"}
BENCH_SCHEMA = pa.schema(
    [("id", pa.string()), ("image_name", pa.string()), ("text", pa.string()), ("version", pa.string()),
     ("sets", pa.list_(pa.struct([("tag", pa.string()), ("gt", pa.string()), ("neg", pa.list_(pa.string()))]))),
     ("image", pa.struct([("bytes", pa.binary()), ("path", pa.string())]))],
    metadata={"huggingface": json.dumps({"info": {"features": {
        "id": _HF_STRING, "image_name": _HF_STRING, "text": _HF_STRING, "version": _HF_STRING,
        "sets": [{"tag": _HF_STRING, "gt": _HF_STRING, "neg": [_HF_STRING]}], "image": {"_type": "Image"}}}})},
)
BENCH_VERSION = "v1"


def rclip_bench_row(index: int, image_path: str, root: Path, text: str, items: list[dict]) -> dict:
    """One released-format row from rclip_items' 5-way items: the true option becomes gt, the rest neg (in order)."""
    sets = [{"tag": item["category"], "gt": item["options"][item["answer"]],
             "neg": [option for k, option in enumerate(item["options"]) if k != item["answer"]]} for item in items]
    name = Path(image_path).name
    return {"id": str(index), "image_name": name, "text": text, "version": BENCH_VERSION, "sets": sets,
            "image": {"bytes": (root / image_path).read_bytes(), "path": name}}


def generate_synthetic(
    out_dir: str | Path,
    num_images: int = 500,
    seed: int = 0,
    image_size: int = 64,
    eval_fraction: float = 0.2,
    write_jsonl: bool = False,
) -> dict[str, Path]:
    """Write the synthetic dataset (see module docstring) and return its paths.

    Keys: ``root`` (the image root: image paths in every file are relative to it), ``images``,
    ``reasonlite``, ``reasonpro``, ``cc12m_refined``, ``swap_eval``, ``rclip_bench`` and, with write_jsonl,
    ``reasonlite_jsonl``, ``reasonpro_jsonl``.
    """
    if num_images < 2:
        raise ValueError(f"num_images must be >= 2, got {num_images}")
    if not 0.0 < eval_fraction < 1.0:
        raise ValueError(f"eval_fraction must be in (0, 1), got {eval_fraction}")
    if image_size < 32:
        raise ValueError(f"image_size must be >= 32 pixels, got {image_size}")
    root = Path(out_dir)
    (root / "images").mkdir(parents=True, exist_ok=True)
    num_eval = min(num_images - 1, max(1, round(num_images * eval_fraction)))
    num_train = num_images - num_eval
    lite, pro, refined, swaps, bench = [], [], [], [], []
    for index in range(num_images):
        item = make_item(seed, index, image_size)
        image_path = f"images/{index:06d}.png"
        item.image.save(root / image_path, format="PNG", compress_level=1)
        if index < num_train:
            lite.append({"id": f"{index:09d}", "image_path": image_path, "tb": item.tb, "trl": item.trl})
            pro.append({"image_path": image_path, "trp": item.trp, "trp_cls": item.trp_text, "trp_cls_ls": item.trp_image})
            refined.append({"image_path": image_path, "tb": item.tb})
            continue
        caption = relation_caption(item.scene)
        for swap_type, negative in swap_negatives(item.scene).items():
            swaps.append({"image_path": image_path, "caption": caption, "negative_caption": negative,
                          "swap_type": swap_type})
        rng = random.Random(stable_seed("reasonclip-bench", seed, index))
        bench.append(rclip_bench_row(index, image_path, root, caption, rclip_items(item.scene, item.trp_image, rng)))

    paths = {
        "root": root,
        "images": root / "images",
        **{key: root / f"{stem}.parquet" for key, stem in TRAIN_FILES.items()},
        "swap_eval": root / "swap_eval.parquet",
        "rclip_bench": root / "rclip_bench.parquet",
    }
    for key, rows, schema in (("reasonlite", lite, LITE_SCHEMA), ("reasonpro", pro, PRO_SCHEMA), ("cc12m_refined", refined, REFINED_SCHEMA),
                              ("swap_eval", swaps, SWAP_SCHEMA), ("rclip_bench", bench, BENCH_SCHEMA)):
        pq.write_table(pa.Table.from_pylist(rows, schema=schema), paths[key])
    if write_jsonl:
        for key, rows in (("reasonlite", lite), ("reasonpro", pro)):
            paths[f"{key}_jsonl"] = root / f"{TRAIN_FILES[key]}.jsonl"
            paths[f"{key}_jsonl"].write_text("".join(json.dumps(row) + "\n" for row in rows))
    return paths
