"""Reading a checkpoint's weights for a SLAB backbone: the state dict unwrapped and its keys
made backbone-relative (one way for the backbones, the converters and the tools), which layout
its keys are in and which architecture they describe, the refusals (with the fix) of pairings
that would load without an error but compute something else; positional tables resized to the
model's grids."""
import math
import re
from collections import OrderedDict

import torch
import torch.nn.functional as F

from ..layers.dyt import ScaledTanh
from ..layers.norms import NORM_LAYER_TYPES, ChannelAffine

# Learned positional tables laid out on a grid: (1, h*w, C), resized in 2-D on load.
GRID_TABLES = ('pos_embed', 'positional_encoding')
# The norms a checkpoint's keys may belong to, fused (ChannelAffine, DyT's ScaledTanh/TanhAffine) or not.
CHECKPOINT_NORM_TYPES = NORM_LAYER_TYPES + (ChannelAffine, ScaledTanh)

# The layouts of our backbones' state dicts (backbone-relative keys): name -> (the class, a
# key pattern (``re.match``) that only it has).
OWN_LAYOUTS = OrderedDict([
    ('slab_pvt', ('SLABPyramidVisionTransformer', r'stages\.\d+\.pos_embed$')),
    ('slab_swin', ('SLABSwinTransformer', r'stages\.\d+\.blocks\.\d+\.attn\.window_attn\.')),
])
# The released models' layouts tools/convert_checkpoint.py converts from, each registered by
# its converter module beside its rules (models/ does not import converters/; importing
# slab_mmdet imports them): name -> (the model in words, key pattern).
SOURCE_LAYOUTS = OrderedDict()


def register_source_layout(name, description, pattern):
    """Make :func:`layout_of` recognise a released model's checkpoint layout; returns `name`.
    Called by the layout's converter; a name taken by another layout is refused."""
    if name in OWN_LAYOUTS or SOURCE_LAYOUTS.get(name, (description, pattern)) != (description, pattern):
        raise ValueError(f'checkpoint layout {name!r} is registered already, as {layout_description(name)!r}')
    SOURCE_LAYOUTS[name] = (description, pattern)
    return name


def layout_description(name):
    """The model whose checkpoint layout is `name`, in words."""
    return {**OWN_LAYOUTS, **SOURCE_LAYOUTS}[name][0]


def layout_of(keys):
    """The name (of ``OWN_LAYOUTS`` or ``SOURCE_LAYOUTS``) of the first layout whose pattern some
    key matches, ours tried first, or None."""
    for layout, (_, pattern) in [*OWN_LAYOUTS.items(), *SOURCE_LAYOUTS.items()]:
        if any(re.match(pattern, k) for k in keys):
            return layout
    return None


def depths_of(keys, pattern):
    """{stage: number of blocks} from the keys matching ``pattern`` (groups: stage, block)."""
    found = {}
    for k in keys:
        m = re.match(pattern, k)
        if m:
            found.setdefault(int(m.group(1)), set()).add(int(m.group(2)))
    return {i: max(blocks) + 1 for i, blocks in sorted(found.items())}


def describe_architecture(state):
    """What a state dict of our layouts says of its backbone, as a short text (class, depths,
    widths, attention per stage), or None for other layouts. A fused and an unfused
    checkpoint of one model describe alike."""
    layout = layout_of(state)
    if layout not in OWN_LAYOUTS:
        return None
    depths = depths_of(state, r'stages\.(\d+)\.blocks\.(\d+)\.')
    widths, attention = [], ''
    for i in depths:
        fc1 = state.get(f'stages.{i}.blocks.0.mlp.fc1.weight')
        widths.append(str(fc1.shape[1]) if fc1 is not None else '?')
        sla = (f'stages.{i}.blocks.0.attn.positional_encoding' if layout == 'slab_pvt'
               else f'stages.{i}.blocks.0.attn.window_attn.positional_encoding')
        attention += 'L' if sla in state else 'S'
    return (f"{layout_description(layout)} (depths {'-'.join(map(str, depths.values()))}, widths "
            f"{'-'.join(widths)}, attention {attention})")


