"""Compression: a trained run's compressed variants, measured beside fp32."""
from llmops.models.compression.stage import compress_run

__all__ = [
    "compress_run",
]
