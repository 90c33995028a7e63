"""The benchmark's error types."""


class BenchmarkError(Exception):
    """Bad input to the latency benchmark (a value, a path, a model); the message says what is valid."""


class FusionRefused(BenchmarkError):
    """The fusion (``slab_mmdet.deploy.fused_copy``) refused a model (a LayerNorm model, one still annealing, a backbone
    without ``switch_to_deploy``): ``--fuse both`` then measures it unfused only."""
