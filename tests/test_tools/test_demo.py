"""The demo's whole chain (train with annealing, evaluate, fuse, evaluate fused,
benchmark, report) on a tiny schedule; `make demo` runs the same code for real."""
import json
import os.path as osp

import pytest

from slab_mmdet.demo import run_demo

PNG_MAGIC = b'\x89PNG\r\n\x1a\n'


@pytest.mark.slow
def test_demo_chain_writes_a_consistent_report(mini_coco, tmp_path):
    out = tmp_path / 'demo'
    report = run_demo(str(out), mini_coco, num_images=2, warmup=0, mini_coco_size=(8, 4),
                      cfg_options={'train_cfg.max_epochs': 1}, log=lambda *a: None, coco_size_images=1)
    # 8 train images at mini COCO's 2 per batch: 4 iterations, annealed to g = 0.
    assert report['iterations'] == 4 and report['final_g'] == 0.0 and report['val_images'] == 4
    for key in ('bbox_mAP', 'segm_mAP'):
        assert 0.0 <= report['metrics'][key] <= 1.0
        # Fusion is exact: the fused model scores the same on the val split.
        assert report['fused_metrics'][key] == pytest.approx(report['metrics'][key], abs=1e-3)
    assert report['fusion']['removed_norms'] == 24 and report['fusion']['features'] < 1e-4
    names = [m['name'] for m in report['latency']]
    assert len(names) == 3 and names[1].endswith('(fused)') and names[2].endswith('(LayerNorm baseline)')
    # The backbones at COCO test resolution: the first image resized to fit 1333x800, padded to 32.
    backbones = report['backbone_latency']
    h, w = backbones['input_hw']
    assert 768 <= min(h, w) <= 800 and 1000 <= max(h, w) <= 1344, (h, w)
    assert [b['name'] for b in backbones['models']] == [
        'mask_rcnn_slab_pvt_t (fused)', 'mask_rcnn_pvt_t (LayerNorm baseline)', 'PVTv2-b1 (mmdet)']
    assert json.loads((out / 'report.json').read_text())['metrics'] == report['metrics']
    text = (out / 'report.md').read_text()
    assert 'Recipe: 2 images per batch' in text
    headings = [line for line in text.splitlines() if line.startswith('## ')]
    # The report leads with the COCO-resolution backbone comparison.
    assert headings[0] == '## Backbone speed at COCO test resolution (batch 1)' and f'the first is {h}x{w}' in text
    for heading in ('## Validation', '## Training', '## Fusion', '## Latency', '## Time per step'):
        assert heading in text
    for png in (out / 'training.png', out / 'benchmark' / 'latency.png', out / 'benchmark' / 'backbones_coco_size.png'):
        assert png.read_bytes()[:8] == PNG_MAGIC
    assert osp.isfile(out / 'deploy' / 'mask_rcnn_slab_pvt_t_deploy.py')
