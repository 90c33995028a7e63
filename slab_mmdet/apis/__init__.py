"""Loading configs and detectors, and writing checkpoints and other files: the one way every
part of slab-mmdet (deploy, benchmark, engine, tools, benchmarks/) does it."""
from .checkpoint import save_checkpoint
from .config import load_config, resolve_config_path
from .detector import (CheckpointMismatch, detector_inputs, first_test_image, inference_pipeline, load_detector,
                       load_weights, pipeline_steps, transform_name)
from .files import atomic_output, write_json

__all__ = ['CheckpointMismatch', 'atomic_output', 'detector_inputs', 'first_test_image', 'inference_pipeline',
           'load_config', 'load_detector', 'load_weights', 'pipeline_steps', 'resolve_config_path', 'save_checkpoint',
           'transform_name', 'write_json']
