"""Pieces shared by the SLAB-PVT and SLAB-Swin backbones.

* :func:`build_token_norm`: the PRepBN plumbing -- builds a norm from ``norm_cfg``, or in
  deploy mode what fusion leaves of it (nothing, or DyT's tanh; see :mod:`.norms`).
* :class:`Mlp`, :class:`PatchEmbed`, :class:`PreNormBlock`: the transformer parts.
* Token/grid helpers: :func:`nlc_to_nchw`, :func:`nchw_to_nlc`, :func:`resize_pos_table`,
  :func:`pad_to_multiple`.

Every module that owns a norm implements ``switch_to_deploy()``, which folds the norm
into its neighbour (see :mod:`.fusion`) and leaves the structure that
``deploy=True`` builds directly.
"""
import torch
import torch.nn as nn
import torch.nn.functional as F
import torch.utils.checkpoint as cp
from mmcv.cnn import build_activation_layer, build_norm_layer
from mmcv.cnn.bricks import DropPath
from mmengine.model import BaseModule

from ...utils import exporting_graph
from .dyt import DyT
from .fast_paths import fast_path
from .fusion import FusionError, fold_norm, norm_to_channel_affine
from .norms import FOLDABLE_NORM_CFG_TYPES, NORM_LAYER_TYPES, deployed_norm, keeps_a_nonlinearity


def build_token_norm(norm_cfg, num_features, deploy=False, folded=True):
    """A norm over the channels of (B, N, C) tokens; when ``deploy``, what fusion leaves in its
    place (:func:`~.norms.deployed_norm`: its affine ``folded`` into a neighbour or not)."""
    if deploy:
        return deployed_norm(norm_cfg, num_features, folded)
    return build_norm_layer(norm_cfg, num_features)[1]


def check_foldable_norm_cfg(norm_cfg, deploy, owner):
    """Refuse ``deploy=True`` with a norm that fusion can never remove (e.g. LayerNorm)."""
    if deploy and norm_cfg.get('type') not in FOLDABLE_NORM_CFG_TYPES:
        raise FusionError(
            f'{owner}: deploy=True builds the fused structure, which needs a foldable norm '
            f"(one of {', '.join(FOLDABLE_NORM_CFG_TYPES)}); norm_cfg type {norm_cfg.get('type')!r} cannot be folded")


def nlc_to_nchw(x, hw_shape):
    h, w = hw_shape
    b, n, c = x.shape
    assert n == h * w, f'{n} tokens do not make a {h}x{w} grid'
    return x.transpose(1, 2).reshape(b, c, h, w)


def nchw_to_nlc(x):
    """(B, C, H, W) -> (B, H*W, C), contiguous: a transposed view would make every linear
    reading the tokens (fused models have no norm in between to copy them) and every
    residual add after it run on strided memory."""
    return x.flatten(2).transpose(1, 2).contiguous()


def conv_on_tokens(conv, x):
    """Inference: ``conv(x)`` run channels-last (a channels-last copy of its weight makes it so).
    It reads tokens seen as a grid (``nlc_to_nchw``) without reordering them and writes its
    output in token order (``nchw_to_nlc`` is then free), where the default layout costs two
    transposing copies (a 64 -> 128 patch conv on a 200x304 map: 3 ms against 15)."""
    return F.conv2d(x, conv.weight.contiguous(memory_format=torch.channels_last), conv.bias, conv.stride,
                    conv.padding, conv.dilation, conv.groups)


def resize_pos_table(table, src_hw, dst_hw, mode='bilinear'):
    """Resize a (1, h0*w0, C) positional table laid out on an h0 x w0 grid to (1, H*W, C).

    Returns the table itself when the grids match (so pretraining-size inputs see
    exactly the trained values). Traced for ONNX, the grid is symbolic: always resize
    (bilinear to the same size is the identity), so that the graph does not keep the
    example input's branch.
    """
    if not exporting_graph() and tuple(src_hw) == tuple(dst_hw):
        return table
    c = table.shape[-1]
    grid = table.reshape(1, src_hw[0], src_hw[1], c).permute(0, 3, 1, 2)
    grid = F.interpolate(grid, size=tuple(dst_hw), mode=mode, align_corners=False)
    return grid.flatten(2).transpose(1, 2)


