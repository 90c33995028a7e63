"""An image's detector losses do not depend on the other images of its batch.

The failure this pins (docs/prepbn.md, "The anneal at two images per batch"): the SLAB
backbones returned channels-last views for batches of two or more images, mmcv's CPU
RoIAlign read them as NCHW, and the RoI heads trained on corrupted features at two
images per batch while one image per batch was right. Here the same image twice in a
batch must give the RoI features and the RoI-head losses of that image alone (sampling
made deterministic), with per-image BatchNorm statistics so that the backbone itself is
per image.
"""
import copy
import os.path as osp

import pytest
import torch
from mmdet.registry import MODELS
from mmdet.structures import DetDataSample
from mmdet.structures.bbox import bbox2roi
from mmdet.structures.mask import BitmapMasks
from mmengine.config import Config
from mmengine.structures import InstanceData

from slab_mmdet.models.layers import iter_prepbn
from testing_utils import REPO_ROOT

CONFIGS = ['configs/mini/mask_rcnn_slab_pvt_t.py', 'configs/mini/mask_rcnn_slab_swin_t.py']
pytestmark = pytest.mark.usefixtures('one_torch_thread')


def detector(config):
    cfg = Config.fromfile(osp.join(REPO_ROOT, config))
    cfg.model.backbone.norm_cfg.stats = 'image'
    cfg.model.backbone.drop_path_rate = 0.0
    cfg.model.train_cfg.rpn.sampler = dict(type='PseudoSampler')
    cfg.model.train_cfg.rcnn.sampler = dict(type='PseudoSampler')
    torch.manual_seed(0)
    model = MODELS.build(cfg.model)
    model.init_weights()
    for _, m in iter_prepbn(model):
        m.set_g(0.5)   # mid-anneal: both branches of every PRepBN run
    return model.train()


def sample(hw=(192, 256)):
    s = DetDataSample(metainfo=dict(img_shape=hw, ori_shape=hw, pad_shape=hw, batch_input_shape=hw,
                                    scale_factor=(1.0, 1.0)))
    boxes = torch.tensor([[20., 30., 120., 150.], [100., 40., 220., 180.]])
    masks = torch.zeros(2, *hw, dtype=torch.uint8)
    for i, (x0, y0, x1, y1) in enumerate(boxes.int().tolist()):
        masks[i, y0:y1, x0:x1] = 1
    s.gt_instances = InstanceData(bboxes=boxes, labels=torch.tensor([1, 3]), masks=BitmapMasks(masks.numpy(), *hw))
    return s


@pytest.mark.parametrize('config', CONFIGS, ids=['slab_pvt_t', 'slab_swin_t'])
def test_an_images_roi_features_and_losses_do_not_depend_on_its_batch(config):
    model = detector(config)
    image = torch.randn(1, 3, 192, 256, generator=torch.Generator().manual_seed(1))
    one, two = image, torch.cat([image, image])
    with torch.no_grad():
        feats_one, feats_two = model.extract_feat(one), model.extract_feat(two)
        rois = torch.tensor([[10., 10., 90., 120.], [60., 20., 200., 170.], [0., 0., 256., 192.]])
        roi_one = model.roi_head.bbox_roi_extractor(feats_one[:4], bbox2roi([rois]))
        roi_two = model.roi_head.bbox_roi_extractor(feats_two[:4], bbox2roi([rois, rois]))
    torch.testing.assert_close(roi_two[:3], roi_one, rtol=1e-4, atol=1e-4 * float(roi_one.abs().max()))
    torch.testing.assert_close(roi_two[3:], roi_one, rtol=1e-4, atol=1e-4 * float(roi_one.abs().max()))

    s = sample()
    with torch.no_grad():
        losses_one = model.loss(one, [s])
        losses_two = model.loss(two, [s, copy.deepcopy(s)])
    for key in ('loss_cls', 'loss_bbox', 'loss_mask'):
        torch.testing.assert_close(losses_two[key], losses_one[key], rtol=1e-3, atol=1e-5, msg=key)
