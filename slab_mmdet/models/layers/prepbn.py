"""RepBN and PRepBN: the re-parameterisable norms of SLAB (ICML 2024).

* ``RepBN(x) = BN(x) + alpha * x`` with a learnable scalar ``alpha``. In eval mode it
  is an ordinary BatchNorm with weight ``gamma + alpha * sigma`` and bias
  ``beta + alpha * mu`` (the paper's Lemma 4.1), i.e. a fixed per-channel affine
  ``x * scale + shift`` that folds into the neighbouring linear/conv layer.
* ``PRepBN(x) = g * LN(x) + (1 - g) * RepBN(x)``, where ``g`` is annealed from 1 to 0
  during training by :class:`slab_mmdet.engine.PRepBNHook`.

Both take channel-last tensors ``(..., C)`` (the ``(B, N, C)`` token layout of
transformer backbones); BN statistics are per channel over all other dimensions
(batch x tokens), as in the reference implementation.

The closed forms of Lemma 4.1 (:func:`repbn_to_bn_params`, :func:`repbn_affine`)
live here and nowhere else; the fusion code builds on them.
"""
import torch
import torch.nn as nn
from mmengine.registry import MODELS


@MODELS.register_module()
class RepBN(nn.Module):
    """Re-parameterisable BatchNorm for channel-last tokens: ``BN(x) + alpha * x``.

    Args:
        num_features (int): Number of channels C.
        eps (float): BatchNorm epsilon. Default: 1e-5 (``nn.BatchNorm1d``'s, as in
            the reference models).
        momentum (float | None): BatchNorm momentum (None: cumulative average).
            Default: 0.1.
    """
    _abbr_ = 'repbn'

    def __init__(self, num_features, eps=1e-5, momentum=0.1):
        super().__init__()
        # The reference initialises alpha to 1, as a 1-element tensor.
        self.alpha = nn.Parameter(torch.ones(1))
        self.bn = nn.BatchNorm1d(num_features, eps=eps, momentum=momentum)

    def forward(self, x):
        c = x.shape[-1]
        # BatchNorm1d on (M, C) normalises each channel over all M = batch x tokens rows.
        return self.bn(x.reshape(-1, c)).reshape(x.shape) + self.alpha * x


@MODELS.register_module()
class PRepBN(nn.Module):
    """Progressive re-parameterised BatchNorm: ``g * LN(x) + (1 - g) * RepBN(x)``.

    ``g`` is a persistent buffer (saved in checkpoints) that starts at 1.0 and is
    set by :class:`~slab_mmdet.engine.PRepBNHook` (or :meth:`set_g`). It is used
    as is in both train and eval mode; eval mode only switches BN to its running
    statistics. A branch whose weight is 0 is not computed: with ``g == 0`` no
    LayerNorm runs, with ``g == 1`` no BatchNorm runs (and its statistics do not move).

    Args:
        num_features (int): Number of channels C.
        eps (float): LayerNorm epsilon. The reference SLAB-PVT models use 1e-6,
            the Swin ones 1e-5. Default: 1e-6. (``mmcv.cnn.build_norm_layer``
            passes ``eps=1e-5`` unless the config gives one.)
        bn_eps (float): BatchNorm epsilon of the RepBN branch. Default: 1e-5.
        momentum (float | None): BatchNorm momentum. Default: 0.1.
    """
    _abbr_ = 'prepbn'

    def __init__(self, num_features, eps=1e-6, bn_eps=1e-5, momentum=0.1):
        super().__init__()
        self.ln = nn.LayerNorm(num_features, eps=eps)
        self.repbn = RepBN(num_features, eps=bn_eps, momentum=momentum)
        self.register_buffer('g', torch.tensor(1.0))
        # Python mirror of the buffer, so that forward never reads a device tensor
        # (on CUDA that would synchronise once per norm layer).
        self._g = 1.0

    def set_g(self, g):
        """Set the LayerNorm weight g in [0, 1]."""
        g = float(g)
        if not 0.0 <= g <= 1.0:
            raise ValueError(f'PRepBN: g must be in [0, 1], got {g}')
        self.g.fill_(g)
        self._g = g

    def _load_from_state_dict(self, *args, **kwargs):
        super()._load_from_state_dict(*args, **kwargs)
        self._g = float(self.g)

    def forward(self, x):
        g = self._g
        if g == 0.0:
            return self.repbn(x)
        if g == 1.0:
            return self.ln(x)
        return g * self.ln(x) + (1.0 - g) * self.repbn(x)

    def extra_repr(self):
        return f'g={self._g:.6g}'


def _bn_std(bn):
    return torch.sqrt(bn.running_var + bn.eps)


@torch.no_grad()
def repbn_to_bn_params(repbn):
    """Lemma 4.1: the (weight, bias) of the plain BatchNorm equal to ``repbn`` in eval mode.

    ``RepBN(x) = gamma (x - mu) / sigma + beta + alpha x`` equals a BatchNorm with the
    same running statistics and weight ``gamma + alpha sigma``, bias ``beta + alpha mu``.
    """
    bn = repbn.bn
    if bn.running_mean is None:
        raise ValueError('RepBN: its BatchNorm tracks no running statistics, so it has no eval-mode form')
    gamma = bn.weight if bn.affine else torch.ones_like(bn.running_mean)
    beta = bn.bias if bn.affine else torch.zeros_like(bn.running_mean)
    sigma = _bn_std(bn)
    return gamma + repbn.alpha * sigma, beta + repbn.alpha * bn.running_mean


@torch.no_grad()
def bn_affine(bn):
    """The per-channel ``(scale, shift)`` that an eval-mode BatchNorm applies: ``x * scale + shift``."""
    if bn.running_mean is None:
        raise ValueError(f'{type(bn).__name__}: tracks no running statistics, so it has no eval-mode affine')
    sigma = _bn_std(bn)
    gamma = bn.weight if bn.affine else torch.ones_like(sigma)
    beta = bn.bias if bn.affine else torch.zeros_like(sigma)
    scale = gamma / sigma
    return scale, beta - bn.running_mean * scale


@torch.no_grad()
def repbn_affine(repbn):
    """The per-channel ``(scale, shift)`` that ``repbn`` applies in eval mode.

    ``scale = gamma / sigma + alpha`` and ``shift = beta - gamma mu / sigma``: the
    affine of the equivalent BatchNorm of :func:`repbn_to_bn_params`.
    """
    scale, shift = bn_affine(repbn.bn)
    return scale + repbn.alpha, shift


def iter_prepbn(module):
    """Yield ``(name, PRepBN)`` for every PRepBN inside ``module``."""
    for name, m in module.named_modules():
        if isinstance(m, PRepBN):
            yield name, m