def pad_to_multiple(x, multiple, channels_last=True):
    """Zero-pad the bottom/right of a grid to multiples of ``multiple`` (int or (mh, mw)).

    ``x`` is (B, H, W, C) when ``channels_last`` else (B, C, H, W). Returns the padded
    tensor and the padding (pad_h, pad_w).
    """
    mh, mw = (multiple, multiple) if isinstance(multiple, int) else multiple
    h, w = (x.shape[1], x.shape[2]) if channels_last else (x.shape[2], x.shape[3])
    pad_h, pad_w = (-h) % mh, (-w) % mw
    # Traced for ONNX, the sizes are symbolic: always pad (by 0 where nothing is needed), so
    # that the graph does not keep the example input's branch.
    if exporting_graph() or (x.requires_grad and (pad_h or pad_w)):
        return F.pad(x, (0, 0, 0, pad_w, 0, pad_h) if channels_last else (0, pad_w, 0, pad_h)), (pad_h, pad_w)
    if pad_h or pad_w:
        # F.pad fills the whole output before copying x in; write each element once instead
        # (not under autograd, where each in-place write would copy the whole gradient).
        hd, wd = (1, 2) if channels_last else (2, 3)
        shape = list(x.shape)
        shape[hd], shape[wd] = h + pad_h, w + pad_w
        # In x's layout: a (B, C, H, W) view of tokens stays channels-last.
        layout = (torch.channels_last if not channels_last and x.dim() == 4
                  and x.is_contiguous(memory_format=torch.channels_last) else torch.contiguous_format)
        padded = torch.empty(shape, dtype=x.dtype, device=x.device, memory_format=layout)
        padded.narrow(hd, 0, h).narrow(wd, 0, w).copy_(x)
        padded.narrow(hd, h, pad_h).zero_()
        padded.narrow(hd, 0, h).narrow(wd, w, pad_w).zero_()
        x = padded
    return x, (pad_h, pad_w)


# Hidden activations per chunk of tokens in :meth:`Mlp.add_to_in_chunks`: 8 MiB of float32, which
# stays in the last-level cache (2-core Xeon, SLAB-PVT-S stage 1, 60,800 tokens x 512 hidden: the
# MLP with its residual add 97 ms whole, 35 ms in chunks of 2,048 tokens). Twice the 4 MiB that
# fits a core's L2 is faster for every backbone (fewer, larger products: benchmarks/chunk_sizes.py).
MLP_CHUNK_ELEMENTS = 2 ** 21


