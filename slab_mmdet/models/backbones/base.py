"""What SLAB-PVT and SLAB-Swin have in common as mmdet backbones: output norms,
frozen stages, ``norm_eval``, weight initialisation / pretrained loading, and the
switch to the fused deploy structure."""
import inspect
import math

import torch
import torch.nn as nn
from mmengine.logging import MMLogger
from mmengine.model import BaseModule
from mmengine.model.weight_init import trunc_normal_
from mmengine.runner.checkpoint import CheckpointLoader, load_state_dict
from torch.nn.modules.batchnorm import _BatchNorm

from ..layers.fusion import FusionError, fold_into_next, norm_affine, norm_to_channel_affine
from ..layers.norms import FOLDABLE_NORM_CFG_TYPES, norm_remainder
from ..layers.prepbn import PRepBN, RepBN
from ..layers.transformer import build_token_norm, check_foldable_norm_cfg, nlc_to_nchw
from .arguments import (check_attn_types, check_choice, check_drop_path_rate, check_frozen_stages, check_init_cfg,
                        check_norms, check_positive_int, check_probability, checked_out_indices,
                        resolved_out_norm_cfg)
from .checkpoint_fit import check_checkpoint_fits, resize_tables_to, state_dict_in, strip_to_backbone


DEFAULT_ARCH_NAME = 'tiny'   # the default ``arch`` of every SLAB backbone


