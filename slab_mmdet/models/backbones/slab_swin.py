"""SLAB-Swin: the Swin Transformer with simplified linear attention in its early stages
and PRepBN, as an mmdet backbone."""
import torch
import torch.nn as nn
from mmengine.model import BaseModule, ModuleList
from mmdet.registry import MODELS

from ..layers.fusion import fold_norm
from ..layers.transformer import PatchEmbed, PreNormBlock, build_token_norm, pad_to_multiple
from ..layers.window_attention import ShiftedWindowAttention, WindowLinearAttention, WindowSoftmaxAttention
from .base import SLABBackboneBase, check_choice


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
        if not isinstance(self.norm, nn.Identity):
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
    feature map (then there is nothing to shift, as in the classification model);
    feature maps are padded to window multiples. Padded tokens and tokens wrapped
    around by the cyclic shift never contribute to a real token's output, in SLA as
    in softmax attention (see :class:`ShiftedWindowAttention`).

    Args:
        arch (str | dict): 'tiny' (embed 96, depths 2-2-6-2, heads 3-6-12-24), 'small'
            (depths 2-2-18-2), or a dict with keys embed_dims, depths, num_heads.
        attn_types (str): One letter per stage, 'L' or 'S'. Default 'LLSS'.
        window_sizes (Sequence[int]): Window size per stage. Default (56, 28, 7, 7).
        in_channels (int): Image channels. Default 3.
        patch_size (int): Stride of the patch embedding. Default 4.
        mlp_ratio (float): MLP hidden / embed dims. Default 4.
        qkv_bias (bool): Bias in the qkv projections. Default True.
        drop_rate (float): Dropout after the patch embedding and in MLPs/projections.
        attn_drop_rate (float): Attention dropout ('S' stages only).
        drop_path_rate (float): Stochastic depth, increasing linearly over blocks.
        kernel_size (int): Kernel of SLA's depth-wise conv on V. Default 5.
        act_cfg (dict): MLP activation.
        norm_cfg (dict): Norm everywhere (patch embedding, blocks, patch merging,
            outputs). Default ``dict(type='PRepBN', eps=1e-5)`` (LayerNorm eps of the
            reference SLAB-Swin models).
        out_indices, frozen_stages, norm_eval, out_norm_cfg, deploy, out_norms_folded: see
            :class:`SLABBackboneBase`.
        with_cp (bool): Activation checkpointing in every block.
        init_cfg (dict | None): ``dict(type='Pretrained', checkpoint=...)`` or None.
    """
    arch_zoo = {
        'tiny': dict(embed_dims=96, depths=(2, 2, 6, 2), num_heads=(3, 6, 12, 24)),
        'small': dict(embed_dims=96, depths=(2, 2, 18, 2), num_heads=(3, 6, 12, 24)),
    }

    def __init__(self,
                 arch='tiny',
                 attn_types='LLSS',
                 window_sizes=(56, 28, 7, 7),
                 in_channels=3,
                 patch_size=4,
                 mlp_ratio=4,
                 qkv_bias=True,
                 drop_rate=0.,
                 attn_drop_rate=0.,
                 drop_path_rate=0.1,
                 kernel_size=5,
                 act_cfg=dict(type='GELU'),
                 norm_cfg=dict(type='PRepBN', eps=1e-5),
                 out_indices=(0, 1, 2, 3),
                 frozen_stages=-1,
                 norm_eval=False,
                 out_norm_cfg=None,
                 with_cp=False,
                 deploy=False,
                 out_norms_folded=False,
                 init_cfg=None):
        arch = self.resolve_arch(arch)
        num_stages = len(arch['depths'])
        super().__init__(num_stages, attn_types, out_indices, frozen_stages, norm_eval, norm_cfg, deploy,
                         out_norms_folded, init_cfg, out_norm_cfg=out_norm_cfg)
        name = type(self).__name__
        if len(window_sizes) != num_stages or any(int(w) < 1 for w in window_sizes):
            raise ValueError(f'{name}: window_sizes needs {num_stages} positive integers, got {window_sizes}')
        self.arch = arch
        self.window_sizes = tuple(int(w) for w in window_sizes)

        self.patch_embed = PatchEmbed(in_channels, arch['embed_dims'], patch_size, norm_cfg, deploy)
        self.drop_after_pos = nn.Dropout(drop_rate)
        depths = arch['depths']
        drop_path = [r.item() for r in torch.linspace(0, drop_path_rate, sum(depths))]
        channels = self.stage_channels(arch)
        self.stages = ModuleList()
        cur = 0
        for i in range(num_stages):
            dims, heads, ws = channels[i], arch['num_heads'][i], self.window_sizes[i]
            blocks = ModuleList()
            for j in range(depths[i]):
                if attn_types[i] == 'L':
                    window_attn = WindowLinearAttention(dims, heads, ws, qkv_bias, drop_rate, kernel_size)
                else:
                    window_attn = WindowSoftmaxAttention(dims, heads, ws, qkv_bias, attn_drop_rate, drop_rate)
                attn = ShiftedWindowAttention(window_attn, shift_size=ws // 2 if j % 2 else 0)
                blocks.append(PreNormBlock(dims, attn, int(dims * mlp_ratio), norm_cfg, drop=drop_rate,
                                           drop_path=drop_path[cur + j], act_cfg=act_cfg, with_cp=with_cp,
                                           deploy=deploy))
            cur += depths[i]
            downsample = PatchMerging(dims, norm_cfg, deploy) if i < num_stages - 1 else None
            self.stages.append(SwinStage(blocks, downsample))
        self._init_outputs(channels)

    @classmethod
    def stage_channels(cls, arch):
        """The output channels of each stage of ``arch`` (a name or an arch dict): C, 2C, 4C, ..."""
        arch = cls.resolve_arch(arch)
        return [arch['embed_dims'] * 2 ** i for i in range(len(arch['depths']))]

    @classmethod
    def resolve_arch(cls, arch):
        """The arch dict of ``arch`` (a name in ``arch_zoo`` or a dict), checked."""
        keys = ('embed_dims', 'depths', 'num_heads')
        if isinstance(arch, str):
            check_choice('arch', arch, cls.arch_zoo)
            return cls.arch_zoo[arch]
        if not isinstance(arch, dict) or set(arch) != set(keys) or len(arch['depths']) != len(arch['num_heads']):
            raise ValueError(f'arch must be one of {sorted(cls.arch_zoo)} or a dict with exactly the keys {keys} '
                             f'(depths and num_heads of equal length), got {arch!r}')
        return dict(embed_dims=int(arch['embed_dims']), depths=tuple(arch['depths']),
                    num_heads=tuple(arch['num_heads']))

    def _frozen_modules(self):
        if self.frozen_stages < 0:
            return []
        modules = [self.patch_embed, self.drop_after_pos]
        for i in range(self.frozen_stages):
            modules.append(self.stages[i])
            if i in self.out_indices:
                modules.append(getattr(self, f'norm{i}'))
        return modules

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
