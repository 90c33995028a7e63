"""The fold maths of slab_mmdet/models/layers/fusion.py: folding a per-channel affine into the
layer after it or before it is exact, each foldable norm's eval-mode affine, and the refusals."""
import pytest
import torch
import torch.nn as nn

from slab_mmdet.models.layers import (ChannelAffine, FusionError, PRepBN, RepBN, fold_into_next, fold_into_previous,
                                      norm_affine)
from testing_utils.helpers import anneal_and_randomise_norms


def test_fold_into_next_and_previous_are_exact():
    torch.manual_seed(0)
    scale, shift = torch.rand(6, dtype=torch.float64) + 0.5, torch.randn(6, dtype=torch.float64)
    x = torch.randn(3, 10, 6, dtype=torch.float64)
    linear = nn.Linear(6, 4).double()
    want = linear(x * scale + shift)
    fold_into_next(linear, scale, shift)
    torch.testing.assert_close(linear(x), want)

    conv = nn.Conv2d(6, 5, 2, stride=2).double()
    img = torch.randn(2, 6, 8, 10, dtype=torch.float64)
    want = conv(img * scale.view(1, -1, 1, 1) + shift.view(1, -1, 1, 1))
    fold_into_next(conv, scale, shift)
    torch.testing.assert_close(conv(img), want)

    producer = nn.Conv2d(3, 6, 4, stride=4, bias=False).double()   # bias is created by folding
    img = torch.randn(1, 3, 16, 16, dtype=torch.float64)
    want = producer(img) * scale.view(1, -1, 1, 1) + shift.view(1, -1, 1, 1)
    fold_into_previous(producer, scale, shift)
    torch.testing.assert_close(producer(img), want)


def test_fold_refuses_a_padded_conv_and_unfoldable_norms():
    with pytest.raises(ValueError, match='zero-pads'):
        fold_into_next(nn.Conv2d(4, 4, 3, padding=1), torch.ones(4), torch.zeros(4))
    with pytest.raises(FusionError, match='LayerNorm'):
        norm_affine(nn.LayerNorm(4), 'stages.0.norm1')
    prepbn = PRepBN(4)
    prepbn.set_g(0.25)
    with pytest.raises(ValueError, match=r'blocks\.3\.norm2: PRepBN has g = 0\.25'):
        norm_affine(prepbn, 'blocks.3.norm2')


def test_norm_affine_matches_each_foldable_norm_in_eval_mode():
    torch.manual_seed(0)
    x = torch.randn(2, 7, 5, dtype=torch.float64)
    prepbn = anneal_and_randomise_norms(PRepBN(5).double()).eval()
    bn = anneal_and_randomise_norms(nn.ModuleList([RepBN(5)])).double().eval()[0].bn
    affine = ChannelAffine(5).double()
    with torch.no_grad():
        affine.weight.uniform_(0.5, 2)
        affine.bias.normal_()
    for norm, run in ((prepbn, prepbn), (prepbn.repbn, prepbn.repbn), (affine, affine),
                      (bn, lambda t: bn(t.reshape(-1, 5)).reshape(t.shape))):
        scale, shift = norm_affine(norm)
        torch.testing.assert_close(x * scale + shift, run(x))
