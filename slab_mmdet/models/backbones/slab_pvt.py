"""SLAB-PVT: the Pyramid Vision Transformer (v1) with simplified linear attention and
PRepBN, as an mmdet backbone that runs at any detection resolution."""
import torch
import torch.nn as nn
from mmengine.model import ModuleList
from mmdet.registry import MODELS

from ..layers.attention import SpatialReductionAttention, SpatialReductionLinearAttention
from ..layers.transformer import PatchEmbed, PreNormBlock, nlc_to_nchw, resize_pos_table
from ...utils import is_int
from .base import SLABBackboneBase


class PVTStage(nn.Module):
    """One PVT stage: patch embedding, a learned positional embedding, transformer blocks."""

    def __init__(self, patch_embed, pos_grid, embed_dims, blocks, drop_rate):
        super().__init__()
        self.patch_embed = patch_embed
        self.pos_grid = tuple(pos_grid)
        self.pos_embed = nn.Parameter(torch.zeros(1, pos_grid[0] * pos_grid[1], embed_dims))
        self.pos_drop = nn.Dropout(drop_rate)
        self.blocks = blocks


@MODELS.register_module()
class SLABPyramidVisionTransformer(SLABBackboneBase):
    """SLAB-PVT (and PVT-PRepBN) backbone.

    PVT v1 (Wang et al., 2021) with the SLAB paper's simplified linear attention
    ('L') or PVT's softmax spatial-reduction attention ('S') per stage, and PRepBN
    norms that the :class:`~slab_mmdet.engine.PRepBNHook` anneals from LayerNorm to
    re-parameterisable BatchNorm. ``attn_types='LLLL'`` is SLAB-PVT, ``'SSSS'`` is
    PVT-PRepBN (the paper's Table 3 rows); ``norm_cfg=dict(type='LN', eps=1e-6)``
    gives the LayerNorm model.

    Any input of at least 32 x 32 pixels works, square or not, divisible by 32 or
    not: patch embeddings pad to their stride, positional embeddings and SLA
    positional encodings are stored at the pre-training grid and resized in 2-D to
    the actual grid. A spatial reduction ratio above 32 / stride (e.g. la_sr_ratios
    (1, 2, 4, 1): 4 at stride 16) raises the minimum (``min_input_size``, here 64),
    as the reduction conv needs a feature map at least as large as its kernel.

    Args:
        arch (str | dict): 'tiny' (default, as for SLAB-Swin), 'small', 'medium', or a dict
            with the keys of ``arch_zoo`` entries (embed_dims, num_heads, mlp_ratios, sr_ratios,
            depths).
        attn_types (str): One letter per stage: 'L' (SLA) or 'S' (softmax). Default 'LLLL'.
        la_sr_ratios (Sequence[int]): Spatial reduction of keys/values in 'L' stages.
            The released SLAB-PVT weights use none: (1, 1, 1, 1) (default).
        pretrain_img_size (int): Input size of the pre-training; sets the grids of the
            positional tables. Default 224.
        norm_cfg (dict): Norm everywhere. Default ``dict(type='PRepBN', eps=1e-6)``
            (LayerNorm eps of the reference SLAB-PVT models).
        in_channels, patch_size, qkv_bias, drop_rate, attn_drop_rate, drop_path_rate,
        kernel_size, act_cfg, out_indices, frozen_stages, norm_eval, out_norm_cfg, with_cp,
        deploy, out_norms_folded, init_cfg: see :class:`SLABBackboneBase` (keyword arguments).
    """
    arch_zoo = {
        'tiny': dict(embed_dims=(64, 128, 320, 512), num_heads=(1, 2, 5, 8), mlp_ratios=(8, 8, 4, 4),
                     sr_ratios=(8, 4, 2, 1), depths=(2, 2, 2, 2)),
        'small': dict(embed_dims=(64, 128, 320, 512), num_heads=(1, 2, 5, 8), mlp_ratios=(8, 8, 4, 4),
                      sr_ratios=(8, 4, 2, 1), depths=(3, 4, 6, 3)),
        'medium': dict(embed_dims=(64, 128, 320, 512), num_heads=(1, 2, 5, 8), mlp_ratios=(8, 8, 4, 4),
                       sr_ratios=(8, 4, 2, 1), depths=(3, 4, 18, 3)),
    }
    ARCH_KEYS = ('embed_dims', 'num_heads', 'mlp_ratios', 'sr_ratios', 'depths')
    ARCH_STAGE_KEYS = ARCH_KEYS
    MIN_INPUT_SIZE = 32

    def __init__(self, arch=SLABBackboneBase.DEFAULT_ARCH, attn_types='LLLL', la_sr_ratios=(1, 1, 1, 1),
                 pretrain_img_size=224, norm_cfg=dict(type='PRepBN', eps=1e-6), **kwargs):
        super().__init__(arch, attn_types, norm_cfg, **kwargs)
        arch, name = self.arch, type(self).__name__
        depths, num_stages = arch['depths'], len(arch['depths'])
        if len(la_sr_ratios) != num_stages or any(int(r) < 1 for r in la_sr_ratios):
            raise ValueError(f'{name}: la_sr_ratios needs {num_stages} integers >= 1, got {la_sr_ratios}')
        srs = [int(la_sr_ratios[i]) if attn_types[i] == 'L' else arch['sr_ratios'][i] for i in range(num_stages)]
        smallest = max(self.patch_size * 2 ** i * sr for i, sr in enumerate(srs))
        if not is_int(pretrain_img_size) or pretrain_img_size < smallest:
            raise ValueError(f'{name}: pretrain_img_size must be an int >= {smallest} (every positional table needs '
                             f'a grid of at least 1x1 at that size), got {pretrain_img_size!r}')
        drop_rate, deploy = self.drop_rate, self.deploy
        self.stages = ModuleList()
        grid = pretrain_img_size // self.patch_size
        prev_dims, cur = self.in_channels, 0
        self.min_input_size = max(self.MIN_INPUT_SIZE, smallest)
        for i in range(num_stages):
            dims, heads, sr = arch['embed_dims'][i], arch['num_heads'][i], srs[i]
            if i > 0:
                grid //= 2
            blocks = ModuleList()
            for j in range(depths[i]):
                if attn_types[i] == 'L':
                    attn = SpatialReductionLinearAttention(
                        dims, heads, pos_grid=(grid // sr, grid // sr), sr_ratio=sr, qkv_bias=self.qkv_bias,
                        proj_drop=drop_rate, kernel_size=self.kernel_size, norm_cfg=norm_cfg, deploy=deploy)
                else:
                    attn = SpatialReductionAttention(
                        dims, heads, sr_ratio=sr, qkv_bias=self.qkv_bias, attn_drop=self.attn_drop_rate,
                        proj_drop=drop_rate, norm_cfg=norm_cfg, deploy=deploy)
                blocks.append(PreNormBlock(dims, attn, int(dims * arch['mlp_ratios'][i]), norm_cfg, drop=drop_rate,
                                           drop_path=self.block_drop_path[cur + j], act_cfg=self.act_cfg,
                                           with_cp=self.with_cp, deploy=deploy))
            cur += depths[i]
            patch_embed = PatchEmbed(prev_dims, dims, self.patch_size if i == 0 else 2, norm_cfg, deploy)
            self.stages.append(PVTStage(patch_embed, (grid, grid), dims, blocks, drop_rate))
            prev_dims = dims
        self._init_outputs(arch['embed_dims'])

    @classmethod
    def stage_channels(cls, arch):
        """The output channels of each stage of ``arch`` (a name or an arch dict)."""
        return list(cls.resolve_arch(arch)['embed_dims'])

    def _stem_modules(self):
        return [self.stages[0].patch_embed]

    def forward(self, x):
        self._check_forward(x)
        h, w = x.shape[-2:]
        if min(h, w) < self.min_input_size:
            m = self.min_input_size
            raise ValueError(f'{type(self).__name__}: inputs must be at least {m}x{m} pixels (mmdet pads to 32; '
                             f'more only for spatial reduction ratios above 32 / stride), got {h}x{w}')
        outs = []
        for i, stage in enumerate(self.stages):
            tokens, hw_shape = stage.patch_embed(x)
            tokens = stage.pos_drop(tokens + resize_pos_table(stage.pos_embed, stage.pos_grid, hw_shape))
            for block in stage.blocks:
                tokens = block(tokens, hw_shape)
            if i in self.out_indices:
                outs.append(self._output(i, tokens, hw_shape))
            x = nlc_to_nchw(tokens, hw_shape)
        return tuple(outs)
