"""The key-rule engine that renames source weights, and the architecture read-outs shared by
the source layouts (MLP ratios, grids, PVT heads, PVT/Swin extras), and configs
written as Python source."""
import math
import re
from collections import OrderedDict

from .errors import ConversionError


class Skip:
    """A rule outcome for keys that are not carried over: dropped (by design) or
    unmapped (weights our backbone cannot represent)."""

    def __init__(self, why, unmapped=False):
        self.why, self.unmapped = why, unmapped


def rename(name_of):
    """A rule that renames: ``name_of(match) -> new key``."""
    return lambda m, value: [(name_of(m), value)]


def apply_rules(state_dict, rules, report):
    """Rename source keys by the first rule whose pattern matches the whole key.

    A rule's action is a :class:`Skip` or ``f(match, value) -> [(new_key, value)]``.
    Returns the renamed dict and, for each new key, its source key.
    """
    out, source = OrderedDict(), {}
    for key, value in state_dict.items():
        for pattern, action in rules:
            m = re.fullmatch(pattern, key)
            if m is None:
                continue
            if isinstance(action, Skip):
                (report.unmapped if action.unmapped else report.dropped).append((key, action.why))
            else:
                for new_key, new_value in action(m, value):
                    out[new_key], source[new_key] = new_value, key
            break
        else:
            report.unmapped.append((key, 'not a key of the recognised layout'))
    return out, source


def stage_list(depths, first, what):
    stages = list(depths)
    if stages != list(range(first, first + len(stages))):
        raise ConversionError(f'{what}: stages {stages} are not numbered consecutively from {first}')
    return stages


def named_arch(arch, zoo):
    return next((name for name, a in zoo.items() if a == arch), arch)


def mlp_ratio(hidden, channels):
    """An MLP ratio, as an int where it is one."""
    ratio = hidden / channels
    return int(ratio) if ratio.is_integer() else ratio


def square_side(tokens, key):
    side = math.isqrt(tokens)
    if side * side != tokens:
        raise ConversionError(f'{key}: {tokens} positions do not make a square grid')
    return side


def pvt_heads(stored, num_heads, assumed, why, report):
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


def pvt_extras(cfg, proj_weight, pos_tokens, pos_key, qkv_bias, kernel):
    """Non-default PVT settings that the weights record."""
    patch = proj_weight.shape[-1]
    if proj_weight.shape[1] != 3:
        cfg['in_channels'] = proj_weight.shape[1]
    if patch != 4:
        cfg['patch_size'] = patch
    if pos_tokens is not None and square_side(pos_tokens, pos_key) * patch != 224:
        cfg['pretrain_img_size'] = square_side(pos_tokens, pos_key) * patch
    if not qkv_bias:
        cfg['qkv_bias'] = False
    if kernel is not None and kernel != 5:
        cfg['kernel_size'] = kernel


def swin_extras(cfg, proj_weight, fc1_weight, qkv_bias, kernel):
    """Non-default Swin settings that the weights record."""
    if proj_weight.shape[1] != 3:
        cfg['in_channels'] = proj_weight.shape[1]
    if proj_weight.shape[-1] != 4:
        cfg['patch_size'] = proj_weight.shape[-1]
    ratio = mlp_ratio(*fc1_weight.shape)
    if ratio != 4:
        cfg['mlp_ratio'] = ratio
    if not qkv_bias:
        cfg['qkv_bias'] = False
    if kernel is not None and kernel != 5:
        cfg['kernel_size'] = kernel


def window_from_bias_table(table):
    return (math.isqrt(table.shape[0]) + 1) // 2


def py_repr(value):
    """A config value as Python source in mmengine config style (``dict(...)``)."""
    if isinstance(value, dict):
        return 'dict(' + ', '.join(f'{k}={py_repr(v)}' for k, v in value.items()) + ')'
    if isinstance(value, (list, tuple)):
        inner = ', '.join(py_repr(v) for v in value)
        return f'[{inner}]' if isinstance(value, list) else f'({inner}{"," if len(value) == 1 else ""})'
    return repr(value)


def config_repr(cfg):
    """A backbone config's arguments (all but ``type``) as Python source, for messages."""
    return ', '.join(f'{k}={py_repr(v)}' for k, v in (cfg or {}).items() if k != 'type')