def check_checkpoint_fits(backbone, state, prefix=''):
    """Raise a ValueError naming the fix when the checkpoint weights ``state`` (keys relative
    to the backbone) cannot fill ``backbone`` as they should: none of its keys, an
    unconverted released checkpoint, another architecture or size (both are named), a
    fused checkpoint for a training model or an unfused one for a ``deploy=True`` model,
    weights the backbone's options do not have, or output norms of another kind. A
    checkpoint without output norms (an ImageNet model) passes."""
    name = type(backbone).__name__
    own = backbone.state_dict()
    keys = list(state)
    present = [k for k in keys if k in own]
    where = f' under {prefix!r}' if prefix else ''
    if not present:
        sample = ', '.join(keys[:3]) if keys else 'none'
        layout = layout_of(keys)
        if layout in SOURCE_LAYOUTS:
            raise ValueError(
                f'{name}: the checkpoint is in the layout of a released PVT/Swin model '
                f'({layout_description(layout)}; keys{where} such as {sample}), not ours: none of its weights would '
                f'load. Convert it first: python tools/convert_checkpoint.py SRC.pth DST.pth, and load DST.pth.')
        if layout is None:
            raise ValueError(
                f'{name}: the checkpoint fills none of the backbone\'s {len(own)} weights (its keys{where}: '
                f'{sample}). A backbone checkpoint goes in init_cfg=dict(type=\'Pretrained\', checkpoint=...), a '
                f'detector checkpoint in load_from / as the test checkpoint; a released checkpoint needs '
                f'tools/convert_checkpoint.py first.')
    mine, theirs = describe_architecture(own), describe_architecture(state)
    if theirs is not None and theirs != mine:
        raise ValueError(
            f'{name}: the checkpoint{where} holds another backbone, {theirs}, but this model is {mine}: it was '
            f'trained with another config. Use the config it was trained with, or a checkpoint of this '
            f'architecture.')
    out_norms = tuple(f'norm{i}.' for i in backbone.out_indices)
    norm_prefixes = tuple(f'{n}.' for n, m in backbone.named_modules() if n and isinstance(m, CHECKPOINT_NORM_TYPES))
    body_norm_keys = [k for k in own if k.startswith(norm_prefixes) and not k.startswith(out_norms)]
    given = set(keys)
    if backbone.deploy:
        unfused = [k for k in keys if k not in own and re.search(r'(^|\.)(ln|repbn)\.|(^|\.)g$', k)]
        if unfused:
            raise ValueError(
                f'{name} is built with deploy=True (norms folded away), but the checkpoint is unfused: it has '
                f'{len(unfused)} PRepBN weights (e.g. {prefix}{unfused[0]}). Fuse it first: python '
                f'tools/fuse_norms.py TRAIN_CONFIG CHECKPOINT --out-dir DIR, then use the deploy config and the '
                f'fused checkpoint it writes.')
    elif body_norm_keys and not any(k in given for k in body_norm_keys):
        raise ValueError(
            f'{name} is built for training (deploy=False, with norm layers), but the checkpoint has no norm '
            f'weights (e.g. no {prefix}{body_norm_keys[0]}): it is a fused checkpoint. Use it with the deploy '
            f'config that tools/fuse_norms.py wrote beside it (backbone deploy=True), or load the unfused '
            f'checkpoint.')
    if theirs is None:
        return   # a partial checkpoint of our layout (e.g. some layers only): mmengine reports what it lacks
    _check_same_structure(backbone, own, state, out_norms, where)


def _check_same_structure(backbone, own, state, out_norms, where):
    """Same architecture: every weight of the body (all but the output norms) must be there
    with its shape, and nothing else; output norms in the checkpoint must be of the model's kind."""
    name = type(backbone).__name__
    body = [k for k in own if not k.startswith(out_norms)]
    missing = [k for k in body if k not in state]
    extra = [k for k in state if k not in own and not re.match(r'norm\d+\.', k)]
    reshaped = [f'{k}: {tuple(state[k].shape)} in the checkpoint, {tuple(own[k].shape)} here'
                for k in body if k in state and tuple(state[k].shape) != tuple(own[k].shape)]
    if missing or extra or reshaped:
        found = [f'{len(v)} {what} (e.g. {v[0]})' for v, what in (
            (missing, 'of its weights missing'), (extra, 'weights it does not have'), (reshaped, 'of other shape'))
            if v]
        raise ValueError(
            f'{name}: the checkpoint{where} does not fit this backbone ({describe_architecture(own)}): '
            f'{"; ".join(found)}. It was trained with other backbone options (la_sr_ratios, window_sizes, '
            f'kernel_size, qkv_bias, patch_size, pretrain_img_size, ...): use its config.')
    for norm in out_norms:
        theirs = sorted(k for k in state if k.startswith(norm))
        mine = sorted(k for k in own if k.startswith(norm))
        if theirs and theirs != mine:
            raise ValueError(
                f'{name}: output norm {norm[:-1]}{where} is another kind of layer in the checkpoint '
                f'({", ".join(theirs)}) than here ({", ".join(mine) or "none: folded"}): out_norm_cfg, deploy or '
                f'out_norms_folded differ from the config it was trained with; use that config (a deploy config '
                f'from tools/fuse_norms.py for a fused checkpoint).')


