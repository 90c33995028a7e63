"""Convert released checkpoints into the state dicts of our backbones.

Two source layouts are recognised from the keys (:func:`detect_layout`):

* ``'reference'``: the SLAB authors' ImageNet models (github ``xinghaochen/SLAB``,
  ``slab_pvt_*``, ``pvt_*_prepbn``, ``slab_swin_*``, ``swin_tiny_prepbn``). Each
  reference ``LinearNorm`` (``norm1`` = LayerNorm, ``norm2`` = RepBN, buffers ``iter``,
  ``total_step``, ``warm``) becomes a :class:`PRepBN` with ``g = iter / total_step``;
  the classification head is dropped.
* ``'mmdet'``: mmdet's own LayerNorm ``PyramidVisionTransformer`` (v1) and
  ``SwinTransformer``. Each LayerNorm becomes the LayerNorm branch of a PRepBN with
  ``g = 1`` and a fresh RepBN, so that training can anneal it to BatchNorm.
  Attention/FFN layouts are translated (``nn.MultiheadAttention``'s ``in_proj`` into
  ``q``/``kv``, 1x1-conv FFNs into linears, ``nn.Unfold`` channel order of Swin's
  patch merging into the concatenation order of ours).

A norm that is a plain LayerNorm in either layout converts like mmdet's (g = 1); a
plain RepBN (the reference Swin's default ``norm_layer``) gives ``g = 0``.
The architecture (our backbone config) is read off the keys and shapes; the
converted weights are then checked against our backbone built from that config:
every key must exist with the same shape (a mismatch is an error naming the key),
and the only weights the checkpoint may lack are output norms the source model does
not have. A detector checkpoint (``backbone.`` / ``neck.`` / ... keys) has its
backbone converted and everything else kept, for ``load_from``.

Released checkpoints pickle their training config (a yacs ``CfgNode``) beside the
weights. :func:`load_checkpoint_safely` loads them with ``weights_only=True`` and
without yacs: classes that are not allow-listed are loaded as inert records
(:class:`ForeignObject`); no code from the checkpoint runs.
"""
import math
import os
import os.path as osp
import pickle
import re
from collections import OrderedDict

import torch

FAMILIES = ('auto', 'reference', 'mmdet')


class ConversionError(ValueError):
    """A checkpoint that cannot be converted; the message says why and names the keys."""


# ----------------------------------------------------------------------------- loading


class ForeignObject:
    """Stands in, while loading, for a class pickled in a checkpoint that we neither
    have nor trust (e.g. yacs' ``CfgNode``).

    torch's weights-only unpickler fills only exact ``dict`` / ``OrderedDict`` objects
    with items, so constructing a stand-in (the pickle's NEWOBJ, or a REDUCE call)
    gives a plain :class:`collections.OrderedDict`: the pickled items land in it as
    data, the pickled instance state as its attributes, and it is tagged with
    ``foreign_class`` (the pickled class or function name) and ``pickled_args``. The
    foreign class itself is never imported and none of its methods run.

    Subclasses made by :func:`load_checkpoint_safely` carry the name they stand for.
    """
    pickled_name = None

    def __new__(cls, *args, **kwargs):
        record = OrderedDict()
        record.__dict__.update(foreign_class=cls.pickled_name, pickled_args=args)
        return record


def foreign_class_of(obj):
    """The pickled class name an object loaded by :func:`load_checkpoint_safely`
    stands in for, or None for ordinary data."""
    return obj.__dict__.get('foreign_class') if type(obj) is OrderedDict else None


def _stand_in(name):
    return type('ForeignObject', (ForeignObject,), dict(pickled_name=name, __module__=__name__))


def _unpickler_reason(error):
    """The unpickler's own words out of torch's long 'Weights only load failed' text."""
    boilerplate = ('Weights only load failed', 'Please file an issue', 'Check the documentation')
    paragraphs = [p.strip() for p in str(error).split('\n\n') if p.strip()]
    return ' '.join(p for p in paragraphs if not p.startswith(boilerplate)) or str(error)


def load_checkpoint_safely(path):
    """``torch.load(path, map_location='cpu', weights_only=True)``, with foreign classes
    loaded as inert records (see :class:`ForeignObject`).

    Returns ``(obj, foreign)``: the loaded object and the sorted names of the foreign
    globals it pickles. Raises FileNotFoundError for a missing file and
    :class:`ConversionError` for a file that is not a ``torch.save`` checkpoint or
    that pickles objects weights-only loading cannot build even as inert records (a
    ``list`` subclass, a blocked module such as ``os``): the message names them.
    """
    import slab_mmdet.checkpoint  # noqa: F401  (numpy and mmengine types)
    if not osp.isfile(path):
        raise FileNotFoundError(f'checkpoint {path!r} does not exist')
    try:
        foreign = sorted(torch.serialization.get_unsafe_globals_in_checkpoint(path))
    except Exception as e:  # not a zip, truncated, torchscript, unknown opcode ...
        raise ConversionError(f'{path} is not a checkpoint written by torch.save: {e}') from e
    try:
        with torch.serialization.safe_globals([(_stand_in(name), name) for name in foreign]):
            obj = torch.load(path, map_location='cpu', weights_only=True)
    except (pickle.UnpicklingError, AttributeError, TypeError, ValueError, RuntimeError) as e:
        names = ', '.join(foreign) if foreign else 'none'
        raise ConversionError(
            f'cannot load {path} with weights_only=True: {_unpickler_reason(e)}\n'
            f'It pickles classes/functions that are not allow-listed ({names}). They are read as inert dict '
            f'records where torch\'s weights-only unpickler allows that, which it does not here (it fills only '
            f'exact dicts and lists, so e.g. a list subclass cannot become a dict record, and it refuses the os/sys '
            f'modules outright). No code from the checkpoint was '
            f'run. If you trust the file, extract its weights where its classes are installed, e.g. '
            f"torch.save(torch.load(SRC, weights_only=False)['model'], 'weights.pth') ('state_dict' for mmdet "
            f'checkpoints), and convert weights.pth.') from e
    return obj, foreign


