"""Procedural talking faces in numpy: a seeded identity, a mouth state and a head pose in, an RGB frame out.

    identity = FaceIdentity.sample(np.random.default_rng(7))
    frame = render(identity, MouthState(opening=0.6), Pose(dx=1.5, blink=0.0))   # (128, 128, 3) uint8
    measure_opening(frame, identity, Pose(dx=1.5))                               # ~0.6, from pixels only

Geometry is stored as fractions of the frame size, so one identity renders at any resolution. Every layer is
drawn in the head's own coordinates (u right, v down, in output pixels, origin at the face centre), which the
pose shifts and rotates; the frame is drawn at SUPERSAMPLE x the size with one-pixel soft edges and averaged
down, so edges are anti-aliased and sub-pixel head motion moves pixels smoothly.

The mouth: the upper lip stays put and the jaw drops, so the dark interior between the lips is
2 * SEAM_HALF_HEIGHT + opening * max_opening pixels tall (a thin dark seam when closed), with the upper teeth
covering TEETH_SHARE of it and a dark tongue at its bottom. `measure_opening` inverts exactly that from the
dark pixels inside `mouth_box`, which is what the lip-sync benchmark reads off generated frames.
"""

from __future__ import annotations

import functools
import math
from dataclasses import dataclass

import numpy as np

SUPERSAMPLE = 2
"""Render at 2x and average 2x2 blocks: anti-aliasing at a quarter of the cost of 4x."""

MOUTH_INTERIOR = (30.0, 8.0, 12.0)
"""RGB of the open mouth's back: darker than any lip or skin colour `FaceIdentity.sample` can draw."""

TONGUE = (72.0, 26.0, 34.0)
"""RGB of the tongue: a hint of shape, still dark enough to count as interior for `measure_opening`."""

TEETH = (236.0, 232.0, 218.0)

SEAM_HALF_HEIGHT = 0.35
"""Half height, in output pixels, of the dark line between closed lips."""

TEETH_SHARE = 0.22
"""Fraction of the open interior's height the upper teeth cover: proportional, so the dark height stays linear
in the opening."""

HAIR_STYLES = ("short", "long", "bob", "buzz")

_LUMA = np.array([0.299, 0.587, 0.114], np.float32)  # Rec. 601 luma: the "darkness" measure's brightness


def _luma(rgb) -> float:
    return float(np.dot(_LUMA, np.asarray(rgb, np.float32)))


