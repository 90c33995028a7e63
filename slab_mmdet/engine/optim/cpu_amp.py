"""Mixed-precision training on machines without a GPU: mmengine's AmpOptimWrapper with bf16
autocast on the CPU (mmengine 0.10.7's own wrapper asserts a GPU, NPU, MLU or MUSA device)."""
from contextlib import ExitStack, contextmanager

import torch
from mmengine.device import is_cuda_available, is_mlu_available, is_musa_available, is_npu_available
from mmengine.model import is_model_wrapper
from mmengine.optim import AmpOptimWrapper, OptimWrapper
from mmengine.registry import OPTIM_WRAPPERS

# The parts of a detector that run under CPU autocast (see CPUAmpOptimWrapper).
AUTOCAST_PARTS = ('backbone', 'neck')


def amp_optim_wrapper_type():
    """The optimizer wrapper that ``--amp`` selects here: mmengine's ``AmpOptimWrapper`` where
    an accelerator is present (fp16 with dynamic loss scaling on a GPU), else ours."""
    accelerated = is_cuda_available() or is_npu_available() or is_mlu_available() or is_musa_available()
    return 'AmpOptimWrapper' if accelerated else 'CPUAmpOptimWrapper'


def _to_float32(value):
    if isinstance(value, torch.Tensor):
        return value.float() if value.dtype in (torch.bfloat16, torch.float16) else value
    if isinstance(value, (list, tuple)):
        return type(value)(_to_float32(v) for v in value)
    if isinstance(value, dict):
        return type(value)((k, _to_float32(v)) for k, v in value.items())
    return value


@OPTIM_WRAPPERS.register_module()
class CPUAmpOptimWrapper(AmpOptimWrapper):
    """Automatic mixed precision on the CPU: bf16 autocast, without loss scaling.

    bf16 has float32's exponent range, so gradients do not underflow and nothing needs
    scaling; bf16 is the CPU's only autocast dtype. The detector's backbone and neck
    (where nearly all the compute is) run under ``torch.autocast('cpu', torch.bfloat16)``
    and hand float32 features to the heads, which run in float32: mmcv's CPU kernels
    (NMS, RoIAlign) take float32 and float64 only. A model without a backbone runs
    under autocast as a whole. Gradient clipping and accumulation and the checkpointed
    state are :class:`~mmengine.optim.AmpOptimWrapper`'s; the loss scaler is a disabled
    GradScaler.

    Args:
        dtype (str | torch.dtype): 'bfloat16' (default), the only CPU autocast dtype.
        loss_scale: 'dynamic' (as ``--amp`` sets it) or None, both meaning "no scaling";
            a fixed scale or a scaler config is refused rather than ignored.
        **kwargs: :class:`~mmengine.optim.OptimWrapper`'s arguments.
    """

    def __init__(self, dtype='bfloat16', loss_scale='dynamic', **kwargs):
        if dtype not in ('bfloat16', torch.bfloat16):
            raise ValueError(f"CPUAmpOptimWrapper: CPU autocast runs in bfloat16 only, got dtype={dtype!r}; "
                             f"use dtype='bfloat16' (or train on a GPU with AmpOptimWrapper for float16)")
        if loss_scale not in ('dynamic', None):
            raise ValueError(f'CPUAmpOptimWrapper: bf16 trains without loss scaling, got loss_scale={loss_scale!r}; '
                             f"use 'dynamic' or None (both mean: no scaling on the CPU)")
        OptimWrapper.__init__(self, **kwargs)   # skips AmpOptimWrapper's device assertion
        self._scale_update_param = None
        self.loss_scaler = torch.amp.GradScaler('cpu', enabled=False)
        self.cast_dtype = torch.bfloat16

    @contextmanager
    def optim_context(self, model):
        net = model.module if is_model_wrapper(model) else model
        parts = [getattr(net, name) for name in AUTOCAST_PARTS if getattr(net, name, None) is not None]
        with OptimWrapper.optim_context(self, model), ExitStack() as stack:
            if not parts:
                stack.enter_context(torch.autocast('cpu', dtype=self.cast_dtype))
            for part in parts:
                stack.callback(part.register_forward_pre_hook(self._enter_autocast).remove)
                stack.callback(part.register_forward_hook(self._leave_autocast).remove)
            self._open = []
            try:
                yield
            finally:
                while self._open:   # a forward that raised left its autocast open
                    self._open.pop().__exit__(None, None, None)

    def _enter_autocast(self, module, args):
        context = torch.autocast('cpu', dtype=self.cast_dtype)
        context.__enter__()
        self._open.append(context)

    def _leave_autocast(self, module, args, output):
        self._open.pop().__exit__(None, None, None)
        return _to_float32(output)
