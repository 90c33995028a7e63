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
import torch.nn.functional as F
from mmengine.registry import MODELS

from ...utils import is_int, is_number


# Over which tokens a RepBN takes its training statistics (see RepBN's docstring).
BN_STATS = ('batch', 'image')

# (device type, input dtype, weight dtype, autocast dtype) -> the dtype of LayerNorm's output.
_LAYER_NORM_DTYPES = {}


def layer_norm_dtype(x, weight_dtype=torch.float32):
    """The dtype a LayerNorm with ``weight_dtype`` weights returns for ``x`` here.

    Outside autocast that is ``x``'s dtype. Under autocast it depends on the device's
    policy for ``layer_norm`` (float32 on CUDA; in torch 2.13 the autocast dtype on the
    CPU), so it is asked of autocast itself, once per device, dtypes and autocast dtype.
    RepBN returns this dtype too, so that PRepBN's two branches agree at every g.
    """
    device = x.device.type
    if not torch.is_autocast_enabled(device):
        return x.dtype
    key = (device, x.dtype, weight_dtype, torch.get_autocast_dtype(device))
    if key not in _LAYER_NORM_DTYPES:
        probe = torch.ones(1, 2, dtype=x.dtype, device=x.device)
        weight = torch.ones(2, dtype=weight_dtype, device=x.device)
        _LAYER_NORM_DTYPES[key] = F.layer_norm(probe, (2,), weight, torch.zeros_like(weight)).dtype
    return _LAYER_NORM_DTYPES[key]


@MODELS.register_module()
class RepBN(nn.Module):
    """Re-parameterisable BatchNorm for channel-last tokens: ``BN(x) + alpha * x``.

    Args:
        num_features (int): Number of channels C.
        eps (float): BatchNorm epsilon. Default: 1e-5 (``nn.BatchNorm1d``'s, as in
            the reference models).
        momentum (float | None): BatchNorm momentum (None: cumulative average).
            Default: 0.1.
        alpha_init (float): Initial ``alpha``. Default: 1.0, as the reference. 0.0
            starts with the identity path closed (a plain BatchNorm that may learn to
            open it); docs/prepbn.md reports what that changed in the anneal study.
        stats (str): Which tokens the training statistics are taken over.
            ``'batch'`` (default, the reference): all tokens of all images of the
            batch. ``'image'``: each image's tokens alone (an input ``(B, N, C)``
            is normalised per image and channel, and the running statistics
            average the per-image ones), so that a batch of B images trains like B
            batches of one image and no image's statistics depend on the others
            (docs/prepbn.md: why this matters for detection). Evaluation and
            fusion are the same either way: the running statistics.
    """
    _abbr_ = 'repbn'

    def __init__(self, num_features, eps=1e-5, momentum=0.1, alpha_init=1.0, stats='batch'):
        super().__init__()
        check_norm_arguments('RepBN', num_features, eps=eps, momentum=momentum)
        if stats not in BN_STATS:
            raise ValueError(f'RepBN: stats must be one of {BN_STATS}, got {stats!r}')
        if not is_number(alpha_init):
            raise ValueError(f'RepBN: alpha_init must be a finite number, got {alpha_init!r}')
        self.stats = stats
        # A 1-element tensor, as in the reference (which initialises it to 1).
        self.alpha = nn.Parameter(torch.full((1,), float(alpha_init)))
        self.bn = nn.BatchNorm1d(num_features, eps=eps, momentum=momentum)

    def forward(self, x):
        # Under autocast: in the dtype a LayerNorm would return (see layer_norm_dtype); the
        # float32 alpha would otherwise promote a half-precision BN(x) to float32 on one
        # device and not on another.
        dtype = layer_norm_dtype(x, self.alpha.dtype)
        x = x.to(dtype)
        if self.stats == 'image' and self.bn.training and x.dim() == 3:
            normed = self._per_image_bn(x)
        else:
            # BatchNorm1d on (M, C) normalises each channel over all M = batch x tokens rows.
            normed = self.bn(x.reshape(-1, x.shape[-1])).reshape(x.shape)
        return torch.addcmul(normed.to(dtype), self.alpha.to(dtype), x)    # BN(x) + alpha x in one pass

    def _per_image_bn(self, x):
        """Train-mode BN of (B, N, C) tokens with statistics per image (``stats='image'``)."""
        bn = self.bn
        factor = 0.0
        if bn.track_running_stats:
            bn.num_batches_tracked.add_(1)
            factor = 1.0 / float(bn.num_batches_tracked) if bn.momentum is None else bn.momentum
        # instance_norm over (B, C, N) normalises each (image, channel) over its N tokens and
        # updates the running statistics with the mean over images of the per-image ones.
        y = F.instance_norm(x.transpose(1, 2), bn.running_mean, bn.running_var, bn.weight, bn.bias,
                            use_input_stats=True, momentum=factor, eps=bn.eps)
        return y.transpose(1, 2)