@dataclass(frozen=True)
class FaceIdentity:
    """Everything that makes one synthetic person look like themselves. Lengths are fractions of the frame
    size (face_*, center_*) or of the face's half width (features); colours are RGB floats in [0, 255]."""

    center_x: float
    center_y: float
    face_width: float
    """Half width of the face ellipse, as a fraction of the frame size."""
    face_height: float
    """Half height of the face ellipse, as a fraction of the frame size."""
    jaw: float
    """How much the lower face narrows towards the chin (0: a plain ellipse)."""
    skin: tuple[float, float, float]
    ear_size: float
    eye_spacing: float
    """Horizontal distance of each eye from the centre line."""
    eye_y: float
    """Vertical position of the eyes, as a fraction of the face's half height (negative: above the centre)."""
    eye_width: float
    eye_height: float
    """Half height of the open eye, as a fraction of its half width."""
    iris_colour: tuple[float, float, float]
    iris_size: float
    """Iris radius as a fraction of the eye's half width."""
    gaze: float
    """Horizontal iris offset as a fraction of the eye's half width."""
    brow_gap: float
    brow_thickness: float
    brow_tilt: float
    """Degrees; positive raises the outer ends."""
    hair_style: str
    hair_colour: tuple[float, float, float]
    hair_volume: float
    """How far the hair extends beyond the skull (fraction of the face's half width)."""
    hairline: float
    """Height of the hairline above the face centre, as a fraction of the face's half height."""
    hair_part: float
    """Slope of the fringe (a side part): positive lowers it on the viewer's right."""
    nose_width: float
    nose_y: float
    """Nose tip position between the eyes (0) and the mouth (1)."""
    lip_colour: tuple[float, float, float]
    mouth_y: float
    """Vertical position of the lips' meeting line, as a fraction of the face's half height."""
    mouth_width: float
    """Half width of the lips at MouthState.width = 0.5."""
    lip_thickness: float
    max_opening: float
    """Height of the interior (teeth and tongue included) at opening 1."""
    background: tuple[tuple[float, float, float], tuple[float, float, float]]
    """Two colours of the linear background gradient."""
    background_angle: float
    """Direction of the gradient in degrees (0: left to right)."""
    background_spots: tuple[tuple[float, float, float, float, float, float], ...]
    """Soft background discs: (x, y, radius) as fractions of the frame, then RGB."""
    shirt_colour: tuple[float, float, float]

    @classmethod
    def sample(cls, rng: np.random.Generator) -> FaceIdentity:
        """Draw a random identity. Deterministic given the generator's state."""
        face_width = rng.uniform(0.19, 0.25)
        face_height = min(face_width * rng.uniform(1.2, 1.4), 0.34)
        skin = _sample_skin(rng)
        hair_style = HAIR_STYLES[int(rng.integers(len(HAIR_STYLES)))]
        return cls(
            center_x=rng.uniform(0.42, 0.58), center_y=rng.uniform(0.43, 0.52),
            face_width=face_width, face_height=face_height, jaw=rng.uniform(0.0, 0.35), skin=skin,
            ear_size=rng.uniform(0.16, 0.24),
            eye_spacing=rng.uniform(0.36, 0.46), eye_y=rng.uniform(-0.2, -0.04),
            eye_width=rng.uniform(0.15, 0.21), eye_height=rng.uniform(0.45, 0.65),
            iris_colour=_sample_iris(rng), iris_size=rng.uniform(0.45, 0.62), gaze=rng.uniform(-0.15, 0.15),
            brow_gap=rng.uniform(0.14, 0.24), brow_thickness=rng.uniform(0.035, 0.07),
            brow_tilt=rng.uniform(-12.0, 10.0),
            hair_style=hair_style, hair_colour=_sample_hair(rng), hair_volume=rng.uniform(0.06, 0.2),
            hairline=rng.uniform(0.45, 0.7), hair_part=rng.uniform(-0.35, 0.35),
            nose_width=rng.uniform(0.1, 0.16), nose_y=rng.uniform(0.4, 0.6),
            lip_colour=_sample_lips(rng, skin), mouth_y=rng.uniform(0.4, 0.5),
            mouth_width=rng.uniform(0.32, 0.44), lip_thickness=rng.uniform(0.06, 0.09),
            max_opening=rng.uniform(0.26, 0.34),
            background=(_sample_colour(rng), _sample_colour(rng)), background_angle=rng.uniform(0.0, 360.0),
            background_spots=tuple(
                (*rng.uniform(0.0, 1.0, 2), rng.uniform(0.08, 0.3), *_sample_colour(rng))
                for _ in range(int(rng.integers(0, 4)))
            ),
            shirt_colour=_sample_colour(rng),
        )


def _rgb(values) -> tuple[float, float, float]:
    return tuple(float(np.clip(c, 0.0, 255.0)) for c in values)


# Skin tones from light to deep; an identity is a random point between two neighbours, plus a small tint.
_SKIN_TONES = np.array([(255, 226, 200), (241, 196, 160), (226, 172, 120), (200, 140, 96), (160, 104, 70),
                        (124, 80, 54)], np.float32)
_HAIR_COLOURS = np.array([(22, 18, 16), (58, 38, 26), (102, 68, 40), (150, 82, 42), (214, 180, 120),
                          (170, 166, 160), (235, 232, 225)], np.float32)
_IRIS_COLOURS = np.array([(70, 45, 25), (110, 75, 40), (60, 110, 160), (80, 130, 90), (120, 120, 110)], np.float32)


def _sample_skin(rng: np.random.Generator) -> tuple[float, float, float]:
    i = int(rng.integers(len(_SKIN_TONES) - 1))
    tone = _SKIN_TONES[i] + rng.uniform(0, 1) * (_SKIN_TONES[i + 1] - _SKIN_TONES[i])
    return _rgb(tone + rng.normal(0.0, 6.0, 3))


def _sample_hair(rng: np.random.Generator) -> tuple[float, float, float]:
    if rng.uniform() < 0.08:  # now and then a dyed colour, so hair is not a proxy for skin tone
        return _sample_colour(rng)
    return _rgb(_HAIR_COLOURS[int(rng.integers(len(_HAIR_COLOURS)))] * rng.uniform(0.85, 1.15))


