"""AnnealProbeHook: what the anneal study logs besides the loss -- per-stage activation RMS,
RepBN alpha, and an early stop once the loss has diverged (so a failed run costs minutes).

Experiment-only knobs (one change at a time) are hook arguments, so that the library
itself stays as users get it:

* ``alpha``: ``None`` (learned, the default) or a float at which every RepBN alpha is
  fixed (no gradient), e.g. 0.0 for plain BatchNorm.
* ``alpha_init``: ``None`` (the layer's own, 1) or a float every RepBN alpha starts at
  (still learned).

``RepeatEachSampler`` (a control, not a recipe) yields every index of mmengine's
``DefaultSampler`` ``times`` times in a row: at ``batch_size=times`` each batch is one
image repeated, so that a run at two images per batch sees the very image sequence of
the one-image run with the same seed.
"""
import math

import torch
from mmengine.hooks import Hook
from mmengine.model import is_model_wrapper
from mmengine.dataset import DefaultSampler
from mmengine.registry import DATA_SAMPLERS, HOOKS

from slab_mmdet.models.layers import RepBN


@HOOKS.register_module()
class AnnealProbeHook(Hook):
    priority = 'LOW'

    def __init__(self, interval=10, diverge_loss=50.0, alpha=None, alpha_init=None):
        self.interval = interval
        self.diverge_loss = diverge_loss
        self.alpha = alpha
        self.alpha_init = alpha_init
        self._rms = {}
        self._handles = []

    @staticmethod
    def _model(runner):
        return runner.model.module if is_model_wrapper(runner.model) else runner.model

    def before_train(self, runner):
        backbone = self._model(runner).backbone
        for m in backbone.modules():
            if isinstance(m, RepBN) and runner.iter == 0:
                if self.alpha is not None:
                    m.alpha.data.fill_(self.alpha)
                    m.alpha.requires_grad_(False)
                elif self.alpha_init is not None:
                    m.alpha.data.fill_(self.alpha_init)
        for i, stage in enumerate(getattr(backbone, 'stages', [])):
            last = stage.blocks[-1]
            self._handles.append(last.register_forward_hook(self._record(f'rms_stage{i}')))
            self._handles.append(last.register_forward_hook(self._record_split(i)))
        for i in backbone.out_indices:
            norm = getattr(backbone, f'norm{i}', None)   # mmdet's PVT (the LN control) has none
            if norm is None:
                continue
            self._handles.append(norm.register_forward_hook(self._record(f'rms_out{i}')))

    def _record(self, key):
        def hook(module, args, output):
            out = output[0] if isinstance(output, tuple) else output
            self._rms[key] = float(out.detach().float().pow(2).mean().sqrt())
        return hook

    def before_train_iter(self, runner, batch_idx, data_batch=None):
        # The image sizes before batch padding, to tell real tokens from padded ones.
        samples = (data_batch or {}).get('data_samples', [])
        self._image_hw = [tuple(s.metainfo['img_shape'][:2]) for s in samples]

    def _record_split(self, stage):
        """RMS of the residual stream over real tokens and over batch-padding tokens."""
        stride = 4 * 2 ** stage

        def hook(module, args, output):
            tokens, (h, w) = output.detach().float(), args[1]
            mask = torch.zeros(tokens.shape[0], h, w, dtype=torch.bool)
            for b, (ih, iw) in enumerate(getattr(self, '_image_hw', [])[:tokens.shape[0]]):
                mask[b, :math.ceil(ih / stride), :math.ceil(iw / stride)] = True
            mask = mask.flatten(1)
            sq = tokens.pow(2).mean(-1)
            if mask.any():
                self._rms[f'rms_valid{stage}'] = float(sq[mask].mean().sqrt())
            if (~mask).any():
                self._rms[f'rms_pad{stage}'] = float(sq[~mask].mean().sqrt())
                self._rms[f'pad_frac{stage}'] = float((~mask).float().mean())
        return hook

    @staticmethod
    def _weight_scales(hub, backbone):
        """What could make the last stage's residual stream grow: the spectral norm of its
        sublayers' output projections, and the mean |weight| of its norms' LN and BN affines."""
        stages = getattr(backbone, 'stages', None)
        if not stages:
            return
        last = stages[-1]
        with torch.no_grad():
            for name in ('attn.proj', 'mlp.fc2'):
                mods = [b.get_submodule(name) for b in last.blocks]
                hub.update_scalar(f'train/sn_{name.replace(".", "_")}3',
                                  max(float(torch.linalg.matrix_norm(m.weight, ord=2)) for m in mods))
            norms = [b.norm1 for b in last.blocks] + [b.norm2 for b in last.blocks]
            if all(hasattr(n, 'ln') for n in norms):
                hub.update_scalar('train/ln_w3', sum(float(n.ln.weight.abs().mean()) for n in norms) / len(norms))
                hub.update_scalar('train/bn_w3',
                                  sum(float(n.repbn.bn.weight.abs().mean()) for n in norms) / len(norms))

    def after_train_iter(self, runner, batch_idx, data_batch=None, outputs=None):
        hub = runner.message_hub
        if runner.iter % self.interval == 0 or runner.iter + 1 == runner.max_iters:
            for key, value in self._rms.items():
                hub.update_scalar(f'train/{key}', value)
            self._weight_scales(hub, self._model(runner).backbone)
            alphas = [float(m.alpha) for m in self._model(runner).backbone.modules() if isinstance(m, RepBN)]
            if alphas:
                hub.update_scalar('train/alpha_mean', sum(alphas) / len(alphas))
                hub.update_scalar('train/alpha_absmax', max(abs(a) for a in alphas))
        loss = float(outputs['loss']) if outputs and 'loss' in outputs else None
        if loss is not None and torch.distributed.is_available() and torch.distributed.is_initialized():
            # Every rank stops together (a rank left alone would wait in the next all-reduce).
            t = torch.tensor([loss if math.isfinite(loss) else float('inf')])
            torch.distributed.all_reduce(t, op=torch.distributed.ReduceOp.MAX)
            loss = float(t)
        if loss is not None and (not math.isfinite(loss) or loss > self.diverge_loss):
            raise RuntimeError(f'ANNEAL DIVERGED at iter {runner.iter + 1}: loss {loss:.4g}')


@DATA_SAMPLERS.register_module()
class RepeatEachSampler(DefaultSampler):
    def __init__(self, *args, times=2, **kwargs):
        super().__init__(*args, **kwargs)
        self.times = times

    def __iter__(self):
        for index in super().__iter__():
            for _ in range(self.times):
                yield index

    def __len__(self):
        return super().__len__() * self.times
