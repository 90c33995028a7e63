"""The checks of the constructor arguments every SLAB backbone shares, each refusal naming the
backbone, the bad value and what would be valid."""
from ...utils import is_int, is_number
from ..layers.norms import FOLDABLE_NORM_CFG_TYPES, check_token_norm_cfg
from ..layers.transformer import check_foldable_norm_cfg


def check_choice(name, value, valid):
    if value not in valid:
        raise ValueError(f'{name} must be one of {sorted(valid)}, got {value!r}')


def check_positive_int(name, what, value):
    if not is_int(value) or value < 1:
        raise ValueError(f'{name}: {what} must be an int >= 1, got {value!r}')


def check_probability(name, what, value):
    if not is_number(value) or not 0 <= value < 1:
        raise ValueError(f'{name}: {what} must be a probability in [0, 1), got {value!r}')


def check_attn_types(name, attn_types, num_stages):
    if not isinstance(attn_types, str) or len(attn_types) != num_stages or set(attn_types) - {'L', 'S'}:
        raise ValueError(f"{name}: attn_types needs one letter per stage ({num_stages}), each 'L' (SLA) "
                         f"or 'S' (softmax), got {attn_types!r}")


def checked_out_indices(name, out_indices, num_stages):
    """``out_indices`` as a tuple of increasing stage indices (an int is one output)."""
    out_indices = tuple(out_indices) if not isinstance(out_indices, int) else (out_indices,)
    if not out_indices or any(not is_int(i) or not 0 <= i < num_stages for i in out_indices):
        raise ValueError(f'{name}: out_indices must be stage indices (ints) in [0, {num_stages - 1}], '
                         f'got {out_indices}')
    if list(out_indices) != sorted(set(out_indices)):
        # The neck reads the outputs in this order; fusion pairs output i with lateral conv i.
        raise ValueError(f'{name}: out_indices must be increasing without repeats (the order of the outputs), '
                         f'got {out_indices}; use {tuple(sorted(set(out_indices)))}')
    return out_indices


def check_frozen_stages(name, frozen_stages, num_stages):
    if not is_int(frozen_stages) or not -1 <= frozen_stages <= num_stages:
        raise ValueError(f'{name}: frozen_stages must be an int in [-1, {num_stages}], got {frozen_stages!r}')


def check_norms(name, norm_cfg, deploy, out_norms_folded):
    """The body's norm (a token norm; with ``deploy`` one that folds) and the deploy flags."""
    check_token_norm_cfg(norm_cfg, name)
    if out_norms_folded and not deploy:
        raise ValueError(f'{name}: out_norms_folded=True only makes sense with deploy=True')
    check_foldable_norm_cfg(norm_cfg, deploy, name)


def resolved_out_norm_cfg(name, out_norm_cfg, norm_cfg, norm_eval, out_norms_folded):
    """The output norms' config: ``out_norm_cfg``, or by default ``norm_cfg`` (a LayerNorm with its
    eps under ``norm_eval``, whose frozen statistics would be wrong in layers that never saw
    data); checked, and foldable if ``out_norms_folded``."""
    if out_norm_cfg is None:
        out_norm_cfg = dict(type='LN', eps=norm_cfg.get('eps', 1e-6)) if norm_eval else norm_cfg
    check_token_norm_cfg(out_norm_cfg, name, 'out_norm_cfg')
    if out_norms_folded and out_norm_cfg.get('type') not in FOLDABLE_NORM_CFG_TYPES:
        raise ValueError(f"{name}: out_norms_folded=True, but out_norm_cfg type {out_norm_cfg.get('type')!r} "
                         f"cannot be folded (one of {', '.join(FOLDABLE_NORM_CFG_TYPES)} can)")
    return out_norm_cfg


def check_init_cfg(name, init_cfg):
    if init_cfg is not None and init_cfg.get('type') != 'Pretrained':
        raise ValueError(f"{name}: init_cfg must be None or dict(type='Pretrained', checkpoint=...), "
                         f'got {init_cfg}')


def check_drop_path_rate(name, drop_path_rate):
    if not is_number(drop_path_rate) or not 0 <= drop_path_rate < 1:
        raise ValueError(f'{name}: drop_path_rate must be a number in [0, 1) (the largest probability '
                         f'of dropping a block), got {drop_path_rate!r}')
