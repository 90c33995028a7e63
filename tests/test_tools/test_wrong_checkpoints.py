"""A checkpoint that cannot be the config's model is refused with a message naming both sides,
in every way a user gives one (our tools/test.py and train.py's load_from, mmdet's
tools/test.py, DetInferencer); a file that holds no checkpoint too; a detector whose backbone
fits but whose heads differ still loads, with mmengine's report."""
import os.path as osp

import pytest
import torch

from testing_utils.helpers import REPO_ROOT, annealed_mask_rcnn, run_python

pytestmark = pytest.mark.usefixtures('quiet_mmengine_logger')
PVT = 'configs/mini/mask_rcnn_slab_pvt_t.py'
SWIN = 'configs/mini/mask_rcnn_slab_swin_t.py'
BOTH = r'holds another backbone, SLABSwinTransformer \(depths 2-2-6-2, widths 96-192-384-768, attention LLSS\), ' \
       r'but this model is SLABPyramidVisionTransformer \(depths 2-2-2-2, widths 64-128-320-512, attention LLLL\)'


@pytest.fixture(scope='module')
def swin_checkpoint(tmp_path_factory):
    path = tmp_path_factory.mktemp('wrong') / 'swin.pth'
    torch.save({'state_dict': annealed_mask_rcnn(SWIN).state_dict(), 'meta': {}}, path)
    return str(path)


def data_root(mini_coco):
    return [f'test_dataloader.dataset.data_root={mini_coco}/', f'test_evaluator.ann_file={mini_coco}/'
            'annotations/instances_val.json']


@pytest.mark.slow
def test_our_test_tool_and_train_load_from_refuse_another_architecture(swin_checkpoint, mini_coco, tmp_path):
    import re
    test = run_python(['tools/test.py', PVT, swin_checkpoint, '--work-dir', str(tmp_path / 't'), '--cfg-options']
                      + data_root(mini_coco))
    assert test.returncode != 0 and re.search(BOTH, test.stderr) and 'Traceback' not in test.stderr, test.stderr[-800:]
    train = run_python(['tools/train.py', PVT, '--work-dir', str(tmp_path / 'r'), '--cfg-options',
                        f'load_from={swin_checkpoint}', 'train_cfg.max_epochs=1',
                        f'train_dataloader.dataset.data_root={mini_coco}/',
                        f'val_dataloader.dataset.data_root={mini_coco}/',
                        f'val_evaluator.ann_file={mini_coco}/annotations/instances_val.json'])
    assert train.returncode != 0 and re.search(BOTH, train.stderr) and 'Traceback' not in train.stderr, \
        train.stderr[-800:]


@pytest.mark.slow
def test_mmdets_test_tool_refuses_another_architecture(swin_checkpoint, mini_coco, tmp_path):
    import re

    import mmdet
    tool = osp.join(osp.dirname(mmdet.__file__), '.mim', 'tools', 'test.py')
    proc = run_python([tool, osp.join(REPO_ROOT, PVT), swin_checkpoint, '--work-dir', str(tmp_path),
                       '--cfg-options'] + data_root(mini_coco))
    assert proc.returncode != 0 and re.search(BOTH, proc.stderr), proc.stderr[-800:]


def test_the_inferencer_refuses_another_architecture(swin_checkpoint):
    from mmdet.apis import DetInferencer
    with pytest.raises(ValueError, match=BOTH):
        DetInferencer(model=osp.join(REPO_ROOT, PVT), weights=swin_checkpoint, device='cpu', show_progress=False)


@pytest.mark.parametrize('content, message', [
    ('tensor', r'holds a Tensor, not a state dict or a checkpoint'),
    ('list', r'holds a list, not a state dict or a checkpoint'),
    ('text', r'is not a checkpoint that torch\.save wrote \(torch\.load: '),
])
def test_a_file_that_holds_no_checkpoint_is_refused_by_name(content, message, tmp_path):
    from mmdet.apis import DetInferencer
    path = tmp_path / 'model.pth'
    if content == 'text':
        path.write_text('not a checkpoint\n')
    else:
        torch.save(torch.zeros(3) if content == 'tensor' else [torch.zeros(3)], path)
    with pytest.raises(ValueError, match=message):
        DetInferencer(model=osp.join(REPO_ROOT, PVT), weights=str(path), device='cpu', show_progress=False)


@pytest.mark.slow
def test_our_test_tool_names_a_file_that_holds_no_checkpoint(tmp_path, mini_coco):
    path = tmp_path / 'model.pth'
    torch.save(torch.zeros(3), path)
    proc = run_python(['tools/test.py', PVT, str(path), '--work-dir', str(tmp_path / 't'), '--cfg-options']
                      + data_root(mini_coco))
    assert proc.returncode != 0 and 'holds a Tensor, not a state dict or a checkpoint' in proc.stderr
    assert 'Traceback' not in proc.stderr


def test_other_heads_on_the_same_backbone_load_with_a_report(tmp_path, capsys):
    """The backbone fits (the same architecture), the heads were trained for 6 classes and the
    config has 80: it loads, the head mismatches reported by mmengine, the backbone loaded."""
    from mmengine.logging import MMLogger

    from slab_mmdet import apis
    trained = annealed_mask_rcnn(PVT, seed=1)
    path = str(tmp_path / 'six_classes.pth')
    torch.save({'state_dict': trained.state_dict()}, path)
    options = {'model.roi_head.bbox_head.num_classes': 80, 'model.roi_head.mask_head.num_classes': 80}
    MMLogger.get_current_instance().setLevel('WARNING')
    model = apis.load_detector(PVT, path, options, strict=False)
    report = capsys.readouterr()
    assert 'size mismatch for roi_head.bbox_head.fc_cls.weight' in report.out + report.err
    for key, value in trained.backbone.state_dict().items():
        assert torch.equal(model.backbone.state_dict()[key], value), key
