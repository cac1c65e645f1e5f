"""benchop: a Kubernetes operator for benchmarking LLM inference servers."""

__version__ = "0.1.0"
