"""The SLAB authors' PVT classification models (SLAB-PVT, PVT-PRepBN), and the original LayerNorm
PVT v1 ones they derive from (github whai362/PVT, which mmdet's PVT configs load) ->
SLABPyramidVisionTransformer."""
import math

from ..models.backbones.checkpoint_fit import depths_of, register_source_layout
from ..models.backbones.slab_pvt import SLABPyramidVisionTransformer
from .rules import Skip, mlp_ratio, named_arch, pvt_extras, pvt_heads, rename, stage_list

# Its checkpoints are recognised by a key only this layout has.
LAYOUT = register_source_layout('reference_pvt', 'SLAB-PVT / PVT-PRepBN (reference classification model)',
                                r'(block|patch_embed)\d+\.|pos_embed\d+$')


# PVT's num_heads and spatial reductions, the same in every PVT arch (every released PVT / SLAB-PVT model).
PVT_HEADS = SLABPyramidVisionTransformer.arch_zoo['tiny']['num_heads']
PVT_SR_RATIOS = SLABPyramidVisionTransformer.arch_zoo['tiny']['sr_ratios']


def _without_class_token(value):
    """A (1, 1 + h*w, C) positional table of PVT v1's last stage (class token first) -> (1, h*w, C)."""
    tokens = value.shape[1]
    if math.isqrt(tokens) ** 2 != tokens and math.isqrt(tokens - 1) ** 2 == tokens - 1:
        return value[:, 1:]
    return value


def reference_pvt(sd, report, num_heads):
    depths = depths_of(sd, r'block(\d+)\.(\d+)\.')
    stages = stage_list(depths, 1, 'reference PVT')
    dims, stored, mlp_ratios, sr_ratios, la_sr, types, kernel = [], [], [], [], [], '', None
    for n, i in enumerate(stages):
        c = sd[f'patch_embed{i}.proj.weight'].shape[0]
        dims.append(c)
        mlp_ratios.append(mlp_ratio(sd[f'block{i}.0.mlp.fc1.weight'].shape[0], c))
        sr_key = f'block{i}.0.attn.sr.weight'
        sr = sd[sr_key].shape[-1] if sr_key in sd else 1
        if f'block{i}.0.attn.positional_encoding' in sd:
            types += 'L'
            dwc = sd[f'block{i}.0.attn.dwc.weight']   # one kernel per head channel
            stored.append(c // dwc.shape[0])
            kernel = dwc.shape[-1]
            la_sr.append(sr)
            # Unused by SLA stages; PVT's value, so that the released models match a named arch.
            sr_ratios.append(PVT_SR_RATIOS[n] if n < len(PVT_SR_RATIOS) else 1)
        else:
            types += 'S'
            stored.append(None)
            la_sr.append(1)
            sr_ratios.append(sr)
    heads = pvt_heads(stored, num_heads, PVT_HEADS if len(stages) == len(PVT_HEADS) else None,
                       "PVT's, as in every released model", report)
    arch = dict(embed_dims=tuple(dims), num_heads=heads, mlp_ratios=tuple(mlp_ratios),
                sr_ratios=tuple(sr_ratios), depths=tuple(depths.values()))
    cfg = dict(type='SLABPyramidVisionTransformer', arch=named_arch(arch, SLABPyramidVisionTransformer.arch_zoo),
               attn_types=types)
    if tuple(la_sr) != (1,) * len(stages):
        cfg['la_sr_ratios'] = tuple(la_sr)
    pos_tokens = sd['pos_embed1'].shape[1] if 'pos_embed1' in sd else None
    pvt_extras(cfg, sd['patch_embed1.proj.weight'], pos_tokens, 'pos_embed1', 'block1.0.attn.q.bias' in sd, kernel)
    stage = lambda m: int(m[1]) - 1  # noqa: E731  (reference stages count from 1)
    rules = [
        (r'head\..*', Skip('classification head')),
        (r'cls_token', Skip('class token of the classification model')),
        (r'pos_embed(\d+)', lambda m, value: [(f'stages.{stage(m)}.pos_embed', _without_class_token(value))]),
        (r'patch_embed(\d+)\.(.*)', rename(lambda m: f'stages.{stage(m)}.patch_embed.{m[2]}')),
        (r'block(\d+)\.(\d+)\.attn\.dwc\.(.*)',
         rename(lambda m: f'stages.{stage(m)}.blocks.{m[2]}.attn.value_conv.dwc.{m[3]}')),
        (r'block(\d+)\.(\d+)\.(.*)', rename(lambda m: f'stages.{stage(m)}.blocks.{m[2]}.{m[3]}')),
    ]
    return cfg, rules, []
