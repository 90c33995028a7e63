"""The synthetic mini COCO set: deterministic, valid COCO, the scene properties the
generator promises, loadable by mmdet, and its CLI.

The property checks hold by construction (see slab_mmdet/datasets/mini_coco.py), not by
luck of the seed; each says why.
"""
import contextlib
import filecmp
import io
import itertools
import json
import os
import os.path as osp

import cv2
import numpy as np
import pytest
from pycocotools import mask as mask_utils
from pycocotools.coco import COCO

from slab_mmdet.datasets import MINI_COCO_CLASSES, MINI_COCO_PALETTE, MiniCocoDataset, ensure_mini_coco
from slab_mmdet.datasets.mini_coco import IMAGE_HEIGHTS, IMAGE_WIDTHS, MIN_VISIBLE_FRACTION
from testing_utils.helpers import run_python

CONVEX_CLASSES = ('circle', 'square', 'triangle', 'hexagon')


def load_coco(root, split):
    with contextlib.redirect_stdout(io.StringIO()):   # COCO() prints progress
        return COCO(osp.join(root, 'annotations', f'instances_{split}.json'))


def all_files(root):
    return sorted(osp.relpath(osp.join(d, f), root) for d, _, files in os.walk(root) for f in files)


def xywh_of_mask(mask):
    ys, xs = np.nonzero(mask)
    return [xs.min(), ys.min(), xs.max() + 1 - xs.min(), ys.max() + 1 - ys.min()]


@pytest.fixture(scope='module')
def train(mini_coco):
    return load_coco(mini_coco, 'train')


@pytest.fixture(scope='module')
def instances(mini_coco, train):
    """[(image info, image, [(annotation, mask from its polygons)])] of the train split."""
    out = []
    for img in train.dataset['images']:
        pixels = cv2.imread(osp.join(mini_coco, 'train', img['file_name']))
        anns = train.loadAnns(train.getAnnIds(imgIds=img['id']))
        out.append((img, pixels, [(a, train.annToMask(a).astype(bool)) for a in anns]))
    return out


# ---------------------------------------------------------------------------- determinism

def test_same_seed_gives_identical_files_other_seed_differs(tmp_path):
    a, b, c = (str(tmp_path / n) for n in 'abc')
    ensure_mini_coco(a, num_train=3, num_val=2, seed=7, log=None)
    ensure_mini_coco(b, num_train=3, num_val=2, seed=7, log=None)
    ensure_mini_coco(c, num_train=3, num_val=2, seed=8, log=None)
    files = all_files(a)
    assert len([f for f in files if f.endswith('.jpg')]) == 5
    assert files == all_files(b) == all_files(c)
    _, mismatch, errors = filecmp.cmpfiles(a, b, files, shallow=False)
    assert not mismatch and not errors
    _, mismatch, _ = filecmp.cmpfiles(a, c, files, shallow=False)
    expected = {'annotations/instances_train.json', 'annotations/instances_val.json', 'train/000000000001.jpg'}
    assert expected <= set(mismatch)


# ---------------------------------------------------------------------------- valid COCO

def test_annotation_masks_agree_with_area_and_bbox(instances):
    n = 0
    for img, pixels, anns in instances:
        assert pixels.shape == (img['height'], img['width'], 3)
        for ann, mask in anns:
            # area and bbox are computed from the polygons exactly as pycocotools rasterises them.
            assert mask.sum() == pytest.approx(ann['area'], abs=1)
            np.testing.assert_allclose(xywh_of_mask(mask), ann['bbox'], atol=1)
            assert ann['iscrowd'] == 0
            assert all(len(p) >= 6 and len(p) % 2 == 0 for p in ann['segmentation'])
            n += 1
    assert n == len({a['id'] for _, _, anns in instances for a, _ in anns}), 'annotation ids are unique'


def test_categories_are_the_six_shape_classes(train):
    cats = train.loadCats(train.getCatIds())
    assert [(c['id'], c['name']) for c in cats] == [(i + 1, n) for i, n in enumerate(MINI_COCO_CLASSES)]
    assert MINI_COCO_CLASSES == ('circle', 'square', 'triangle', 'star', 'hexagon', 'cross')
    # Several classes appear: each object's class is drawn uniformly, >= 3 objects per image.
    assert len({a['category_id'] for a in train.dataset['annotations']}) >= 3


def test_images_have_varied_non_square_sizes(train):
    sizes = [(img['width'], img['height']) for img in train.dataset['images']]
    # Width and height are drawn independently from these ranges.
    assert all(IMAGE_WIDTHS[0] <= w <= IMAGE_WIDTHS[1] for w, _ in sizes)
    assert all(IMAGE_HEIGHTS[0] <= h <= IMAGE_HEIGHTS[1] for _, h in sizes)
    assert len(set(sizes)) > 1 and len({round(w / h, 2) for w, h in sizes}) > 1
    assert any(w != h for w, h in sizes)