class SLABBackboneBase(BaseModule):
    """Base class of the SLAB backbones.

    Subclasses define ``arch_zoo`` (named archs, 'tiny' among them), ``ARCH_KEYS`` (the keys
    of an arch dict) and ``ARCH_STAGE_KEYS`` (those with one entry per stage, 'depths' among
    them), build their stages in ``self.stages`` from ``self.arch`` (with
    ``self.block_drop_path``, the rate of each block), then call :meth:`_init_outputs`, and
    implement ``forward``, the classmethod ``stage_channels(arch)`` and ``_stem_modules()``
    (what ``frozen_stages=0`` freezes); a subclass that lacks one is refused when it is
    created (``REQUIRED_CLASS_ATTRIBUTES``, ``REQUIRED_METHODS``). Fusion reaches every block
    by mmpretrain's convention: a child with ``switch_to_deploy(name)`` folds itself.

    Args (shared by the subclasses, which take them as keyword arguments):
        arch (str | dict): A name in the subclass's ``arch_zoo`` or an arch dict; default
            'tiny' for both backbones.
        attn_types (str): One letter per stage: 'L' for simplified linear attention,
            'S' for softmax attention.
        norm_cfg (dict): The token norm everywhere in the backbone.
        in_channels (int): Image channels, >= 1. Default 3.
        patch_size (int): Stride of the first patch embedding, >= 1. Default 4.
        qkv_bias (bool): Bias in the query/key/value projections. Default True.
        drop_rate (float): Dropout after the patch embedding / positional embeddings and
            in MLPs and projections. Default 0.
        attn_drop_rate (float): Attention dropout ('S' stages only; SLA has no attention
            matrix to drop). Default 0.
        drop_path_rate (float): Stochastic depth, in [0, 1), rising linearly over the
            blocks. Default 0.1.
        kernel_size (int): Kernel of SLA's depth-wise conv on V (odd). Default 5.
        act_cfg (dict): MLP activation. Default GELU.
        with_cp (bool): Activation checkpointing in every block.
        init_cfg (dict | None): ``dict(type='Pretrained', checkpoint=...)`` or None.
        out_indices (Sequence[int]): Stages whose outputs are returned.
        frozen_stages (int): -1 freezes nothing; 0 the stem (patch embedding);
            k >= 1 the stem and stages 0..k-1 with their output norms (eval mode,
            no gradients).
        norm_eval (bool): Keep every BatchNorm (inside RepBN/PRepBN too) in eval mode
            during training (frozen running statistics), as the authors' detection
            backbones and mmdet's ResNets do. The statistics must have been estimated
            (loaded from a checkpoint, or by ``recalibrate_bn``): training a
            BatchNorm branch whose statistics were never estimated is an error naming
            the layer. Output norms follow ``out_norm_cfg``.
        out_norm_cfg (dict | None): The norms of the stage outputs ``norm{i}``, which
            are new in detection (no ImageNet checkpoint has them). None (default):
            ``norm_cfg``, except with ``norm_eval=True``, where frozen statistics of
            layers that never saw data would be wrong: a LayerNorm with ``norm_cfg``'s
            eps, as in the authors' detection backbones. A LayerNorm output norm
            cannot be folded and stays in the deployed model.
        deploy (bool): Build the fused structure that :meth:`switch_to_deploy` leaves:
            no norm layers (they are folded into the neighbouring linear/conv
            layers), so a fused checkpoint loads strictly.
        out_norms_folded (bool): Deploy only: the output norms were folded into the
            layers that read the outputs (:meth:`fold_output_norms_into`, which
            ``fuse_detector`` calls with FPN's lateral convs), so none is built;
            otherwise each stays as a fixed per-channel :class:`ChannelAffine` (for DyT its
            tanh and affine, :class:`TanhAffine`); folded, a DyT leaves its tanh.
    """

    def __init__(self, arch, attn_types, norm_cfg, in_channels=3, patch_size=4, qkv_bias=True, drop_rate=0.,
                 attn_drop_rate=0., drop_path_rate=0.1, kernel_size=5, act_cfg=dict(type='GELU'),
                 out_indices=(0, 1, 2, 3), frozen_stages=-1, norm_eval=False, out_norm_cfg=None, with_cp=False,
                 deploy=False, out_norms_folded=False, init_cfg=None):
        super().__init__(init_cfg=init_cfg)
        name = type(self).__name__
        self.arch = self.resolve_arch(arch)
        num_stages = len(self.arch['depths'])
        check_positive_int(name, 'in_channels', in_channels)
        check_positive_int(name, 'patch_size', patch_size)
        check_probability(name, 'drop_rate', drop_rate)
        check_probability(name, 'attn_drop_rate', attn_drop_rate)
        check_attn_types(name, attn_types, num_stages)
        out_indices = checked_out_indices(name, out_indices, num_stages)
        check_frozen_stages(name, frozen_stages, num_stages)
        check_norms(name, norm_cfg, deploy, out_norms_folded)
        check_init_cfg(name, init_cfg)
        out_norm_cfg = resolved_out_norm_cfg(name, out_norm_cfg, norm_cfg, norm_eval, out_norms_folded)
        self.block_drop_path = self.drop_path_rates(drop_path_rate, self.arch['depths'])
        self.in_channels, self.patch_size, self.qkv_bias = in_channels, patch_size, qkv_bias
        self.drop_rate, self.attn_drop_rate, self.kernel_size = drop_rate, attn_drop_rate, kernel_size
        self.act_cfg, self.with_cp = act_cfg, with_cp
        self.attn_types = attn_types
        self.out_indices = out_indices
        self.frozen_stages = frozen_stages
        self.norm_eval = norm_eval
        self.norm_cfg = norm_cfg
        self.out_norm_cfg = out_norm_cfg
        self.out_norms_foldable = out_norm_cfg.get('type') in FOLDABLE_NORM_CFG_TYPES
        self.deploy = deploy
        self.out_norms_folded = out_norms_folded
        self._estimated_bns = set()  # ids of the frozen BatchNorms found estimated

    # --- outputs ---------------------------------------------------------------------------
    def _init_outputs(self, stage_channels):
        """Create the output norms ``norm{i}`` for the stages in ``out_indices``."""
        self.num_features = list(stage_channels)
        for i in self.out_indices:
            deploy = self.deploy and self.out_norms_foldable
            self.add_module(f'norm{i}', build_token_norm(self.out_norm_cfg, stage_channels[i], deploy,
                                                         folded=self.out_norms_folded))

    def _output(self, i, tokens, hw_shape):
        """Stage i's output norm applied to its tokens, as a (B, C, H, W) map."""
        # Contiguous NCHW, as mmdet's backbones return: for a batch of more than one image the
        # transposed view is channels-last, the FPN's convs keep that layout, and mmcv's CPU
        # RoIAlign reads channels-last maps as if they were NCHW, i.e. wrong RoI features for
        # every image at 2+ images per batch (docs/prepbn.md: what made the anneal diverge).
        return nlc_to_nchw(getattr(self, f'norm{i}')(tokens), hw_shape).contiguous()

    # --- architecture --------------------------------------------------------------------
    DEFAULT_ARCH = DEFAULT_ARCH_NAME
    arch_zoo = {}
    ARCH_KEYS = ()
    ARCH_STAGE_KEYS = ()
    # The smallest input side beyond the stride that a subclass needs (SLAB-PVT: larger with a
    # large spatial reduction of keys and values); read by coarsest_stride and the ONNX export.
    min_input_size = 0
    # What a subclass must define, checked when it is created (a missing piece would otherwise
    # surface only when a config builds it, or when frozen_stages or fusion first needs it).
    REQUIRED_CLASS_ATTRIBUTES = ('arch_zoo', 'ARCH_KEYS', 'ARCH_STAGE_KEYS')
    REQUIRED_METHODS = ('forward', 'stage_channels', '_stem_modules')

    def __init_subclass__(cls, **kwargs):
        super().__init_subclass__(**kwargs)
        missing = [a for a in cls.REQUIRED_CLASS_ATTRIBUTES if not getattr(cls, a)]
        missing += [f'{m}()' for m in cls.REQUIRED_METHODS
                    if getattr(cls, m, None) is None or getattr(cls, m) is getattr(SLABBackboneBase, m, None)]
        if missing:
            raise TypeError(f'{cls.__name__} does not define {", ".join(missing)}, which every SLABBackboneBase '
                            f'subclass must (see its docstring)')
        if DEFAULT_ARCH_NAME not in cls.arch_zoo:
            raise TypeError(f'{cls.__name__}.arch_zoo has no {DEFAULT_ARCH_NAME!r} arch (the default of every '
                            f'SLAB backbone), only {sorted(cls.arch_zoo)}')
        if not set(cls.ARCH_STAGE_KEYS) <= set(cls.ARCH_KEYS) or 'depths' not in cls.ARCH_STAGE_KEYS:
            raise TypeError(f"{cls.__name__}: ARCH_STAGE_KEYS {cls.ARCH_STAGE_KEYS} must include 'depths' and be "
                            f'among ARCH_KEYS {cls.ARCH_KEYS}')

    @classmethod
    def resolve_arch(cls, arch):
        """The arch dict of ``arch`` (a name in ``arch_zoo`` or a dict with exactly ``ARCH_KEYS``), checked."""
        keys, per_stage = tuple(cls.ARCH_KEYS), tuple(cls.ARCH_STAGE_KEYS)
        if isinstance(arch, str):
            check_choice('arch', arch, cls.arch_zoo)
            return cls.arch_zoo[arch]
        if not isinstance(arch, dict) or set(arch) != set(keys):
            raise ValueError(f'arch must be one of {sorted(cls.arch_zoo)} or a dict with exactly the keys {keys}, '
                             f'got {arch!r}')
        if any(not isinstance(arch[k], (list, tuple)) for k in per_stage) or \
                len({len(arch[k]) for k in per_stage}) != 1:
            raise ValueError(f"arch: {', '.join(per_stage)} must all have one entry per stage "
                             f"({' and '.join(per_stage)} of equal length), got {arch!r}")
        return {k: tuple(arch[k]) if k in per_stage else int(arch[k]) for k in keys}

    @classmethod
    def default_argument(cls, name):
        """The default of the constructor argument ``name`` (one source: the signature)."""
        return inspect.signature(cls.__init__).parameters[name].default

    @classmethod
    def twin_cfg(cls, backbone_cfg):
        """The config of this backbone's LayerNorm + softmax twin: the same arch and
        everything else of ``backbone_cfg`` (a dict of this class's arguments, ``type``
        included), with softmax attention in every stage, LayerNorm everywhere (the eps of
        ``backbone_cfg``'s norm), LayerNorm output norms, not deployed and no pretrained
        weights. What SLAB (or PRepBN) itself buys is measured against it."""
        cfg = {k: v for k, v in dict(backbone_cfg).items()
               if k not in ('out_norm_cfg', 'deploy', 'out_norms_folded', 'init_cfg')}
        num_stages = len(cls.resolve_arch(cfg.get('arch', cls.DEFAULT_ARCH))['depths'])
        default_norm = cls.default_argument('norm_cfg')
        eps = dict(cfg.get('norm_cfg') or default_norm).get('eps', default_norm.get('eps', 1e-6))
        cfg.update(attn_types='S' * num_stages, norm_cfg=dict(type='LN', eps=eps), init_cfg=None)
        return cfg

    @classmethod
    def drop_path_rates(cls, drop_path_rate, depths):
        """Stochastic depth per block, rising linearly from 0 to ``drop_path_rate`` over all blocks."""
        check_drop_path_rate(cls.__name__, drop_path_rate)
        return [r.item() for r in torch.linspace(0, drop_path_rate, sum(depths))]

    # --- training modes --------------------------------------------------------------------
    def _frozen_modules(self):
        """The modules that ``frozen_stages`` freezes: the stem, then stages 0..k-1 with their output norms."""
        if self.frozen_stages < 0:
            return []
        modules = list(self._stem_modules())
        for i in range(self.frozen_stages):
            modules.append(self.stages[i])
            if i in self.out_indices:
                modules.append(getattr(self, f'norm{i}'))
        return modules

    def _freeze_stages(self):
        for m in self._frozen_modules():
            m.eval()
            for p in m.parameters():
                p.requires_grad = False

    def train(self, mode=True):
        super().train(mode)
        self._freeze_stages()
        if mode and self.norm_eval:
            for m in self.modules():
                if isinstance(m, _BatchNorm):
                    m.eval()
        return self

    def _check_forward(self, x):
        """What every forward refuses before it starts: an empty batch, training a fused
        model, and (norm_eval) frozen statistics that were never estimated."""
        name = type(self).__name__
        if x.dim() != 4 or x.shape[0] == 0:
            raise ValueError(f'{name}: expects a non-empty (B, C, H, W) batch, got shape {tuple(x.shape)}')
        if self.training and self.deploy and torch.is_grad_enabled():
            raise RuntimeError(f'{name} is built with deploy=True (fused: its norms are folded into fixed '
                               f'weights), which is for inference only; train the unfused model '
                               f'(deploy=False) and fuse it afterwards with tools/fuse_norms.py')
        if self.training and self.norm_eval:
            self._check_frozen_statistics()
        if self.training and torch.is_grad_enabled() and not self.norm_eval:
            self._check_batch_statistics(x)

    @property
    def coarsest_stride(self):
        """The largest stride at which a norm sees tokens (the last stage; for SLAB-PVT also a
        large spatial reduction of keys and values)."""
        return max(self.min_input_size, self.patch_size * 2 ** (len(self.arch['depths']) - 1))

    def _check_batch_statistics(self, x):
        """Training through a BatchNorm (a RepBN, or a PRepBN with g < 1) needs 2 or more values
        per channel at every norm; a batch of one small image leaves one token at the coarsest
        stride. Refuse it naming the smallest input that trains (torch's own error names none)."""
        stride = self.coarsest_stride
        b, _, h, w = x.shape
        per_image = math.ceil(h / stride) * math.ceil(w / stride)
        if b * per_image >= 2 and (per_image >= 2 or not self._has_per_image_bn()):
            return
        inside_prepbn = {id(m.repbn) for m in self.modules() if isinstance(m, PRepBN)}
        if not any((isinstance(m, PRepBN) and m.g_value < 1) or (isinstance(m, RepBN) and id(m) not in inside_prepbn)
                   for m in self.modules()):
            return   # only LayerNorms run (g = 1 everywhere): no batch statistics
        per_image_stats = self._has_per_image_bn()
        raise ValueError(
            f'{type(self).__name__}: training through BatchNorm (RepBN, or PRepBN with g < 1) needs at least 2 '
            f'values per channel at every norm, but {"each image" if per_image_stats else f"a batch of {b}"} of '
            f'{h}x{w} pixels leaves {per_image if per_image_stats else b * per_image} token(s) at stride {stride}. '
            f'Train on inputs of at least {stride}x{2 * stride} (or {2 * stride}x{stride}) pixels'
            + ('' if per_image_stats else ', or on 2 or more images per batch'))

    def _has_per_image_bn(self):
        return any(isinstance(m, RepBN) and m.stats == 'image' for m in self.modules())

    def _check_frozen_statistics(self):
        """With ``norm_eval``, refuse to train through a BatchNorm whose frozen statistics were
        never estimated (still the constructor's mean 0 / var 1): its output would be
        un-normalised features. A PRepBN at g = 1 does not use its BatchNorm yet."""
        checked = self._estimated_bns
        for name, m in self.named_modules():
            if isinstance(m, PRepBN):
                if m.g_value == 1.0:
                    continue
                bn, name = m.repbn.bn, f'{name}.repbn.bn'
            elif isinstance(m, _BatchNorm) and not name.endswith('repbn.bn'):
                bn = m
            else:
                continue
            if id(bn) in checked or bn.training or not bn.track_running_stats:
                continue
            if bool((bn.running_mean == 0).all()) and bool((bn.running_var == 1).all()):
                raise RuntimeError(
                    f'{type(self).__name__}: norm_eval=True keeps the BatchNorm statistics frozen, but '
                    f'{name} has never estimated them (running mean 0, var 1, as constructed), so it would '
                    f'not normalise. Load a checkpoint that has them (e.g. tools/convert_checkpoint.py of '
                    f'annealed ImageNet weights), estimate them first (tools/recalibrate_bn.py), or train '
                    f'with norm_eval=False.')
            checked.add(id(bn))

    # --- weights ---------------------------------------------------------------------------
    def init_weights(self):
        logger = MMLogger.get_current_instance()
        if self.init_cfg is None:
            logger.info(f'{type(self).__name__}: no pretrained weights, training from scratch')
            self._init_from_scratch()
        else:
            self._init_from_scratch()  # anything the checkpoint lacks starts from the usual init
            self.load_pretrained(self.init_cfg['checkpoint'], logger)
        self._is_init = True

    def _init_from_scratch(self):
        for name, p in self.named_parameters(recurse=True):
            leaf = name.rsplit('.', 1)[-1]
            if leaf in ('pos_embed', 'relative_position_bias_table'):
                trunc_normal_(p, std=.02)
            elif leaf == 'positional_encoding':
                nn.init.zeros_(p)   # as in the reference SLA
        for m in self.modules():
            if isinstance(m, nn.Linear):
                trunc_normal_(m.weight, std=.02)
                if m.bias is not None:
                    nn.init.zeros_(m.bias)
            elif isinstance(m, nn.LayerNorm):
                nn.init.ones_(m.weight)
                nn.init.zeros_(m.bias)
            elif isinstance(m, nn.Conv2d):
                fan_out = m.kernel_size[0] * m.kernel_size[1] * m.out_channels // m.groups
                nn.init.normal_(m.weight, 0, math.sqrt(2.0 / fan_out))
                if m.bias is not None:
                    nn.init.zeros_(m.bias)

    def load_pretrained(self, checkpoint, logger=None):
        """Load backbone weights (our layout, e.g. written by tools/convert_checkpoint.py).

        Accepts ``{'state_dict': ...}``, ``{'model': ...}`` or a bare state dict; strips a
        ``module.`` / ``backbone.`` prefix (so a detector checkpoint works too), resizes
        positional tables and relative position bias tables whose grid differs, and
        logs the keys it did not load.
        """
        logger = logger or MMLogger.get_current_instance()
        ckpt = CheckpointLoader.load_checkpoint(checkpoint, map_location='cpu', logger=logger)
        state_dict = state_dict_in(ckpt, f'{type(self).__name__}: {checkpoint}')
        state_dict = resize_tables_to(self, strip_to_backbone(state_dict), logger)
        load_state_dict(self, state_dict, strict=False, logger=logger)

    def _load_from_state_dict(self, state_dict, prefix, *args, **kwargs):
        # Every way a checkpoint reaches the backbone (load_from, mmdet's test.py, mim test,
        # DetInferencer, init_cfg) comes through here: refuse the pairings that would load
        # without an error and compute something else.
        check_checkpoint_fits(self, {k[len(prefix):]: v for k, v in state_dict.items() if k.startswith(prefix)}, prefix)
        super()._load_from_state_dict(state_dict, prefix, *args, **kwargs)

    # --- deployment ------------------------------------------------------------------------
    def switch_to_deploy(self):
        """Fold every norm into its neighbouring layer (mmpretrain's re-parameterisation
        convention). Output norms become fixed :class:`ChannelAffine` layers (the
        detector-level ``fuse_detector`` folds them into the neck where it can).
        Refuses a model with a LayerNorm or a PRepBN that is still annealing (g > 0);
        LayerNorm output norms (``out_norm_cfg``) stay as they are."""
        if self.deploy:
            return
        # Validate everything before changing anything, so a refusal leaves the model intact.
        check_foldable_norm_cfg(self.norm_cfg, True, f'{type(self).__name__}.switch_to_deploy')   # FusionError
        out_norms = {f'norm{i}' for i in self.out_indices} if not self.out_norms_foldable else set()
        for name, g in ((n, m.g_value) for n, m in self.named_modules() if isinstance(m, PRepBN)):
            if name.split('.')[0] in out_norms:
                continue
            if g != 0.0:
                raise FusionError(
                    f'{type(self).__name__}.switch_to_deploy: {name} is a PRepBN with g = {g:.6g} > 0, '
                    f'i.e. still (partly) a LayerNorm, which cannot be folded. Finish the annealing '
                    f'(PRepBNHook) so that g = 0 everywhere before fusing.')
        self._deploy_children(self, '', skip=out_norms)
        if self.out_norms_foldable:
            for i in self.out_indices:
                setattr(self, f'norm{i}', norm_to_channel_affine(getattr(self, f'norm{i}'), f'norm{i}'))
        self.deploy = True

    def fold_output_norms_into(self, layers):
        """Fold each output norm into the layer that alone reads that output, in place.

        ``layers[k]`` (an ``nn.Conv2d`` without padding, e.g. FPN's lateral 1x1 convs, or an
        ``nn.Linear``) reads output ``k``, i.e. stage ``out_indices[k]``. Call it after
        :meth:`switch_to_deploy`; the output norms become ``nn.Identity`` and
        ``out_norms_folded`` is set (the deploy config's flag). Everything is checked before
        anything changes; a :class:`FusionError` names what does not fit.
        """
        name = f'{type(self).__name__}.fold_output_norms_into'
        if not self.deploy:
            raise FusionError(f'{name}: fold the body first (switch_to_deploy()); the output norms are still '
                              f'trainable norms')
        if self.out_norms_folded:
            raise FusionError(f'{name}: the output norms are folded already')
        if not self.out_norms_foldable:
            raise FusionError(f"{name}: the output norms are {self.out_norm_cfg.get('type')} (out_norm_cfg), which "
                              f"cannot be folded (one of {', '.join(FOLDABLE_NORM_CFG_TYPES)} can)")
        layers = list(layers)
        if len(layers) != len(self.out_indices):
            raise FusionError(f'{name}: {len(layers)} layers for {len(self.out_indices)} outputs '
                              f'(out_indices {self.out_indices}); give one per output, in that order')
        affines = [norm_affine(getattr(self, f'norm{i}'), f'norm{i}') for i in self.out_indices]
        for k, (layer, (scale, _)) in enumerate(zip(layers, affines)):
            in_channels = layer.in_features if isinstance(layer, nn.Linear) else getattr(layer, 'in_channels', None)
            if in_channels != scale.numel():
                raise FusionError(f'{name}: layer {k} ({type(layer).__name__}) reads {in_channels} channels, output '
                                  f'{k} has {scale.numel()}')
            if isinstance(layer, nn.Conv2d) and any(p != 0 for p in layer.padding):
                raise FusionError(f'{name}: layer {k} zero-pads its input, so an input shift cannot fold into it')
        for k, (i, layer, (scale, shift)) in enumerate(zip(self.out_indices, layers, affines)):
            fold_into_next(layer, scale, shift, f'output {k} -> {type(layer).__name__}')
            setattr(self, f'norm{i}', norm_remainder(getattr(self, f'norm{i}')))
        self.out_norms_folded = True

    @classmethod
    def _deploy_children(cls, module, prefix, skip=()):
        for name, child in module.named_children():
            full = f'{prefix}{name}'
            if full in skip:
                continue
            if hasattr(child, 'switch_to_deploy'):
                child.switch_to_deploy(full)
            else:
                cls._deploy_children(child, full + '.')
