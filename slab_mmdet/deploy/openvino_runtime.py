"""Running an exported ONNX graph in OpenVINO's CPU plugin (the optional ``openvino`` extra:
``make setup-openvino``): the graph read from the ``.onnx`` file the exporter wrote (or an
OpenVINO IR made from it, such as :func:`~.quantize.quantize_with_openvino`'s), compiled for
latency at batch 1, outputs in the graph's order as ONNX Runtime gives them."""
from .graph import require_graph_file, unreadable_graph_error

# OpenVINO's CPU plugin runs bf16 by default on CPUs with AMX or AVX-512 BF16: f32 unless asked,
# so that its outputs can be checked against ONNX Runtime's at the exporter's tolerance.
PRECISIONS = ('f32', 'bf16')
INSTALL_HINT = 'install it with `make setup-openvino` (pins in requirements/openvino.lock)'


def import_nncf():
    """The ``nncf`` module (OpenVINO's quantisation, part of the extra), or an ImportError that
    says how to install it."""
    try:
        import nncf
    except ImportError as e:
        raise ImportError(f'NNCF is not installed (part of the optional OpenVINO extra): {INSTALL_HINT}') from e
    return nncf


def read_openvino_model(core, path):
    """OpenVINO's model of ``path`` (an ``.onnx`` graph or an OpenVINO IR ``.xml``), read once; a
    missing file, or an ``.onnx`` file OpenVINO cannot read, is refused naming it (an IR's errors
    are OpenVINO's own)."""
    require_graph_file(path)
    try:
        return core.read_model(path)
    except RuntimeError as e:
        if path.endswith('.xml'):
            raise
        raise unreadable_graph_error(path, RuntimeError('OpenVINO could not read it')) from e


def import_openvino():
    """The ``openvino`` module, or an ImportError that says how to install the extra."""
    try:
        import openvino
    except ImportError as e:
        raise ImportError(f'OpenVINO is not installed (an optional extra of slab-mmdet): {INSTALL_HINT}') from e
    return openvino


class OpenVinoGraph:
    """An ONNX graph compiled by OpenVINO for the CPU: ``run(feed)`` -> list of numpy arrays.

    Args:
        path (str): The ``.onnx`` file, or an OpenVINO IR ``.xml`` made from it (see
            :func:`read_openvino_model`).
        threads (int | None): Inference threads; None: OpenVINO's default.
        precision (str): 'f32' (default) or 'bf16' (the plugin's default where the CPU has it).
    """

    def __init__(self, path, threads=None, precision='f32'):
        if precision not in PRECISIONS:
            raise ValueError(f'OpenVINO precision {precision!r}: expected one of {PRECISIONS}')
        if threads is not None and (not isinstance(threads, int) or threads < 1):
            raise ValueError(f'OpenVINO threads must be an int >= 1 or None, got {threads!r}')
        ov = import_openvino()
        core = ov.Core()
        config = {'PERFORMANCE_HINT': 'LATENCY', 'NUM_STREAMS': 1, 'INFERENCE_PRECISION_HINT': precision}
        if threads:
            config['INFERENCE_NUM_THREADS'] = threads
        self.path, self.precision = path, precision
        self.compiled = core.compile_model(read_openvino_model(core, path), 'CPU', config)
        self.request = self.compiled.create_infer_request()
        self.input_names = [port.get_any_name() for port in self.compiled.inputs]

    def run(self, feed):
        """Outputs for ``feed`` ({input name: numpy array}), in the graph's output order (copies:
        the request's buffers are reused by the next run)."""
        missing = set(self.input_names) - set(feed)
        if missing:
            raise ValueError(f'{self.path}: inputs {sorted(missing)} missing from the feed; the graph takes '
                             f'{self.input_names}')
        results = self.request.infer({name: feed[name] for name in self.input_names})
        return [results[port].copy() for port in self.compiled.outputs]
