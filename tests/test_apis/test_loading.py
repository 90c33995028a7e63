"""The one way configs and detectors are loaded and checkpoints written (slab_mmdet.apis)."""
import os
import os.path as osp

import pytest
import torch

from slab_mmdet.apis import (CheckpointMismatch, detector_inputs, first_test_image, inference_pipeline, load_config,
                             load_detector, resolve_config_path, save_checkpoint)
from testing_utils import REPO_ROOT

PVT_T = osp.join(REPO_ROOT, 'configs/mini/mask_rcnn_pvt_t.py')
SLAB_PVT_T = osp.join(REPO_ROOT, 'configs/mini/mask_rcnn_slab_pvt_t.py')


def test_config_paths_resolve_or_are_refused_by_name():
    assert resolve_config_path(PVT_T) == PVT_T
    assert resolve_config_path('mmdet::_base_/default_runtime.py').endswith(
        'mmdet/.mim/configs/_base_/default_runtime.py')
    with pytest.raises(FileNotFoundError, match=r"config not found: 'nowhere\.py' \(no file nowhere\.py\)"):
        resolve_config_path('nowhere.py')
    with pytest.raises(FileNotFoundError, match="package 'nopkg' is not installed"):
        resolve_config_path('nopkg::x.py')


def test_cfg_options_are_merged_from_a_copy():
    options = {'model': {'test_cfg': {'rcnn': {'max_per_img': 7}}}, 'model.backbone': dict(_delete_=True, type='X')}
    before = repr(options)
    cfg = load_config(PVT_T, options)
    assert cfg.model.test_cfg.rcnn.max_per_img == 7 and cfg.model.backbone.type == 'X'
    assert repr(options) == before   # mmengine would have written 'model.backbone' into options['model']
    again = load_config(cfg)   # a loaded Config is copied, not shared
    again.model.backbone.type = 'Y'
    assert cfg.model.backbone.type == 'X'


def test_load_detector_loads_strictly_and_names_both_sides_of_a_mismatch(tmp_path):
    model = load_detector(SLAB_PVT_T)
    assert not model.training and model.cfg.filename == SLAB_PVT_T and model.checkpoint_meta == {}
    path = str(tmp_path / 'ckpt.pth')
    state = model.state_dict()
    save_checkpoint(dict(state_dict=state, meta=dict(dataset_meta=dict(classes=('a', 'b')), note=1)), path)
    loaded = load_detector(SLAB_PVT_T, path)
    assert loaded.checkpoint_meta['note'] == 1 and loaded.dataset_meta == dict(classes=('a', 'b'))
    for key in state:
        torch.testing.assert_close(loaded.state_dict()[key], state[key])
    partial = {k: v for k, v in state.items() if not k.startswith('roi_head.')}
    save_checkpoint(dict(state_dict=partial), path)
    with pytest.raises(CheckpointMismatch, match=rf'{path} does not fit the model of {SLAB_PVT_T} .*missing keys'):
        load_detector(SLAB_PVT_T, path)
    load_detector(SLAB_PVT_T, path, strict=False)   # a partial load, when asked for


def test_detector_inputs_are_one_preprocessed_image(mini_coco):
    model = load_detector(SLAB_PVT_T, cfg_options={'test_dataloader.dataset.data_root': mini_coco + '/'})
    image = first_test_image(model.cfg)
    assert image.startswith(mini_coco)
    data = detector_inputs(model, inference_pipeline(model.cfg), image)
    inputs = data['inputs']
    assert inputs.shape[:2] == (1, 3) and inputs.shape[2] % 32 == 0 and inputs.shape[3] % 32 == 0
    assert data['data_samples'][0].img_path == image


def test_first_test_image_says_how_to_give_one(tmp_path):
    cfg = load_config(PVT_T, {'test_dataloader.dataset.data_root': str(tmp_path) + '/'})
    with pytest.raises(FileNotFoundError, match='no test image: .* Pass an image with --image PATH'):
        first_test_image(cfg)


def test_checkpoints_are_written_atomically(tmp_path, monkeypatch):
    path = str(tmp_path / 'sub' / 'out.pth')
    save_checkpoint({'a': torch.ones(2)}, path)
    assert torch.load(path)['a'].tolist() == [1.0, 1.0]

    def broken_save(obj, f):
        with open(f, 'wb') as out:
            out.write(b'half')
        raise OSError('disk full')
    monkeypatch.setattr(torch, 'save', broken_save)
    with pytest.raises(OSError, match='disk full'):
        save_checkpoint({'a': torch.zeros(2)}, path)
    assert torch.load(path)['a'].tolist() == [1.0, 1.0]   # the old file is untouched
    assert os.listdir(osp.dirname(path)) == ['out.pth']    # no temporary file left
    with pytest.raises(IsADirectoryError, match='is a directory'):
        save_checkpoint({}, str(tmp_path))


class _RunsCode:
    def __init__(self, func, arg):
        self.func, self.arg = func, arg

    def __reduce__(self):
        return self.func, (self.arg,)


class _Arbitrary:
    pass


@pytest.mark.parametrize('payload, named, converter_refuses', [
    (_RunsCode(__import__('os').system, 'true'), r'(posix|nt)\.system', True),
    (_RunsCode(__import__('sys').exit, 1), r'sys\.exit', True),
    (_RunsCode(eval, '1'), 'eval', False),
    (_Arbitrary(), r'test_loading\._Arbitrary', False),
], ids=['os.system', 'sys.exit', 'eval', 'a class'])
def test_a_checkpoint_that_would_run_code_is_refused_in_one_wording(tmp_path, payload, named, converter_refuses):
    """Every route that reads a checkpoint (here load_checked, which mmengine's load_from and
    init_cfg use, and the converter's reader) names the global and says why the file is not
    loaded; none suggests turning weights-only loading off. (The converter reads other foreign
    globals as inert records, running nothing; the os/sys modules it refuses too.)"""
    import re

    from slab_mmdet.apis.checkpoint import UnsafeCheckpoint, load_checked
    from slab_mmdet.converters import ConversionError, load_checkpoint_safely
    path = str(tmp_path / 'payload.pth')
    torch.save({'state_dict': {'w': torch.ones(1)}, 'meta': {'x': payload}}, path)
    with pytest.raises(UnsafeCheckpoint) as info:
        load_checked(path)
    messages = [str(info.value)]
    if converter_refuses:
        with pytest.raises(ConversionError) as converter_info:
            load_checkpoint_safely(path)
        messages.append(str(converter_info.value))
    else:
        obj, foreign = load_checkpoint_safely(path)   # inert records, no code run
        assert foreign and torch.equal(obj['state_dict']['w'], torch.ones(1))
    for message in messages:
        assert re.match(rf'{re.escape(path)} is not loaded: it pickles [\w.]*{named}, which only code can rebuild, '
                        r'and loading it would run that code\. No code from the checkpoint was run\.', message), message
        assert 'weights_only=False' not in message and 'weights_only' not in message