def _sample_iris(rng: np.random.Generator) -> tuple[float, float, float]:
    return _rgb(_IRIS_COLOURS[int(rng.integers(len(_IRIS_COLOURS)))] + rng.normal(0.0, 10.0, 3))


def _sample_lips(rng: np.random.Generator, skin) -> tuple[float, float, float]:
    """A reddish tint of the skin, kept bright enough (luma >= 85) to stay well apart from the interior."""
    red = np.array([205.0, 85.0, 95.0]) + rng.normal(0.0, 12.0, 3)
    lips = np.asarray(skin) * 0.45 + red * 0.55 * rng.uniform(0.8, 1.0)
    luma = _luma(lips)
    if luma < 85.0:
        lips = lips * (85.0 / luma)
    return _rgb(lips)


def _sample_colour(rng: np.random.Generator) -> tuple[float, float, float]:
    """Any colour, mid saturation: HSV with S in [0.15, 0.7] and V in [0.3, 0.95]."""
    h, s, v = rng.uniform(0, 1), rng.uniform(0.15, 0.7), rng.uniform(0.3, 0.95)
    k = (np.array([5.0, 3.0, 1.0]) + h * 6.0) % 6.0
    return _rgb(255.0 * (v - v * s * np.clip(np.minimum(k, 4.0 - k), 0.0, 1.0)))


@dataclass(frozen=True)
class Pose:
    """Head pose of one frame: offset in pixels of the rendered frame, rotation in degrees (positive turns
    the head clockwise on screen) and eyelid closure (0 open, 1 shut)."""

    dx: float = 0.0
    dy: float = 0.0
    rotation: float = 0.0
    blink: float = 0.0

    def __post_init__(self):
        if not 0.0 <= self.blink <= 1.0:
            raise ValueError(f"Pose.blink must be in [0, 1], got {self.blink!r}")


@dataclass(frozen=True)
class MouthState:
    """Mouth of one frame: opening (0 closed lips, 1 wide open) and width (0 rounded, 1 spread)."""

    opening: float = 0.0
    width: float = 0.5

    def __post_init__(self):
        if not (0.0 <= self.opening <= 1.0 and 0.0 <= self.width <= 1.0):
            raise ValueError(f"MouthState opening and width must be in [0, 1], got {self.opening!r}, {self.width!r}")


# ------------------------------------------------------------------------------------------------ drawing


class _Canvas:
    """The supersampled image plus the head's frame: paints soft-edged shapes given in head coordinates,
    computing each only over the pixels its bounding box covers."""

    def __init__(self, image: np.ndarray, center: tuple[float, float], rotation_deg: float):
        self.image = image  # (S * size, S * size, 3) float32
        self.cx, self.cy = center
        angle = math.radians(rotation_deg)
        self.cos, self.sin = math.cos(angle), math.sin(angle)

    def to_image(self, u: float, v: float) -> tuple[float, float]:
        """Head coordinates -> output-pixel coordinates of the frame."""
        return self.cx + u * self.cos - v * self.sin, self.cy + u * self.sin + v * self.cos

    def region(self, u0: float, v0: float, u1: float, v1: float):
        """The supersampled pixels covering the head-space box, and their head coordinates (u, v)."""
        xs, ys = zip(*(self.to_image(u, v) for u in (u0, u1) for v in (v0, v1)))
        n = self.image.shape[0]
        i0, i1 = max(int(min(xs) * SUPERSAMPLE) - 2, 0), min(int(max(xs) * SUPERSAMPLE) + 3, n)
        j0, j1 = max(int(min(ys) * SUPERSAMPLE) - 2, 0), min(int(max(ys) * SUPERSAMPLE) + 3, n)
        if i0 >= i1 or j0 >= j1:
            return None
        x = (np.arange(i0, i1, dtype=np.float32) + 0.5) / SUPERSAMPLE - self.cx
        y = (np.arange(j0, j1, dtype=np.float32) + 0.5) / SUPERSAMPLE - self.cy
        u = x[None, :] * self.cos + y[:, None] * self.sin
        v = -x[None, :] * self.sin + y[:, None] * self.cos
        return (slice(j0, j1), slice(i0, i1)), u, v

    def paint(self, window, coverage: np.ndarray, colour) -> None:
        """Alpha-blend `colour` (RGB, or an (h, w, 3) array) over the window with per-pixel coverage."""
        target = self.image[window]
        target += coverage[..., None] * (np.asarray(colour, np.float32) - target)


