"""SLAB-Swin: the Swin Transformer with simplified linear attention in its early stages
and PRepBN, as an mmdet backbone."""
import torch
import torch.nn as nn
from mmengine.model import BaseModule, ModuleList
from mmdet.registry import MODELS

from ..layers.fusion import fold_norm
from ..layers.norms import NORM_LAYER_TYPES
from ..layers.transformer import PatchEmbed, PreNormBlock, build_token_norm, pad_to_multiple
from ..layers.window_attention import ShiftedWindowAttention, WindowLinearAttention, WindowSoftmaxAttention
from ...utils import is_number
from .base import SLABBackboneBase


class PatchMerging(BaseModule):
    """Swin's 2x downsampling: each 2x2 neighbourhood is concatenated (4C), normalised,
    and projected to 2C. Odd sizes are zero-padded at the bottom/right. The
    concatenation order is the reference model's: (0,0), (1,0), (0,1), (1,1).

    In deploy mode the norm is folded into the projection, which then has a bias.
    """

    def __init__(self, in_channels, norm_cfg, deploy=False, init_cfg=None):
        super().__init__(init_cfg=init_cfg)
        self.norm = build_token_norm(norm_cfg, 4 * in_channels, deploy)
        self.reduction = nn.Linear(4 * in_channels, 2 * in_channels, bias=deploy)

    def forward(self, x, hw_shape):
        b, _, c = x.shape
        x, _ = pad_to_multiple(x.view(b, hw_shape[0], hw_shape[1], c), 2)
        x = torch.cat([x[:, 0::2, 0::2], x[:, 1::2, 0::2], x[:, 0::2, 1::2], x[:, 1::2, 1::2]], dim=-1)
        out_hw = (x.shape[1], x.shape[2])
        return self.reduction(self.norm(x.reshape(b, -1, 4 * c))), out_hw

    def switch_to_deploy(self, name='downsample'):
        if isinstance(self.norm, NORM_LAYER_TYPES):
            self.norm = fold_norm(self.norm, f'{name}.norm', next_layers=[self.reduction])


class SwinStage(nn.Module):
    """Blocks of one resolution, then (except in the last stage) patch merging."""

    def __init__(self, blocks, downsample=None):
        super().__init__()
        self.blocks = blocks
        self.downsample = downsample


