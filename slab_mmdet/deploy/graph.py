"""Reading exported ONNX graphs: the file loaded or refused with a reason, ONNX Runtime
sessions, and scans of the graph's nodes (normalisation nodes, nodes by module scope, the
token-by-token products SLA must never form). Export, quantisation, the tools and the tests
read graphs through it."""
import copy
import os.path as osp

import numpy as np
import onnx
import onnxruntime as ort
from google.protobuf.message import DecodeError
from onnxruntime.capi import onnxruntime_pybind11_state as ort_errors

# ONNX operators that normalise: a fused SLAB backbone must hold none.
NORM_OPS = ('LayerNormalization', 'BatchNormalization', 'InstanceNormalization', 'GroupNormalization',
            'SimplifiedLayerNormalization', 'SkipLayerNormalization')
# What ONNX Runtime raises for a file it cannot read as a graph (truncated, corrupt, not ONNX).
UNREADABLE_GRAPH_ERRORS = (ort_errors.InvalidProtobuf, ort_errors.InvalidGraph, ort_errors.Fail, ort_errors.NoModel)
# What ONNX Runtime raises when a readable graph fails to run an input (e.g. a traced size that
# does not fit it).
RUN_ERRORS = (ort_errors.RuntimeException, ort_errors.Fail, ort_errors.InvalidArgument)


def unreadable_graph_error(path, error):
    """The ValueError for a graph file that ``error`` says cannot be read: names the file, the
    reason and the fix."""
    reason = str(error).strip().splitlines()[0].split(' failed:')[-1].strip() if str(error).strip() else ''
    return ValueError(f'{path} is not a readable ONNX graph ({type(error).__name__}: {reason[:300]}); export it '
                      f'again with tools/export_onnx.py')


def require_graph_file(path):
    """FileNotFoundError naming ``path`` unless it is a file."""
    if not osp.isfile(path):
        raise FileNotFoundError(f'ONNX graph {path!r} does not exist')


def read_graph(path):
    """The ``onnx.ModelProto`` in ``path``; a missing, truncated or corrupt file is refused
    naming the file and the reason."""
    require_graph_file(path)
    try:
        return onnx.load(path)
    except (DecodeError, ValueError) as e:
        raise unreadable_graph_error(path, e) from None


def onnx_session(path, threads=None):
    """An ONNX Runtime CPU session for ``path`` (``threads`` intra-op threads; None: ORT's
    default); a missing, truncated or corrupt file is refused naming the file and the reason."""
    options = ort.SessionOptions()
    if threads:
        options.intra_op_num_threads = threads
        options.inter_op_num_threads = 1
    require_graph_file(path)
    try:
        return ort.InferenceSession(path, options, providers=['CPUExecutionProvider'])
    except UNREADABLE_GRAPH_ERRORS as e:   # a truncated or corrupt file
        raise unreadable_graph_error(path, e) from None


def graph_inputs(onnx_model):
    """Names of the inputs a graph must be fed (older exporters list initializers as inputs too)."""
    initializers = {t.name for t in onnx_model.graph.initializer}
    return [i.name for i in onnx_model.graph.input if i.name not in initializers]


def graph_nodes(onnx_model):
    """Every node of the graph, with those inside its functions (the exporter may put a
    module's ops in a local function)."""
    nodes = list(onnx_model.graph.node)
    for function in onnx_model.functions:
        nodes.extend(function.node)
    return nodes


def norm_nodes(onnx_model):
    """The op types of the normalisation nodes (``NORM_OPS``) in an ONNX graph (with its
    functions), one entry per node."""
    return [n.op_type for n in graph_nodes(onnx_model) if n.op_type in NORM_OPS]


def _scopes(modules):
    """The exporter names nodes by module scope: module ``backbone.norm0`` -> ``/backbone/norm0/``."""
    return tuple('/' + name.replace('.', '/') + '/' for name in modules)


def norm_nodes_outside(onnx_model, allowed_modules):
    """``(node name, op type)`` of the graph's normalisation nodes that do not belong to one of
    ``allowed_modules`` (module names such as ``backbone.norm0``)."""
    scopes = _scopes(allowed_modules)
    return [(n.name, n.op_type) for n in graph_nodes(onnx_model)
            if n.op_type in NORM_OPS and not n.name.startswith(scopes)]


def nodes_in_modules(onnx_model, modules, op_types=None):
    """The nodes of the main graph inside the module scopes ``modules`` (e.g. ``('backbone',
    'neck')``), of ``op_types`` only if given."""
    scopes = _scopes(modules)
    return [n for n in onnx_model.graph.node
            if n.name.startswith(scopes) and (op_types is None or n.op_type in op_types)]


def token_by_token_products(onnx_model, input_hw, token_counts):
    """MatMul/Einsum/Gemm nodes of an exported graph whose output's last two dims are both
    token counts (``token_counts``: e.g. each SLA stage's number of tokens at
    ``input_hw``): the N x N (or N x N_kv) attention matrix that SLA must never form.

    The shapes are the ones ONNX Runtime actually produces for a (1, 3, *input_hw) input
    (the graph's size arithmetic is not resolved statically), so the check holds for
    dynamic graphs too. Returns ``[(node name, output shape)]``.
    """
    probe = copy.deepcopy(onnx_model)
    products = [n for n in probe.graph.node if n.op_type in ('MatMul', 'Einsum', 'Gemm')]
    known = {o.name for o in probe.graph.output}
    for node in products:
        if node.output[0] not in known:
            probe.graph.output.append(onnx.helper.make_empty_tensor_value_info(node.output[0]))
    session = ort.InferenceSession(probe.SerializeToString(), providers=['CPUExecutionProvider'])
    names = [o.name for o in session.get_outputs()]
    values = session.run(None, {session.get_inputs()[0].name: np.zeros((1, 3, *input_hw), np.float32)})
    shapes = dict(zip(names, (v.shape for v in values)))
    counts = set(token_counts)
    return [(n.name, tuple(shapes[n.output[0]])) for n in products
            if len(shapes[n.output[0]]) >= 2 and shapes[n.output[0]][-1] in counts
            and shapes[n.output[0]][-2] in counts]


__all__ = ['NORM_OPS', 'RUN_ERRORS', 'graph_inputs', 'graph_nodes', 'nodes_in_modules', 'norm_nodes',
           'norm_nodes_outside', 'onnx_session', 'read_graph', 'require_graph_file', 'token_by_token_products',
           'unreadable_graph_error']
