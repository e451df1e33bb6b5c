"""hakit: software-only high availability and load balancing for Linux applications."""

__version__ = "0.1.0"
