from .cpu_amp import CPUAmpOptimWrapper, amp_optim_wrapper_type

__all__ = ['CPUAmpOptimWrapper', 'amp_optim_wrapper_type']