def extract_state_dict(ckpt):
    """The weights in a checkpoint: its 'state_dict' / 'model' / 'module' entry, or itself."""
    if isinstance(ckpt, dict):
        for key in ('state_dict', 'model', 'module'):
            if key in ckpt and isinstance(ckpt[key], dict):
                return ckpt[key]
        if ckpt and all(isinstance(v, torch.Tensor) for v in ckpt.values()):
            return ckpt
        raise ConversionError(
            "no state dict found in the checkpoint: expected a dict of tensors or a dict with a 'state_dict' or "
            f"'model' entry; its top-level keys are {sorted(map(str, ckpt))[:10]}")
    raise ConversionError(f'no state dict found in the checkpoint: it holds a {type(ckpt).__name__}, not a dict')


# ------------------------------------------------------------------------------ report


class ConversionReport:
    """What a conversion did.

    Attributes:
        family (str): 'reference' or 'mmdet'.
        layout (str): The recognised source model, in words.
        backbone_cfg (dict): Config of our backbone that the weights fit.
        g_values (dict): PRepBN name -> g taken from the checkpoint.
        dropped (list[(key, why)]): Source keys deliberately not carried over
            (classification head, buffers derived from the window size).
        unmapped (list[(key, why)]): Source keys with no counterpart in our backbone.
        new_keys (list[str]): Our keys the source has no value for (output norms
            the source model lacks); they keep their initialisation.
        notes (list[str]): Assumptions the weights could not confirm.
        detector (bool): The source was a detector checkpoint; ``kept`` lists the
            top-level modules (neck, heads) carried over unchanged.
    """

    def __init__(self, family, layout, backbone_cfg):
        self.family = family
        self.layout = layout
        self.backbone_cfg = backbone_cfg
        self.g_values = {}
        self.dropped = []
        self.unmapped = []
        self.new_keys = []
        self.notes = []
        self.detector = False
        self.kept = []

    @property
    def g_range(self):
        return (min(self.g_values.values()), max(self.g_values.values())) if self.g_values else None

    def summary(self):
        """A human-readable account: architecture, PRepBN g, dropped/unmapped/new keys."""
        lines = [f'source: {self.layout}' + (' (detector checkpoint)' if self.detector else ''),
                 f'PRepBN layers with g from the checkpoint: {len(self.g_values)}'
                 + (', g in [{:.4g}, {:.4g}]'.format(*self.g_range) if self.g_values else '')]
        if self.kept:
            lines.append(f'kept unchanged: {", ".join(self.kept)}')
        by_reason = OrderedDict()
        for key, why in self.dropped:
            by_reason.setdefault(why, []).append(key)
        for why, keys in by_reason.items():
            shown = ', '.join(keys[:3]) + (f', ... ({len(keys)} keys)' if len(keys) > 3 else '')
            lines.append(f'dropped ({why}): {shown}')
        if self.new_keys:
            modules = sorted({k.split('.')[0] for k in self.new_keys})   # output norms
            lines.append(f'not in the checkpoint, left at initialisation: {", ".join(modules)}')
        lines += [f'could not map {key}: {why}' for key, why in self.unmapped]
        if not self.unmapped:
            lines.append('unmapped keys: none')
        lines += [f'note: {n}' for n in self.notes]
        return '\n'.join(lines)

    def to_meta(self):
        """The report as plain data (safe for ``torch.load(weights_only=True)``)."""
        return dict(family=self.family, layout=self.layout, backbone=self.backbone_cfg, detector=self.detector,
                    kept=list(self.kept), prepbn_layers=len(self.g_values), g_range=self.g_range,
                    dropped=[list(d) for d in self.dropped], unmapped=[list(u) for u in self.unmapped],
                    new_keys=list(self.new_keys), notes=list(self.notes))


# ------------------------------------------------------------------------- key rules


class _Skip:
    """A rule outcome for keys that are not carried over: dropped (by design) or
    unmapped (weights our backbone cannot represent)."""

    def __init__(self, why, unmapped=False):
        self.why, self.unmapped = why, unmapped


def _to(name_of):
    """A rule that renames: ``name_of(match) -> new key``."""
    return lambda m, value: [(name_of(m), value)]


