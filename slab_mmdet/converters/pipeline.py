"""The conversion pipeline: recognise the source layout, rename by its rules, turn source norms
into PRepBNs, check the result against our backbone, and read/write checkpoint files.

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
"""
import os.path as osp
from collections import OrderedDict

import torch
from mmdet.registry import MODELS
from mmengine.registry import DefaultScope

import slab_mmdet.models  # noqa: F401  (registers the backbones)

from ..apis.checkpoint import save_checkpoint
from ..models.backbones.checkpoint_fit import OWN_LAYOUTS, layout_description, layout_of, split_backbone
from ..models.layers.prepbn import iter_prepbn
from .errors import FAMILIES, ConversionError
from . import mmdet_pvt, mmdet_swin, reference_pvt, reference_swin
from .report import ConversionReport
from .rules import apply_rules, config_repr
from .safe_load import extract_state_dict, load_checkpoint_safely


# (family, arch) -> (the source model in words, its converter): one converter module per layout.
LAYOUTS = {tuple(layout.split('_')): (layout_description(layout), convert) for layout, convert in (
    (reference_pvt.LAYOUT, reference_pvt.reference_pvt), (reference_swin.LAYOUT, reference_swin.reference_swin),
    (mmdet_pvt.LAYOUT, mmdet_pvt.mmdet_pvt), (mmdet_swin.LAYOUT, mmdet_swin.mmdet_swin))}


def detect_layout(state_dict):
    """``(family, arch)`` of a backbone state dict: family 'reference' or 'mmdet',
    arch 'pvt' or 'swin' (by the layout signatures the converter modules register). Raises
    :class:`ConversionError` for anything else."""
    keys = list(state_dict)
    layout = layout_of(keys)
    if layout in OWN_LAYOUTS or any(k.endswith(('.ln.weight', '.repbn.alpha')) for k in keys):
        raise ConversionError('the checkpoint is already in the layout of slab_mmdet backbones (stages.*, '
                              '*.ln.*, *.repbn.*): nothing to convert; load it directly with init_cfg/load_from')
    if layout is None:
        raise ConversionError(
            'unrecognised checkpoint: expected the keys of a SLAB reference classification model (PVT: block1.*, '
            'patch_embed1.*; Swin: layers.0.blocks.*) or of mmdet\'s PyramidVisionTransformer '
            '(layers.0.0.projection.*) or SwinTransformer (stages.0.blocks.*.attn.w_msa.*); its first keys are '
            f'{keys[:5]}')
    family, arch = layout.split('_')
    return family, arch


def _build_backbone(cfg):
    try:
        # In mmdet's scope whatever scope the caller left current (e.g. a Runner's 'mmengine').
        with DefaultScope.overwrite_default_scope('mmdet'):
            return MODELS.build(dict(cfg, drop_path_rate=0.0))
    except (ValueError, TypeError, KeyError) as e:
        raise ConversionError(f'the detected config {cfg["type"]}({config_repr(cfg)}) does not build: {e}') from e


def _convert_norms(state_dict, source, backbone, report):
    """Turn each source norm in front of one of our PRepBNs into PRepBN weights.

    * a reference ``LinearNorm`` (``norm1`` LayerNorm, ``norm2`` RepBN, ``iter``,
      ``total_step``, ``warm``): ``g = iter / total_step`` (1 while it warms up: then
      it trains as a pure LayerNorm);
    * a LayerNorm (``weight``, ``bias``): the LayerNorm branch, ``g = 1``, our freshly
      initialised RepBN with ``alpha = 0`` (a plain BatchNorm that may learn to open the
      identity path): with alpha = 1 the raw residual stream of an LN-trained model,
      many times the scale of LN(x), reaches every sublayer as g falls, and its stream
      ran away in the anneal (docs/prepbn.md, "The LayerNorm route");
    * a plain RepBN (``alpha``, ``bn.*``; the reference Swin's default norm): the
      RepBN branch, ``g = 0``, our freshly initialised LayerNorm.
    """
    own = backbone.state_dict()
    out = OrderedDict(state_dict)

    def move(old_prefix, new_prefix, keys):
        for key in keys:
            new_key = new_prefix + key[len(old_prefix):]
            out[new_key], source[new_key] = out.pop(key), source[key]

    def fresh(prefix, what):
        for key in (k for k in own if k.startswith(prefix)):
            out[key], source[key] = own[key].clone(), what

    repbn_only, fresh_alpha = [], []
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
            out[p + 'repbn.alpha'] = torch.zeros_like(own[p + 'repbn.alpha'])
            source[p + 'repbn.alpha'] = '(fresh RepBN: alpha 0)'
            fresh_alpha.append(name)
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
    if fresh_alpha:
        report.notes.append(f'{len(fresh_alpha)} LayerNorms became the LayerNorm branch of a PRepBN (g = 1) whose '
                            'fresh RepBN starts with alpha = 0 (a plain BatchNorm; alpha is learned): with alpha = 1 '
                            "the anneal of LayerNorm-trained weights ran away (docs/prepbn.md)")
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
        raise ConversionError(f'shape mismatch against {name}({config_repr(report.backbone_cfg)}) for '
                              f'{len(mismatched)} key(s):\n' + '\n'.join(mismatched))
    output_norms = {f'norm{i}' for i in backbone.out_indices}
    missing = [k for k in own if k not in state_dict]
    report.new_keys = [k for k in missing if k.split('.')[0] in output_norms]
    lacking = [k for k in missing if k.split('.')[0] not in output_norms]
    if lacking:
        shown = ', '.join(lacking[:8]) + (f', ... ({len(lacking)} keys)' if len(lacking) > 8 else '')
        raise ConversionError(
            f'the checkpoint has no weights for {len(lacking)} key(s) of {name}({config_repr(report.backbone_cfg)}): '
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
    renamed, source = apply_rules(state_dict, rules, report)
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
    backbone_sd, kept = split_backbone(state_dict)
    if kept is None:
        return _convert_backbone(backbone_sd, family, num_heads)
    converted, report = _convert_backbone(backbone_sd, family, num_heads)
    out = OrderedDict(('backbone.' + k, v) for k, v in converted.items())
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
    meta = dict(report.to_meta(), source=osp.abspath(src), converter='slab_mmdet.converters')
    log(f'writing {dst}')
    save_checkpoint(dict(state_dict=state_dict, meta=meta), dst)
    return report

