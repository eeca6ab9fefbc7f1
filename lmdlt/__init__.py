"""lmdlt: long-tailed medical image classification, reproduced end to end."""

__version__ = "0.2.0"