def check_norm_arguments(owner, num_features, momentum=0.1, **epsilons):
    """Refuse what can only be wrong: a channel count below 1, an epsilon that is not > 0 (a
    negative one gives NaN for channels of small variance), a momentum outside (0, 1]."""
    if not is_int(num_features) or num_features < 1:
        raise ValueError(f'{owner}: num_features must be an int >= 1, got {num_features!r}')
    for name, value in epsilons.items():
        if not is_number(value) or not value > 0:
            raise ValueError(f'{owner}: {name} must be a number > 0 (it keeps the normaliser away from 0), '
                             f'got {value!r}')
    if momentum is not None and (not is_number(momentum) or not 0 < momentum <= 1):
        raise ValueError(f'{owner}: momentum must be a number in (0, 1] or None (cumulative average), '
                         f'got {momentum!r}')


def check_g(g, what):
    """``g`` as a float, if it is a finite number in [0, 1]; else a ValueError naming ``what``."""
    value = float(g)
    if not 0.0 <= value <= 1.0:   # also refuses NaN
        raise ValueError(f'{what}: g must be a number in [0, 1] (1 = LayerNorm, 0 = RepBN), got {value}')
    return value


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
        alpha_init (float): The RepBN branch's initial ``alpha`` (default 1.0); see
            :class:`RepBN`.
        stats (str): The RepBN branch's training statistics, ``'batch'`` (default)
            or ``'image'``; see :class:`RepBN`.
    """
    _abbr_ = 'prepbn'

    def __init__(self, num_features, eps=1e-6, bn_eps=1e-5, momentum=0.1, alpha_init=1.0, stats='batch'):
        super().__init__()
        check_norm_arguments('PRepBN', num_features, eps=eps, bn_eps=bn_eps)
        self.ln = nn.LayerNorm(num_features, eps=eps)
        self.repbn = RepBN(num_features, eps=bn_eps, momentum=momentum, alpha_init=alpha_init, stats=stats)
        # The one place g lives: a buffer, so checkpoints, EMA models and parameter swaps
        # carry it. forward reads it each call (on a GPU that is an 8-byte copy per layer).
        # float64 whatever the model's dtype (see _apply), so it holds the schedule's
        # values exactly.
        self.register_buffer('g', torch.tensor(1.0, dtype=torch.float64))

    def _apply(self, fn, *args, **kwargs):
        super()._apply(fn, *args, **kwargs)
        self._buffers['g'] = self._buffers['g'].to(torch.float64)
        return self

    @property
    def g_value(self):
        """g as a Python float (read from the buffer ``g``)."""
        return float(self.g)

    def set_g(self, g):
        """Set the LayerNorm weight g in [0, 1]."""
        self.g.fill_(check_g(g, 'PRepBN'))

    def _load_from_state_dict(self, state_dict, prefix, *args, **kwargs):
        if prefix + 'g' in state_dict:
            check_g(state_dict[prefix + 'g'], f'{prefix}g in the state dict')
        super()._load_from_state_dict(state_dict, prefix, *args, **kwargs)

    def forward(self, x):
        g = self.g_value
        if g == 0.0:
            return self.repbn(x)
        if g == 1.0:
            return self.ln(x)
        # g LN(x) + (1 - g) RepBN(x) in one pass (three in the written form, forward and backward).
        return torch.lerp(self.repbn(x), self.ln(x), g)

    def extra_repr(self):
        return f'g={self.g_value:.6g}'


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
