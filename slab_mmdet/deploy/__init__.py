"""Deploying a trained detector: its norms fused away (:mod:`.fuse`), checked equivalent
(:mod:`.equivalence`), written as an ONNX graph (:mod:`.onnx_export`, checked by :mod:`.export`),
read (:mod:`.graph`), run (:mod:`.onnx_detector`; in OpenVINO: :mod:`.openvino_runtime`) and
quantised (:mod:`.quantize`).

The fold maths itself lives with the layers (:mod:`slab_mmdet.models.layers.fusion`).
"""
from .equivalence import compare_detections, compare_features, detections_equivalent
from .fuse import count_norm_layers, deploy_config, deployable_detector, fuse_checkpoint, fuse_detector, fused_copy

__all__ = [
    'compare_detections', 'compare_features', 'count_norm_layers', 'deploy_config', 'deployable_detector',
    'detections_equivalent', 'fuse_checkpoint', 'fuse_detector', 'fused_copy',
]
