"""PRepBNHook: anneals the LayerNorm weight ``g`` of every PRepBN from its start value to 0.

``g`` at iteration ``t`` of a run is ``g_m(t) = g_m0 * s(t - warmup_iters)`` for each
PRepBN ``m``, where ``s`` is the schedule of :func:`prepbn_schedule` (1 during the
warm-up, then 1 -> 0 over ``T`` iterations, 0 afterwards) and ``g_m0`` the layer's
start value. Everything is a function of ``runner.iter`` alone, so a resumed run sees
the same values as an uninterrupted one.
"""
import math

from mmengine.hooks import Hook
from mmengine.optim import OptimWrapperDict
from mmengine.registry import HOOKS

from slab_mmdet.engine.recalibrate import recalibrate_bn, unwrap_model
from slab_mmdet.models.layers.prepbn import iter_prepbn
from slab_mmdet.utils import is_int, is_number

from .prepbn_schedule import check_schedule, prepbn_schedule

# Where the per-layer start values and the schedule live in a checkpoint (``checkpoint['meta']``).
START_G_META_KEY = 'prepbn_start_g'
SCHEDULE_META_KEY = 'prepbn_schedule'


def check_ddp_find_unused_parameters(model):
    """Raise if ``model`` is a DistributedDataParallel that does not look for unused parameters.

    PRepBN skips the branch whose weight is 0 (no BatchNorm at ``g == 1``, no
    LayerNorm at ``g == 0``), so those parameters get no gradient and DDP must be told.
    """
    from torch.nn.parallel import DistributedDataParallel
    if isinstance(model, DistributedDataParallel) and not model.find_unused_parameters:
        raise ValueError(
            'PRepBNHook: the model is wrapped in DistributedDataParallel with find_unused_parameters=False, '
            'but PRepBN skips the branch whose weight is 0 (no BatchNorm while g = 1, no LayerNorm once '
            'g = 0), so those parameters get no gradient and DDP would fail. '
            'Set `find_unused_parameters = True` in the config.')


def _accumulative_counts(optim_wrapper):
    """The gradient accumulation window ``k`` of the runner's optimizer wrapper(s)."""
    wrappers = (optim_wrapper.optim_wrappers if isinstance(optim_wrapper, OptimWrapperDict)
                else {'optim_wrapper': optim_wrapper})
    counts = {name: getattr(w, '_accumulative_counts', 1) for name, w in wrappers.items()}
    if len(set(counts.values())) > 1:
        raise ValueError(f'PRepBNHook: the optimizer wrappers accumulate gradients over different numbers of '
                         f'iterations {counts}; g can only be held constant over one window size')
    return next(iter(counts.values()), 1)


