import os.path as osp

from mmdet.datasets import CocoDataset
from mmdet.registry import DATASETS

from .mini_coco import CLASSES, PALETTE


@DATASETS.register_module()
class MiniCocoDataset(CocoDataset):
    """mmdet's ``CocoDataset`` for the synthetic mini COCO set (see ``tools/make_mini_coco.py``).

    Carries the set's classes and palette, and fails with the command that makes the
    set when its annotation file or image folder is missing.
    """
    METAINFO = dict(classes=CLASSES, palette=PALETTE)

    def load_data_list(self):
        img_dir = self.data_prefix.get('img', '')
        for path, what in ((self.ann_file, 'annotation file'), (img_dir, 'image folder')):
            if path and not osp.exists(path):
                root = self.data_root or osp.dirname(osp.dirname(self.ann_file))
                raise FileNotFoundError(
                    f'mini COCO {what} not found: {path}. Make the set with '
                    f'`python tools/make_mini_coco.py --out {root}` (or `make mini-coco` for '
                    f'data/mini_coco), or point data_root at an existing copy.')
        return super().load_data_list()