def _edge(distance: np.ndarray) -> np.ndarray:
    """Coverage from a signed distance in output pixels (negative inside): a ramp one supersampled pixel wide."""
    return np.clip(0.5 - distance * SUPERSAMPLE, 0.0, 1.0)


def _ellipse(u: np.ndarray, v: np.ndarray, cu: float, cv: float, a, b) -> np.ndarray:
    """Coverage of the ellipse centred (cu, cv) with half axes a, b (arrays allowed: a varying width)."""
    du, dv = u - cu, v - cv
    r = np.sqrt((du / a) ** 2 + (dv / b) ** 2)
    # First-order distance to the boundary, (r - 1) / |grad r|: exact on circles, good enough on ellipses.
    grad = np.sqrt((du / (a * a)) ** 2 + (dv / (b * b)) ** 2) / np.maximum(r, 1e-6)
    return _edge((r - 1.0) / np.maximum(grad, 1e-6))


def _rotated_ellipse(u, v, cu, cv, a, b, angle_deg):
    c, s = math.cos(math.radians(angle_deg)), math.sin(math.radians(angle_deg))
    du, dv = u - cu, v - cv
    return _ellipse(du * c + dv * s, -du * s + dv * c, 0.0, 0.0, a, b)


@functools.lru_cache(maxsize=8)  # a clip renders one identity; 8 keeps memory small at any size
def _background(identity: FaceIdentity, size: int) -> np.ndarray:
    """The static backdrop (gradient and soft discs) at the supersampled size; cached, it never moves."""
    n = size * SUPERSAMPLE
    p = (np.arange(n, dtype=np.float32) + 0.5) / n - 0.5
    angle = math.radians(identity.background_angle)
    t = np.clip(p[None, :] * math.cos(angle) + p[:, None] * math.sin(angle) + 0.5, 0.0, 1.0)[..., None]
    c0, c1 = (np.asarray(c, np.float32) for c in identity.background)
    image = c0 * (1.0 - t) + c1 * t
    for x, y, radius, *colour in identity.background_spots:
        r = np.sqrt((p[None, :] + 0.5 - x) ** 2 + (p[:, None] + 0.5 - y) ** 2) / radius
        alpha = 0.6 * np.clip(1.5 - r, 0.0, 1.0)[..., None]  # soft out-of-focus discs, not sharp shapes
        image += alpha * (np.asarray(colour, np.float32) - image)
    image.setflags(write=False)
    return image


@dataclass(frozen=True)
class _Layout:
    """An identity's geometry in output pixels at one frame size (head coordinates for the features)."""

    cx: float
    cy: float
    a: float  # face half width
    b: float  # face half height
    eye_u: float
    eye_v: float
    eye_w: float
    eye_h: float
    mouth_v: float  # where the lips meet
    mouth_w: float  # lip half width at MouthState.width 0.5
    upper_lip: float
    lower_lip: float
    max_open: float  # interior height added at opening 1
    nose_v: float

    def lip_half_width(self, width: float) -> float:
        return self.mouth_w * (0.8 + 0.4 * width)  # rounded (0) to spread (1): 80% to 120% of the rest width

    def mouth_bounds(self) -> tuple[float, float, float, float]:
        """Head-space box holding the lips at every opening and width, with a 1.5-pixel margin."""
        margin = 1.5
        half = self.lip_half_width(1.0) + margin
        top = self.mouth_v - SEAM_HALF_HEIGHT - self.upper_lip - margin
        bottom = self.mouth_v + SEAM_HALF_HEIGHT + self.max_open + self.lower_lip + margin
        return -half, top, half, bottom


def _layout(identity: FaceIdentity, size: int) -> _Layout:
    i = identity
    a, b = i.face_width * size, i.face_height * size
    eye_v, mouth_v, eye_w = i.eye_y * b, i.mouth_y * b, i.eye_width * a
    upper_lip = i.lip_thickness * a
    nose_w = i.nose_width * a
    # The nostrils must stay out of the mouth box whatever the proportions (they are dark enough to be
    # mistaken for an open mouth), so the nose tip is lifted when the sampled position would reach it.
    mouth_top = mouth_v - SEAM_HALF_HEIGHT - upper_lip - 1.5
    nose_v = min(eye_v + i.nose_y * (mouth_v - eye_v), mouth_top - 0.5 * nose_w - 1.0)
    return _Layout(cx=i.center_x * size, cy=i.center_y * size, a=a, b=b, eye_u=i.eye_spacing * a, eye_v=eye_v,
                   eye_w=eye_w, eye_h=i.eye_height * eye_w, mouth_v=mouth_v, mouth_w=i.mouth_width * a,
                   upper_lip=upper_lip, lower_lip=1.25 * upper_lip, max_open=i.max_opening * a, nose_v=nose_v)