@HOOKS.register_module()
class PRepBNHook(Hook):
    """Anneal the LayerNorm weight ``g`` of every PRepBN in the model from its start value to 0.

    At iteration ``t`` (``runner.iter``) each PRepBN ``m`` gets
    ``g_m(t) = g_m0 * s(t - warmup_iters)`` with ``s`` from :func:`prepbn_schedule`.

    * ``before_train`` sets the value of the current iteration (so a resumed run, and
      a validation before any step, see the right one); ``before_train_iter`` sets
      ``g(t)`` for the step about to run; ``after_train_iter`` sets ``g(t + 1)``, so
      validation between iterations/epochs and checkpoints see the post-step value and
      a run whose anneal completes (``warmup_iters + T <= max_iters``) ends with
      ``g == 0`` exactly in every PRepBN.
    * Gradient accumulation (``optim_wrapper.accumulative_counts = k``): g is held
      constant within each accumulation window, i.e. it is evaluated at
      ``(t // k) * k``. After the last iteration it is evaluated at ``max_iters``.
    * ``'train/prepbn_g'`` (the largest g over the PRepBN layers; they differ only
      with ``start_g='model'``) goes to the message hub every iteration, so it shows
      as ``prepbn_g`` in the log line and in the visualizer backends.
    * ``after_train`` checks that every PRepBN has the scheduled value, says whether the
      anneal completed (g == 0: ready to fuse) or warns when it did not, and optionally
      recalibrates the BatchNorm statistics (``recalibrate_bn_iters``).

    Args:
        anneal_iters (int, optional): Length T of the anneal in iterations (>= 1).
        anneal_ratio (float, optional): Length T as a fraction in (0, 1] of the run's
            total iterations ``runner.max_iters`` (``ratio * max_iters`` rounded half
            up, at least 1). Give exactly one of ``anneal_iters`` and ``anneal_ratio``.
        warmup_iters (int): Iterations during which g stays at its start value before
            the anneal starts. Default: 0.
        schedule (str): ``'linear'`` (the paper), ``'cosine'`` or ``'step'``. Default: 'linear'.
        num_steps (int, optional): Number of drops of the ``'step'`` schedule (default 4);
            only valid with ``schedule='step'``.
        start_g (str | float): ``'model'``: each PRepBN anneals from the g it has at
            iteration 0 (1 for new layers, 0 for layers of an already annealed
            checkpoint, which so stay pure BN). A float in [0, 1]: every PRepBN starts
            there. The start values are saved in checkpoints (``meta['prepbn_start_g']``)
            so that resuming continues the same anneal. Default: 'model'.
        allow_g_increase (bool): On resume, g never rises above the checkpoint's g
            (the anneal only goes forward): a changed schedule (another anneal length,
            ``max_iters`` with ``anneal_ratio``, warm-up or schedule type) continues from
            the checkpoint's g to 0 at the new schedule's end, with a warning naming
            both schedules. True: follow the new schedule even where that raises g
            (also warned). Default: False.
        recalibrate_bn_iters (int): If > 0, once the anneal has completed, recompute the
            BatchNorm running statistics with frozen weights over this many batches of
            the train dataloader at the end of training (paper, appendix A; see
            :func:`slab_mmdet.engine.recalibrate_bn`), and save the result as
            ``bn_recalibrated_iter_{N}.pth`` in the work dir. Default: 0 (off).
    """
    # After EMAHook (NORMAL) in each stage, so that the EMA model's g, which EMAHook's
    # update averages with update_buffers=True, is set to the schedule after that.
    priority = 'BELOW_NORMAL'

    def __init__(self,
                 anneal_iters=None,
                 anneal_ratio=None,
                 warmup_iters=0,
                 schedule='linear',
                 num_steps=None,
                 start_g='model',
                 allow_g_increase=False,
                 recalibrate_bn_iters=0):
        if (anneal_iters is None) == (anneal_ratio is None):
            raise ValueError('PRepBNHook: give exactly one of anneal_iters (int >= 1) or anneal_ratio '
                             f'(float in (0, 1]); got anneal_iters={anneal_iters!r}, anneal_ratio={anneal_ratio!r}')
        if anneal_iters is not None and (not is_int(anneal_iters) or anneal_iters < 1):
            raise ValueError(f'PRepBNHook: anneal_iters must be an int >= 1, got {anneal_iters!r}')
        if anneal_ratio is not None and (not is_number(anneal_ratio) or not 0.0 < anneal_ratio <= 1.0):
            raise ValueError(f'PRepBNHook: anneal_ratio must be a float in (0, 1], got {anneal_ratio!r}')
        if not is_int(warmup_iters) or warmup_iters < 0:
            raise ValueError(f'PRepBNHook: warmup_iters must be an int >= 0, got {warmup_iters!r}')
        self.schedule_params = check_schedule(schedule, {} if num_steps is None else {'num_steps': num_steps})
        if start_g != 'model' and (not is_number(start_g) or not 0.0 <= start_g <= 1.0):
            raise ValueError(f"PRepBNHook: start_g must be 'model' or a float in [0, 1], got {start_g!r}")
        if not is_int(recalibrate_bn_iters) or recalibrate_bn_iters < 0:
            raise ValueError(f'PRepBNHook: recalibrate_bn_iters must be an int >= 0 (0: off), '
                             f'got {recalibrate_bn_iters!r}')
        self.anneal_iters = anneal_iters
        self.anneal_ratio = anneal_ratio
        self.warmup_iters = warmup_iters
        self.schedule = schedule
        self.start_g = start_g if start_g == 'model' else float(start_g)
        if not isinstance(allow_g_increase, bool):
            raise ValueError(f'PRepBNHook: allow_g_increase must be True or False, got {allow_g_increase!r}')
        self.allow_g_increase = allow_g_increase
        self.recalibrate_bn_iters = recalibrate_bn_iters
        # Resolved in before_train.
        self.T = None
        self.max_iters = None
        self.accumulative_counts = 1
        self.start_values = None  # {PRepBN name: g at iteration 0}
        self._configured = None   # the schedule the config asks for, before any adjustment on resume
        self._layers = []  # [(name, PRepBN)], found in before_train
        self._ema_layers = []  # [{name: PRepBN}] of each EMA model (EMAHook), found in before_train
        self._checkpoint_start_values = None  # from the last loaded checkpoint
        self._checkpoint_schedule = None  # likewise

    # ----------------------------------------------------------------- maths
    def scale(self, it):
        """The schedule factor ``s`` for the step run at iteration ``it`` (after ``before_train``)."""
        k = self.accumulative_counts
        t = it if it >= self.max_iters else (it // k) * k
        return prepbn_schedule(t - self.warmup_iters, self.T, self.schedule, **self.schedule_params)

    @property
    def anneal_end_iter(self):
        """The iteration from which the schedule is 0 (without accumulation)."""
        return self.warmup_iters + self.T

    # --------------------------------------------------------------- helpers
    @staticmethod
    def _model(runner):
        return unwrap_model(runner.model)

    def _prepbn_layers(self, runner):
        model = self._model(runner)
        layers = list(iter_prepbn(model))
        if not layers:
            raise ValueError(
                f'PRepBNHook: the model ({type(model).__name__}) has no PRepBN layer, so there is no g to '
                f'anneal. Build its norms as PRepBN, e.g. set `model.backbone.norm_cfg = dict(type="PRepBN")` '
                f'in the config, or remove the PRepBNHook from custom_hooks.')
        return layers

    @staticmethod
    def _ema_models(runner):
        """The averaged models of the run's EMA hooks (mmengine's EMAHook keeps one in ``ema_model``)."""
        return [h.ema_model.module for h in runner.hooks if hasattr(getattr(h, 'ema_model', None), 'module')]

    def _set_g(self, it):
        """Write g for iteration ``it`` into every PRepBN, and the same value into the EMA
        models' (an average of g values is no g of the schedule); return the largest value."""
        s = self.scale(it)
        largest = 0.0
        for name, m in self._layers:
            g = self.start_values[name] * s
            for layer in [m] + [ema[name] for ema in self._ema_layers if name in ema]:
                if layer.g_value != g:
                    layer.set_g(g)
            largest = max(largest, g)
        return largest

    def _resolve_start_values(self, runner, layers):
        if self.start_g != 'model':
            return {name: self.start_g for name, _ in layers}
        if runner.iter == 0:
            return {name: m.g_value for name, m in layers}
        loaded = self._checkpoint_start_values or {}
        missing = [name for name, _ in layers if name not in loaded]
        if missing:
            s = self.scale(runner.iter)
            runner.logger.warning(
                f"PRepBNHook: resuming at iteration {runner.iter}, but the checkpoint has no start value of g "
                f"(meta['{START_G_META_KEY}']) for {len(missing)} PRepBN layer(s) (e.g. {missing[:3]}); "
                f'their start values are inferred from the g they hold and the schedule.')
        else:
            s = None
        return {name: float(loaded[name]) if name in loaded else (m.g_value / s if s else m.g_value)
                for name, m in layers}

    def describe_schedule(self, spec=None):
        """A schedule (this hook's, or one saved in a checkpoint) in words."""
        spec = spec or self.schedule_spec()
        params = f" {spec['params']}" if spec.get('params') else ''
        return (f"{spec['schedule']}{params} over {spec['T']} iterations after {spec['warmup_iters']} warm-up "
                f"iterations (g = 0 from iteration {spec['warmup_iters'] + spec['T']})")

    def schedule_spec(self):
        """The schedule in effect (warm-up and length after any adjustment on resume), and the
        one the config asks for (``configured``), as a checkpoint records them."""
        return dict(schedule=self.schedule, params=dict(self.schedule_params), T=self.T,
                    warmup_iters=self.warmup_iters, configured=dict(self._configured))

    def _continue_recorded_adjustment(self, runner):
        """On resume: the checkpoint's run already moved this same configured schedule forward
        from the g it held (see :meth:`_keep_annealing_forward`): continue that anneal, silently."""
        old = self._checkpoint_schedule or {}
        if old.get('configured') != self._configured or (old['T'], old['warmup_iters']) == (self.T, self.warmup_iters):
            return
        self.T, self.warmup_iters = int(old['T']), int(old['warmup_iters'])
        runner.logger.info(f'PRepBNHook: continuing the anneal as the checkpoint\'s run adjusted it on resume: '
                           f'{self.describe_schedule()}')

    def _keep_annealing_forward(self, runner, layers):
        """On resume: if the schedule would give some layer a g other than the one it holds
        (the schedule changed), continue from the held g to 0 at the new schedule's end
        (or, with ``allow_g_increase``, follow the new schedule), with a warning."""
        it = runner.iter
        held = {name: m.g_value for name, m in layers}
        planned = {name: self.start_values[name] * self.scale(it) for name, _ in layers}
        changed = sorted(n for n in held if abs(planned[n] - held[n]) > 1e-9)
        if not changed:
            return
        old = self._checkpoint_schedule
        schedules = (f"checkpoint: {self.describe_schedule(old) if old else 'not recorded in the checkpoint'}; "
                     f'now: {self.describe_schedule()}')
        example = changed[0]
        change = (f'{len(changed)} PRepBN layer(s), e.g. {example}, from the g it holds, {held[example]:.6g}, '
                  f'to {planned[example]:.6g}')
        if self.allow_g_increase:
            runner.logger.warning(
                f"PRepBNHook: resuming at iteration {it} with another schedule than the checkpoint's ({schedules}); "
                f'allow_g_increase=True, so g follows the new schedule: it moves {change}.')
            return
        self.start_values, self.warmup_iters, self.T = held, it, max(1, self.anneal_end_iter - it)
        runner.logger.warning(
            f"PRepBNHook: resuming at iteration {it} with another schedule than the checkpoint's ({schedules}). "
            f'It would move {change}; the anneal only goes forward, so every layer continues from the g it '
            f'holds, {self.schedule}, down to 0 at iteration {self.anneal_end_iter}. Set allow_g_increase=True '
            f'to follow the new schedule instead.')

    # ----------------------------------------------------------------- hooks
    def before_train(self, runner):
        check_ddp_find_unused_parameters(runner.model)
        layers = self._layers = self._prepbn_layers(runner)
        self._ema_layers = [dict(iter_prepbn(ema)) for ema in self._ema_models(runner)]
        self.max_iters = runner.max_iters
        if self.anneal_iters is not None:
            self.T = self.anneal_iters
        else:
            self.T = max(1, math.floor(self.anneal_ratio * self.max_iters + 0.5))  # rounded half up
        self.accumulative_counts = _accumulative_counts(runner.optim_wrapper)
        self._configured = dict(schedule=self.schedule, params=dict(self.schedule_params), T=self.T,
                                warmup_iters=self.warmup_iters)
        self.start_values = self._resolve_start_values(runner, layers)
        if runner.iter > 0:
            self._continue_recorded_adjustment(runner)
            self._keep_annealing_forward(runner, layers)
        g = self._set_g(runner.iter)
        length = (f'{self.T} iterations' if self.anneal_iters is not None else
                  f'{self.T} iterations (anneal_ratio={self.anneal_ratio} of max_iters={self.max_iters})')
        starts = sorted(set(self.start_values.values()))
        runner.logger.info(
            f'PRepBNHook: {self.schedule} anneal of g in {len(layers)} PRepBN layers over {length} after '
            f'{self.warmup_iters} warm-up iterations (g = 0 from iteration {self.anneal_end_iter}); start values '
            f'{starts} (start_g={self.start_g!r}); accumulation window {self.accumulative_counts}; '
            f'g = {g:.6g} at iteration {runner.iter}')

    def before_train_iter(self, runner, batch_idx, data_batch=None):
        g = self._set_g(runner.iter)
        runner.message_hub.update_scalar('train/prepbn_g', g)

    def after_train_iter(self, runner, batch_idx, data_batch=None, outputs=None):
        self._set_g(runner.iter + 1)

    def after_train(self, runner):
        it = runner.iter
        s = self.scale(it)
        layers = self._layers
        wrong = [(name, m.g_value, self.start_values[name] * s) for name, m in layers
                 if m.g_value != self.start_values[name] * s]
        if wrong:
            listed = ', '.join(f'{name}: g={g:.6g} (expected {e:.6g})' for name, g, e in wrong[:10])
            raise RuntimeError(
                f'PRepBNHook: at the end of training (iteration {it}) {len(wrong)} PRepBN layer(s) do not have '
                f'the scheduled g; something else changed it: {listed}')
        largest = max(m.g_value for _, m in layers)
        if largest == 0.0:
            runner.logger.info(f'PRepBNHook: anneal complete, all {len(layers)} PRepBN layers have g = 0 '
                               f'(pure BatchNorm, ready to fuse)')
        else:
            left = sum(m.g_value > 0 for _, m in layers)
            runner.logger.warning(
                f'PRepBNHook: training ended at iteration {it} before the PRepBN anneal finished (g reaches 0 at '
                f'iteration {self.anneal_end_iter}): the model still has g = {largest:.6g} in {left} of '
                f'{len(layers)} PRepBN layers, so its norms cannot be fused into BatchNorm yet. Resume to train '
                f'longer, or shorten the anneal (anneal_iters/anneal_ratio, warmup_iters).')
        if self.recalibrate_bn_iters > 0:
            if largest == 0.0:
                self._recalibrate(runner)
            else:
                runner.logger.warning('PRepBNHook: BN recalibration skipped because the anneal has not finished '
                                      '(recalibrate the final model with tools/recalibrate_bn.py)')

    def _recalibrate(self, runner):
        layers = recalibrate_bn(runner.model, runner.train_dataloader, self.recalibrate_bn_iters,
                                logger=runner.logger)
        filename = f'bn_recalibrated_iter_{runner.iter}.pth'
        runner.save_checkpoint(
            runner.work_dir, filename, save_optimizer=False, save_param_scheduler=False,
            meta=dict(epoch=runner.epoch, iter=runner.iter,
                      bn_recalibration=dict(iters=self.recalibrate_bn_iters, layers=len(layers))))
        runner.logger.info(f'PRepBNHook: recalibrated {len(layers)} BatchNorm layers over '
                           f'{self.recalibrate_bn_iters} batches; saved {runner.work_dir}/{filename}')

    def before_save_checkpoint(self, runner, checkpoint):
        if self.start_values is not None:
            meta = checkpoint.setdefault('meta', {})
            meta[START_G_META_KEY] = dict(self.start_values)
            meta[SCHEDULE_META_KEY] = self.schedule_spec()

    def after_load_checkpoint(self, runner, checkpoint):
        meta = checkpoint.get('meta') or {}
        self._checkpoint_start_values = meta.get(START_G_META_KEY)
        self._checkpoint_schedule = meta.get(SCHEDULE_META_KEY)


__all__ = ['PRepBNHook', 'check_ddp_find_unused_parameters']
