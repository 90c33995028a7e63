"""The benchmark's one error type."""


class BenchmarkError(Exception):
    """Bad input to the latency benchmark (a value, a path, a model); the message says what is valid."""
