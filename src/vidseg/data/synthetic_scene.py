"""Moving-shapes scenes for the synthetic datasets (format independent; `synthetic.py` maps them to labels).

A scene is a textured background of 2-4 horizontal stuff bands (sky / building / vegetation / road, in that
top-to-bottom order, wavy boundaries, one texture family each), 1-5 textured objects (uniformly, or from a
given histogram of counts) of five shape classes moving with constant velocity plus jitter (some enter or leave
the frame), drawn back to front so nearer objects occlude farther ones, and optionally a static crowd patch (a
cluster of small blobs of a thing class without identity) and a void patch (unlabelled region). Everything is
drawn from a numpy Generator seeded by (seed, split, index): the same arguments give byte-identical arrays.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
from scipy import ndimage

SHAPES: tuple[str, ...] = ("disc", "square", "triangle", "ring", "cross")
STUFF: tuple[str, ...] = ("sky", "building", "vegetation", "road")  # top-to-bottom order of the bands
SPLIT_CODES = {"train": 0, "val": 1, "test": 2}
MOTIONS = ("inside", "enter", "leave")
# Colour family of each shape class for `SceneConfig.class_colours` (RGB; the texture's second tone is a darker
# shade), chosen away from the stuff textures' sky blue, vegetation green, road grey and building brown.
CLASS_COLOURS: dict[str, tuple[int, int, int]] = {
    "disc": (220, 40, 40), "square": (240, 140, 20), "triangle": (170, 40, 210), "ring": (240, 220, 40),
    "cross": (30, 210, 200),
}  # fmt: skip


@dataclass(frozen=True)
class SceneConfig:
    """Parameters of one family of scenes. `num_frames=None` draws T uniformly in [min_frames, max_frames]."""

    height: int = 96
    width: int = 96
    num_frames: int | None = None
    min_frames: int = 12
    max_frames: int = 24
    min_objects: int = 1
    max_objects: int = 5
    object_count_weights: tuple[float, ...] | None = None  # P(1, 2, ..., K objects) ∝ these; None: uniform min..max
    min_stuff: int = 2
    max_stuff: int = 4
    all_visible_at_start: bool = False  # DAVIS: every object visible (>= min_start_area px) in frame 0
    min_start_area: int = 30
    crowd: bool = False  # a crowd patch in every other video (index % 2 == 0)
    class_colours: bool = False  # objects take their shape class's colour family (CLASS_COLOURS) with jitter
    void: bool = False  # a void patch in every other video (index % 2 == 1)
    fps: float = 6.0


@dataclass
class SyntheticScene:
    """One rendered video. Track ids are 1..N in order of first appearance (ties: back to front).

    instance_maps[t]: int32 [H, W] visible track per pixel (0 = none). stuff_map: int32 [H, W] index into
    STUFF. crowd_mask / void_mask: bool [H, W] static patches, only where no object covers them in a given
    frame (use instance_maps to tell). amodal_area[tid][t]: pixels of the full (unoccluded) shape inside
    the frame. motion[tid]: "inside" | "enter" | "leave"."""

    video_id: str
    frames: list[np.ndarray]
    instance_maps: list[np.ndarray]
    stuff_map: np.ndarray
    track_shapes: dict[int, str]
    amodal_area: dict[int, np.ndarray]
    motion: dict[int, str]
    depth: dict[int, int]  # larger = nearer the camera
    crowd_mask: np.ndarray
    void_mask: np.ndarray
    fps: float = 6.0
    stuff_present: list[str] = field(default_factory=list)

    @property
    def num_frames(self) -> int:
        return len(self.frames)


def _shape_mask(shape: str, u: np.ndarray, v: np.ndarray, r: float) -> np.ndarray:
    """Boolean mask of `shape` of size r in object-local coordinates (u, v)."""
    if shape == "disc":
        return u * u + v * v <= r * r
    if shape == "square":
        return np.maximum(np.abs(u), np.abs(v)) <= 0.8 * r
    if shape == "triangle":  # equilateral: intersection of three half-planes at distance r/2 from the centre
        inside = np.ones(u.shape, dtype=bool)
        for a in (np.pi / 2, np.pi / 2 + 2 * np.pi / 3, np.pi / 2 + 4 * np.pi / 3):
            inside &= u * np.cos(a) + v * np.sin(a) <= 0.5 * r
        return inside
    if shape == "ring":
        d2 = u * u + v * v
        return (d2 <= r * r) & (d2 >= (0.55 * r) ** 2)
    if shape == "cross":
        au, av = np.abs(u), np.abs(v)
        return ((au <= 0.3 * r) & (av <= r)) | ((av <= 0.3 * r) & (au <= r))
    raise ValueError(f"unknown shape {shape!r}")


def _object_texture(kind: int, u: np.ndarray, v: np.ndarray, r: float, c1: np.ndarray, c2: np.ndarray):
    """RGB float [..., 3] texture in object-local coordinates (moves and rotates with the object)."""
    if kind == 0:  # stripes
        w = (np.sin(u * (2.5 * np.pi / r)) > 0)[..., None]
    elif kind == 1:  # checker
        s = max(r / 3.0, 1.5)
        w = ((np.floor(u / s) + np.floor(v / s)) % 2 == 0)[..., None]
    elif kind == 2:  # radial blend
        w = np.clip(np.sqrt(u * u + v * v) / max(r, 1.0), 0, 1)[..., None]
    else:  # linear gradient
        w = np.clip((u / max(r, 1.0) + 1) / 2, 0, 1)[..., None]
    return c1 * (1 - w) + c2 * w


def _stuff_texture(name: str, yy: np.ndarray, xx: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """Full-frame RGB float texture of one stuff class (colours jittered per video)."""
    h, w = yy.shape
    jitter = rng.uniform(-20, 20, size=3)
    noise = rng.normal(0, 1, size=(h, w))
    if name == "sky":
        top, bottom = np.array([70, 130, 220]) + jitter, np.array([190, 215, 245]) + jitter
        a = (yy / max(h - 1, 1))[..., None]
        return top * (1 - a) + bottom * a + 3 * noise[..., None]
    if name == "building":
        base = np.array([150, 110, 90]) + jitter
        period_x, period_y = rng.integers(8, 14), rng.integers(7, 12)
        windows = ((xx % period_x) < period_x // 2) & ((yy % period_y) < period_y // 2)
        return base - 70 * windows[..., None] + 4 * noise[..., None]
    if name == "vegetation":
        base = np.array([50, 140, 50]) + jitter
        blobs = np.sin(xx * 0.7 + rng.uniform(0, 6)) * np.sin(yy * 0.9 + rng.uniform(0, 6))
        return base + 25 * blobs[..., None] + 18 * noise[..., None] * np.array([0.5, 1.0, 0.5])
    if name == "road":
        base = np.array([90, 90, 95]) + jitter
        diag = ((xx + yy) % 6 < 1).astype(np.float64)
        return base + 12 * diag[..., None] + 8 * noise[..., None]
    raise ValueError(f"unknown stuff class {name!r}")


def _stuff_bands(cfg: SceneConfig, rng: np.random.Generator, yy: np.ndarray, xx: np.ndarray):
    """Stuff index map [H, W] of 2-4 wavy horizontal bands and the names present (top to bottom)."""
    n = int(rng.integers(cfg.min_stuff, cfg.max_stuff + 1))
    present = sorted(rng.choice(len(STUFF), size=n, replace=False).tolist())
    fractions = rng.dirichlet(np.full(n, 4.0)) * 0.6 + 0.4 / n  # every band >= 40%/n of the height
    bounds = np.cumsum(fractions)[:-1] * cfg.height
    band = np.zeros(yy.shape, dtype=np.int32)
    for b in bounds:
        amp, period, phase = rng.uniform(1, 4), rng.uniform(20, 60), rng.uniform(0, 2 * np.pi)
        band += (yy >= b + amp * np.sin(2 * np.pi * xx / period + phase)).astype(np.int32)
    return np.asarray(present, dtype=np.int32)[band], [STUFF[i] for i in present]


def _patch(cfg: SceneConfig, rng: np.random.Generator, yy: np.ndarray, xx: np.ndarray, blobs: bool):
    """A static patch in the lower half: a cluster of small squares (crowd) or one rectangle (void)."""
    h, w = cfg.height, cfg.width
    ph, pw = max(4, h // 8), max(6, w // 5)
    y0 = int(rng.integers(h // 2, h - ph))
    x0 = int(rng.integers(0, w - pw))
    if not blobs:
        return (yy >= y0) & (yy < y0 + ph) & (xx >= x0) & (xx < x0 + pw)
    mask = np.zeros((h, w), dtype=bool)
    for _ in range(int(rng.integers(3, 7))):
        s = int(rng.integers(2, 5))
        by, bx = int(rng.integers(y0, y0 + ph - s + 1)), int(rng.integers(x0, x0 + pw - s + 1))
        mask[by : by + s, bx : bx + s] = True
    return mask


@dataclass
class _Object:
    shape: str
    radius: float
    centres: np.ndarray  # [T, 2] (x, y)
    angles: np.ndarray  # [T]
    texture: int
    colours: tuple[np.ndarray, np.ndarray]
    motion: str


def _sample_object(cfg: SceneConfig, rng: np.random.Generator, shape: str, num_frames: int) -> _Object:
    h, w = cfg.height, cfg.width
    r = float(rng.uniform(0.11, 0.2) * min(h, w))
    motion = "leave" if cfg.all_visible_at_start and rng.random() < 0.3 else MOTIONS[int(rng.integers(0, 3))]
    if cfg.all_visible_at_start and motion == "enter":
        motion = "inside"

    def inside_point() -> np.ndarray:
        return np.array([rng.uniform(r, w - r), rng.uniform(r, h - r)])

    def outside_point() -> np.ndarray:
        side = int(rng.integers(0, 4))
        along = rng.uniform(0.2, 0.8)
        margin = r + rng.uniform(2, 8)
        sides = [(-margin, along * h), (w + margin, along * h), (along * w, -margin), (along * w, h + margin)]
        return np.array(sides[side])

    t_cross = rng.uniform(num_frames / 3, 2 * num_frames / 3)
    if motion == "enter":
        start = outside_point()
        velocity = (inside_point() - start) / t_cross
    elif motion == "leave":
        start = inside_point()
        velocity = (outside_point() - start) / t_cross
    else:
        start = inside_point()
        speed, heading = rng.uniform(0.01, 0.03) * w, rng.uniform(0, 2 * np.pi)
        velocity = speed * np.array([np.cos(heading), np.sin(heading)])
    t = np.arange(num_frames)[:, None]
    centres = start + velocity * t + rng.normal(0, 0.6, size=(num_frames, 2))
    angles = rng.uniform(0, 2 * np.pi) + rng.uniform(-0.15, 0.15) * np.arange(num_frames)
    c1, c2 = rng.uniform(30, 255, size=3), rng.uniform(0, 225, size=3)
    if cfg.class_colours:  # the class's colour family, jittered by the draws above (same RNG stream, same scene)
        base = np.asarray(CLASS_COLOURS[shape], dtype=np.float64)
        c1 = np.clip(base + 0.2 * (c1 - 142.5), 0, 255)
        c2 = np.clip(0.55 * base + 0.2 * (c2 - 112.5), 0, 255)
    return _Object(shape, r, centres, angles, int(rng.integers(0, 4)), (c1, c2), motion)


def _render_objects(objects: list[_Object], cfg: SceneConfig, yy: np.ndarray, xx: np.ndarray, t: int):
    """Per object (back to front): its full mask at frame t and the texture of its pixels [n, 3]."""
    out = []
    for obj in objects:
        cx, cy = obj.centres[t]
        c, s = np.cos(obj.angles[t]), np.sin(obj.angles[t])
        dx, dy = xx + 0.5 - cx, yy + 0.5 - cy
        u, v = c * dx + s * dy, -s * dx + c * dy
        mask = _shape_mask(obj.shape, u, v, obj.radius)
        out.append((mask, _object_texture(obj.texture, u[mask], v[mask], obj.radius, *obj.colours)))
    return out


def make_scene(
    seed: int, split: str, index: int, cfg: SceneConfig, video_id: str | None = None
) -> SyntheticScene:
    """Render video `index` of `split` (deterministic in (seed, split, index, cfg))."""
    rng = np.random.default_rng([seed, SPLIT_CODES.get(split, 3), index])
    h, w = cfg.height, cfg.width
    yy, xx = np.mgrid[0:h, 0:w].astype(np.float64)
    num_frames = cfg.num_frames or int(rng.integers(cfg.min_frames, cfg.max_frames + 1))
    stuff_map, present = _stuff_bands(cfg, rng, yy, xx)
    background = np.zeros((h, w, 3))
    for name in present:
        sel = stuff_map == STUFF.index(name)
        background[sel] = _stuff_texture(name, yy, xx, rng)[sel]
    crowd = _patch(cfg, rng, yy, xx, blobs=True) if cfg.crowd and index % 2 == 0 else np.zeros((h, w), bool)
    void = _patch(cfg, rng, yy, xx, blobs=False) if cfg.void and index % 2 == 1 else np.zeros((h, w), bool)
    background[crowd] = rng.uniform(150, 230, size=3)
    background[void] = np.array([128.0, 128.0, 128.0]) + rng.normal(0, 20, size=(int(void.sum()), 3))

    if cfg.object_count_weights is None:
        n_obj = int(rng.integers(cfg.min_objects, cfg.max_objects + 1))
    else:
        weights = np.asarray(cfg.object_count_weights, dtype=np.float64)
        n_obj = 1 + int(rng.choice(len(weights), p=weights / weights.sum()))
    shapes = [SHAPES[index % len(SHAPES)]] + [SHAPES[int(k)] for k in rng.integers(0, len(SHAPES), n_obj - 1)]
    for _attempt in range(100):
        objects = [_sample_object(cfg, rng, s, num_frames) for s in shapes]
        if not cfg.all_visible_at_start:
            break
        first = _render_objects(objects, cfg, yy, xx, 0)
        ids = np.zeros((h, w), dtype=np.int32)
        for k, (mask, _) in enumerate(first):
            ids[mask] = k + 1
        if all((ids == k + 1).sum() >= cfg.min_start_area for k in range(len(objects))):
            break
    else:
        raise RuntimeError(f"scene {split}/{index}: could not place all objects visibly in frame 0")

    frames, raw_maps, amodal = [], [], np.zeros((len(objects), num_frames), dtype=np.int64)
    for t in range(num_frames):
        img = background.copy()
        ids = np.zeros((h, w), dtype=np.int32)
        for k, (mask, tex) in enumerate(_render_objects(objects, cfg, yy, xx, t)):
            img[mask] = tex
            ids[mask] = k + 1
            amodal[k, t] = int(mask.sum())
        img += rng.normal(0, 3, size=img.shape)
        frames.append(np.clip(np.rint(img), 0, 255).astype(np.uint8))
        raw_maps.append(ids)

    # Track ids 1..N by first visible frame (then depth order); objects never visible get no track.
    visible = np.array([[np.any(m == k + 1) for m in raw_maps] for k in range(len(objects))])
    seen = [k for k in range(len(objects)) if visible[k].any()]
    order = sorted(seen, key=lambda k: (int(np.argmax(visible[k])), k))
    lut = np.zeros(len(objects) + 1, dtype=np.int32)
    for new_id, k in enumerate(order, start=1):
        lut[k + 1] = new_id
    instance_maps = [lut[m] for m in raw_maps]
    return SyntheticScene(
        video_id=video_id if video_id is not None else f"{index:04d}",
        frames=frames,
        instance_maps=instance_maps,
        stuff_map=stuff_map,
        track_shapes={int(lut[k + 1]): objects[k].shape for k in order},
        amodal_area={int(lut[k + 1]): amodal[k] for k in order},
        motion={int(lut[k + 1]): objects[k].motion for k in order},
        depth={int(lut[k + 1]): k for k in order},
        crowd_mask=crowd,
        void_mask=void,
        fps=cfg.fps,
        stuff_present=present,
    )


def exemplar_point(mask: np.ndarray) -> tuple[int, int]:
    """(x, y) of the pixel deepest inside `mask` (distance-transform peak; first in row-major order on
    ties). Pixels outside the frame count as outside the mask."""
    if not mask.any():
        raise ValueError("exemplar_point: empty mask")
    dist = ndimage.distance_transform_edt(np.pad(mask, 1))[1:-1, 1:-1]
    y, x = np.unravel_index(int(np.argmax(dist)), dist.shape)
    return int(x), int(y)