def _rect(u, v, half_width: float, top: float, bottom: float) -> np.ndarray:
    return _edge(np.maximum(np.abs(u) - half_width, np.maximum(top - v, v - bottom)))


def _draw_hair_back(canvas: _Canvas, identity: FaceIdentity, g: _Layout) -> None:
    """The hair mass behind the head; how far down it reaches is the style."""
    style, vol = identity.hair_style, identity.hair_volume
    if style == "buzz":
        vol = 0.03
    ha, hb, hc = g.a * (1.0 + vol), g.b * (0.95 + 0.5 * vol), -0.1 * g.b
    reach = {"short": 0.0, "buzz": -0.25, "bob": 0.65, "long": 0.65}[style] * g.b
    window = canvas.region(-ha - 1, hc - hb - 1, ha + 1, max(reach, 0.0) + 1)
    if window is not None:
        win, u, v = window
        coverage = _ellipse(u, v, 0.0, hc, ha, hb) * _edge(v - reach)
        canvas.paint(win, coverage, identity.hair_colour)
    if style == "long":  # straight hair falling behind the shoulders, rounded at the ends
        window = canvas.region(-ha - 1, 0.0, ha + 1, 2.4 * g.b)
        if window is not None:
            win, u, v = window
            ends = _ellipse(u, v, 0.0, 1.7 * g.b, ha, 0.6 * g.b)
            coverage = np.maximum(_rect(u, v, ha, 0.0, 1.7 * g.b), ends)
            canvas.paint(win, coverage, np.asarray(identity.hair_colour) * 0.92)


def _draw_body(canvas: _Canvas, identity: FaceIdentity, g: _Layout) -> None:
    """Shirt, neck and ears: everything skin-adjacent that sits behind the face."""
    skin = np.asarray(identity.skin, np.float32)
    top = g.b + 0.35 * g.a
    window = canvas.region(-2.3 * g.a, top - 1, 2.3 * g.a, top + 5.2 * g.a)
    if window is not None:
        win, u, v = window
        canvas.paint(win, _ellipse(u, v, 0.0, top + 2.5 * g.a, 2.2 * g.a, 2.5 * g.a), identity.shirt_colour)
    window = canvas.region(-0.5 * g.a, 0.5 * g.b, 0.5 * g.a, top + 0.6 * g.a)
    if window is not None:
        win, u, v = window
        neck = _rect(u, v, 0.42 * g.a, 0.5 * g.b, top + 0.2 * g.a) + _ellipse(u, v, 0.0, top + 0.2 * g.a,
                                                                            0.42 * g.a, 0.25 * g.a)
        canvas.paint(win, np.minimum(neck, 1.0), skin * 0.8)  # in the face's shadow: darker than the face
    ear_w, ear_h = 0.55 * identity.ear_size * g.a, 1.1 * identity.ear_size * g.a
    for side in (-1.0, 1.0):
        eu, ev = side * 0.97 * g.a, g.eye_v + 0.15 * g.b
        window = canvas.region(eu - ear_w - 1, ev - ear_h - 1, eu + ear_w + 1, ev + ear_h + 1)
        if window is not None:
            win, u, v = window
            canvas.paint(win, _ellipse(u, v, eu, ev, ear_w, ear_h), skin * 0.9)


def _draw_face(canvas: _Canvas, identity: FaceIdentity, g: _Layout, mouth: MouthState) -> None:
    """The face itself: an ellipse narrowing to the jaw, lightly shaded. As the mouth opens the chin drops by
    half the opening: everything below the lips' line is stretched, nothing above it moves."""
    chin = g.b + 0.5 * mouth.opening * g.max_open
    window = canvas.region(-g.a - 1, -g.b - 1, g.a + 1, chin + 1)
    if window is None:
        return
    win, u, v = window
    stretch = (chin - g.mouth_v) / (g.b - g.mouth_v)
    v = np.where(v > g.mouth_v, g.mouth_v + (v - g.mouth_v) / stretch, v)  # back to the closed face's shape
    lower = np.clip(v / g.b, 0.0, 1.0)
    half_width = g.a * (1.0 - identity.jaw * lower * lower)
    coverage = _ellipse(u, v, 0.0, 0.0, half_width, g.b)
    radius2 = (u / g.a) ** 2 + (v / g.b) ** 2
    shade = (1.0 - 0.1 * np.clip(radius2, 0.0, 1.0) ** 2)[..., None]  # darker towards the rim: a rounder look
    canvas.paint(win, coverage, np.asarray(identity.skin, np.float32) * shade)


