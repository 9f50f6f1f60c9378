"""Procedural faces. Label: smiling. Nuisances: skin tone, hair, background, lighting, glasses, make-up; any of the
binary ones (skin_dark, glasses, hair_dark, makeup_on) can be the spurious attribute (`data.spurious`).

Each face is drawn with PIL at 4x the target resolution and downsampled with a box filter
(anti-aliased). The mouth is subtle (see MOUTH): the skin-tone shortcut must be
easier for a classifier than the smile, as it is for a real smile detector under spurious correlation.
"""

from __future__ import annotations

import colorsys

import numpy as np
import pandas as pd
from PIL import Image, ImageDraw, ImageFilter

from advmix.data.splits import draw_cells, numbered, plan
from advmix.data.store import Dataset
from advmix.groups import group_of
from advmix.params import ALL_SPLITS, POOL, DataParams

SUPERSAMPLE = 4
# The mouth (the label), in fractions of the image: |smile| range, bend, half width, line thickness; `data.mouth`
# picks one. The trade-off: a classifier must find the skin-tone shortcut easier than the smile (else there is
# nothing for a robust method to fix), while the generator must draw the smile clearly enough to keep it in W+
# rows of its own. `wide`: a small CNN learnt the smile at rho 0.99 and never took the shortcut (test_balanced
# error 0.25% at rho 0.95). `subtle` (1-2 pixel mouths): nominal errs on 6.5-13% of test_balanced, but a GAN
# trained on unbiased faces kept skin tone in the mouth's rows and a probe misread 8-13% of single-row swaps.
MOUTHS = {
    "subtle": {"smile": (0.1, 1.0), "bend": (0.05, 0.08), "half_width": (0.12, 0.18), "thick": (0.025, 0.035)},
    "medium": {"smile": (0.3, 1.0), "bend": (0.07, 0.10), "half_width": (0.15, 0.21), "thick": (0.035, 0.045)},
    "wide": {"smile": (0.6, 1.0), "bend": (0.09, 0.12), "half_width": (0.17, 0.23), "thick": (0.04, 0.05)},
}

# Eight skin tones from light to dark; levels 4-7 form the "dark" bin.
SKIN = np.array([[255, 224, 196], [241, 194, 160], [224, 172, 130], [198, 144, 105],
                 [160, 108, 72], [128, 82, 54], [96, 60, 40], [66, 42, 30]], dtype=float)
HAIR = np.array([[20, 16, 14], [92, 56, 32], [180, 130, 70], [230, 200, 120], [150, 50, 30], [200, 200, 205]],
                dtype=float)
MAKEUP = {  # lip colour, cheek tint (None: no blush)
    0: ((110, 40, 40), None),
    1: ((200, 20, 40), (235, 90, 100)),
    2: ((235, 110, 160), (245, 150, 180)),
    3: ((120, 40, 140), (190, 120, 200)),
}
ATTRIBUTES = {
    "skin_tone": list(range(len(SKIN))),
    "skin_dark": [0, 1],
    "hair": list(range(len(HAIR))),
    "background": list(range(8)),
    "lighting": list(range(5)),  # 0 even, 1 from the left, 2 right, 3 top, 4 bottom
    "glasses": [0, 1],
    "makeup": list(MAKEUP),
    "hair_dark": [0, 1],  # hair 0-1 (black, dark brown) against the four lighter ones
    "makeup_on": [0, 1],  # any lip colour and blush (makeup 1-3) against none (0)
}
DARK_HAIR = 2  # HAIR rows below this are dark


