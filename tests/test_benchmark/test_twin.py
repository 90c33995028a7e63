"""The LayerNorm + softmax twin derived from a SLAB/PRepBN config (slab_mmdet.benchmark.twin,
tools/benchmark_latency.py --twin): the same widths, depths, heads, windows and spatial
reductions as its source, no PRepBN, no SLA, no annealing hook; a config without a SLAB
backbone, or one that already is a twin, is refused by name."""
import os.path as osp

import pytest
import torch
from mmdet.registry import MODELS
from mmengine.config import Config

from slab_mmdet.benchmark import BenchmarkError
from slab_mmdet.benchmark.twin import twin_backbone_cfg, write_twin_config
from slab_mmdet.models.layers import PRepBN
from slab_mmdet.models.layers.attention import SpatialReductionLinearAttention
from slab_mmdet.models.layers.window_attention import WindowLinearAttention
from testing_utils import REPO_ROOT
from testing_utils.helpers import load_script


def _config(name):
    return osp.join(REPO_ROOT, 'configs', 'mini', name)


def _shapes(module):
    return {k: tuple(v.shape) for k, v in module.state_dict().items()}


@pytest.mark.parametrize('source, written_twin', [
    ('mask_rcnn_slab_pvt_t.py', 'mask_rcnn_pvt_t_twin.py'),
    ('mask_rcnn_pvt_t_prepbn.py', 'mask_rcnn_pvt_t_twin.py'),
    ('mask_rcnn_slab_swin_t.py', 'mask_rcnn_swin_t_twin.py'),
    ('mask_rcnn_swin_t_prepbn.py', 'mask_rcnn_swin_t_twin.py'),
])
def test_derived_twin_is_the_written_twin(tmp_path, source, written_twin):
    """The twin derived from a SLAB or PRepBN config builds the very backbone of the twin config
    written by hand: every parameter and buffer with the same name and shape, softmax attention
    and LayerNorm everywhere; its hooks lose PRepBNHook."""
    path = write_twin_config(_config(source), str(tmp_path))
    assert osp.basename(path) == osp.splitext(source)[0] + '_twin.py'
    derived = Config.fromfile(path)
    expected = Config.fromfile(_config(written_twin))
    assert [h['type'] for h in derived.custom_hooks] == [h['type'] for h in expected.custom_hooks]
    assert 'PRepBNHook' not in [h['type'] for h in derived.custom_hooks]
    twin, reference = MODELS.build(derived.model.backbone), MODELS.build(expected.model.backbone)
    assert _shapes(twin) == _shapes(reference)
    assert twin.attn_types == 'SSSS' and twin.arch == reference.arch
    assert not any(isinstance(m, (PRepBN, SpatialReductionLinearAttention, WindowLinearAttention))
                   for m in twin.modules())
    assert all(isinstance(getattr(twin, f'norm{i}'), torch.nn.LayerNorm) for i in twin.out_indices)
    if 'swin' in source:
        assert twin.window_sizes == (7, 7, 7, 7)
    else:
        assert [b.attn.sr_ratio for b in (s.blocks[0] for s in twin.stages)] == [8, 4, 2, 1]


def test_twin_keeps_what_the_source_sets_besides_attention_and_norms():
    """A user's own arch and settings carry over; only attention, norms and weights change."""
    source = _config('mask_rcnn_slab_swin_t.py')
    options = {'model.backbone.arch': 'small', 'model.backbone.window_sizes': (14, 14, 5, 5),
               'model.backbone.drop_path_rate': 0.05,
               'model.backbone.norm_cfg': dict(type='PRepBN', eps=1e-4)}
    twin = twin_backbone_cfg(source, options)
    assert twin['arch'] == 'small'
    assert twin['window_sizes'] == (5, 5, 5, 5)   # the softmax stages' window
    assert twin['drop_path_rate'] == 0.05
    assert twin['norm_cfg'] == dict(type='LN', eps=1e-4)
    assert twin['attn_types'] == 'SSSS' and twin['init_cfg'] is None
    assert 'out_norm_cfg' not in twin and 'deploy' not in twin


@pytest.mark.parametrize('config, message', [
    (_config('mask_rcnn_pvt_t.py'), "backbone type 'PyramidVisionTransformer' has no LayerNorm + softmax twin here; "
                                    "--twin needs a SLAB backbone (SLABPyramidVisionTransformer, SLABSwinTransformer)"),
    (_config('mask_rcnn_pvt_t_twin.py'), "already is a LayerNorm + softmax model (attn_types 'SSSS'"),
])
def test_a_config_without_a_twin_is_refused_by_name(tmp_path, config, message):
    with pytest.raises(BenchmarkError, match=message.replace('(', r'\(').replace(')', r'\)').replace('+', r'\+')):
        write_twin_config(config, str(tmp_path))
    assert not list(tmp_path.iterdir())


def _load_cli():
    return load_script('tools/benchmark_latency.py', 'benchmark_latency_cli')


def test_cli_twin_of_a_non_slab_config_is_an_error_naming_the_backbone(capsys, tmp_path):
    with pytest.raises(SystemExit) as exit_info:
        _load_cli().main([_config('mask_rcnn_pvt_t.py'), '--twin', '--out-dir', str(tmp_path)])
    assert exit_info.value.code == 2
    assert "backbone type 'PyramidVisionTransformer' has no LayerNorm + softmax twin" in capsys.readouterr().err


@pytest.mark.slow
def test_cli_twin_leads_the_report(mini_coco, tmp_path):
    """--twin times the derived twin first (the reference of every ratio), then the given model fused."""
    threads = torch.get_num_threads()
    try:
        summary = _load_cli().main([
            _config('mask_rcnn_slab_pvt_t.py'), '--twin', '--fuse', '--mini', mini_coco, '--part', 'backbone',
            '--device', 'cpu', '--threads', '1', '--num-images', '2', '--warmup', '0', '--out-dir', str(tmp_path)])
    finally:
        torch.set_num_threads(threads)
    names = [m['name'] for m in summary['models']]
    assert names == ['mask_rcnn_slab_pvt_t_twin', 'mask_rcnn_slab_pvt_t (fused)']
    assert summary['models'][0]['ratio_to_first']['paired']['median'] == 1.0
    assert summary['models'][1]['fused'] and not summary['models'][0]['fused']
    assert osp.isfile(tmp_path / 'mask_rcnn_slab_pvt_t_twin.py')
    assert 'mask_rcnn_slab_pvt_t_twin' in (tmp_path / 'latency.md').read_text().split('\n| mask_rcnn_slab_pvt_t')[0]
