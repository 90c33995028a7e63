"""Detectors built from configs with their checkpoints, and one image through a config's
test pipeline into the inputs a detector takes."""
import copy

import torch
from mmengine.registry import init_default_scope

from .config import load_config


class CheckpointMismatch(ValueError):
    """A checkpoint whose weights do not fit the model of a config; the message names both."""


def transform_name(transform_cfg):
    """The class name of a transform config's ``type`` (a string, a dotted string or a class)."""
    t = transform_cfg.get('type', '')
    return (t if isinstance(t, str) else getattr(t, '__name__', str(t))).split('.')[-1]


def load_detector(config, checkpoint=None, cfg_options=None, device='cpu', strict=True, init_weights=False):
    """The model of ``config`` on ``device`` in eval mode, with ``checkpoint`` loaded.

    Args:
        config (str | Config): A config path, ``package::path`` or a loaded Config (copied).
        checkpoint (str | None): Weights to load. None: the weights of construction
            (random), or mmdet's initialisation with ``init_weights``; nothing is
            downloaded (the backbone's pretrained ``init_cfg`` is dropped).
        cfg_options (dict | None): Merged into a copy of the config.
        device (str): Where the model goes.
        strict (bool): Every weight of the model must be in the checkpoint and every
            checkpoint weight must fit (the backbones also refuse checkpoints of other
            architectures in any case).
        init_weights (bool): Call ``model.init_weights()`` (before loading).

    The model carries ``model.cfg`` (the merged config) and ``model.checkpoint_meta``
    (the checkpoint's ``meta``, ``{}`` without one); ``dataset_meta`` comes from the
    checkpoint where it has one.

    Raises:
        FileNotFoundError: the config does not exist.
        CheckpointMismatch: the checkpoint's keys do not fit (strict), naming both.
    """
    from mmdet.registry import MODELS
    from mmengine.model.utils import revert_sync_batchnorm

    cfg = load_config(config, cfg_options)
    init_default_scope(cfg.get('default_scope', 'mmdet') or 'mmdet')
    backbone = cfg.model.get('backbone')
    if backbone is not None and 'init_cfg' in backbone:
        backbone.init_cfg = None   # the checkpoint has all the weights, or the weights are random
    model = revert_sync_batchnorm(MODELS.build(cfg.model))
    if init_weights:
        model.init_weights()
    model.checkpoint_meta = {}
    if checkpoint:
        load_weights(model, checkpoint, strict, source=config if isinstance(config, str) else cfg.filename)
    model.cfg = cfg
    return model.to(device).eval()


def load_weights(model, checkpoint, strict=True, source=None):
    """Load ``checkpoint`` into ``model`` (on the CPU first), as :func:`load_detector` does:
    ``model.checkpoint_meta`` and ``dataset_meta`` are taken from it; with ``strict`` a
    mismatch is a :class:`CheckpointMismatch` naming the checkpoint and ``source`` (the
    config)."""
    from mmengine.runner import load_checkpoint
    try:
        ckpt = load_checkpoint(model, checkpoint, map_location='cpu', strict=strict)
    except RuntimeError as e:   # mmengine's strict-loading report: keys that do not fit
        lines = [line.strip() for line in str(e).splitlines() if line.strip()]
        raise CheckpointMismatch(f'{checkpoint} does not fit the model of {source or "the config"} (was it trained '
                                 f'with another config?): ' + ' '.join(lines[:3])[:600]) from e
    except ValueError as e:   # a backbone's refusal (checkpoint_fit), which names both sides and the fix
        raise CheckpointMismatch(f'{checkpoint} does not fit the model of {source or "the config"}: {e}') from e
    model.checkpoint_meta = dict(ckpt.get('meta') or {}) if isinstance(ckpt, dict) else {}
    if 'dataset_meta' in model.checkpoint_meta:
        model.dataset_meta = model.checkpoint_meta['dataset_meta']
    return model


def pipeline_steps(cfg):
    """The config's test pipeline (a list of transform configs, copied) without its annotation
    loaders, which prediction does not use."""
    from mmdet.utils import get_test_pipeline_cfg
    return [t for t in copy.deepcopy(get_test_pipeline_cfg(cfg)) if not transform_name(t).endswith('Annotations')]


def inference_pipeline(cfg):
    """:func:`pipeline_steps` composed: it takes ``dict(img_path=..., img_id=...)``, as mmdet's
    inference does, so any image file goes through exactly the resizing and packing of the
    config's evaluation."""
    from mmcv.transforms import Compose
    return Compose(pipeline_steps(cfg))


def detector_inputs(model, pipeline, image, img_id=0):
    """One image (a file path) through ``pipeline``, collated and preprocessed by the model's
    data preprocessor: the ``dict(inputs=..., data_samples=...)`` that
    ``model(**data, mode='predict')`` takes, on the model's device (no autograd)."""
    from mmengine.dataset import pseudo_collate
    data = pipeline(dict(img_path=image, img_id=img_id))
    with torch.no_grad():
        return model.data_preprocessor(pseudo_collate([data]), False)


def first_test_image(cfg):
    """The path of the first image of the config's test dataset."""
    from mmdet.registry import DATASETS
    try:
        dataset = DATASETS.build(copy.deepcopy(cfg.test_dataloader.dataset))
        return dataset.get_data_info(0)['img_path']
    except (FileNotFoundError, IndexError) as e:
        raise FileNotFoundError(
            f'no test image: the config\'s test dataset could not be read ({e}). Pass an image with --image PATH') \
            from e
