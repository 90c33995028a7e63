"""When the layers may take their inference fast paths, and the switch that turns them off.

At a detector's stage-1 resolution (~60,000 tokens) a CPU spends more of a block's time
moving whole token tensors to and from memory than computing: every elementwise op,
copy, transpose and bias add is a pass over tens of megabytes. The fast paths run the same
maths with fewer passes: cache-blocked (:meth:`~.transformer.Mlp.add_to_in_chunks`, the
PVT attentions' ``add_to`` in chunks of queries, the window attentions' tiles: a few
thousand tokens at a time, intermediates never leaving the cache, results written in place)
or laid out so that nothing is transposed (the patch convolutions in channels-last). They
run only where that is both safe and useful: grad mode off, modules in eval mode, eager
(not traced for export nor compiled), on a CPU, outside autocast, and outside :func:`plain_inference`.
"""
from contextlib import contextmanager

import torch

from ...utils import exporting_graph

_plain_inference_depth = 0


def fast_path(x, *modules):
    """Whether a fast path may run on ``x`` in ``modules``: grad mode off
    (``torch.no_grad`` / ``torch.inference_mode``, as mmdet's test loop runs), and none of the
    modules in training mode (their dropout, drop-path and batch statistics must be off)."""
    # Grad mode, not x.requires_grad: a block's input may need no gradient while its weights do.
    # Not under torch.compile either: its compiler fuses the plain code itself, and the
    # chunk loops would be unrolled into the graph.
    return (_plain_inference_depth == 0 and x.device.type == 'cpu' and not torch.is_grad_enabled()
            and not exporting_graph() and not torch.compiler.is_compiling() and not torch.is_autocast_enabled('cpu')
            and not any(m.training for m in modules))


@contextmanager
def plain_inference():
    """Run the layers' plain whole-tensor code in inference too: the reference the fast paths
    are tested against and the 'before' of their benchmark (benchmarks/fast_paths.py)."""
    global _plain_inference_depth
    _plain_inference_depth += 1
    try:
        yield
    finally:
        _plain_inference_depth -= 1
