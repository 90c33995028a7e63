"""Convert released checkpoints into the state dicts of our backbones.

* The SLAB authors' ImageNet checkpoints (github ``xinghaochen/SLAB``, classification
  models ``slab_pvt_*``, ``pvt_*_prepbn``, ``slab_swin_*``, ``swin_tiny_prepbn``):
  :func:`convert_reference_state_dict`. The architecture is read off the keys and
  shapes; each reference ``LinearNorm`` becomes a :class:`PRepBN` whose ``g`` is the
  reference's ``iter / total_step``; the classification head is dropped.
* mmdet's own LayerNorm PVT / Swin checkpoints: :func:`convert_mmdet_state_dict`
  puts each LayerNorm into the LayerNorm branch of a PRepBN with ``g = 1``, so that a
  user can start from a LayerNorm model and anneal to BatchNorm while fine-tuning.

Released checkpoints pickle their training config (a yacs ``CfgNode``) beside the
weights. :func:`load_checkpoint_safely` loads them with ``weights_only=True`` and
without yacs: each class that is not allow-listed is mapped to
:class:`ForeignObject`, an inert record of the pickled state; no code from the
checkpoint runs.
"""
import math
import re
from collections import OrderedDict

import torch

# ----------------------------------------------------------------------------- loading


class ForeignObject(dict):
    """Stands in for a class pickled in a checkpoint that we neither have nor trust.

    It records what the pickle gives it (constructor args, items, state) as data; its
    methods only store values, so loading can never run code from the checkpoint.
    """

    def __init__(self, *args, **kwargs):
        super().__init__()
        self.pickled_args = args

    def __setstate__(self, state):
        self.pickled_state = state

    def __repr__(self):
        return f'ForeignObject({dict.__repr__(self)})'


def load_checkpoint_safely(path):
    """``torch.load(path, weights_only=True)``, with foreign classes loaded as inert
    :class:`ForeignObject` records. Returns the loaded object and the foreign names."""
    import slab_mmdet.checkpoint  # noqa: F401  (numpy and mmengine types)
    foreign = [name for name in torch.serialization.get_unsafe_globals_in_checkpoint(path)]
    with torch.serialization.safe_globals([(ForeignObject, name) for name in foreign]):
        obj = torch.load(path, map_location='cpu', weights_only=True)
    return obj, foreign


def extract_state_dict(ckpt):
    """The weights in a checkpoint: its 'model' / 'state_dict' entry, or itself."""
    if isinstance(ckpt, dict):
        for key in ('model', 'state_dict', 'module'):
            if key in ckpt and isinstance(ckpt[key], dict):
                return ckpt[key]
        if all(isinstance(v, torch.Tensor) for v in ckpt.values()):
            return ckpt
    raise ValueError('no state dict found in the checkpoint: expected a dict of tensors or a dict with a '
                     "'model' or 'state_dict' entry")


# ------------------------------------------------------------------ reference checkpoints


class ConversionReport:
    """What a conversion did: the detected architecture, and the keys it did not carry over."""

    def __init__(self, family, backbone_cfg):
        self.family = family
        self.backbone_cfg = backbone_cfg
        self.dropped = []      # (key, why): known keys with no counterpart (head, derived buffers)
        self.unmapped = []     # keys it could not map at all
        self.g_values = {}     # PRepBN name -> g

    def summary(self):
        lines = [f'architecture: {self.family}', f'backbone config: {self.backbone_cfg}',
                 f'PRepBN layers: {len(self.g_values)}'
                 + (f', g in [{min(self.g_values.values()):.4g}, {max(self.g_values.values()):.4g}]'
                    if self.g_values else '')]
        lines += [f'dropped {k}: {why}' for k, why in self.dropped]
        lines += [f'could not map {k}' for k in self.unmapped]
        return '\n'.join(lines)


def _prepbn_prefixes(state_dict):
    return sorted({k[:-len('.total_step')] for k in state_dict if k.endswith('.total_step')})