def _apply_rules(state_dict, rules, report):
    """Rename source keys by the first rule whose pattern matches the whole key.

    A rule's action is a :class:`_Skip` or ``f(match, value) -> [(new_key, value)]``.
    Returns the renamed dict and, for each new key, its source key.
    """
    out, source = OrderedDict(), {}
    for key, value in state_dict.items():
        for pattern, action in rules:
            m = re.fullmatch(pattern, key)
            if m is None:
                continue
            if isinstance(action, _Skip):
                (report.unmapped if action.unmapped else report.dropped).append((key, action.why))
            else:
                for new_key, new_value in action(m, value):
                    out[new_key], source[new_key] = new_value, key
            break
        else:
            report.unmapped.append((key, 'not a key of the recognised layout'))
    return out, source


def _depths(keys, pattern):
    """{stage: number of blocks} from keys matching ``pattern`` (groups: stage, block)."""
    found = {}
    for k in keys:
        m = re.match(pattern, k)
        if m:
            found.setdefault(int(m.group(1)), set()).add(int(m.group(2)))
    return {i: max(js) + 1 for i, js in sorted(found.items())}


def _stage_list(depths, first, what):
    stages = list(depths)
    if stages != list(range(first, first + len(stages))):
        raise ConversionError(f'{what}: stages {stages} are not numbered consecutively from {first}')
    return stages


def _named_arch(arch, zoo):
    return next((name for name, a in zoo.items() if a == arch), arch)


def _ratio(hidden, channels):
    """An MLP ratio, as an int where it is one."""
    ratio = hidden / channels
    return int(ratio) if ratio.is_integer() else ratio


def _square_side(tokens, key):
    side = math.isqrt(tokens)
    if side * side != tokens:
        raise ConversionError(f'{key}: {tokens} positions do not make a square grid')
    return side


PVT_HEADS = (1, 2, 5, 8)   # PVT's num_heads: every released PVT / SLAB-PVT model uses them
PVT_SR_RATIOS = (8, 4, 2, 1)


def _pvt_heads(stored, num_heads, assumed, why, report):
    """num_heads per stage: given, else as stored in the weights (None where they are
    not), else ``assumed`` (noted in the report)."""
    if num_heads is not None:
        if len(num_heads) != len(stored):
            raise ConversionError(f'num_heads {tuple(num_heads)} must have one entry per stage ({len(stored)})')
        return tuple(int(h) for h in num_heads)
    if all(h is not None for h in stored):
        return tuple(stored)
    if assumed is None:
        raise ConversionError(f'num_heads cannot be inferred ({why}); pass num_heads (--num-heads)')
    heads = tuple(a if h is None else h for h, a in zip(stored, assumed))
    report.notes.append(f'num_heads of softmax-attention stages is not stored in the weights; assumed {heads} '
                        f'({why}). Pass num_heads (--num-heads) if the model used others.')
    return heads


# ---------------------------------------------------------------------- reference PVT


def _reference_pvt(sd, report, num_heads):
    depths = _depths(sd, r'block(\d+)\.(\d+)\.')
    stages = _stage_list(depths, 1, 'reference PVT')
    dims, stored, mlp_ratios, sr_ratios, la_sr, types, kernel = [], [], [], [], [], '', None
    for n, i in enumerate(stages):
        c = sd[f'patch_embed{i}.proj.weight'].shape[0]
        dims.append(c)
        mlp_ratios.append(_ratio(sd[f'block{i}.0.mlp.fc1.weight'].shape[0], c))
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
    heads = _pvt_heads(stored, num_heads, PVT_HEADS if len(stages) == len(PVT_HEADS) else None,
                       "PVT's, as in every released model", report)
    from ..models.backbones.slab_pvt import SLABPyramidVisionTransformer
    arch = dict(embed_dims=tuple(dims), num_heads=heads, mlp_ratios=tuple(mlp_ratios),
                sr_ratios=tuple(sr_ratios), depths=tuple(depths.values()))
    cfg = dict(type='SLABPyramidVisionTransformer', arch=_named_arch(arch, SLABPyramidVisionTransformer.arch_zoo),
               attn_types=types)
    if tuple(la_sr) != (1,) * len(stages):
        cfg['la_sr_ratios'] = tuple(la_sr)
    pos_tokens = sd['pos_embed1'].shape[1] if 'pos_embed1' in sd else None
    _pvt_extras(cfg, sd['patch_embed1.proj.weight'], pos_tokens, 'pos_embed1', 'block1.0.attn.q.bias' in sd, kernel)
    stage = lambda m: int(m[1]) - 1  # noqa: E731  (reference stages count from 1)
    rules = [
        (r'head\..*', _Skip('classification head')),
        (r'pos_embed(\d+)', _to(lambda m: f'stages.{stage(m)}.pos_embed')),
        (r'patch_embed(\d+)\.(.*)', _to(lambda m: f'stages.{stage(m)}.patch_embed.{m[2]}')),
        (r'block(\d+)\.(\d+)\.attn\.dwc\.(.*)',
         _to(lambda m: f'stages.{stage(m)}.blocks.{m[2]}.attn.value_conv.dwc.{m[3]}')),
        (r'block(\d+)\.(\d+)\.(.*)', _to(lambda m: f'stages.{stage(m)}.blocks.{m[2]}.{m[3]}')),
    ]
    return cfg, rules, []