def test_annotations_describe_the_painted_objects(instances):
    """Inside each annotation's mask the image has its class's colour (the palette colour
    plus noise): the masks are aligned with what is drawn."""
    palette_bgr = np.array(MINI_COCO_PALETTE, dtype=float)[:, ::-1]
    for img, pixels, anns in instances:
        for ann, mask in anns:
            inner = cv2.erode(mask.astype(np.uint8), np.ones((5, 5), np.uint8)).astype(bool)
            if inner.sum() < 20:
                continue
            mean = pixels[inner].mean(0)
            nearest = np.linalg.norm(palette_bgr - mean, axis=1).argmin()
            assert nearest == ann['category_id'] - 1, (img['file_name'], ann['id'], mean)


def test_visible_parts_are_disjoint_and_touch(instances):
    """Objects are painted in order and each annotation is its object's *visible* part, so no
    pixel belongs to two instances; an object is placed next to / over the previous one with
    probability 0.5, so some instances touch (and their boxes intersect)."""
    touching = boxes_intersect = 0
    for _, _, anns in instances:
        for (a, ma), (b, mb) in itertools.combinations(anns, 2):
            assert not (ma & mb).any(), f'annotations {a["id"]} and {b["id"]} share pixels'
            grown = cv2.dilate(ma.astype(np.uint8), np.ones((3, 3), np.uint8)).astype(bool)
            touching += bool((grown & mb).any())
            (ax, ay, aw, ah), (bx, by, bw, bh) = a['bbox'], b['bbox']
            boxes_intersect += min(ax + aw, bx + bw) > max(ax, bx) and min(ay + ah, by + bh) > max(ay, by)
    assert touching >= 2 and boxes_intersect >= 2


def test_object_sizes_vary(train):
    # Circumscribed diameters are drawn from 28..120 px, so areas span more than 10x.
    areas = [a['area'] for a in train.dataset['annotations']]
    assert max(areas) / min(areas) > 4


def test_convex_shapes_are_occluded_but_mostly_visible(instances):
    """For a convex shape, the convex hull of its visible part lies inside the whole shape,
    so visible area / hull area is 1 for an unoccluded shape and at least
    MIN_VISIBLE_FRACTION (0.5, enforced by the generator) for an occluded one, less a
    rasterisation margin. Some are clearly occluded (ratio < 0.9)."""
    ratios = []
    for img, _, anns in instances:
        for ann, _ in anns:
            if MINI_COCO_CLASSES[ann['category_id'] - 1] not in CONVEX_CLASSES:
                continue
            points = np.concatenate([np.reshape(p, (-1, 2)) for p in ann['segmentation']]).astype(np.float32)
            hull = cv2.convexHull(points).reshape(-1).astype(float).tolist()
            hull_area = mask_utils.area(mask_utils.frPyObjects([hull], img['height'], img['width']))[0]
            ratios.append(ann['area'] / hull_area)
    assert len(ratios) >= 5
    assert min(ratios) >= MIN_VISIBLE_FRACTION - 0.1, sorted(ratios)[:3]
    assert max(ratios) > 0.95                             # unoccluded ones
    assert sum(r < 0.9 for r in ratios) >= 1              # occluded ones


# ---------------------------------------------------------------------------- mmdet loading

def mmdet_pipeline():
    from mmcv.transforms import LoadImageFromFile
    from mmdet.datasets.transforms import LoadAnnotations
    return [LoadImageFromFile(), LoadAnnotations(with_bbox=True, with_mask=True)]


@pytest.mark.parametrize('dataset_type', ['MiniCocoDataset', 'CocoDataset'])
def test_loads_through_mmdet_with_masks(mini_coco, dataset_type):
    from mmdet.datasets import CocoDataset
    kwargs = dict(data_root=mini_coco, ann_file='annotations/instances_val.json',
                  data_prefix=dict(img='val/'), pipeline=mmdet_pipeline())
    if dataset_type == 'MiniCocoDataset':
        dataset = MiniCocoDataset(**kwargs)
    else:   # plain mmdet, given the classes
        dataset = CocoDataset(metainfo=dict(classes=MINI_COCO_CLASSES), **kwargs)
    assert dataset.metainfo['classes'] == MINI_COCO_CLASSES
    coco = load_coco(mini_coco, 'val')
    assert len(dataset) == len(coco.getImgIds()) == 4
    for i in range(len(dataset)):
        results = dataset[i]
        anns = coco.loadAnns(coco.getAnnIds(imgIds=results['img_id']))
        masks = results['gt_masks']
        assert len(masks) == len(anns) == len(results['gt_bboxes']) > 0
        assert (masks.height, masks.width) == results['img'].shape[:2]
        np.testing.assert_array_equal(masks.to_ndarray(), np.stack([coco.annToMask(a) for a in anns]))
        xyxy = [[x, y, x + w, y + h] for x, y, w, h in (a['bbox'] for a in anns)]
        np.testing.assert_allclose(results['gt_bboxes'].numpy(), xyxy, atol=1e-4)
        assert results['gt_bboxes_labels'].tolist() == [a['category_id'] - 1 for a in anns]


