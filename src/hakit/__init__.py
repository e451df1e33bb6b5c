"""hakit: software-only high availability and load balancing for Linux applications."""

__version__ = "0.3.0"
