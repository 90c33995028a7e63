"""DyT, Dynamic Tanh (Zhu et al., "Transformers without Normalization", CVPR 2025):
``DyT(x) = weight * tanh(alpha * x) + bias`` over the last (channel) dimension, with a learned
scalar ``alpha`` (0.5 at the start). It computes no statistics, like RepBN at inference; but
only its affine ``weight``/``bias`` folds into a neighbouring linear layer: the tanh stays, as
:class:`ScaledTanh` (or :class:`TanhAffine` where the affine has no layer to fold into), which
is what a fused model holds in DyT's place."""
import math

import torch
import torch.nn as nn
from mmengine.registry import MODELS

from ...utils import is_int, is_number


def check_alpha(owner, alpha):
    """Refuse an alpha that is not a finite number > 0 (at 0 every input maps to the bias; a
    negative alpha flips the sign of every channel, which a learned weight would have to undo)."""
    if not is_number(alpha) or not math.isfinite(alpha) or alpha <= 0:
        raise ValueError(f'{owner}: alpha must be a finite number > 0 (the slope of tanh(alpha * x) at 0; '
                         f'the DyT paper starts at 0.5), got {alpha!r}')


@MODELS.register_module()
class DyT(nn.Module):
    """Dynamic Tanh for channel-last tokens ``(..., C)``, a drop-in for LayerNorm.

    Args:
        num_features (int): Number of channels C.
        alpha_init (float): The initial ``alpha``, > 0. Default 0.5 (the paper's for ViTs).
        eps (float): Accepted and ignored, so that a ``norm_cfg`` written for LayerNorm (with
            ``eps``) builds DyT by changing its type only. Default None.
    """

    def __init__(self, num_features, alpha_init=0.5, eps=None):
        super().__init__()
        if not is_int(num_features) or num_features < 1:
            raise ValueError(f'DyT: num_features must be an int >= 1, got {num_features!r}')
        check_alpha('DyT', alpha_init)
        self.num_features = num_features
        self.alpha = nn.Parameter(torch.tensor(float(alpha_init)))
        self.weight = nn.Parameter(torch.ones(num_features))
        self.bias = nn.Parameter(torch.zeros(num_features))

    def forward(self, x):
        return torch.addcmul(self.bias, torch.tanh(self.alpha * x), self.weight)

    def _load_from_state_dict(self, state_dict, prefix, *args, **kwargs):
        alpha = state_dict.get(prefix + 'alpha')
        if alpha is not None and (alpha.numel() != 1 or not torch.isfinite(alpha).all() or alpha.item() <= 0):
            raise ValueError(f"DyT {prefix.rstrip('.') or '(root)'}: the checkpoint's alpha is "
                             f'{alpha.flatten().tolist()}; it must be one finite number > 0 (a diverged '
                             f'training leaves a non-finite alpha: use an earlier checkpoint)')
        super()._load_from_state_dict(state_dict, prefix, *args, **kwargs)

    def extra_repr(self):
        return f'{self.num_features}, alpha={self.alpha.item():.4g}'


class ScaledTanh(nn.Module):
    """``tanh(alpha * x)``: what a DyT leaves once its affine is folded into the next layer."""

    def __init__(self, alpha=1.0):
        super().__init__()
        self.alpha = nn.Parameter(torch.tensor(float(alpha)))

    def forward(self, x):
        return torch.tanh(self.alpha * x)

    def _load_from_state_dict(self, state_dict, prefix, *args, **kwargs):
        alpha = state_dict.get(prefix + 'alpha')
        if alpha is not None and (alpha.numel() != 1 or not torch.isfinite(alpha).all()):
            raise ValueError(f"ScaledTanh {prefix.rstrip('.') or '(root)'}: the checkpoint's alpha is "
                             f'{alpha.flatten().tolist()}; it must be one finite number')
        super()._load_from_state_dict(state_dict, prefix, *args, **kwargs)

    @classmethod
    def of(cls, dyt):
        """The ScaledTanh of ``dyt`` (same alpha, device and dtype)."""
        out = ScaledTanh().to(dyt.alpha)
        with torch.no_grad():
            out.alpha.copy_(dyt.alpha)
        return out

    def extra_repr(self):
        return f'alpha={self.alpha.item():.4g}'


class TanhAffine(ScaledTanh):
    """``weight * tanh(alpha * x) + bias``, fixed: what a DyT leaves where no neighbouring layer
    can take its affine (a post-norm after a padding conv, an output norm without a neck)."""

    def __init__(self, num_features=1, alpha=1.0):
        super().__init__(alpha)
        self.weight = nn.Parameter(torch.ones(num_features))
        self.bias = nn.Parameter(torch.zeros(num_features))

    def forward(self, x):
        return torch.addcmul(self.bias, torch.tanh(self.alpha * x), self.weight)

    @classmethod
    def of(cls, dyt):
        """The TanhAffine of ``dyt`` (same alpha, weight and bias)."""
        out = cls(dyt.weight.numel()).to(dyt.weight)
        with torch.no_grad():
            for name in ('alpha', 'weight', 'bias'):
                getattr(out, name).copy_(getattr(dyt, name))
        return out

    def extra_repr(self):
        return f'{self.weight.numel()}, alpha={self.alpha.item():.4g}'