def test_missing_set_names_path_and_command(tmp_path):
    root = str(tmp_path / 'nowhere')
    with pytest.raises(FileNotFoundError) as err:
        MiniCocoDataset(data_root=root, ann_file='annotations/instances_train.json',
                        data_prefix=dict(img='train/'), pipeline=[])
    msg = str(err.value)
    assert osp.join(root, 'annotations', 'instances_train.json') in msg
    assert f'tools/make_mini_coco.py --out {root}' in msg


def test_missing_image_folder_names_it(tmp_path, mini_coco):
    root = tmp_path / 'annotations_only'
    (root / 'annotations').mkdir(parents=True)
    (root / 'annotations' / 'instances_val.json').write_bytes(
        open(osp.join(mini_coco, 'annotations', 'instances_val.json'), 'rb').read())
    with pytest.raises(FileNotFoundError, match='image folder') as err:
        MiniCocoDataset(data_root=str(root), ann_file='annotations/instances_val.json',
                        data_prefix=dict(img='val/'), pipeline=[])
    assert str(root / 'val') in str(err.value)


# ---------------------------------------------------------------------------- the CLI

def make_cli(out, *args):
    return run_python(['tools/make_mini_coco.py', '--out', str(out), '--num-train', '2', '--num-val', '1', *args],
                      timeout=300)


def test_cli_writes_then_skips_then_force_rewrites(tmp_path):
    out = tmp_path / 'set'
    proc = make_cli(out)
    assert proc.returncode == 0, proc.stderr
    ann = out / 'annotations' / 'instances_train.json'
    assert f'train: {ann}' in proc.stdout and 'wrote 2 train / 1 val images' in proc.stdout
    assert len(json.loads(ann.read_text())['images']) == 2
    image = out / 'train' / '000000000001.jpg'
    original = image.read_bytes()
    stamps = {f: os.stat(out / f).st_mtime_ns for f in all_files(out)}

    image.write_bytes(b'not a jpeg')       # the manifest, not the content, decides "up to date"
    proc = make_cli(out)
    assert proc.returncode == 0, proc.stderr
    assert 'is up to date' in proc.stdout
    assert image.read_bytes() == b'not a jpeg'
    assert os.stat(ann).st_mtime_ns == stamps[osp.relpath(ann, out)]

    proc = make_cli(out, '--force')
    assert proc.returncode == 0, proc.stderr
    assert 'wrote' in proc.stdout and 'up to date' not in proc.stdout
    assert image.read_bytes() == original   # deterministic: rewritten byte for byte


def test_ensure_regenerates_when_files_are_missing_or_parameters_change(tmp_path):
    out = str(tmp_path / 'set')
    logs = []
    ensure_mini_coco(out, num_train=2, num_val=1, log=logs.append)
    val_json = osp.join(out, 'annotations', 'instances_val.json')
    os.remove(val_json)
    del logs[:]
    ensure_mini_coco(out, num_train=2, num_val=1, log=logs.append)
    assert osp.isfile(val_json)
    assert 'files missing' in logs[0] and val_json in logs[0] and 'wrote' in logs[-1]
    os.remove(osp.join(out, 'train', '000000000002.jpg'))
    ensure_mini_coco(out, num_train=2, num_val=1, log=logs.append)
    assert osp.isfile(osp.join(out, 'train', '000000000002.jpg'))

    ensure_mini_coco(out, num_train=3, num_val=1, log=logs.append)
    assert 'wrote 3 train / 1 val' in logs[-1]
    assert len(load_coco(out, 'train').getImgIds()) == 3
    ensure_mini_coco(out, num_train=3, num_val=1, log=logs.append)
    assert 'is up to date' in logs[-1]


@pytest.mark.parametrize('args, message', [
    (['--num-train', '0'], '--num-train must be >= 1, got 0'),
    (['--num-train', 'many'], "invalid int value: 'many'"),
])
def test_cli_rejects_bad_arguments(tmp_path, args, message):
    proc = run_python(['tools/make_mini_coco.py', '--out', str(tmp_path / 'set'), *args])
    assert proc.returncode != 0
    assert message in proc.stderr
    assert not (tmp_path / 'set').exists()