def _sample_attributes(rng: np.random.Generator, label: np.ndarray, spurious: np.ndarray, spurious_name: str | None
                       ) -> pd.DataFrame:
    """Every attribute of every face. The spurious one is given (None: none is, as in the pool); the rest are drawn
    independently of the label, in the same order whichever attribute is spurious, so the binary attributes
    derived from hair and make-up draw nothing of their own."""
    n = len(label)
    skin_dark = rng.integers(0, 2, n) if spurious_name != "skin_dark" else spurious
    glasses = (rng.random(n) < 0.3).astype(int) if spurious_name != "glasses" else spurious
    skin_tone = skin_dark * 4 + rng.integers(0, 4, n)
    hair = rng.integers(0, len(HAIR), n)
    if spurious_name == "hair_dark":  # dark hair exactly where the spurious attribute says so
        hair = np.where(spurious == 1, hair % DARK_HAIR, DARK_HAIR + hair % (len(HAIR) - DARK_HAIR))
    background, lighting = rng.integers(0, 8, n), rng.integers(0, 5, n)
    makeup = rng.integers(0, len(MAKEUP), n)
    if spurious_name == "makeup_on":
        makeup = np.where(spurious == 1, 1 + makeup % (len(MAKEUP) - 1), 0)
    return pd.DataFrame({
        "label": label,
        "skin_tone": skin_tone,
        "skin_dark": skin_dark,
        "hair": hair,
        "background": background,
        "lighting": lighting,
        "glasses": glasses,
        "makeup": makeup,
        "hair_dark": (hair < DARK_HAIR).astype(int),
        "makeup_on": (makeup > 0).astype(int),
    })


def _mouth_curve(cx: float, y0: float, half_width: float, bend: float, k: int = 24) -> list[tuple[float, float]]:
    """Parabola through the mouth corners; bend > 0 lowers the centre (a smile, y points down)."""
    u = np.linspace(-1.0, 1.0, k)
    return [(cx + half_width * x, y0 + bend * (1 - x * x)) for x in u]


def render_face(row: pd.Series, rng: np.random.Generator, resolution: int, mouth: str = "medium") -> np.ndarray:
    """One face as uint8 H x W x 3. `rng` draws the per-image jitter (shape, pose, light strength)."""
    big = resolution * SUPERSAMPLE

    def px(v: float) -> float:
        return v * big

    hue = (row["background"] + rng.uniform(-0.3, 0.3)) / 8.0
    bg = np.array(colorsys.hsv_to_rgb(hue % 1.0, rng.uniform(0.35, 0.7), rng.uniform(0.55, 0.9))) * 255
    img = Image.new("RGB", (big, big), tuple(int(c) for c in bg))
    draw = ImageDraw.Draw(img)

    cx, cy = 0.5 + rng.uniform(-0.04, 0.04), 0.52 + rng.uniform(-0.04, 0.04)
    scale = rng.uniform(0.92, 1.06)
    rx, ry = 0.34 * scale, 0.40 * scale
    skin = SKIN[row["skin_tone"]] + rng.normal(0, 4, 3)
    hair = HAIR[row["hair"]] + rng.normal(0, 6, 3)

    def rgb(c) -> tuple[int, int, int]:
        return tuple(int(np.clip(v, 0, 255)) for v in c)

    # hair behind the head, face, eyes
    draw.ellipse([px(cx - rx * 1.08), px(cy - ry * 1.18), px(cx + rx * 1.08), px(cy + ry * 0.35)], fill=rgb(hair))
    draw.ellipse([px(cx - rx), px(cy - ry), px(cx + rx), px(cy + ry)], fill=rgb(skin))
    eye_y, eye_dx, eye_r = cy - 0.10 * scale, 0.13 * scale, 0.04 * scale
    for sx in (-1, 1):
        ex = cx + sx * eye_dx
        draw.ellipse([px(ex - eye_r), px(eye_y - eye_r), px(ex + eye_r), px(eye_y + eye_r)], fill=(25, 20, 20))

    lip, cheek = MAKEUP[int(row["makeup"])]
    if cheek is not None:  # blush: a soft tint on both cheeks
        layer = Image.new("RGB", (big, big), (0, 0, 0))
        mask = Image.new("L", (big, big), 0)
        mdraw = ImageDraw.Draw(mask)
        for sx in (-1, 1):
            kx, ky, kr = cx + sx * 0.2 * scale, cy + 0.06 * scale, 0.07 * scale
            mdraw.ellipse([px(kx - kr), px(ky - kr), px(kx + kr), px(ky + kr)], fill=120)
        layer.paste(cheek, (0, 0, big, big))
        img = Image.composite(layer, img, mask.filter(ImageFilter.GaussianBlur(big * 0.015)))
        draw = ImageDraw.Draw(img)

    # the mouth: the label; the lowest |smile| values are close to a flat, ambiguous mouth
    MOUTH = MOUTHS[mouth]
    smile = rng.uniform(*MOUTH["smile"]) * (1 if row["label"] == 1 else -1)
    half_width = rng.uniform(*MOUTH["half_width"]) * scale
    bend = smile * rng.uniform(*MOUTH["bend"]) * scale
    mouth_y = cy + 0.20 * scale - bend / 2
    thick = max(1, int(px(rng.uniform(*MOUTH["thick"]))))
    upper = _mouth_curve(cx, mouth_y, half_width, bend)
    if rng.random() < 0.5:  # open mouth: a dark opening under (or above) the upper lip
        gap = abs(bend) * rng.uniform(0.5, 0.9) * np.sign(bend)
        lower = _mouth_curve(cx, mouth_y, half_width, bend + gap)
        draw.polygon([(px(x), px(y)) for x, y in upper + lower[::-1]], fill=(60, 15, 20))
        draw.line([(px(x), px(y)) for x, y in lower], fill=rgb(lip), width=thick, joint="curve")
    draw.line([(px(x), px(y)) for x, y in upper], fill=rgb(lip), width=thick, joint="curve")

    if row["glasses"]:
        gr, width = 0.075 * scale, max(1, int(px(0.022)))
        for sx in (-1, 1):
            ex = cx + sx * eye_dx
            draw.ellipse([px(ex - gr), px(eye_y - gr), px(ex + gr), px(eye_y + gr)], outline=(15, 15, 15),
                         width=width)
        draw.line([(px(cx - eye_dx + gr), px(eye_y)), (px(cx + eye_dx - gr), px(eye_y))], fill=(15, 15, 15),
                  width=width)

    img = img.rotate(rng.uniform(-10, 10), resample=Image.BICUBIC, fillcolor=tuple(int(c) for c in bg))
    small = np.asarray(img.resize((resolution, resolution), Image.BOX), dtype=float)

    lighting = int(row["lighting"])
    if lighting:  # a linear light gradient across the whole picture
        t = np.linspace(-1.0, 1.0, resolution)
        ramp = {1: -t[None, :], 2: t[None, :], 3: -t[:, None], 4: t[:, None]}[lighting]
        small = small * (1.0 + rng.uniform(0.25, 0.45) * np.broadcast_to(ramp, (resolution, resolution)))[..., None]
    return np.clip(small + rng.normal(0, 1.5, small.shape), 0, 255).round().astype(np.uint8)