class Mlp(BaseModule):
    """The transformer feed-forward network: fc1 -> activation -> dropout -> fc2 -> dropout."""

    def __init__(self, in_features, hidden_features, act_cfg=dict(type='GELU'), drop=0., init_cfg=None):
        super().__init__(init_cfg=init_cfg)
        self.fc1 = nn.Linear(in_features, hidden_features)
        self.act = build_activation_layer(act_cfg)
        self.fc2 = nn.Linear(hidden_features, in_features)
        self.drop = nn.Dropout(drop)

    def forward(self, x):
        return self.drop(self.fc2(self.drop(self.act(self.fc1(x)))))

    def add_to_in_chunks(self, x, norm):
        """Inference only: ``x += mlp(norm(x))`` in place on contiguous tokens (B, N, C), a chunk
        of tokens at a time, so that the (N, hidden) activations never travel to memory and back:
        at 60,000 tokens the whole-tensor MLP is bound by that traffic (fc1's output, GELU's
        input and output, fc2's input). ``norm`` must act on each token alone (any norm in eval
        mode does). Returns ``x``."""
        tokens = x.view(-1, x.shape[-1])
        rows = max(1, MLP_CHUNK_ELEMENTS // self.fc1.out_features)
        fc2_weight = self.fc2.weight.t()
        for start in range(0, tokens.shape[0], rows):
            chunk = tokens[start:start + rows]
            hidden = self.act(self.fc1(norm(chunk.unsqueeze(0)))).squeeze(0)
            chunk.addmm_(hidden, fc2_weight)
            if self.fc2.bias is not None:
                chunk.add_(self.fc2.bias)
        return x


class PatchEmbed(BaseModule):
    """Non-overlapping patch embedding: conv (kernel = stride) then a post-norm.

    The input is zero-padded at the bottom/right to a multiple of the stride, so no
    pixel is dropped at any input size (at sizes divisible by the stride this is the
    plain conv of the reference models).

    Args:
        in_channels (int): Input channels.
        embed_dims (int): Output channels.
        patch_size (int): Kernel size and stride.
        norm_cfg (dict | None): The post-norm (None: no norm).
        deploy (bool): Build the fused structure: no norm (it folds into the conv), except
            for DyT, whose tanh stands between the conv and its affine (:class:`TanhAffine`).
    """

    def __init__(self, in_channels, embed_dims, patch_size, norm_cfg=None, deploy=False, init_cfg=None):
        super().__init__(init_cfg=init_cfg)
        self.patch_size = patch_size
        self.proj = nn.Conv2d(in_channels, embed_dims, kernel_size=patch_size, stride=patch_size)
        self.norm = (build_token_norm(norm_cfg, embed_dims, deploy, folded=not keeps_a_nonlinearity(norm_cfg))
                     if norm_cfg is not None else nn.Identity())

    def forward(self, x):
        """(B, C, H, W) -> tokens (B, N, C) and their grid (H', W')."""
        x, _ = pad_to_multiple(x, self.patch_size, channels_last=False)
        x = conv_on_tokens(self.proj, x) if fast_path(x, self) else self.proj(x)
        hw_shape = (x.shape[2], x.shape[3])
        return self.norm(nchw_to_nlc(x)), hw_shape

    def switch_to_deploy(self, name='patch_embed'):
        if not isinstance(self.norm, NORM_LAYER_TYPES):
            return
        if isinstance(self.norm, DyT):
            self.norm = norm_to_channel_affine(self.norm, f'{name}.norm')   # its tanh follows the conv
        else:
            self.norm = fold_norm(self.norm, f'{name}.norm', previous_layer=self.proj)


class PreNormBlock(BaseModule):
    """A pre-norm transformer block: ``x + attn(norm1(x))``, then ``x + mlp(norm2(x))``.

    ``attn`` is any module called as ``attn(x, hw_shape)`` that lists the layers reading
    its input in ``attn.input_layers()`` (where ``norm1`` is folded in deploy mode) and
    gives ``attn.add_to(x, hw_shape, residual)``, ``residual + attn(x, hw_shape)`` as a new
    tensor, which the block calls on its fast path (see :mod:`.fast_paths`).

    Args:
        embed_dims (int): Channels C.
        attn (nn.Module): The token mixer.
        mlp_hidden (int): Hidden channels of the MLP.
        norm_cfg (dict): Config of norm1/norm2.
        drop (float): Dropout in the MLP.
        drop_path (float): Stochastic depth rate of both residual branches.
        act_cfg (dict): MLP activation.
        with_cp (bool): Activation checkpointing (saves memory, costs a recompute).
        deploy (bool): Build the fused structure (no norms).
    """

    def __init__(self, embed_dims, attn, mlp_hidden, norm_cfg, drop=0., drop_path=0.,
                 act_cfg=dict(type='GELU'), with_cp=False, deploy=False, init_cfg=None):
        super().__init__(init_cfg=init_cfg)
        self.norm1 = build_token_norm(norm_cfg, embed_dims, deploy)
        self.attn = attn
        self.norm2 = build_token_norm(norm_cfg, embed_dims, deploy)
        self.mlp = Mlp(embed_dims, mlp_hidden, act_cfg, drop)
        self.drop_path = DropPath(drop_path) if drop_path > 0 else nn.Identity()
        self.with_cp = with_cp

    def _forward(self, x, hw_shape):
        if fast_path(x, self, self.norm1, self.norm2) and x.is_contiguous():
            x = self.attn.add_to(self.norm1(x), hw_shape, residual=x)
            return self.mlp.add_to_in_chunks(x, self.norm2)   # x is now this block's own tensor
        x = x + self.drop_path(self.attn(self.norm1(x), hw_shape))
        return x + self.drop_path(self.mlp(self.norm2(x)))

    def forward(self, x, hw_shape):
        if self.with_cp and x.requires_grad:
            # Non-reentrant checkpointing works with DDP's find_unused_parameters.
            return cp.checkpoint(self._forward, x, hw_shape, use_reentrant=False)
        return self._forward(x, hw_shape)

    def switch_to_deploy(self, name='block'):
        if isinstance(self.norm1, NORM_LAYER_TYPES):
            self.norm1 = fold_norm(self.norm1, f'{name}.norm1', next_layers=self.attn.input_layers())
        if isinstance(self.norm2, NORM_LAYER_TYPES):
            self.norm2 = fold_norm(self.norm2, f'{name}.norm2', next_layers=[self.mlp.fc1])
        if hasattr(self.attn, 'switch_to_deploy'):
            self.attn.switch_to_deploy(f'{name}.attn')
