"""Evaluation: per-document scoring (perplexity, bits per byte), samples, and the gate against production."""
from llmops.models.evaluation.gate import gate
from llmops.models.evaluation.scoring import bits_per_byte, score_documents
from llmops.models.evaluation.stage import evaluate_run

__all__ = [
    "bits_per_byte", "evaluate_run", "gate", "score_documents",
]