def _draw_fringe(canvas: _Canvas, identity: FaceIdentity, g: _Layout) -> None:
    """Hair over the forehead, down to a hairline that dips at the temples and slopes with the parting."""
    vol = 0.03 if identity.hair_style == "buzz" else identity.hair_volume
    ha, hb, hc = g.a * (1.0 + vol), g.b * (0.95 + 0.5 * vol), -0.1 * g.b
    window = canvas.region(-ha - 1, hc - hb - 1, ha + 1, 0.2 * g.b)
    if window is None:
        return
    win, u, v = window
    hairline = -identity.hairline * g.b + 0.35 * g.b * (u / g.a) ** 2 + identity.hair_part * 0.3 * u
    coverage = _ellipse(u, v, 0.0, hc, ha, hb) * _edge(v - hairline)
    alpha = 0.8 if identity.hair_style == "buzz" else 1.0  # a shaved head shows some scalp through
    canvas.paint(win, alpha * coverage, identity.hair_colour)


def _draw_eyes(canvas: _Canvas, identity: FaceIdentity, g: _Layout, blink: float) -> None:
    """Eyes (lid shadow, lash line, white, iris, pupil, highlight) and brows. Blinking closes the opening
    vertically, leaving the lash line."""
    skin = np.asarray(identity.skin, np.float32)
    open_h = g.eye_h * (1.0 - blink)
    iris_r = identity.iris_size * g.eye_w
    brow_w, brow_h = 1.2 * g.eye_w, max(identity.brow_thickness * g.a, 0.6)
    for side in (-1.0, 1.0):
        eu, ev = side * g.eye_u, g.eye_v
        reach = 1.3 * g.eye_w + 1
        window = canvas.region(eu - reach, ev - 1.6 * g.eye_h - 1, eu + reach, ev + 1.6 * g.eye_h + 1)
        if window is not None:
            win, u, v = window
            canvas.paint(win, 0.5 * _ellipse(u, v, eu, ev, 1.25 * g.eye_w, 1.5 * g.eye_h + 0.3), skin * 0.85)
            canvas.paint(win, _ellipse(u, v, eu, ev, g.eye_w + 0.5, open_h + 0.55), (40.0, 28.0, 28.0))
            white = _ellipse(u, v, eu, ev, g.eye_w, max(open_h, 1e-3))
            canvas.paint(win, white, (244.0, 242.0, 236.0))
            iu = eu + identity.gaze * g.eye_w
            canvas.paint(win, white * _ellipse(u, v, iu, ev, iris_r, iris_r), identity.iris_colour)
            canvas.paint(win, white * _ellipse(u, v, iu, ev, 0.45 * iris_r, 0.45 * iris_r), (12.0, 10.0, 10.0))
            spot = _ellipse(u, v, iu + 0.3 * iris_r, ev - 0.35 * iris_r, 0.2 * iris_r, 0.2 * iris_r)
            canvas.paint(win, 0.9 * white * spot, (255.0, 255.0, 255.0))
        bu, bv = eu + side * 0.05 * g.eye_w, ev - g.eye_h - identity.brow_gap * g.a
        window = canvas.region(bu - brow_w - 1, bv - brow_w - 1, bu + brow_w + 1, bv + brow_w + 1)
        if window is not None:
            win, u, v = window
            # Positive tilt raises the outer end: the outer end is at +u on the right, -u on the left.
            brow = _rotated_ellipse(u, v, bu, bv, brow_w, brow_h, -side * identity.brow_tilt)
            canvas.paint(win, brow, np.asarray(identity.hair_colour, np.float32) * 0.75)


