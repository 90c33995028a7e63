"""A deterministic, synthetic COCO-format instance-segmentation set ("mini COCO").

COCO itself cannot be downloaded everywhere (CI, offline machines), so the demo and
the tests train and evaluate on scenes of coloured shapes on textured backgrounds:
several classes, varied sizes and rotations, non-square images, touching and
partially occluded instances. Every annotation describes the *visible* part of its
object (as COCO does): its polygons are traced from the visible mask, and its box
and area are those of that mask.

The output layout is COCO's::

    <out_dir>/annotations/instances_train.json
    <out_dir>/annotations/instances_val.json
    <out_dir>/train/000000000001.jpg ...
    <out_dir>/val/...
"""
import json
import math
import os
import os.path as osp
from dataclasses import dataclass

import numpy as np

CLASSES = ('circle', 'square', 'triangle', 'star', 'hexagon', 'cross')
PALETTE = [(220, 20, 60), (0, 128, 255), (60, 180, 75), (255, 200, 0), (145, 30, 180), (70, 240, 240)]

# Scene statistics. Objects are drawn in order, so later ones occlude earlier ones.
IMAGE_WIDTHS = (320, 480)
IMAGE_HEIGHTS = (224, 384)
OBJECTS_PER_IMAGE = (3, 7)
OBJECT_SIZES = (28, 120)          # diameter of the shape's circumscribed circle, pixels
MIN_VISIBLE_FRACTION = 0.5        # an occluded object keeps at least this much of its area
TOUCHING_PROBABILITY = 0.25       # place an object right next to the previous one
OVERLAP_PROBABILITY = 0.25        # place an object over part of the previous one


@dataclass
class SplitSpec:
    name: str
    num_images: int
    seed: int


def _polygon(cls_name, cx, cy, size, angle):
    """Vertices (K, 2) of a shape centred at (cx, cy) with circumscribed diameter `size`."""
    r = size / 2
    if cls_name == 'circle':
        t = np.linspace(0, 2 * math.pi, 48, endpoint=False)
        pts = np.stack([np.cos(t), np.sin(t)], 1) * r
    elif cls_name == 'square':
        t = np.array([0.25, 0.75, 1.25, 1.75]) * math.pi
        pts = np.stack([np.cos(t), np.sin(t)], 1) * r
    elif cls_name == 'triangle':
        t = np.array([-0.5, 1 / 6, 5 / 6]) * math.pi
        pts = np.stack([np.cos(t), np.sin(t)], 1) * r
    elif cls_name == 'hexagon':
        t = np.arange(6) * math.pi / 3
        pts = np.stack([np.cos(t), np.sin(t)], 1) * r
    elif cls_name == 'star':
        t = np.arange(10) * math.pi / 5 - math.pi / 2
        radii = np.where(np.arange(10) % 2 == 0, r, r * 0.45)
        pts = np.stack([np.cos(t), np.sin(t)], 1) * radii[:, None]
    elif cls_name == 'cross':
        a, b = r, r * 0.35
        pts = np.array([[-b, -a], [b, -a], [b, -b], [a, -b], [a, b], [b, b], [b, a], [-b, a],
                        [-b, b], [-a, b], [-a, -b], [-b, -b]], dtype=np.float64)
    else:
        raise ValueError(f'unknown shape class {cls_name!r}; valid: {CLASSES}')
    c, s = math.cos(angle), math.sin(angle)
    rot = np.array([[c, -s], [s, c]])
    return pts @ rot.T + np.array([cx, cy])


