"""Folding normalisation layers into their neighbouring linear/conv layers.

Every foldable norm is, in eval mode, a fixed per-channel affine ``x * scale + shift``
(for RepBN this is the paper's Lemma 4.1, see
:func:`slab_mmdet.models.layers.repbn_affine`). Folding it away is exact:

* a norm *before* a layer (pre-norm -> qkv / fc1 / reduction / spatial-reduction
  conv): ``W (s x + t) + b = (W diag(s)) x + (W t + b)`` -- see :func:`fold_into_next`;
* a norm *after* a layer (patch-embedding conv -> post-norm):
  ``s (W x + b) + t = (diag(s) W) x + (s b + t)`` -- see :func:`fold_into_previous`.

A LayerNorm is never folded (its statistics depend on each token), nor a PRepBN
whose LayerNorm weight ``g`` is still above 0: :func:`norm_affine` refuses both,
naming the layer. Every refusal, here and in the modules that fold their norms, is a
:class:`FusionError`.
"""
import torch
import torch.nn as nn
from torch.nn.modules.batchnorm import _BatchNorm

from .dyt import DyT, TanhAffine
from .norms import ChannelAffine, norm_remainder
from .prepbn import PRepBN, RepBN, bn_affine, repbn_affine


class FusionError(ValueError):
    """A norm, layer or model that cannot be fused; the message names the layer and what
    would make it foldable (the one exception that callers of fusion catch)."""


@torch.no_grad()
def norm_affine(norm, name='norm'):
    """The ``(scale, shift)`` that ``norm`` applies in eval mode; refuses what cannot be folded.

    For a DyT that is the affine after its tanh (``weight``, ``bias``), which folds only into
    the layers that read its output.

    Args:
        norm (nn.Module): a PRepBN with g == 0, RepBN, BatchNorm, DyT, ChannelAffine or TanhAffine.
        name (str): the layer's name, for error messages.
    """
    bn = norm.repbn.bn if isinstance(norm, PRepBN) else norm.bn if isinstance(norm, RepBN) else norm
    if isinstance(bn, _BatchNorm) and bn.running_mean is None:
        raise FusionError(f'{name}: its BatchNorm tracks no running statistics, so it has no eval-mode affine to fold')
    if isinstance(norm, PRepBN):
        if norm.g_value != 0.0:
            raise FusionError(
                f'{name}: PRepBN has g = {norm.g_value:.6g} > 0, i.e. its LayerNorm branch is still active; '
                f'a LayerNorm cannot be folded. Finish the annealing (g = 0, see PRepBNHook) before fusing.')
        return repbn_affine(norm.repbn)
    if isinstance(norm, RepBN):
        return repbn_affine(norm)
    if isinstance(norm, _BatchNorm):
        return bn_affine(norm)
    if isinstance(norm, (ChannelAffine, DyT, TanhAffine)):
        return norm.weight.detach().clone(), norm.bias.detach().clone()
    raise FusionError(
        f'{name}: cannot fold a {type(norm).__name__} into a neighbouring layer; only PRepBN (g = 0), '
        f'RepBN and BatchNorm are per-channel affine at inference (and DyT after its tanh)'
        + (' (a LayerNorm normalises each token by its own statistics)' if isinstance(norm, nn.LayerNorm) else ''))


def _check_layer(layer, name):
    if isinstance(layer, nn.Conv2d):
        if layer.groups != 1:
            raise FusionError(f'{name}: folding into a grouped conv is not supported')
    elif not isinstance(layer, nn.Linear):
        raise FusionError(f'{name}: can only fold into nn.Linear or nn.Conv2d, got {type(layer).__name__}')


def _ensure_bias(layer):
    if layer.bias is None:
        out_channels = layer.out_features if isinstance(layer, nn.Linear) else layer.out_channels
        layer.bias = nn.Parameter(layer.weight.new_zeros(out_channels))


@torch.no_grad()
def fold_into_next(layer, scale, shift, name='layer'):
    """Fold ``x * scale + shift`` applied to ``layer``'s input into ``layer``.

    For a conv the shift is folded into the bias, which is exact only where the conv
    reads no zero padding; a conv with padding is refused.
    """
    _check_layer(layer, name)
    if isinstance(layer, nn.Conv2d) and any(p != 0 for p in layer.padding):
        raise FusionError(f'{name}: cannot fold an input shift into a conv that zero-pads its input')
    w = layer.weight
    scale, shift = scale.to(w), shift.to(w)
    _ensure_bias(layer)
    if isinstance(layer, nn.Linear):
        layer.bias.add_(w @ shift)
        w.mul_(scale)
    else:
        layer.bias.add_(torch.einsum('oikl,i->o', w, shift))
        w.mul_(scale.view(1, -1, 1, 1))


@torch.no_grad()
def fold_into_previous(layer, scale, shift, name='layer'):
    """Fold ``y * scale + shift`` applied to ``layer``'s output into ``layer``."""
    _check_layer(layer, name)
    w = layer.weight
    scale, shift = scale.to(w), shift.to(w)
    _ensure_bias(layer)
    layer.bias.mul_(scale).add_(shift)
    w.mul_(scale.view(-1, *([1] * (w.dim() - 1))))


def fold_norm(norm, name, next_layers=(), previous_layer=None):
    """Fold ``norm`` into the layers that read its output, or into the one that feeds it.

    Returns the module that replaces ``norm``: ``nn.Identity``, or for a DyT its tanh
    (:class:`ScaledTanh`), which stays; a DyT cannot fold into the layer before it (its tanh
    stands between), so ``previous_layer`` with a DyT is refused.
    """
    if bool(next_layers) == (previous_layer is not None):
        raise ValueError('fold_norm: give either next_layers or previous_layer')
    if previous_layer is not None and isinstance(norm, DyT):
        raise FusionError(f'{name}: a DyT cannot fold into the layer before it (its tanh stands between); '
                          f'only into the layers that read its output')
    scale, shift = norm_affine(norm, name)
    for i, layer in enumerate(next_layers):
        fold_into_next(layer, scale, shift, f'{name} -> consumer {i}')
    if previous_layer is not None:
        fold_into_previous(previous_layer, scale, shift, f'{name} <- producer')
    return norm_remainder(norm)


def norm_to_channel_affine(norm, name):
    """The fixed module equal to ``norm`` in eval mode: a :class:`ChannelAffine`, or for a DyT
    its tanh and affine (:class:`TanhAffine`)."""
    return norm_remainder(norm, norm_affine(norm, name))
