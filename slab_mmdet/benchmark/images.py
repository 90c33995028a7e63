"""The images a benchmark runs on: a config's test dataset, a folder, or the mini COCO val split."""
import itertools
import os
import os.path as osp
from dataclasses import dataclass

from .errors import BenchmarkError

IMAGE_EXTENSIONS = ('.jpg', '.jpeg', '.png', '.bmp')
DEFAULT_MINI_ROOT = 'data/mini_coco'
ALTERNATIVES = ('pass --images DIR (any folder of jpg/png images) or --mini [DIR] (the mini COCO val split, '
                f'default {DEFAULT_MINI_ROOT}, made by tools/make_mini_coco.py)')


@dataclass
class ImageSet:
    """The images to time, in order (one timed inference per model each), and where they came from."""
    paths: list
    source: str
    num_unique: int


def select_images(paths, num_images, source):
    """The first `num_images` of `paths`; when there are fewer, they are used again in order."""
    if num_images < 1:
        raise BenchmarkError(f'number of images must be >= 1, got {num_images}')
    if not paths:
        raise BenchmarkError(f'no images in {source}')
    chosen = list(itertools.islice(itertools.cycle(paths), num_images))
    return ImageSet(chosen, source, min(len(paths), num_images))


def list_image_dir(directory):
    """Image files (IMAGE_EXTENSIONS, any case) directly in `directory`, sorted by name."""
    if not osp.isdir(directory):
        raise BenchmarkError(f'image folder not found: {directory!r}')
    paths = sorted(osp.join(directory, f) for f in os.listdir(directory)
                   if f.lower().endswith(IMAGE_EXTENSIONS) and osp.isfile(osp.join(directory, f)))
    if not paths:
        raise BenchmarkError(f'no images ({", ".join(IMAGE_EXTENSIONS)}) in {directory!r}')
    return paths


def list_mini_coco_val(root=DEFAULT_MINI_ROOT):
    """The images of the mini COCO val split under `root`."""
    val_dir = osp.join(root, 'val')
    if not osp.isdir(val_dir):
        raise BenchmarkError(f'mini COCO val split not found: {val_dir} is missing. Make it with '
                             f'`python tools/make_mini_coco.py --out {root}`, or pass --images DIR')
    return list_image_dir(val_dir)


def _is_remote(path):
    return '://' in str(path)


def _dataset_paths(dataset_cfg):
    """Local files and folders a dataset config (and any wrapped datasets) reads from."""
    if 'dataset' in dataset_cfg:
        return _dataset_paths(dataset_cfg['dataset'])
    if 'datasets' in dataset_cfg:
        return [p for d in dataset_cfg['datasets'] for p in _dataset_paths(d)]
    root = dataset_cfg.get('data_root') or ''
    paths = []
    ann_file = dataset_cfg.get('ann_file') or ''
    if ann_file:
        paths.append(ann_file if osp.isabs(ann_file) or _is_remote(ann_file) else osp.join(root, ann_file))
    img_prefix = (dataset_cfg.get('data_prefix') or {}).get('img', '')
    if img_prefix or root:
        paths.append(img_prefix if osp.isabs(img_prefix) or _is_remote(img_prefix) else osp.join(root, img_prefix))
    return [p for p in paths if not _is_remote(p)]


def list_test_dataset(cfg, config_name='the config', limit=None):
    """Image paths of ``cfg.test_dataloader.dataset``, in dataset order (at most `limit`).

    A missing annotation file or image folder raises BenchmarkError naming it and the
    alternatives (--images / --mini).
    """
    dataset_cfg = (cfg.get('test_dataloader') or {}).get('dataset')
    if dataset_cfg is None:
        raise BenchmarkError(f'{config_name} has no test_dataloader.dataset; {ALTERNATIVES}')
    for path in _dataset_paths(dataset_cfg):
        if not osp.exists(path):
            raise BenchmarkError(f'the test dataset of {config_name} is missing: {path} does not exist; '
                                 f'{ALTERNATIVES}')
    from mmdet.registry import DATASETS
    from mmengine.registry import init_default_scope
    init_default_scope(cfg.get('default_scope', 'mmdet'))
    try:
        dataset = DATASETS.build(dataset_cfg)
    except (FileNotFoundError, OSError) as e:
        raise BenchmarkError(f'the test dataset of {config_name} cannot be read: {e}; {ALTERNATIVES}') from e
    count = len(dataset) if limit is None else min(len(dataset), limit)
    return [dataset.get_data_info(i)['img_path'] for i in range(count)]


def dataset_signature(cfg):
    """What identifies a config's test images (to tell whether two configs use the same ones)."""
    dataset_cfg = (cfg.get('test_dataloader') or {}).get('dataset') or {}
    return tuple(_dataset_paths(dataset_cfg))


def resolve_images(cfg, num_images, images_dir=None, mini_root=None, config_name='the config'):
    """The ImageSet to time: `images_dir`, else the mini COCO val split under `mini_root`, else
    the test dataset of `cfg` (the first config of a comparison)."""
    if images_dir is not None and mini_root is not None:
        raise BenchmarkError('give either an image folder (--images) or mini COCO (--mini), not both')
    if images_dir is not None:
        return select_images(list_image_dir(images_dir), num_images, f'folder {images_dir}')
    if mini_root is not None:
        return select_images(list_mini_coco_val(mini_root), num_images, f'mini COCO val split {mini_root}/val')
    paths = list_test_dataset(cfg, config_name, limit=num_images)
    return select_images(paths, num_images, f'test dataset of {config_name}')
