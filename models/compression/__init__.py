"""Compression: a trained run's compressed variants, measured beside fp32."""
