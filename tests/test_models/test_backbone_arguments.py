"""The shared argument checks of the SLAB backbones (models/backbones/arguments.py), called
directly: each refusal names the backbone, the bad value and what is valid; good values pass
through (normalised where the backbone stores them normalised)."""
import pytest

from slab_mmdet.models.backbones import arguments


def test_out_indices_are_normalised_or_refused_naming_the_fix():
    assert arguments.checked_out_indices('B', 2, 4) == (2,)
    assert arguments.checked_out_indices('B', [0, 1, 3], 4) == (0, 1, 3)
    with pytest.raises(ValueError, match=r'B: out_indices must be stage indices \(ints\) in \[0, 3\], got \(4,\)'):
        arguments.checked_out_indices('B', [4], 4)
    with pytest.raises(ValueError, match=r'increasing without repeats .* got \(2, 0\); use \(0, 2\)'):
        arguments.checked_out_indices('B', (2, 0), 4)


@pytest.mark.parametrize('check, args, message', [
    (arguments.check_positive_int, ('B', 'patch_size', 0), 'B: patch_size must be an int >= 1, got 0'),
    (arguments.check_probability, ('B', 'drop_rate', 1.0), r'B: drop_rate must be a probability in \[0, 1\), got 1.0'),
    (arguments.check_attn_types, ('B', 'LLX', 3), "B: attn_types needs one letter per stage \\(3\\).*got 'LLX'"),
    (arguments.check_frozen_stages, ('B', 5, 4), r'B: frozen_stages must be an int in \[-1, 4\], got 5'),
    (arguments.check_init_cfg, ('B', dict(type='Kaiming')), "B: init_cfg must be None or dict\\(type='Pretrained'"),
    (arguments.check_drop_path_rate, ('B', -0.1), r'B: drop_path_rate must be a number in \[0, 1\)'),
    (arguments.check_norms, ('B', dict(type='LN'), False, True), 'out_norms_folded=True only makes sense with deploy'),
])
def test_each_check_names_the_backbone_and_the_bad_value(check, args, message):
    with pytest.raises(ValueError, match=message):
        check(*args)


def test_output_norms_default_to_the_body_norm_or_a_layernorm_under_norm_eval():
    prepbn = dict(type='PRepBN', eps=1e-5)
    assert arguments.resolved_out_norm_cfg('B', None, prepbn, False, False) is prepbn
    assert arguments.resolved_out_norm_cfg('B', None, prepbn, True, False) == dict(type='LN', eps=1e-5)
    with pytest.raises(ValueError, match="out_norm_cfg type 'LN' cannot be folded"):
        arguments.resolved_out_norm_cfg('B', dict(type='LN', eps=1e-6), prepbn, False, True)
    with pytest.raises(ValueError, match='eps'):   # as norm_cfg is checked (issue #39: it built, every output NaN)
        arguments.resolved_out_norm_cfg('B', dict(type='LN', eps=-1), prepbn, False, False)