# Where a checkpoint keeps its weights: mmengine/mmdet 'state_dict', timm/DeiT-style 'model',
# a pickled DataParallel's 'module'; else the dict itself holds the tensors.
STATE_DICT_ENTRIES = ('state_dict', 'model', 'module')


def state_dict_in(checkpoint, source='the checkpoint'):
    """The weights of a loaded checkpoint: its first ``STATE_DICT_ENTRIES`` entry that is a
    dict, or the checkpoint itself when it is a dict of tensors. Anything else is refused
    with a ValueError naming ``source`` and what it holds."""
    if not isinstance(checkpoint, dict):
        raise ValueError(f'{source} holds a {type(checkpoint).__name__}, not a state dict: expected a dict of '
                         f"tensors or a dict with a 'state_dict' or 'model' entry")
    for key in STATE_DICT_ENTRIES:
        if isinstance(checkpoint.get(key), dict):
            return checkpoint[key]
    if checkpoint and all(isinstance(v, torch.Tensor) for v in checkpoint.values()):
        return checkpoint
    raise ValueError(f"no state dict found in {source}: expected a dict of tensors or a dict with a 'state_dict' "
                     f"or 'model' entry; its top-level keys are {sorted(map(str, checkpoint))[:10]}")


def split_backbone(state_dict):
    """``(backbone, rest)``: a state dict's keys with any ``module.`` prefix (a DataParallel
    wrapper, outermost) stripped first, then split into the detector's ``backbone.`` weights
    (relative to the backbone) and the others (neck, heads; keys unchanged). A state dict
    without ``backbone.`` keys is a backbone's own: ``(state_dict, None)``."""
    unwrapped = OrderedDict((k[len('module.'):] if k.startswith('module.') else k, v) for k, v in state_dict.items())
    if not any(k.startswith('backbone.') for k in unwrapped):
        return unwrapped, None
    backbone = OrderedDict((k[len('backbone.'):], v) for k, v in unwrapped.items() if k.startswith('backbone.'))
    rest = OrderedDict((k, v) for k, v in unwrapped.items() if not k.startswith('backbone.'))
    return backbone, rest


def strip_to_backbone(state_dict):
    """A checkpoint's weights relative to the backbone (:func:`split_backbone`, the rest dropped)."""
    return split_backbone(state_dict)[0]


def resize_tables_to(backbone, state_dict, logger):
    """Positional tables and relative position bias tables of ``state_dict`` resized (bicubic)
    where their grid differs from the backbone's, in place; each resize is logged."""
    own = backbone.state_dict()
    for key, value in list(state_dict.items()):
        if key in own and own[key].shape != value.shape:
            leaf = key.rsplit('.', 1)[-1]
            if leaf in GRID_TABLES:
                state_dict[key] = resize_grid_table(value, own[key].shape[1])
            elif leaf == 'relative_position_bias_table':
                state_dict[key] = resize_bias_table(value, own[key].shape[0])
            else:
                continue   # check_checkpoint_fits names the mismatch
            logger.info(f'{type(backbone).__name__}: resized {key} from {tuple(value.shape)} '
                        f'to {tuple(own[key].shape)}')
    return state_dict


def resize_grid_table(table, num_tokens):
    """(1, n0, C) on a square grid -> (1, num_tokens, C) on a square grid."""
    src, dst = math.isqrt(table.shape[1]), math.isqrt(num_tokens)
    if src * src != table.shape[1] or dst * dst != num_tokens:
        raise ValueError(f'cannot resize a positional table of {table.shape[1]} tokens to {num_tokens}: '
                         'only square grids are resized')
    grid = table.reshape(1, src, src, -1).permute(0, 3, 1, 2)
    grid = F.interpolate(grid, size=(dst, dst), mode='bicubic', align_corners=False)
    return grid.flatten(2).transpose(1, 2)


def resize_bias_table(table, length):
    """Swin relative position bias table ((2w-1)^2, heads) -> (length, heads), bicubic."""
    src, dst = math.isqrt(table.shape[0]), math.isqrt(length)
    grid = table.permute(1, 0).reshape(1, -1, src, src)
    grid = F.interpolate(grid, size=(dst, dst), mode='bicubic', align_corners=False)
    return grid.reshape(-1, length).permute(1, 0)
