"""mmdet's LayerNorm PyramidVisionTransformer (v1) -> SLABPyramidVisionTransformer (softmax stages, g = 1)."""
from ..models.backbones.checkpoint_fit import depths_of, register_source_layout
from ..models.backbones.slab_pvt import SLABPyramidVisionTransformer
from .errors import ConversionError
from .rules import Skip, mlp_ratio, named_arch, pvt_extras, pvt_heads, rename, stage_list

# Its checkpoints are recognised by a key only this layout has.
LAYOUT = register_source_layout('mmdet_pvt', 'mmdet PyramidVisionTransformer (LayerNorm)',
                                r'layers\.\d+\.\d+\.')


def mmdet_pvt(sd, report, num_heads):
    depths_raw = depths_of(sd, r'layers\.(\d+)\.1\.(\d+)\.norm1\.')
    stages = stage_list(depths_raw, 0, 'mmdet PyramidVisionTransformer')
    offsets = [1 if f'layers.{i}.1.0.pos_embed' in sd else 0 for i in stages]
    if len(set(offsets)) != 1:
        raise ConversionError('mmdet PyramidVisionTransformer: only some stages have an absolute position embedding '
                              '(layers.i.1.0.pos_embed)')
    offset = offsets[0]
    depths = tuple(depths_raw[i] - offset for i in stages)
    dims, mlp_ratios, sr_ratios = [], [], []
    for i in stages:
        proj = sd[f'layers.{i}.0.projection.weight']
        fc1, dwconv = f'layers.{i}.1.{offset}.ffn.layers.0.weight', f'layers.{i}.1.{offset}.ffn.layers.1.weight'
        kernel = tuple(proj.shape[-2:])
        if (i > 0 and kernel != (2, 2)) or kernel[0] != kernel[1] or dwconv in sd:
            raise ConversionError(
                f'layers.{i}: patch embedding kernel {kernel}'
                + (', convolutional FFN' if dwconv in sd else '')
                + ': this is not a PVT v1 layout (PVTv2 has overlapping patch embeddings and convolutional FFNs); '
                'only mmdet PyramidVisionTransformer (v1) converts to SLAB-PVT')
        c = proj.shape[0]
        dims.append(c)
        mlp_ratios.append(mlp_ratio(sd[fc1].shape[0], c))
        sr_key = f'layers.{i}.1.{offset}.attn.sr.weight'
        sr_ratios.append(sd[sr_key].shape[-1] if sr_key in sd else 1)
    # mmdet builds stage i with embed_dims * num_heads[i] channels: the head size is
    # embed_dims everywhere, so num_heads follows from the widths once num_heads[0] is known.
    assumed = tuple(c // dims[0] for c in dims) if not any(c % dims[0] for c in dims) else None
    heads = pvt_heads([None] * len(dims), num_heads, assumed,
                       f'stage widths {tuple(dims)} = embed_dims * num_heads with num_heads[0] = 1, as in every '
                       'mmdet PVT config', report)
    arch = dict(embed_dims=tuple(dims), num_heads=heads, mlp_ratios=tuple(mlp_ratios),
                sr_ratios=tuple(sr_ratios), depths=depths)
    cfg = dict(type='SLABPyramidVisionTransformer', arch=named_arch(arch, SLABPyramidVisionTransformer.arch_zoo),
               attn_types='S' * len(stages))
    pvt_extras(cfg, sd['layers.0.0.projection.weight'], sd['layers.0.1.0.pos_embed'].shape[1] if offset else None,
                'layers.0.1.0.pos_embed', f'layers.0.1.{offset}.attn.attn.in_proj_bias' in sd, None)

    def split_in_proj(m, value):
        c = value.shape[0] // 3   # rows: q, k, v
        prefix = f'stages.{m[1]}.blocks.{int(m[2]) - offset}.attn.'
        return [(prefix + f'q.{m[3]}', value[:c]), (prefix + f'kv.{m[3]}', value[c:])]

    def conv1x1_to_linear(name):
        def action(m, value):
            key = f'stages.{m[1]}.blocks.{int(m[2]) - offset}.mlp.{name}.{m[3]}'
            return [(key, value.flatten(1) if value.dim() == 4 else value)]
        return action

    block = r'layers\.(\d+)\.1\.(\d+)\.'
    blk = lambda m: f'stages.{m[1]}.blocks.{int(m[2]) - offset}'  # noqa: E731
    rules = [
        (r'layers\.(\d+)\.0\.projection\.(.*)', rename(lambda m: f'stages.{m[1]}.patch_embed.proj.{m[2]}')),
        (r'layers\.(\d+)\.0\.norm\.(.*)', rename(lambda m: f'stages.{m[1]}.patch_embed.norm.{m[2]}')),
        (r'layers\.(\d+)\.1\.0\.pos_embed', rename(lambda m: f'stages.{m[1]}.pos_embed')) if offset else None,
        (block + r'attn\.attn\.in_proj_(weight|bias)', split_in_proj),
        (block + r'attn\.attn\.out_proj\.(.*)', rename(lambda m: f'{blk(m)}.attn.proj.{m[3]}')),
        (block + r'attn\.(sr|norm)\.(.*)', rename(lambda m: f'{blk(m)}.attn.{m[3]}.{m[4]}')),
        (block + r'(norm1|norm2)\.(.*)', rename(lambda m: f'{blk(m)}.{m[3]}.{m[4]}')),
        (block + r'ffn\.layers\.0\.(.*)', conv1x1_to_linear('fc1')),
        (block + r'ffn\.layers\.3\.(.*)', conv1x1_to_linear('fc2')),
        (r'layers\.(\d+)\.2\.(.*)', Skip('a norm after the stage (norm_after_stage=True) that also feeds the next '
                                          'stage; our output norms only normalise the outputs', unmapped=True)),
    ]
    extras = []
    if not offset:
        report.notes.append('the model has no absolute position embedding (use_abs_pos_embed=False): ours are '
                            'set to zero, which is equivalent')
        extras = [f'stages.{i}.pos_embed' for i in stages]
    return cfg, [r for r in rules if r is not None], extras