def _draw_nose(canvas: _Canvas, identity: FaceIdentity, g: _Layout) -> None:
    skin = np.asarray(identity.skin, np.float32)
    w = identity.nose_width * g.a
    window = canvas.region(-1.2 * w, g.eye_v, 1.2 * w, g.nose_v + 0.6 * w)
    if window is None:
        return
    win, u, v = window
    bridge_h = 0.5 * (g.nose_v - g.eye_v)
    canvas.paint(win, 0.35 * _ellipse(u, v, 0.35 * w, g.nose_v - bridge_h, 0.25 * w, bridge_h), skin * 0.9)
    canvas.paint(win, 0.55 * _ellipse(u, v, 0.0, g.nose_v, w, 0.55 * w), skin * 0.88)
    for side in (-1.0, 1.0):
        nostril = _ellipse(u, v, side * 0.45 * w, g.nose_v + 0.25 * w, 0.22 * w, 0.14 * w + 0.3)
        canvas.paint(win, 0.7 * nostril, skin * 0.6)


def _draw_mouth(canvas: _Canvas, identity: FaceIdentity, g: _Layout, mouth: MouthState) -> None:
    """Lips around a dark interior; the upper lip stays, the lower lip drops with the opening."""
    lip_w = g.lip_half_width(mouth.width)
    inner_w = 0.88 * lip_w
    opening = mouth.opening * g.max_open
    inner_top, inner_bottom = g.mouth_v - SEAM_HALF_HEIGHT, g.mouth_v + SEAM_HALF_HEIGHT + opening
    outer_top, outer_bottom = inner_top - g.upper_lip, inner_bottom + g.lower_lip
    window = canvas.region(-lip_w - 1, outer_top - 1, lip_w + 1, outer_bottom + 1)
    if window is None:
        return
    win, u, v = window
    lips = _ellipse(u, v, 0.0, 0.5 * (outer_top + outer_bottom), lip_w, 0.5 * (outer_bottom - outer_top))
    canvas.paint(win, lips, identity.lip_colour)
    shine = _ellipse(u, v, 0.0, inner_bottom + 0.45 * g.lower_lip, 0.45 * lip_w, 0.3 * g.lower_lip)
    canvas.paint(win, 0.35 * shine, np.minimum(np.asarray(identity.lip_colour, np.float32) * 1.15, 255.0))
    interior = _ellipse(u, v, 0.0, 0.5 * (inner_top + inner_bottom), inner_w, 0.5 * (inner_bottom - inner_top))
    canvas.paint(win, interior, MOUTH_INTERIOR)
    if opening > 0.0:
        teeth = interior * _edge(v - (inner_top + TEETH_SHARE * opening)) * _edge(np.abs(u) - 0.62 * inner_w)
        canvas.paint(win, teeth, TEETH)
        tongue = interior * _ellipse(u, v, 0.0, inner_bottom, 0.55 * inner_w, 0.3 * opening + 1e-3)
        canvas.paint(win, tongue, TONGUE)


def render(identity: FaceIdentity, mouth: MouthState, pose: Pose, size: int = 128) -> np.ndarray:
    """One frame, (size, size, 3) uint8 RGB, anti-aliased by rendering at SUPERSAMPLE x and averaging."""
    if not (isinstance(size, int) and size >= 32):
        raise ValueError(f"size must be an int >= 32, got {size!r}")
    g = _layout(identity, size)
    canvas = _Canvas(_background(identity, size).copy(), (g.cx + pose.dx, g.cy + pose.dy), pose.rotation)
    _draw_hair_back(canvas, identity, g)
    _draw_body(canvas, identity, g)
    _draw_face(canvas, identity, g, mouth)
    _draw_fringe(canvas, identity, g)
    _draw_eyes(canvas, identity, g, pose.blink)
    _draw_nose(canvas, identity, g)
    _draw_mouth(canvas, identity, g, mouth)
    image = canvas.image.reshape(size, SUPERSAMPLE, size, SUPERSAMPLE, 3).mean(axis=(1, 3))
    return np.clip(np.rint(image), 0, 255).astype(np.uint8)


# ------------------------------------------------------------------------------------ where the mouth is


def mouth_box(identity: FaceIdentity, pose: Pose, size: int = 128) -> tuple[int, int, int, int]:
    """(x0, y0, x1, y1), in pixels of a `size` frame (x1, y1 exclusive): a box holding the mouth at every
    opening and width for this pose, clipped to the frame."""
    g = _layout(identity, size)
    canvas = _Canvas(np.zeros((0, 0, 3), np.float32), (g.cx + pose.dx, g.cy + pose.dy), pose.rotation)
    u0, v0, u1, v1 = g.mouth_bounds()
    xs, ys = zip(*(canvas.to_image(u, v) for u in (u0, u1) for v in (v0, v1)))
    x0, y0 = max(int(math.floor(min(xs))), 0), max(int(math.floor(min(ys))), 0)
    x1, y1 = min(int(math.ceil(max(xs))), size), min(int(math.ceil(max(ys))), size)
    return x0, y0, x1, y1


