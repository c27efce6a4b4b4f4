"""The world: scenes of coloured shapes on textured backgrounds, their 32x32 renderings and captions.

A :class:`Scene` has one to four identical objects (same shape, colour and size), each in its own
quadrant of the canvas, on a background of a muted tone with a texture pattern. Its semantic
attributes are

* shape: one of :data:`SHAPES`; colour: one of :data:`COLOURS`; size: ``"small"`` or ``"large"``;
* count: 1 to 4; texture: one of :data:`TEXTURES`.

Everything else (object centres, radius, fill jitter, background tone, pattern period/angle/phase)
is nuisance, sampled with the scene. The palette is deliberately muted: objects are painted at 40-60 %
opacity over mid-grey backgrounds and textures have low contrast, so that pixel differences carrying
the attributes are small (a few tens of 1/255 steps) and an l-inf budget of 4/255 matters, as it does
for natural images.

Determinism and random access: the item ``index`` of a stream ``stream`` under ``seed`` is drawn
from :func:`item_rng` ``(stream, index, seed)``, a generator seeded from a hash of the three, so any
item can be generated alone and always comes out identical (same numpy version).

Held-out combinations: :data:`HELD_OUT` holds one colour per shape and one shape per colour (a
Latin-square choice: shape ``i`` with colour ``(i + 1) % 6``, in the orders of :data:`SHAPES` and
:data:`COLOURS`): green circle, blue square, yellow triangle, purple cross, cyan ring and red
diamond. Pretraining pairs (:func:`pretraining_pair`) never show them; the zero-shot
dataset ``world-combo`` tests on them, so it measures compositional generalisation.

Captions (:func:`caption`) name the scene's attributes in varied phrasings, each attribute omitted at
random (a generic noun such as ``"shapes"`` stands in for an omitted shape), so that the text tower
sees every word in many contexts; :func:`vocabulary` lists every word a caption can contain.
"""

from __future__ import annotations

import hashlib
import re
from dataclasses import dataclass

import numpy as np

IMAGE_SIZE = 32
SUPERSAMPLE = 3

SHAPES: tuple[str, ...] = ("circle", "square", "triangle", "cross", "ring", "diamond")
COLOURS: dict[str, tuple[float, float, float]] = {
    "red": (0.90, 0.12, 0.10),
    "green": (0.15, 0.72, 0.18),
    "blue": (0.15, 0.25, 0.92),
    "yellow": (0.95, 0.85, 0.12),
    "purple": (0.62, 0.18, 0.80),
    "cyan": (0.12, 0.80, 0.85),
}
COLOUR_NAMES: tuple[str, ...] = tuple(COLOURS)
SIZES: tuple[str, ...] = ("small", "large")
COUNT_WORDS: tuple[str, ...] = ("one", "two", "three", "four")
TEXTURES: tuple[str, ...] = ("plain", "striped", "dotted", "checkered")
GENERIC_NOUNS: tuple[str, ...] = ("shape", "object", "thing")

HELD_OUT: frozenset[tuple[str, str]] = frozenset(
    (shape, COLOUR_NAMES[(i + 1) % len(COLOUR_NAMES)]) for i, shape in enumerate(SHAPES)
)

_RADIUS = {"small": (3.0, 3.8), "large": (5.6, 7.0)}
# Ranges of the nuisance parameters (uniform): grey level of the background, amplitude of the texture
# pattern, opacity of the paint over the background.
_BACKGROUND_TONE = (0.35, 0.65)
_TEXTURE_CONTRAST = (0.05, 0.10)
_OPACITY = (0.4, 0.6)
_QUADRANT_CENTRES = ((8.0, 8.0), (24.0, 8.0), (8.0, 24.0), (24.0, 24.0))  # (x, y)

# Caption grammar. "{}" is the noun phrase; "{be}" agrees with the count.
_FRAMES: tuple[str, ...] = (
    "a photo of {}",
    "an image of {}",
    "a picture of {}",
    "a drawing of {}",
    "a rendering of {}",
    "a scene with {}",
    "{}",
    "there {be} {}",
)
# "{}" is the framed sentence, "{texture}" the texture word.
_BACKDROPS: tuple[str, ...] = (
    "{} on a {texture} background",
    "{} in front of a {texture} background",
    "{} and the background is {texture}",
)
_P_COUNT, _P_SIZE, _P_COLOUR, _P_SHAPE, _P_TEXTURE = 0.5, 0.5, 0.6, 0.8, 0.5


@dataclass(frozen=True)
class Scene:
    """One scene: semantic attributes plus the nuisance parameters that fix its rendering.

    Attributes:
        shape, colour, size, count, texture: the semantic attributes (see module docstring).
        centres: ``count`` object centres ``(x, y)`` in pixel units of the 32x32 canvas.
        radius: object radius in pixels.
        fill: object RGB in ``[0, 1]``.
        background: background RGB in ``[0, 1]`` before the texture pattern.
        pattern: ``(period, angle, phase_x, phase_y, contrast)`` of the texture (unused by ``"plain"``).
    """

    shape: str
    colour: str
    size: str
    count: int
    texture: str
    centres: tuple[tuple[float, float], ...]
    radius: float
    fill: tuple[float, float, float]
    background: tuple[float, float, float]
    pattern: tuple[float, float, float, float, float]


