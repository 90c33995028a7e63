"""The SLAB authors' Swin classification models (SLAB-Swin, Swin-PRepBN) -> SLABSwinTransformer."""
from ..models.backbones.checkpoint_fit import depths_of, register_source_layout
from ..models.backbones.slab_swin import SLABSwinTransformer
from .rules import Skip, named_arch, rename, square_side, stage_list, swin_extras, window_from_bias_table

# Its checkpoints are recognised by a key only this layout has.
LAYOUT = register_source_layout('reference_swin', 'SLAB-Swin / Swin-PRepBN (reference classification model)',
                                r'layers\.\d+\.blocks\.\d+\.')


def reference_swin(sd, report, num_heads):
    depths = depths_of(sd, r'layers\.(\d+)\.blocks\.(\d+)\.')
    stages = stage_list(depths, 0, 'reference Swin')
    embed = sd['patch_embed.proj.weight'].shape[0]
    heads, windows, types, kernel = [], [], '', None
    for i in stages:
        c = embed * 2 ** i
        p = f'layers.{i}.blocks.0.attn.'
        if p + 'positional_encoding' in sd:
            types += 'L'
            windows.append(square_side(sd[p + 'positional_encoding'].shape[1], p + 'positional_encoding'))
            heads.append(c // sd[p + 'dwc.weight'].shape[0])
            kernel = sd[p + 'dwc.weight'].shape[-1]
        else:
            types += 'S'
            table = sd[p + 'relative_position_bias_table']
            windows.append(window_from_bias_table(table))
            heads.append(table.shape[1])
    arch = dict(embed_dims=embed, depths=tuple(depths.values()), num_heads=tuple(num_heads or heads))
    cfg = dict(type='SLABSwinTransformer', arch=named_arch(arch, SLABSwinTransformer.arch_zoo), attn_types=types,
               window_sizes=tuple(windows))
    swin_extras(cfg, sd['patch_embed.proj.weight'], sd['layers.0.blocks.0.mlp.fc1.weight'],
                 'layers.0.blocks.0.attn.qkv.bias' in sd, kernel)
    block = r'layers\.(\d+)\.blocks\.(\d+)\.'
    blk = lambda m: f'stages.{m[1]}.blocks.{m[2]}'  # noqa: E731
    last = len(stages) - 1
    rules = [
        (r'head\..*', Skip('classification head')),
        (block + r'attn\.relative_position_index', Skip('derived from the window size')),
        (block + r'attn_mask', Skip('derived from the window size')),
        (block + r'attn\.dwc\.(.*)', rename(lambda m: f'{blk(m)}.attn.window_attn.value_conv.dwc.{m[3]}')),
        (block + r'attn\.(.*)', rename(lambda m: f'{blk(m)}.attn.window_attn.{m[3]}')),
        (block + r'(.*)', rename(lambda m: f'{blk(m)}.{m[3]}')),
        (r'layers\.(\d+)\.downsample\.(.*)', rename(lambda m: f'stages.{m[1]}.downsample.{m[2]}')),
        (r'patch_embed\.(.*)', rename(lambda m: f'patch_embed.{m[1]}')),
        # The classification model's final norm acts on the last stage's output:
        # exactly what our last output norm does.
        (r'norm\.(.*)', rename(lambda m: f'norm{last}.{m[1]}')),
        (r'norm(\d+)\.(.*)', rename(lambda m: f'norm{m[1]}.{m[2]}')),   # the authors' detection backbones
    ]
    return cfg, rules, []
