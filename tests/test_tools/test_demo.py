"""The demo's whole chain (train with annealing, evaluate, fuse, evaluate fused,
benchmark, report) on a tiny schedule; `make demo` runs the same code for real."""
import json
import os.path as osp

import pytest

from mini_coco_demo import run_demo   # demo/ (on pytest's pythonpath)

PNG_MAGIC = b'\x89PNG\r\n\x1a\n'


@pytest.mark.slow
def test_demo_chain_writes_a_consistent_report(mini_coco, tmp_path):
    out = tmp_path / 'demo'
    report = run_demo(str(out), mini_coco, num_images=2, warmup=0, mini_coco_size=(8, 4),
                      cfg_options={'train_cfg.max_epochs': 1}, log=lambda *a: None, coco_size_images=1,
                      picture_images=2, picture_score_thr=0.0)
    # 8 train images at mini COCO's 2 per batch: 4 iterations, annealed to g = 0.
    assert report['iterations'] == 4 and report['final_g'] == 0.0 and report['val_images'] == 4
    for key in ('bbox_mAP', 'segm_mAP'):
        assert 0.0 <= report['metrics'][key] <= 1.0
        # Fusion is exact: the fused model scores the same on the val split.
        assert report['fused_metrics'][key] == pytest.approx(report['metrics'][key], abs=1e-3)
    assert report['fusion']['removed_norms'] == 24 and report['fusion']['features'] < 1e-4
    # Every speed table leads with the twin (LayerNorm + softmax, this code): what SLAB itself buys.
    names = [m['name'] for m in report['latency']]
    assert names == ['mask_rcnn_slab_pvt_t_twin (LayerNorm + softmax twin)', 'mask_rcnn_slab_pvt_t',
                     'mask_rcnn_slab_pvt_t (fused)']
    # The backbones at COCO test resolution: the first image resized to fit 1333x800, padded to 32.
    backbones = report['backbone_latency']
    h, w = backbones['input_hw']
    assert 768 <= min(h, w) <= 800 and 1000 <= max(h, w) <= 1344, (h, w)
    assert [b['name'] for b in backbones['models']] == [
        'PVT-T twin (this code, LayerNorm + softmax SDPA)', 'SLAB-PVT-T, trained (fused)', 'PVTv2-b1 (timm, SDPA)',
        "PVT-T (mmdet's implementation)"]
    assert backbones['models'][0]['ratio']['paired']['median'] == 1.0
    assert json.loads((out / 'report.json').read_text())['metrics'] == report['metrics']
    text = (out / 'report.md').read_text()
    assert 'Recipe: 2 images per batch' in text
    headings = [line for line in text.splitlines() if line.startswith('## ')]
    # The report leads with the COCO-resolution backbone comparison.
    assert headings[0] == '## Backbone speed at COCO test resolution (batch 1)' and f'the first is {h}x{w}' in text
    table = text[text.index('| backbone | mean (ms) | median (ms) | ratio to the twin |'):]
    assert table.splitlines()[2].startswith('| PVT-T twin (this code, LayerNorm + softmax SDPA) |')
    for heading in ('## Validation', '## Detections on val images', '## Training', '## Fusion', '## Latency',
                    '## Time per step'):
        assert heading in text
    for png in (out / 'training.png', out / 'benchmark' / 'latency.png', out / 'benchmark' / 'backbones_coco_size.png',
                out / 'detections.png'):
        assert png.read_bytes()[:8] == PNG_MAGIC
    assert_detections_picture_shows_the_models(report, out, mini_coco)
    assert osp.isfile(out / 'deploy' / 'mask_rcnn_slab_pvt_t_deploy.py')


def png_size(path):
    """(height, width) from a PNG's IHDR chunk."""
    import struct
    data = open(path, 'rb').read(24)
    width, height = struct.unpack('>II', data[16:24])
    return height, width


def assert_detections_picture_shows_the_models(report, out, mini_coco):
    """The grid is 2 rows (val images) x 3 columns (ground truth, trained, fused) of 256x320
    cells under a title strip, and what it records as drawn is what the trained model detects
    on those images; the fused model draws the same."""
    import torch
    from mmdet.apis import inference_detector

    from slab_mmdet import apis
    from demo_pictures import HEADER
    pictures = report['detections']
    assert pictures['columns'] == ['ground truth', 'trained (PRepBN, g = 0)', 'fused (no norm layers)']
    assert png_size(out / 'detections.png') == tuple(pictures['grid_hw']) == (HEADER + 2 * 256, 3 * 320)
    model = apis.load_detector(osp.join(osp.dirname(osp.dirname(osp.dirname(__file__))),
                                        'configs/mini/mask_rcnn_slab_pvt_t.py'), report['checkpoint'],
                               {'test_dataloader.dataset.data_root': mini_coco + '/'})
    for row in pictures['images']:
        want = inference_detector(model, row['image']).pred_instances[:20]
        trained, fused = row['detections']
        assert trained['labels'] == want.labels.tolist() and trained['labels']
        torch.testing.assert_close(torch.tensor(trained['boxes']), want.bboxes, rtol=0, atol=1e-4)
        assert fused['labels'] == trained['labels']
        torch.testing.assert_close(torch.tensor(fused['scores']), torch.tensor(trained['scores']), atol=1e-4,
                                   rtol=0)