def item_rng(stream: str, index: int, seed: int) -> np.random.Generator:
    """The generator of item ``index`` of ``stream`` under ``seed``; a pure function of the three."""
    digest = hashlib.blake2b(f"{stream}\x00{seed}\x00{index}".encode(), digest_size=16).digest()
    return np.random.default_rng(int.from_bytes(digest, "little"))


def _choice(rng: np.random.Generator, options: tuple) -> object:
    return options[int(rng.integers(len(options)))]


def sample_scene(
    rng: np.random.Generator,
    *,
    shape: str | None = None,
    colour: str | None = None,
    size: str | None = None,
    count: int | None = None,
    texture: str | None = None,
    exclude: frozenset[tuple[str, str]] = frozenset(),
) -> Scene:
    """Draw a scene; attributes given as arguments are fixed, the others uniform.

    ``exclude`` lists ``(shape, colour)`` pairs that must not occur: the colour is drawn uniformly
    among those allowed for the shape.

    Raises:
        ValueError: the fixed shape and colour form an excluded pair, or no colour is allowed.
    """
    shape = shape if shape is not None else _choice(rng, SHAPES)
    if colour is None:
        allowed = tuple(c for c in COLOUR_NAMES if (shape, c) not in exclude)
        if not allowed:
            raise ValueError(f"every colour is excluded for shape {shape!r}")
        colour = _choice(rng, allowed)
    elif (shape, colour) in exclude:
        raise ValueError(f"({shape!r}, {colour!r}) is excluded")
    size = size if size is not None else _choice(rng, SIZES)
    count = count if count is not None else int(rng.integers(1, 5))
    texture = texture if texture is not None else _choice(rng, TEXTURES)

    radius = float(rng.uniform(*_RADIUS[size]))
    slack = max(8.0 - radius - 0.5, 0.0)
    quadrants = rng.permutation(4)[:count]
    centres = tuple(
        (
            _QUADRANT_CENTRES[q][0] + float(rng.uniform(-slack, slack)),
            _QUADRANT_CENTRES[q][1] + float(rng.uniform(-slack, slack)),
        )
        for q in quadrants
    )
    background = np.clip(rng.uniform(*_BACKGROUND_TONE) + rng.uniform(-0.05, 0.05, 3), 0.0, 1.0)
    paint = np.asarray(COLOURS[colour]) * rng.uniform(0.85, 1.05) + rng.uniform(-0.04, 0.04, 3)
    fill = np.clip(background + rng.uniform(*_OPACITY) * (paint - background), 0.0, 1.0)
    pattern = (
        float(rng.uniform(4.0, 7.0)),
        float(rng.integers(4)) * np.pi / 4,
        float(rng.uniform(0.0, 8.0)),
        float(rng.uniform(0.0, 8.0)),
        float(rng.uniform(*_TEXTURE_CONTRAST) * (1 if rng.random() < 0.5 else -1)),
    )
    return Scene(
        shape=shape,
        colour=colour,
        size=size,
        count=count,
        texture=texture,
        centres=centres,
        radius=radius,
        fill=tuple(float(v) for v in fill),
        background=tuple(float(v) for v in background),
        pattern=pattern,
    )


def _grid() -> tuple[np.ndarray, np.ndarray]:
    """Supersampled pixel-centre coordinates ``(x, y)``, each ``(32*S, 32*S)``, in output-pixel units."""
    n = IMAGE_SIZE * SUPERSAMPLE
    coords = (np.arange(n, dtype=np.float32) + 0.5) / SUPERSAMPLE
    y, x = np.meshgrid(coords, coords, indexing="ij")
    return x, y


_X, _Y = _grid()


def _shape_mask(shape: str, u: np.ndarray, v: np.ndarray) -> np.ndarray:
    """Inside-mask of ``shape`` in coordinates scaled by the radius (the shape fits the unit disc)."""
    au, av = np.abs(u), np.abs(v)
    if shape == "circle":
        return u * u + v * v <= 1.0
    if shape == "square":
        return np.maximum(au, av) <= 0.82
    if shape == "triangle":
        return (v <= 0.75) & (au <= (v + 1.0) * 0.6)
    if shape == "cross":
        return ((au <= 0.34) & (av <= 1.0)) | ((av <= 0.34) & (au <= 1.0))
    if shape == "ring":
        r2 = u * u + v * v
        return (r2 <= 1.0) & (r2 >= 0.3)
    if shape == "diamond":
        return au + av <= 1.05
    raise ValueError(f"unknown shape {shape!r}")


