"""mmdet's LayerNorm SwinTransformer -> SLABSwinTransformer (softmax stages, g = 1)."""
from ..models.backbones.checkpoint_fit import depths_of, register_source_layout
from ..models.backbones.slab_swin import SLABSwinTransformer
from .rules import Skip, named_arch, rename, stage_list, swin_extras, window_from_bias_table

# Its checkpoints are recognised by a key only this layout has.
LAYOUT = register_source_layout('mmdet_swin', 'mmdet SwinTransformer (LayerNorm)',
                                r'stages\.\d+\.blocks\.\d+\.attn\.w_msa\.')


def unfold_to_concat_order(value):
    """Reorder the 4C input channels of mmdet's Swin patch merging into ours.

    mmdet gathers each 2x2 neighbourhood with ``nn.Unfold``: channel-major, the four
    (row, col) offsets (0,0), (0,1), (1,0), (1,1) interleaved per channel. Ours (and the
    reference) concatenate the four offsets' C channels in the order (0,0), (1,0),
    (0,1), (1,1). ``value`` is the reduction weight (out, 4C) or the norm weight/bias
    (4C,). The inverse of the reordering in mmdet's ``swin_converter``.
    """
    lead = value.shape[:-1]
    c = value.shape[-1] // 4
    by_offset = value.reshape(*lead, c, 4).transpose(-1, -2)    # (..., 4 offsets in unfold order, C)
    return by_offset[..., [0, 2, 1, 3], :].reshape(*lead, 4 * c)


def mmdet_swin(sd, report, num_heads):
    depths = depths_of(sd, r'stages\.(\d+)\.blocks\.(\d+)\.')
    stages = stage_list(depths, 0, 'mmdet SwinTransformer')
    embed = sd['patch_embed.projection.weight'].shape[0]
    heads, windows = [], []
    for i in stages:
        table = sd[f'stages.{i}.blocks.0.attn.w_msa.relative_position_bias_table']
        windows.append(window_from_bias_table(table))
        heads.append(table.shape[1])
    arch = dict(embed_dims=embed, depths=tuple(depths.values()), num_heads=tuple(num_heads or heads))
    cfg = dict(type='SLABSwinTransformer', arch=named_arch(arch, SLABSwinTransformer.arch_zoo),
               attn_types='S' * len(stages), window_sizes=tuple(windows))
    swin_extras(cfg, sd['patch_embed.projection.weight'], sd['stages.0.blocks.0.ffn.layers.0.0.weight'],
                 'stages.0.blocks.0.attn.w_msa.qkv.bias' in sd, None)
    block = r'stages\.(\d+)\.blocks\.(\d+)\.'
    blk = lambda m: f'stages.{m[1]}.blocks.{m[2]}'  # noqa: E731
    reorder = lambda key_of: lambda m, value: [(key_of(m), unfold_to_concat_order(value))]  # noqa: E731
    rules = [
        (r'patch_embed\.projection\.(.*)', rename(lambda m: f'patch_embed.proj.{m[1]}')),
        (r'patch_embed\.norm\.(.*)', rename(lambda m: f'patch_embed.norm.{m[1]}')),
        (r'absolute_pos_embed', Skip('our Swin has no absolute position embedding', unmapped=True)),
        (block + r'attn\.w_msa\.relative_position_index', Skip('derived from the window size')),
        (block + r'attn\.w_msa\.(.*)', rename(lambda m: f'{blk(m)}.attn.window_attn.{m[3]}')),
        (block + r'ffn\.layers\.0\.0\.(.*)', rename(lambda m: f'{blk(m)}.mlp.fc1.{m[3]}')),
        (block + r'ffn\.layers\.1\.(.*)', rename(lambda m: f'{blk(m)}.mlp.fc2.{m[3]}')),
        (block + r'(norm1|norm2)\.(.*)', rename(lambda m: f'{blk(m)}.{m[3]}.{m[4]}')),
        (r'stages\.(\d+)\.downsample\.(reduction\.weight|norm\.weight|norm\.bias)',
         reorder(lambda m: f'stages.{m[1]}.downsample.{m[2]}')),
        (r'norm(\d+)\.(.*)', rename(lambda m: f'norm{m[1]}.{m[2]}')),
    ]
    return cfg, rules, []
