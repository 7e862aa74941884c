"""NanoMQ: a specification-first, low-latency persistent message queue with a C core."""

__all__ = ["__version__"]

__version__ = "0.1.0"