def _texture(texture: str, pattern: tuple[float, float, float, float, float]) -> np.ndarray:
    """Additive texture on the supersampled grid, values in ``[-|contrast|, |contrast|]``."""
    period, angle, px, py, contrast = pattern
    if texture == "plain":
        return np.zeros_like(_X)
    if texture == "striped":
        t = (_X * np.cos(angle) + _Y * np.sin(angle) + px) / period
        return contrast * np.where((t % 1.0) < 0.5, 1.0, -1.0).astype(np.float32)
    if texture == "dotted":
        du = ((_X + px) % period) - period / 2
        dv = ((_Y + py) % period) - period / 2
        return contrast * 1.6 * (du * du + dv * dv <= (0.22 * period) ** 2).astype(np.float32)
    if texture == "checkered":
        cell = np.floor((_X + px) / (period * 0.75)) + np.floor((_Y + py) / (period * 0.75))
        return contrast * np.where(cell % 2 == 0, 1.0, -1.0).astype(np.float32)
    raise ValueError(f"unknown texture {texture!r}")


def render(scene: Scene) -> np.ndarray:
    """Render ``scene``: ``float32`` array ``(3, 32, 32)`` with values in ``[0, 1]``; deterministic.

    Drawn at ``SUPERSAMPLE`` times the resolution, then box-filtered down (anti-aliasing).
    """
    background = np.asarray(scene.background, dtype=np.float32)[:, None, None]
    canvas = np.clip(background + _texture(scene.texture, scene.pattern)[None], 0.0, 1.0)
    inside = np.zeros(_X.shape, dtype=bool)
    for cx, cy in scene.centres:
        inside |= _shape_mask(scene.shape, (_X - cx) / scene.radius, (_Y - cy) / scene.radius)
    fill = np.asarray(scene.fill, dtype=np.float32)[:, None, None]
    canvas = np.where(inside[None], fill, canvas)
    s = SUPERSAMPLE
    image = canvas.reshape(3, IMAGE_SIZE, s, IMAGE_SIZE, s).mean(axis=(2, 4))
    return np.clip(image, 0.0, 1.0).astype(np.float32)


def plural(noun: str) -> str:
    """English plural of a world noun (``"cross"`` -> ``"crosses"``)."""
    return noun + "es" if noun.endswith("s") else noun + "s"


def _fix_articles(sentence: str) -> str:
    """Use ``an`` before vowel-initial words and ``a`` elsewhere."""
    return re.sub(r"\ban? (?=(\w))", lambda m: "an " if m.group(1) in "aeiou" else "a ", sentence)


def caption(scene: Scene, rng: np.random.Generator) -> str:
    """A random caption of ``scene``: each attribute mentioned with a fixed probability, varied phrasing."""
    probabilities = (_P_COUNT, _P_SIZE, _P_COLOUR, _P_SHAPE, _P_TEXTURE)
    say_count, say_size, say_colour, say_shape, say_texture = (
        bool(said) for said in rng.random(len(probabilities)) < probabilities
    )
    noun = scene.shape if say_shape else _choice(rng, GENERIC_NOUNS)
    words = [scene.size] * say_size + [scene.colour] * say_colour
    words.append(plural(noun) if scene.count > 1 else noun)
    if say_count:
        words.insert(0, COUNT_WORDS[scene.count - 1])
    elif scene.count == 1:
        words.insert(0, "a")
    sentence = _choice(rng, _FRAMES).format(" ".join(words), be="is" if scene.count == 1 else "are")
    if say_texture:
        sentence = _choice(rng, _BACKDROPS).format(sentence, texture=scene.texture)
    return _fix_articles(sentence)


def pretraining_example(index: int, seed: int) -> tuple[Scene, str]:
    """Scene and caption of pretraining pair ``index``; the scene is never a held-out combination."""
    rng = item_rng("pretrain", index, seed)
    scene = sample_scene(rng, exclude=HELD_OUT)
    return scene, caption(scene, rng)


def pretraining_pair(index: int, seed: int) -> tuple[np.ndarray, str]:
    """Pretraining pair ``index``: ``(image (3, 32, 32) float32 in [0, 1], caption)``."""
    scene, text = pretraining_example(index, seed)
    return render(scene), text


def pretraining_set(n: int, seed: int) -> tuple[np.ndarray, list[str]]:
    """Pairs ``0..n-1``: images as ``uint8`` ``(n, 3, 32, 32)`` (quantised to 1/255) and captions."""
    images = np.empty((n, 3, IMAGE_SIZE, IMAGE_SIZE), dtype=np.uint8)
    captions = []
    for i in range(n):
        image, text = pretraining_pair(i, seed)
        images[i] = np.round(image * 255.0).astype(np.uint8)
        captions.append(text)
    return images, captions


def vocabulary() -> tuple[str, ...]:
    """Every word a caption can contain, sorted."""
    texts = [*_FRAMES, *_BACKDROPS, "a an is are", *SHAPES, *COLOUR_NAMES, *SIZES, *COUNT_WORDS, *TEXTURES]
    texts += [plural(noun) for noun in (*SHAPES, *GENERIC_NOUNS)] + list(GENERIC_NOUNS)
    words = {w for text in texts for w in re.findall(r"[a-z]+", text.lower())}
    return tuple(sorted(words - {"be", "texture"}))