def _convert_linear_norms(state_dict, report):
    """Reference LinearNorm(norm1=LN, norm2=RepBN, iter, total_step) -> our PRepBN keys."""
    out = OrderedDict()
    prefixes = _prepbn_prefixes(state_dict)
    for p in prefixes:
        total = float(state_dict[f'{p}.total_step'])
        it = float(state_dict[f'{p}.iter'])
        warm = float(state_dict.get(f'{p}.warm', 0))
        # LinearNorm mixes lamda = iter / total_step (r0 = 1) of LayerNorm; during its
        # warm-up it is pure LayerNorm.
        g = 1.0 if warm > 0 else (it / total if total > 0 else 0.0)
        out[f'{p}.g'] = torch.tensor(min(max(g, 0.0), 1.0))
        report.g_values[p] = float(out[f'{p}.g'])
    renames = (('.norm1.', '.ln.'), ('.norm2.', '.repbn.'))
    for k, v in state_dict.items():
        owner = next((p for p in prefixes if k.startswith(p + '.')), None)
        if owner is None:
            out[k] = v
            continue
        rest = k[len(owner):]
        if rest in ('.iter', '.total_step', '.warm'):
            continue
        for old, new in renames:
            if rest.startswith(old):
                out[owner + new + rest[len(old):]] = v
                break
        else:
            report.unmapped.append(k)
    return out


def _rename(state_dict, rules, report):
    out = OrderedDict()
    for k, v in state_dict.items():
        for pattern, repl in rules:
            m = re.match(pattern, k)
            if m:
                if repl is None:
                    report.dropped.append((k, 'not part of the backbone / derived'))
                else:
                    out[m.expand(repl) + k[m.end():]] = v
                break
        else:
            report.unmapped.append(k)
    return out


def _count(keys, pattern):
    found = {}
    for k in keys:
        m = re.match(pattern, k)
        if m:
            found.setdefault(int(m.group(1)), set()).add(int(m.group(2)))
    return {i: max(js) + 1 for i, js in found.items()}


PVT_HEADS = (1, 2, 5, 8)