def build(params: DataParams, seed: int, progress=None) -> Dataset:
    """All splits, deterministic in `seed`. `progress(n)` is called as images are drawn.

    The pool has a random stream of its own and draws every attribute independently of the label and of
    `data.spurious`: it depends only on seed, resolution, mouth and its size, so one generator (which learns from
    it) serves every spurious attribute, rho and labelled size."""
    cells = plan(params.sizes.as_dict(), params.rho, n_classes=2, n_spurious=2)
    frames = []
    labelled_rng, pool_rng = np.random.default_rng([seed, 1]), np.random.default_rng([seed, 3])
    for split in ALL_SPLITS:  # the pool's cells are balanced: every attribute is independent of the label
        if split == POOL:
            label, _ = draw_cells(cells[split], pool_rng)
            frame = _sample_attributes(pool_rng, label, label, None)
        else:
            label, spurious = draw_cells(cells[split], labelled_rng)
            frame = _sample_attributes(labelled_rng, label, spurious, params.spurious)
        frame.insert(0, "split", split)
        frames.append(frame)
    manifest = pd.concat(frames, ignore_index=True)
    ids, number = numbered(manifest["split"], "face")
    manifest.insert(0, "id", ids)
    manifest["group"] = group_of(manifest["label"], manifest[params.spurious], 2)

    images = np.empty((len(manifest), params.resolution, params.resolution, 3), dtype=np.uint8)
    for i, row in enumerate(manifest.itertuples(index=False)):
        stream = [seed, 4 if row.split == POOL else 2, int(number[i])]
        images[i] = render_face(row._asdict(), np.random.default_rng(stream), params.resolution, params.mouth)
        if progress is not None:
            progress(1)
    info = {
        "name": "synthfaces", "resolution": params.resolution, "rho": params.rho, "mouth": params.mouth, "n_classes": 2,
        "classes": ["not_smiling", "smiling"], "spurious": params.spurious,
        "attributes": {k: v for k, v in ATTRIBUTES.items()}, "mirror_invariant": True,
    }
    return Dataset(images, manifest, info)