def _background(rng, h, w):
    """A smooth colour gradient with blotches and pixel noise (so shapes are not trivially flat)."""
    import cv2
    yy, xx = np.mgrid[0:h, 0:w].astype(np.float32)
    c0, c1 = rng.uniform(40, 200, 3), rng.uniform(40, 200, 3)
    t = (xx / w * rng.uniform(0.3, 1) + yy / h * rng.uniform(0.3, 1))[..., None]
    img = c0 + (c1 - c0) * (t / t.max())
    blotches = rng.normal(0, 25, (max(h // 32, 2), max(w // 32, 2), 3)).astype(np.float32)
    img += cv2.resize(blotches, (w, h), interpolation=cv2.INTER_CUBIC)
    img += rng.normal(0, 6, (h, w, 3))
    return img


def _raster(poly, h, w):
    import cv2
    mask = np.zeros((h, w), np.uint8)
    cv2.fillPoly(mask, [np.round(poly).astype(np.int32)], 1)
    return mask.astype(bool)


def _mask_polygons(mask):
    """COCO polygons of a binary mask, or None if it has holes (COCO polygons cannot express them)."""
    import cv2
    contours, hierarchy = cv2.findContours(mask.astype(np.uint8), cv2.RETR_CCOMP, cv2.CHAIN_APPROX_SIMPLE)
    if hierarchy is not None and (hierarchy[0][:, 3] >= 0).any():
        return None
    polys = [c.reshape(-1).astype(float).tolist() for c in contours if len(c) >= 3]
    return polys or None


def _next_center(rng, prev, size, h, w):
    """Centre for a new object: next to / over the previous one sometimes, else anywhere."""
    if prev is not None:
        (pcx, pcy, psize), u = prev, rng.uniform()
        if u < TOUCHING_PROBABILITY + OVERLAP_PROBABILITY:
            dist = (psize + size) / 2 * (0.95 if u < TOUCHING_PROBABILITY else 0.6)
            ang = rng.uniform(0, 2 * math.pi)
            return pcx + dist * math.cos(ang), pcy + dist * math.sin(ang)
    return rng.uniform(size / 2, w - size / 2), rng.uniform(size / 2, h - size / 2)


def make_scene(rng, max_tries=50):
    """One image (H, W, 3 uint8, BGR) and its instances [(class index, polygons, bbox, area)]."""
    h = int(rng.integers(IMAGE_HEIGHTS[0], IMAGE_HEIGHTS[1] + 1))
    w = int(rng.integers(IMAGE_WIDTHS[0], IMAGE_WIDTHS[1] + 1))
    img = _background(rng, h, w)
    objects = []  # (class, full mask, colour)
    prev = None
    for _ in range(int(rng.integers(OBJECTS_PER_IMAGE[0], OBJECTS_PER_IMAGE[1] + 1))):
        for _ in range(max_tries):
            cls = int(rng.integers(len(CLASSES)))
            size = float(rng.uniform(*OBJECT_SIZES))
            cx, cy = _next_center(rng, prev, size, h, w)
            mask = _raster(_polygon(CLASSES[cls], cx, cy, size, rng.uniform(0, 2 * math.pi)), h, w)
            if mask.sum() < 0.5 * math.pi * (size / 2) ** 2 * 0.5:   # mostly outside the image
                continue
            # Accept only if every object (old and new) stays describable: enough visible, no holes.
            candidate = objects + [(cls, mask, None)]
            visible = _visible_masks([m for _, m, _ in candidate])
            if all(v.sum() >= MIN_VISIBLE_FRACTION * m.sum() and _mask_polygons(v) is not None
                   for v, (_, m, _) in zip(visible, candidate)):
                colour = np.clip(np.array(PALETTE[cls]) + rng.normal(0, 20, 3), 0, 255)
                objects.append((cls, mask, colour))
                prev = (cx, cy, size)
                break
    for _, mask, colour in objects:
        img[mask] = colour[::-1] + rng.normal(0, 4, (int(mask.sum()), 3))   # RGB palette -> BGR image
    from pycocotools import mask as mask_utils
    instances = []
    for (cls, _, _), vis in zip(objects, _visible_masks([m for _, m, _ in objects])):
        polys = _mask_polygons(vis)
        # Box and area of the polygons as COCO's tools rasterise them, so that they
        # agree with what the evaluation sees.
        rle = mask_utils.merge(mask_utils.frPyObjects(polys, h, w))
        bbox = [float(v) for v in mask_utils.toBbox(rle)]
        instances.append((cls, polys, bbox, float(mask_utils.area(rle))))
    return np.clip(img, 0, 255).astype(np.uint8), instances


def _visible_masks(masks):
    """Each mask minus the union of the masks drawn after it."""
    covered = np.zeros_like(masks[0]) if masks else None
    visible = []
    for m in reversed(masks):
        visible.append(m & ~covered)
        covered = covered | m
    return visible[::-1]


def annotation_file(out_dir, split):
    """Path of a split's COCO JSON."""
    return osp.join(out_dir, 'annotations', f'instances_{split}.json')


def image_file_name(image_id):
    """File name of an image (COCO's naming)."""
    return f'{image_id:012d}.jpg'


def write_split(out_dir, spec, log=print):
    """Write one split's images and its COCO JSON; returns the JSON path."""
    import cv2
    rng = np.random.default_rng(spec.seed)
    img_dir = osp.join(out_dir, spec.name)
    os.makedirs(img_dir, exist_ok=True)
    os.makedirs(osp.join(out_dir, 'annotations'), exist_ok=True)
    images, annotations = [], []
    for i in range(spec.num_images):
        img, instances = make_scene(rng)
        image_id = i + 1
        file_name = image_file_name(image_id)
        cv2.imwrite(osp.join(img_dir, file_name), img, [cv2.IMWRITE_JPEG_QUALITY, 92])
        images.append(dict(id=image_id, file_name=file_name, height=img.shape[0], width=img.shape[1]))
        for cls, polys, bbox, area in instances:
            annotations.append(dict(id=len(annotations) + 1, image_id=image_id, category_id=cls + 1,
                                    segmentation=polys, area=area, bbox=bbox, iscrowd=0))
        if log and (i + 1) % 50 == 0:
            log(f'[mini_coco] {spec.name}: {i + 1}/{spec.num_images} images')
    coco = dict(
        info=dict(description='slab-mmdet synthetic mini COCO', version='1.0'),
        licenses=[],
        images=images, annotations=annotations,
        categories=[dict(id=i + 1, name=n, supercategory='shape') for i, n in enumerate(CLASSES)])
    ann_file = annotation_file(out_dir, spec.name)
    with open(ann_file, 'w') as f:
        json.dump(coco, f)
    return ann_file


def make_mini_coco(out_dir, num_train=200, num_val=50, seed=0, log=print):
    """Write the train and val splits under `out_dir`; returns {split: annotation file}."""
    for name, n in (('num_train', num_train), ('num_val', num_val)):
        if not isinstance(n, int) or n < 1:
            raise ValueError(f'{name} must be a positive integer, got {n!r}')
    specs = [SplitSpec('train', num_train, seed), SplitSpec('val', num_val, seed + 1_000_003)]
    return {s.name: write_split(out_dir, s, log) for s in specs}


GENERATOR_VERSION = 1


def _missing_files(out_dir, num_train, num_val):
    """The files of a set with these sizes that are not under `out_dir`."""
    expected = []
    for split, n in (('train', num_train), ('val', num_val)):
        expected.append(annotation_file(out_dir, split))
        expected += [osp.join(out_dir, split, image_file_name(i)) for i in range(1, n + 1)]
    return [f for f in expected if not osp.isfile(f)]


def ensure_mini_coco(out_dir, num_train=200, num_val=50, seed=0, force=False, log=print):
    """Make mini COCO under `out_dir` unless the same set (same parameters, all its files)
    is already there. The manifest records the parameters, not the content: use
    ``force=True`` to rewrite files that were modified."""
    manifest = osp.join(out_dir, 'manifest.json')
    params = dict(version=GENERATOR_VERSION, num_train=num_train, num_val=num_val, seed=seed)
    if not force and osp.isfile(manifest):
        with open(manifest) as f:
            same_params = json.load(f) == params
        missing = _missing_files(out_dir, num_train, num_val) if same_params else []
        if same_params and not missing:
            if log:
                log(f'[mini_coco] {out_dir} is up to date ({num_train} train / {num_val} val images)')
            return {s: annotation_file(out_dir, s) for s in ('train', 'val')}
        if missing and log:
            log(f'[mini_coco] {out_dir}: {len(missing)} files missing (e.g. {missing[0]}), rewriting the set')
    if osp.isfile(manifest):
        os.remove(manifest)
    files = make_mini_coco(out_dir, num_train, num_val, seed, log)
    with open(manifest, 'w') as f:
        json.dump(params, f)
    if log:
        log(f'[mini_coco] wrote {num_train} train / {num_val} val images to {out_dir}')
    return files