def measure_opening(frame: np.ndarray, identity: FaceIdentity, pose: Pose, margin: int = 0) -> float:
    """The mouth opening in [0, 1] read from the frame's pixels inside `mouth_box` only (grown by `margin`
    pixels up and down: for generated frames, whose head may sit a little off the pose given).

    Each pixel's darkness ramps from 0 (luma 10 below the identity's lips or shaded skin) to 1 (the tongue's
    luma and darker). Within the box's middle half of columns (always inside the face and the interior's
    widest part), the mean of the three largest column sums is the interior's dark height in pixels; the
    renderer makes that 2 * SEAM_HALF_HEIGHT + (1 - TEETH_SHARE) * opening * max_opening, which is inverted
    and clipped. Monotone in the true opening; noise and blur shift it by a fraction of a pixel."""
    if not (isinstance(frame, np.ndarray) and frame.ndim == 3 and frame.shape[0] == frame.shape[1]
            and frame.shape[2] == 3):
        shape = getattr(frame, "shape", None)
        raise ValueError(f"measure_opening expects a square (size, size, 3) RGB frame, got shape {shape}")
    size = frame.shape[0]
    g = _layout(identity, size)
    x0, y0, x1, y1 = mouth_box(identity, pose, size)
    y0, y1 = max(y0 - margin, 0), min(y1 + margin, size)
    quarter = (x1 - x0) // 4
    patch = frame[y0:y1, x0 + quarter:x1 - quarter].astype(np.float32)
    if patch.size == 0:
        return 0.0
    zero = min(_luma(identity.lip_colour), 0.9 * _luma(identity.skin)) - 10.0
    full = _luma(TONGUE) + 4.0
    darkness = np.clip((zero - patch @ _LUMA) / (zero - full), 0.0, 1.0)
    columns = np.sort(darkness.sum(axis=0))[-3:]
    dark_height = float(columns.mean())
    opening = (dark_height - 2.0 * SEAM_HALF_HEIGHT) / ((1.0 - TEETH_SHARE) * g.max_open)
    return float(np.clip(opening, 0.0, 1.0))


# ----------------------------------------------------------------------------------------------- motion


def random_poses(rng: np.random.Generator, frames: int, fps: int = 25, motion_px: float = 2.5,
                 rotation_deg: float = 2.0) -> list[Pose]:
    """Poses for `frames` frames: a slow, smooth head sway (a sum of three sinusoids between 0.05 and 0.4 Hz
    per axis, peaking near `motion_px` pixels and `rotation_deg` degrees) and blinks every 2.5 to 5.5 s, each
    a 120-200 ms half-sine of lid closure. Deterministic given the generator's state."""
    if frames < 0:
        raise ValueError(f"frames must be >= 0, got {frames}")
    t = np.arange(frames) / fps

    def sway(amplitude: float) -> np.ndarray:
        freqs, phases = rng.uniform(0.05, 0.4, 3), rng.uniform(0.0, 2.0 * np.pi, 3)
        weights = rng.uniform(0.5, 1.0, 3)
        weights *= amplitude / weights.sum()  # the sum of weights bounds the peak
        return (weights[:, None] * np.sin(2.0 * np.pi * freqs[:, None] * t[None, :] + phases[:, None])).sum(0)

    dx, dy, rotation = sway(motion_px), sway(0.6 * motion_px), sway(rotation_deg)
    blink = np.zeros(frames)
    start = rng.uniform(0.3, 3.0)
    while start < frames / fps:
        duration = rng.uniform(0.12, 0.2)  # about 150 ms, the typical human blink
        phase = (t - start) / duration
        inside = (phase >= 0.0) & (phase <= 1.0)
        blink[inside] = np.maximum(blink[inside], np.sin(np.pi * phase[inside]))
        start += duration + rng.uniform(2.5, 5.5)
    return [Pose(float(x), float(y), float(r), float(min(max(b, 0.0), 1.0)))
            for x, y, r, b in zip(dx, dy, rotation, blink)]