def _detect_pvt(sd):
    depths_by_stage = _count(sd, r'block(\d)\.(\d+)\.')
    stages = sorted(depths_by_stage)
    depths = tuple(depths_by_stage[i] for i in stages)
    dims, heads, mlp_ratios, sr_ratios, la_sr, types = [], [], [], [], [], ''
    for n, i in enumerate(stages):
        c = sd[f'pos_embed{i}'].shape[-1]
        dims.append(c)
        mlp_ratios.append(sd[f'block{i}.0.mlp.fc1.weight'].shape[0] // c)
        sr_key = f'block{i}.0.attn.sr.weight'
        sr = sd[sr_key].shape[-1] if sr_key in sd else 1
        if f'block{i}.0.attn.positional_encoding' in sd:
            types += 'L'
            heads.append(c // sd[f'block{i}.0.attn.dwc.weight'].shape[0])
            la_sr.append(sr)
            sr_ratios.append((8, 4, 2, 1)[n])
        else:
            types += 'S'
            heads.append(PVT_HEADS[n])   # not recorded in the weights: PVT's table
            la_sr.append(1)
            sr_ratios.append(sr)
    arch = dict(embed_dims=tuple(dims), num_heads=tuple(heads), mlp_ratios=tuple(mlp_ratios),
                sr_ratios=tuple(sr_ratios), depths=depths)
    from ..models.backbones.slab_pvt import SLABPyramidVisionTransformer
    named = next((n for n, a in SLABPyramidVisionTransformer.arch_zoo.items() if a == arch), None)
    return dict(type='SLABPyramidVisionTransformer', arch=named or arch, attn_types=types,
                la_sr_ratios=tuple(la_sr))


def _detect_swin(sd):
    depths_by_stage = _count(sd, r'layers\.(\d)\.blocks\.(\d+)\.')
    stages = sorted(depths_by_stage)
    embed = sd['patch_embed.proj.weight'].shape[0]
    heads, windows, types = [], [], ''
    for i in stages:
        c = embed * 2 ** i
        p = f'layers.{i}.blocks.0.attn.'
        if p + 'positional_encoding' in sd:
            types += 'L'
            windows.append(math.isqrt(sd[p + 'positional_encoding'].shape[1]))
            heads.append(c // sd[p + 'dwc.weight'].shape[0])
        else:
            types += 'S'
            table = sd[p + 'relative_position_bias_table']
            windows.append((math.isqrt(table.shape[0]) + 1) // 2)
            heads.append(table.shape[1])
    arch = dict(embed_dims=embed, depths=tuple(depths_by_stage[i] for i in stages), num_heads=tuple(heads))
    from ..models.backbones.slab_swin import SLABSwinTransformer
    named = next((n for n, a in SLABSwinTransformer.arch_zoo.items() if a == arch), None)
    return dict(type='SLABSwinTransformer', arch=named or arch, attn_types=types, window_sizes=tuple(windows))


PVT_RULES = (
    (r'head\.', None),
    (r'pos_embed(\d)$', None),  # handled below (stage index shift)
)


def convert_reference_state_dict(state_dict):
    """Convert a reference (SLAB classification) state dict; returns (state_dict, report)."""
    keys = list(state_dict)
    if any(k.startswith('pos_embed1') for k in keys):
        report = ConversionReport('SLAB-PVT / PVT-PRepBN (reference classification model)', _detect_pvt(state_dict))
        rules = [
            (r'head\.', None),
            (r'pos_embed(\d)$', lambda m: f'stages.{int(m.group(1)) - 1}.pos_embed'),
            (r'patch_embed(\d)\.', lambda m: f'stages.{int(m.group(1)) - 1}.patch_embed.'),
            (r'block(\d)\.(\d+)\.attn\.dwc\.', lambda m: f'stages.{int(m.group(1)) - 1}.blocks.{m.group(2)}'
                                                      '.attn.value_conv.dwc.'),
            (r'block(\d)\.(\d+)\.', lambda m: f'stages.{int(m.group(1)) - 1}.blocks.{m.group(2)}.'),
        ]
    elif any(k.startswith('layers.0.blocks.0.') for k in keys):
        report = ConversionReport('SLAB-Swin / Swin-PRepBN (reference classification model)',
                                  _detect_swin(state_dict))
        attn = r'layers\.(\d)\.blocks\.(\d+)\.attn\.'
        rules = [
            (r'head\.', None),
            (attn + r'(relative_position_index|attn_mask)$', None),
            (r'layers\.(\d)\.blocks\.(\d+)\.attn_mask$', None),
            (attn + r'dwc\.', lambda m: f'stages.{m.group(1)}.blocks.{m.group(2)}.attn.window_attn.value_conv.dwc.'),
            (attn, lambda m: f'stages.{m.group(1)}.blocks.{m.group(2)}.attn.window_attn.'),
            (r'layers\.(\d)\.blocks\.(\d+)\.', lambda m: f'stages.{m.group(1)}.blocks.{m.group(2)}.'),
            (r'layers\.(\d)\.downsample\.', lambda m: f'stages.{m.group(1)}.downsample.'),
            (r'patch_embed\.', lambda m: 'patch_embed.'),
            # The classification model's final norm acts on the last stage's output:
            # exactly what our last output norm does.
            (r'norm\.', lambda m: f'norm{len(report.backbone_cfg["window_sizes"]) - 1}.'),
        ]
    else:
        raise ValueError('not a SLAB reference classification checkpoint: found neither PVT keys (pos_embed1, '
                         'block1.*) nor Swin keys (layers.0.blocks.*)')
    converted = _convert_linear_norms(state_dict, report)
    out = OrderedDict()
    for k, v in converted.items():
        for pattern, repl in rules:
            m = re.match(pattern, k)
            if m:
                if repl is None:
                    report.dropped.append((k, 'classification head' if k.startswith('head.')
                                           else 'derived from the window size'))
                else:
                    out[repl(m) + k[m.end():]] = v
                break
        else:
            report.unmapped.append(k)
    return out, report
