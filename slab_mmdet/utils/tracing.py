"""Whether a graph is being traced for export, when the code must take its size-independent path."""
import torch


def exporting_graph():
    """True while torch traces the model into a graph for export: the TorchScript tracer
    (``torch.jit.trace``, ``torch.onnx.export(..., dynamo=False)``) or ``torch.export`` (the
    dynamo ONNX exporter). Code that branches on tensor sizes must then take the path that
    holds for every size, with no Python branch on a size (the graph would keep the example
    input's branch, or ``torch.export`` would specialise the dynamic dimensions)."""
    return torch.jit.is_tracing() or torch.compiler.is_exporting()
