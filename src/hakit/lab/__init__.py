"""`hakit lab`: real multi-node hakit clusters on one Linux machine (see docs/lab.md)."""

from hakit.lab.errors import LabError
from hakit.lab.lab import Lab

__all__ = ["Lab", "LabError"]