def _pvt_extras(cfg, proj_weight, pos_tokens, pos_key, qkv_bias, kernel):
    """Non-default PVT settings that the weights record."""
    patch = proj_weight.shape[-1]
    if proj_weight.shape[1] != 3:
        cfg['in_channels'] = proj_weight.shape[1]
    if patch != 4:
        cfg['patch_size'] = patch
    if pos_tokens is not None and _square_side(pos_tokens, pos_key) * patch != 224:
        cfg['pretrain_img_size'] = _square_side(pos_tokens, pos_key) * patch
    if not qkv_bias:
        cfg['qkv_bias'] = False
    if kernel is not None and kernel != 5:
        cfg['kernel_size'] = kernel


# --------------------------------------------------------------------- reference Swin


def _swin_extras(cfg, proj_weight, fc1_weight, qkv_bias, kernel):
    """Non-default Swin settings that the weights record."""
    if proj_weight.shape[1] != 3:
        cfg['in_channels'] = proj_weight.shape[1]
    if proj_weight.shape[-1] != 4:
        cfg['patch_size'] = proj_weight.shape[-1]
    ratio = _ratio(*fc1_weight.shape)
    if ratio != 4:
        cfg['mlp_ratio'] = ratio
    if not qkv_bias:
        cfg['qkv_bias'] = False
    if kernel is not None and kernel != 5:
        cfg['kernel_size'] = kernel


def _window_from_bias_table(table):
    return (math.isqrt(table.shape[0]) + 1) // 2


