"""Evaluation: per-document scoring (perplexity, bits per byte), samples, and the gate against production."""