@MODELS.register_module()
class SLABSwinTransformer(SLABBackboneBase):
    """SLAB-Swin (and Swin-PRepBN) backbone.

    The Swin Transformer (Liu et al., 2021) with the SLAB paper's simplified linear
    attention ('L') or Swin's softmax window attention with relative position bias
    ('S') per stage, and PRepBN norms annealed by :class:`~slab_mmdet.engine.PRepBNHook`.
    The default ``attn_types='LLSS'`` with windows (56, 28, 7, 7) is SLAB-Swin; 'SSSS'
    with window 7 everywhere is Swin-PRepBN.

    Windows are shifted on odd blocks, except when one window covers the whole
    feature map (then there is nothing to shift, as in the classification model).
    Any input size works: in PyTorch both attentions run the (shifted) windows band by
    band on the real tokens only, windows cut at the map's edge; the traced (ONNX)
    graph pads to window multiples and masks the padded and wrapped tokens, which
    never contribute to a real token's output (see :class:`ShiftedWindowAttention`).

    Args:
        arch (str | dict): 'tiny' (default; embed 96, depths 2-2-6-2, heads 3-6-12-24), 'small'
            (depths 2-2-18-2), or a dict with keys embed_dims, depths, num_heads.
        attn_types (str): One letter per stage, 'L' or 'S'. Default 'LLSS'.
        window_sizes (Sequence[int]): Window size per stage. Default (56, 28, 7, 7).
        mlp_ratio (float): MLP hidden / embed dims, > 0. Default 4.
        norm_cfg (dict): Norm everywhere (patch embedding, blocks, patch merging,
            outputs). Default ``dict(type='PRepBN', eps=1e-5)`` (LayerNorm eps of the
            reference SLAB-Swin models).
        in_channels, patch_size, qkv_bias, drop_rate, attn_drop_rate, drop_path_rate,
        kernel_size, act_cfg, out_indices, frozen_stages, norm_eval, out_norm_cfg, with_cp,
        deploy, out_norms_folded, init_cfg: see :class:`SLABBackboneBase` (keyword arguments).
    """
    arch_zoo = {
        'tiny': dict(embed_dims=96, depths=(2, 2, 6, 2), num_heads=(3, 6, 12, 24)),
        'small': dict(embed_dims=96, depths=(2, 2, 18, 2), num_heads=(3, 6, 12, 24)),
    }

    ARCH_KEYS = ('embed_dims', 'depths', 'num_heads')
    ARCH_STAGE_KEYS = ('depths', 'num_heads')

    def __init__(self, arch=SLABBackboneBase.DEFAULT_ARCH, attn_types='LLSS', window_sizes=(56, 28, 7, 7),
                 mlp_ratio=4, norm_cfg=dict(type='PRepBN', eps=1e-5), **kwargs):
        super().__init__(arch, attn_types, norm_cfg, **kwargs)
        arch, name = self.arch, type(self).__name__
        depths, num_stages = arch['depths'], len(arch['depths'])
        if len(window_sizes) != num_stages or any(int(w) < 1 for w in window_sizes):
            raise ValueError(f'{name}: window_sizes needs {num_stages} positive integers, got {window_sizes}')
        if not is_number(mlp_ratio) or not mlp_ratio > 0:
            raise ValueError(f'{name}: mlp_ratio must be a number > 0, got {mlp_ratio!r}')
        self.window_sizes = tuple(int(w) for w in window_sizes)
        drop_rate, deploy = self.drop_rate, self.deploy

        self.patch_embed = PatchEmbed(self.in_channels, arch['embed_dims'], self.patch_size, norm_cfg, deploy)
        self.drop_after_pos = nn.Dropout(drop_rate)
        channels = self.stage_channels(arch)
        self.stages = ModuleList()
        cur = 0
        for i in range(num_stages):
            dims, heads, ws = channels[i], arch['num_heads'][i], self.window_sizes[i]
            blocks = ModuleList()
            for j in range(depths[i]):
                if attn_types[i] == 'L':
                    window_attn = WindowLinearAttention(dims, heads, ws, self.qkv_bias, drop_rate, self.kernel_size)
                else:
                    window_attn = WindowSoftmaxAttention(dims, heads, ws, self.qkv_bias, self.attn_drop_rate,
                                                         drop_rate)
                attn = ShiftedWindowAttention(window_attn, shift_size=ws // 2 if j % 2 else 0)
                blocks.append(PreNormBlock(dims, attn, int(dims * mlp_ratio), norm_cfg, drop=drop_rate,
                                           drop_path=self.block_drop_path[cur + j], act_cfg=self.act_cfg,
                                           with_cp=self.with_cp, deploy=deploy))
            cur += depths[i]
            downsample = PatchMerging(dims, norm_cfg, deploy) if i < num_stages - 1 else None
            self.stages.append(SwinStage(blocks, downsample))
        self._init_outputs(channels)

    SOFTMAX_WINDOW = 7   # Swin's window, for twin stages whose source has no softmax stage to copy

    @classmethod
    def twin_cfg(cls, backbone_cfg):
        """:meth:`SLABBackboneBase.twin_cfg` with softmax windows: a softmax stage keeps its
        window, an SLA stage takes the window of the model's softmax stages (Swin's 7 when it
        has none), as Swin-T's twin of SLAB-Swin-T's (56, 28, 7, 7) is (7, 7, 7, 7)."""
        cfg = super().twin_cfg(backbone_cfg)
        source_types = dict(backbone_cfg).get('attn_types', cls.default_argument('attn_types'))
        windows = list(dict(backbone_cfg).get('window_sizes', cls.default_argument('window_sizes')))
        softmax = [w for w, kind in zip(windows, source_types) if kind == 'S']
        fallback = softmax[0] if softmax else cls.SOFTMAX_WINDOW
        cfg['window_sizes'] = tuple(w if kind == 'S' else fallback for w, kind in zip(windows, source_types))
        return cfg

    @classmethod
    def stage_channels(cls, arch):
        """The output channels of each stage of ``arch`` (a name or an arch dict): C, 2C, 4C, ..."""
        arch = cls.resolve_arch(arch)
        return [arch['embed_dims'] * 2 ** i for i in range(len(arch['depths']))]

    def _stem_modules(self):
        return [self.patch_embed, self.drop_after_pos]

    def forward(self, x):
        self._check_forward(x)
        x, hw_shape = self.patch_embed(x)
        x = self.drop_after_pos(x)
        outs = []
        for i, stage in enumerate(self.stages):
            for block in stage.blocks:
                x = block(x, hw_shape)
            if i in self.out_indices:
                outs.append(self._output(i, x, hw_shape))
            if stage.downsample is not None:
                x, hw_shape = stage.downsample(x, hw_shape)
        return tuple(outs)
