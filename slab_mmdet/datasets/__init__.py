from .mini_coco import CLASSES as MINI_COCO_CLASSES
from .mini_coco import PALETTE as MINI_COCO_PALETTE
from .mini_coco import ensure_mini_coco, make_mini_coco
from .mini_coco_dataset import MiniCocoDataset

__all__ = ['MINI_COCO_CLASSES', 'MINI_COCO_PALETTE', 'MiniCocoDataset', 'ensure_mini_coco', 'make_mini_coco']