def _reference_swin(sd, report, num_heads):
    depths = _depths(sd, r'layers\.(\d+)\.blocks\.(\d+)\.')
    stages = _stage_list(depths, 0, 'reference Swin')
    embed = sd['patch_embed.proj.weight'].shape[0]
    heads, windows, types, kernel = [], [], '', None
    for i in stages:
        c = embed * 2 ** i
        p = f'layers.{i}.blocks.0.attn.'
        if p + 'positional_encoding' in sd:
            types += 'L'
            windows.append(_square_side(sd[p + 'positional_encoding'].shape[1], p + 'positional_encoding'))
            heads.append(c // sd[p + 'dwc.weight'].shape[0])
            kernel = sd[p + 'dwc.weight'].shape[-1]
        else:
            types += 'S'
            table = sd[p + 'relative_position_bias_table']
            windows.append(_window_from_bias_table(table))
            heads.append(table.shape[1])
    from ..models.backbones.slab_swin import SLABSwinTransformer
    arch = dict(embed_dims=embed, depths=tuple(depths.values()), num_heads=tuple(num_heads or heads))
    cfg = dict(type='SLABSwinTransformer', arch=_named_arch(arch, SLABSwinTransformer.arch_zoo), attn_types=types,
               window_sizes=tuple(windows))
    _swin_extras(cfg, sd['patch_embed.proj.weight'], sd['layers.0.blocks.0.mlp.fc1.weight'],
                 'layers.0.blocks.0.attn.qkv.bias' in sd, kernel)
    block = r'layers\.(\d+)\.blocks\.(\d+)\.'
    blk = lambda m: f'stages.{m[1]}.blocks.{m[2]}'  # noqa: E731
    last = len(stages) - 1
    rules = [
        (r'head\..*', _Skip('classification head')),
        (block + r'attn\.relative_position_index', _Skip('derived from the window size')),
        (block + r'attn_mask', _Skip('derived from the window size')),
        (block + r'attn\.dwc\.(.*)', _to(lambda m: f'{blk(m)}.attn.window_attn.value_conv.dwc.{m[3]}')),
        (block + r'attn\.(.*)', _to(lambda m: f'{blk(m)}.attn.window_attn.{m[3]}')),
        (block + r'(.*)', _to(lambda m: f'{blk(m)}.{m[3]}')),
        (r'layers\.(\d+)\.downsample\.(.*)', _to(lambda m: f'stages.{m[1]}.downsample.{m[2]}')),
        (r'patch_embed\.(.*)', _to(lambda m: f'patch_embed.{m[1]}')),
        # The classification model's final norm acts on the last stage's output:
        # exactly what our last output norm does.
        (r'norm\.(.*)', _to(lambda m: f'norm{last}.{m[1]}')),
        (r'norm(\d+)\.(.*)', _to(lambda m: f'norm{m[1]}.{m[2]}')),   # the authors' detection backbones
    ]
    return cfg, rules, []


# -------------------------------------------------------------------------- mmdet PVT


def _mmdet_pvt(sd, report, num_heads):
    depths_raw = _depths(sd, r'layers\.(\d+)\.1\.(\d+)\.norm1\.')
    stages = _stage_list(depths_raw, 0, 'mmdet PyramidVisionTransformer')
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
        mlp_ratios.append(_ratio(sd[fc1].shape[0], c))
        sr_key = f'layers.{i}.1.{offset}.attn.sr.weight'
        sr_ratios.append(sd[sr_key].shape[-1] if sr_key in sd else 1)
    # mmdet builds stage i with embed_dims * num_heads[i] channels: the head size is
    # embed_dims everywhere, so num_heads follows from the widths once num_heads[0] is known.
    assumed = tuple(c // dims[0] for c in dims) if not any(c % dims[0] for c in dims) else None
    heads = _pvt_heads([None] * len(dims), num_heads, assumed,
                       f'stage widths {tuple(dims)} = embed_dims * num_heads with num_heads[0] = 1, as in every '
                       'mmdet PVT config', report)
    from ..models.backbones.slab_pvt import SLABPyramidVisionTransformer
    arch = dict(embed_dims=tuple(dims), num_heads=heads, mlp_ratios=tuple(mlp_ratios),
                sr_ratios=tuple(sr_ratios), depths=depths)
    cfg = dict(type='SLABPyramidVisionTransformer', arch=_named_arch(arch, SLABPyramidVisionTransformer.arch_zoo),
               attn_types='S' * len(stages))
    _pvt_extras(cfg, sd['layers.0.0.projection.weight'], sd['layers.0.1.0.pos_embed'].shape[1] if offset else None,
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
        (r'layers\.(\d+)\.0\.projection\.(.*)', _to(lambda m: f'stages.{m[1]}.patch_embed.proj.{m[2]}')),
        (r'layers\.(\d+)\.0\.norm\.(.*)', _to(lambda m: f'stages.{m[1]}.patch_embed.norm.{m[2]}')),
        (r'layers\.(\d+)\.1\.0\.pos_embed', _to(lambda m: f'stages.{m[1]}.pos_embed')) if offset else None,
        (block + r'attn\.attn\.in_proj_(weight|bias)', split_in_proj),
        (block + r'attn\.attn\.out_proj\.(.*)', _to(lambda m: f'{blk(m)}.attn.proj.{m[3]}')),
        (block + r'attn\.(sr|norm)\.(.*)', _to(lambda m: f'{blk(m)}.attn.{m[3]}.{m[4]}')),
        (block + r'(norm1|norm2)\.(.*)', _to(lambda m: f'{blk(m)}.{m[3]}.{m[4]}')),
        (block + r'ffn\.layers\.0\.(.*)', conv1x1_to_linear('fc1')),
        (block + r'ffn\.layers\.3\.(.*)', conv1x1_to_linear('fc2')),
        (r'layers\.(\d+)\.2\.(.*)', _Skip('a norm after the stage (norm_after_stage=True) that also feeds the next '
                                          'stage; our output norms only normalise the outputs', unmapped=True)),
    ]
    extras = []
    if not offset:
        report.notes.append('the model has no absolute position embedding (use_abs_pos_embed=False): ours are '
                            'set to zero, which is equivalent')
        extras = [f'stages.{i}.pos_embed' for i in stages]
    return cfg, [r for r in rules if r is not None], extras


# ------------------------------------------------------------------------- mmdet Swin


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


def _mmdet_swin(sd, report, num_heads):
    depths = _depths(sd, r'stages\.(\d+)\.blocks\.(\d+)\.')
    stages = _stage_list(depths, 0, 'mmdet SwinTransformer')
    embed = sd['patch_embed.projection.weight'].shape[0]
    heads, windows = [], []
    for i in stages:
        table = sd[f'stages.{i}.blocks.0.attn.w_msa.relative_position_bias_table']
        windows.append(_window_from_bias_table(table))
        heads.append(table.shape[1])
    from ..models.backbones.slab_swin import SLABSwinTransformer
    arch = dict(embed_dims=embed, depths=tuple(depths.values()), num_heads=tuple(num_heads or heads))
    cfg = dict(type='SLABSwinTransformer', arch=_named_arch(arch, SLABSwinTransformer.arch_zoo),
               attn_types='S' * len(stages), window_sizes=tuple(windows))
    _swin_extras(cfg, sd['patch_embed.projection.weight'], sd['stages.0.blocks.0.ffn.layers.0.0.weight'],
                 'stages.0.blocks.0.attn.w_msa.qkv.bias' in sd, None)
    block = r'stages\.(\d+)\.blocks\.(\d+)\.'
    blk = lambda m: f'stages.{m[1]}.blocks.{m[2]}'  # noqa: E731
    reorder = lambda key_of: lambda m, value: [(key_of(m), unfold_to_concat_order(value))]  # noqa: E731
    rules = [
        (r'patch_embed\.projection\.(.*)', _to(lambda m: f'patch_embed.proj.{m[1]}')),
        (r'patch_embed\.norm\.(.*)', _to(lambda m: f'patch_embed.norm.{m[1]}')),
        (r'absolute_pos_embed', _Skip('our Swin has no absolute position embedding', unmapped=True)),
        (block + r'attn\.w_msa\.relative_position_index', _Skip('derived from the window size')),
        (block + r'attn\.w_msa\.(.*)', _to(lambda m: f'{blk(m)}.attn.window_attn.{m[3]}')),
        (block + r'ffn\.layers\.0\.0\.(.*)', _to(lambda m: f'{blk(m)}.mlp.fc1.{m[3]}')),
        (block + r'ffn\.layers\.1\.(.*)', _to(lambda m: f'{blk(m)}.mlp.fc2.{m[3]}')),
        (block + r'(norm1|norm2)\.(.*)', _to(lambda m: f'{blk(m)}.{m[3]}.{m[4]}')),
        (r'stages\.(\d+)\.downsample\.(reduction\.weight|norm\.weight|norm\.bias)',
         reorder(lambda m: f'stages.{m[1]}.downsample.{m[2]}')),
        (r'norm(\d+)\.(.*)', _to(lambda m: f'norm{m[1]}.{m[2]}')),
    ]
    return cfg, rules, []


# ----------------------------------------------------------------------- the pipeline

LAYOUTS = {
    ('reference', 'pvt'): ('SLAB-PVT / PVT-PRepBN (reference classification model)', _reference_pvt),
    ('reference', 'swin'): ('SLAB-Swin / Swin-PRepBN (reference classification model)', _reference_swin),
    ('mmdet', 'pvt'): ("mmdet PyramidVisionTransformer (LayerNorm)", _mmdet_pvt),
    ('mmdet', 'swin'): ("mmdet SwinTransformer (LayerNorm)", _mmdet_swin),
}


def detect_layout(state_dict):
    """``(family, arch)`` of a backbone state dict: family 'reference' or 'mmdet',
    arch 'pvt' or 'swin'. Raises :class:`ConversionError` for anything else."""
    keys = list(state_dict)

    def has(pattern):
        return any(re.match(pattern, k) for k in keys)

    if has(r'stages\.\d+\.(pos_embed$|blocks\.\d+\.attn\.window_attn\.)') or \
            any(k.endswith(('.ln.weight', '.repbn.alpha')) for k in keys):
        raise ConversionError('the checkpoint is already in the layout of slab_mmdet backbones (stages.*, '
                              '*.ln.*, *.repbn.*): nothing to convert; load it directly with init_cfg/load_from')
    if has(r'(block|patch_embed)\d+\.') or has(r'pos_embed\d+$'):
        return 'reference', 'pvt'
    if has(r'layers\.\d+\.blocks\.\d+\.'):
        return 'reference', 'swin'
    if has(r'layers\.\d+\.\d+\.'):
        return 'mmdet', 'pvt'
    if has(r'stages\.\d+\.blocks\.\d+\.attn\.w_msa\.'):
        return 'mmdet', 'swin'
    raise ConversionError(
        'unrecognised checkpoint: expected the keys of a SLAB reference classification model (PVT: block1.*, '
        'patch_embed1.*; Swin: layers.0.blocks.*) or of mmdet\'s PyramidVisionTransformer (layers.0.0.projection.*) '
        f'or SwinTransformer (stages.0.blocks.*.attn.w_msa.*); its first keys are {keys[:5]}')


def _build_backbone(cfg):
    import slab_mmdet.models  # noqa: F401  (registers the backbones)
    from mmdet.registry import MODELS
    try:
        return MODELS.build(dict(cfg, drop_path_rate=0.0))
    except (ValueError, TypeError, KeyError) as e:
        raise ConversionError(f'the detected config {cfg["type"]}({_cfg_repr(cfg)}) does not build: {e}') from e


def _convert_norms(state_dict, source, backbone, report):
    """Turn each source norm in front of one of our PRepBNs into PRepBN weights.

    * a reference ``LinearNorm`` (``norm1`` LayerNorm, ``norm2`` RepBN, ``iter``,
      ``total_step``, ``warm``): ``g = iter / total_step`` (1 while it warms up: then
      it trains as a pure LayerNorm);
    * a LayerNorm (``weight``, ``bias``): the LayerNorm branch, ``g = 1``, our freshly
      initialised RepBN;
    * a plain RepBN (``alpha``, ``bn.*``; the reference Swin's default norm): the
      RepBN branch, ``g = 0``, our freshly initialised LayerNorm.
    """
    from ..models.layers.prepbn import iter_prepbn
    own = backbone.state_dict()
    out = OrderedDict(state_dict)

    def move(old_prefix, new_prefix, keys):
        for key in keys:
            new_key = new_prefix + key[len(old_prefix):]
            out[new_key], source[new_key] = out.pop(key), source[key]

    def fresh(prefix, what):
        for key in (k for k in own if k.startswith(prefix)):
            out[key], source[key] = own[key].clone(), what

    repbn_only = []
    for name, _ in iter_prepbn(backbone):
        p = name + '.'
        if p + 'total_step' in out:
            if p + 'iter' not in out:
                raise ConversionError(f'{source[p + "total_step"]} has no matching iter buffer')
            total = float(out.pop(p + 'total_step'))
            done = float(out.pop(p + 'iter'))
            warm = float(out.pop(p + 'warm')) if p + 'warm' in out else 0.0
            # The reference mixes lamda = iter / total_step (r0 = 1) of the LayerNorm branch.
            g = 1.0 if warm > 0 else (done / total if total > 0 else 0.0)
            g = min(max(g, 0.0), 1.0)
            for old, new in (('norm1.', 'ln.'), ('norm2.', 'repbn.')):
                move(p + old, p + new, [k for k in out if k.startswith(p + old)])
        elif p + 'weight' in out:
            move(p, p + 'ln.', [p + leaf for leaf in ('weight', 'bias') if p + leaf in out])
            fresh(p + 'repbn.', '(fresh RepBN)')
            g = 1.0
        elif p + 'alpha' in out:
            move(p, p + 'repbn.', [k for k in out if k == p + 'alpha' or k.startswith(p + 'bn.')])
            fresh(p + 'ln.', '(fresh LayerNorm)')
            g = 0.0
            repbn_only.append(name)
        else:
            continue
        out[p + 'g'], source[p + 'g'] = torch.tensor(g), f'({name}: g)'
        report.g_values[name] = g
    if repbn_only:
        report.notes.append(f'{len(repbn_only)} norms are plain RepBN in the checkpoint (no LayerNorm branch): '
                            'g = 0, as the reference model; their LayerNorm branch is left at initialisation')
    return out


def _check_against_backbone(state_dict, source, backbone, report):
    """Every converted key must be one of ``backbone``'s with the same shape; keys it
    does not have are reported unmapped; the checkpoint may only lack output norms."""
    own = backbone.state_dict()
    name = type(backbone).__name__
    mismatched = []
    for key in list(state_dict):
        if key not in own:
            report.unmapped.append((source[key], f'{name} has no {key}'))
            del state_dict[key]
        elif tuple(state_dict[key].shape) != tuple(own[key].shape):
            origin = f' (from {source[key]})' if source[key] != key else ''
            mismatched.append(f'  {key}{origin}: checkpoint {tuple(state_dict[key].shape)}, '
                              f'{name} expects {tuple(own[key].shape)}')
    if mismatched:
        raise ConversionError(f'shape mismatch against {name}({_cfg_repr(report.backbone_cfg)}) for '
                              f'{len(mismatched)} key(s):\n' + '\n'.join(mismatched))
    output_norms = {f'norm{i}' for i in backbone.out_indices}
    missing = [k for k in own if k not in state_dict]
    report.new_keys = [k for k in missing if k.split('.')[0] in output_norms]
    lacking = [k for k in missing if k.split('.')[0] not in output_norms]
    if lacking:
        shown = ', '.join(lacking[:8]) + (f', ... ({len(lacking)} keys)' if len(lacking) > 8 else '')
        raise ConversionError(
            f'the checkpoint has no weights for {len(lacking)} key(s) of {name}({_cfg_repr(report.backbone_cfg)}): '
            f'{shown}. Only output norms may be missing; was the model built with other options (e.g. '
            'patch_norm=False) or re-parameterised already?')
    return OrderedDict((k, state_dict[k]) for k in own if k in state_dict)


def _convert_backbone(state_dict, family, num_heads):
    detected, arch = detect_layout(state_dict)
    if family not in FAMILIES:
        raise ConversionError(f'family must be one of {FAMILIES}, got {family!r}')
    if family != 'auto' and family != detected:
        raise ConversionError(f'family {family!r} was asked for, but the keys are those of a {detected} checkpoint '
                              f'({LAYOUTS[detected, arch][0]}); use family {detected!r} or auto')
    layout, detect = LAYOUTS[detected, arch]
    report = ConversionReport(detected, layout, None)
    try:
        cfg, rules, zero_keys = detect(state_dict, report, num_heads)
    except KeyError as e:
        raise ConversionError(f'{layout}: the checkpoint lacks {e.args[0]!r}, which every such model has') from None
    report.backbone_cfg = cfg
    renamed, source = _apply_rules(state_dict, rules, report)
    backbone = _build_backbone(cfg)
    own = backbone.state_dict()
    for key in zero_keys:
        renamed[key], source[key] = torch.zeros_like(own[key]), '(zero position embedding)'
    converted = _convert_norms(renamed, source, backbone, report)
    return _check_against_backbone(converted, source, backbone, report), report


def convert_state_dict(state_dict, family='auto', num_heads=None):
    """Convert a backbone or detector state dict; returns ``(state_dict, report)``.

    Args:
        state_dict (dict): Weights in the reference or mmdet layout; a ``module.``
            prefix is stripped. With ``backbone.`` keys it is taken as a detector:
            the backbone keys are converted (and keep the prefix), all others
            (neck, heads) are kept unchanged.
        family (str): 'auto' (detect), 'reference' or 'mmdet' (insist on it).
        num_heads (Sequence[int] | None): Attention heads per stage, for layouts that
            do not store them (softmax PVT stages); None infers/assumes them (noted
            in the report).

    Raises:
        ConversionError: unrecognised layout, family mismatch, shape mismatch (naming
            the key and both shapes), or weights our backbone needs but the
            checkpoint lacks.
    """
    sd = OrderedDict((k[len('module.'):] if k.startswith('module.') else k, v) for k, v in state_dict.items())
    if not any(k.startswith('backbone.') for k in sd):
        return _convert_backbone(sd, family, num_heads)
    backbone_sd = OrderedDict((k[len('backbone.'):], v) for k, v in sd.items() if k.startswith('backbone.'))
    converted, report = _convert_backbone(backbone_sd, family, num_heads)
    out = OrderedDict(('backbone.' + k, v) for k, v in converted.items())
    kept = OrderedDict((k, v) for k, v in sd.items() if not k.startswith('backbone.'))
    out.update(kept)
    report.detector = True
    report.kept = list(OrderedDict.fromkeys(k.split('.')[0] for k in kept))
    report.dropped = [('backbone.' + k, why) for k, why in report.dropped]
    report.unmapped = [('backbone.' + k, why) for k, why in report.unmapped]
    return out, report


def convert_reference_state_dict(state_dict, num_heads=None):
    """:func:`convert_state_dict` for the SLAB authors' checkpoints (family 'reference')."""
    return convert_state_dict(state_dict, 'reference', num_heads)


def convert_mmdet_state_dict(state_dict, num_heads=None):
    """:func:`convert_state_dict` for mmdet's PVT / Swin checkpoints (family 'mmdet')."""
    return convert_state_dict(state_dict, 'mmdet', num_heads)


# ----------------------------------------------------------------------- files and CLI


def _training_config_note(ckpt):
    """The model name in a reference checkpoint's pickled training config, if any."""
    config = ckpt.get('config') if isinstance(ckpt, dict) else None
    try:
        return f"the checkpoint's training config names the model {config['MODEL']['NAME']!r}"
    except (TypeError, KeyError):
        return None


def convert_checkpoint(src, dst, family='auto', num_heads=None, force=False, log=print):
    """Convert the checkpoint file ``src`` and write ``dst``; returns the report.

    ``dst`` holds ``{'state_dict': ..., 'meta': {...}}`` (meta: the source, the detected
    backbone config, the report), loadable with
    ``init_cfg=dict(type='Pretrained', checkpoint=dst)`` or, for a detector,
    ``load_from=dst``. Optimizer and training state are not carried over.

    Raises FileNotFoundError (no ``src``), FileExistsError (``dst`` exists and not
    ``force``) and :class:`ConversionError`.
    """
    if osp.exists(dst) and osp.exists(src) and osp.samefile(src, dst):
        raise FileExistsError(f'DST {dst!r} is the source checkpoint itself; write the conversion elsewhere')
    if osp.exists(dst) and not force:
        raise FileExistsError(f'DST {dst!r} already exists; pass --force to overwrite it')
    log(f'loading {src}')
    ckpt, foreign = load_checkpoint_safely(src)
    if foreign:
        log(f'loaded as inert records, no code run: {", ".join(foreign)}')
    log('converting')
    state_dict, report = convert_state_dict(extract_state_dict(ckpt), family, num_heads)
    note = _training_config_note(ckpt)
    if note:
        report.notes.append(note)
    meta = dict(report.to_meta(), source=osp.abspath(src), converter='slab_mmdet.deploy.convert')
    log(f'writing {dst}')
    os.makedirs(osp.dirname(osp.abspath(dst)), exist_ok=True)
    tmp = dst + '.tmp'
    try:
        torch.save(dict(state_dict=state_dict, meta=meta), tmp)
        os.replace(tmp, dst)
    finally:
        if osp.exists(tmp):
            os.remove(tmp)
    return report


def _py(value):
    """A config value as Python source in mmengine config style (``dict(...)``)."""
    if isinstance(value, dict):
        return 'dict(' + ', '.join(f'{k}={_py(v)}' for k, v in value.items()) + ')'
    if isinstance(value, (list, tuple)):
        inner = ', '.join(_py(v) for v in value)
        return f'[{inner}]' if isinstance(value, list) else f'({inner}{"," if len(value) == 1 else ""})'
    return repr(value)


def _cfg_repr(cfg):
    return ', '.join(f'{k}={_py(v)}' for k, v in (cfg or {}).items() if k != 'type')


def stage_channels(backbone_cfg):
    """The output channels of each stage of the backbone ``backbone_cfg`` describes."""
    from ..models.backbones.slab_pvt import SLABPyramidVisionTransformer
    from ..models.backbones.slab_swin import SLABSwinTransformer
    arch = backbone_cfg['arch']
    if backbone_cfg['type'] == 'SLABPyramidVisionTransformer':
        return list(SLABPyramidVisionTransformer._resolve_arch(arch)['embed_dims'])
    arch = SLABSwinTransformer._resolve_arch(arch)
    return [arch['embed_dims'] * 2 ** i for i in range(len(arch['depths']))]


def config_snippet(report, checkpoint):
    """mmdet config lines for the converted checkpoint: the backbone (with
    ``init_cfg`` to load it) and the neck's ``in_channels``; ``load_from`` for a detector."""
    cfg = dict(report.backbone_cfg)
    if not report.detector:
        cfg['init_cfg'] = dict(type='Pretrained', checkpoint=checkpoint)
    fields = ',\n'.join(f'        {k}={_py(v)}' for k, v in cfg.items())
    lines = ['model = dict(', '    backbone=dict(', fields + '),',
             f'    neck=dict(in_channels={_py(stage_channels(cfg))}))']
    if report.detector:
        lines.append(f'load_from = {checkpoint!r}')
    return '\n'.join(lines)
