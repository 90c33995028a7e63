from .prepbn import PRepBN, RepBN, bn_affine, iter_prepbn, repbn_affine, repbn_to_bn_params

__all__ = ['PRepBN', 'RepBN', 'bn_affine', 'iter_prepbn', 'repbn_affine', 'repbn_to_bn_params']
