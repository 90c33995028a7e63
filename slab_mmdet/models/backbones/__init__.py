from .slab_pvt import SLABPyramidVisionTransformer
from .slab_swin import SLABSwinTransformer

__all__ = ['SLABPyramidVisionTransformer', 'SLABSwinTransformer']
