"""The eval and gate sections: how a candidate is scored, sampled and gated."""
from __future__ import annotations

from typing import Optional

from pydantic import Field

from llmops.infra.config.base import Frozen


class GenerationSettings(Frozen):
    name: str
    do_sample: bool = False
    temperature: float = Field(1.0, gt=0)
    top_k: Optional[int] = Field(None, ge=1)
    top_p: Optional[float] = Field(None, gt=0, le=1)
    repetition_penalty: float = Field(1.0, gt=0)
    seed: int = 0


def _default_generations() -> list[GenerationSettings]:
    return [
        GenerationSettings(name="greedy"),
        GenerationSettings(name="temperature-0.8", do_sample=True, temperature=0.8),
        GenerationSettings(name="top-k-40", do_sample=True, top_k=40),
        GenerationSettings(name="top-p-0.9", do_sample=True, top_p=0.9),
    ]


class EvalConfig(Frozen):
    max_docs: Optional[int] = Field(400, ge=1, description="Score at most this many documents per split.")
    stride: Optional[int] = Field(
        None, ge=1, description="Sliding-window stride for long documents (default: half the context)."
    )
    batch_size: int = Field(16, ge=1)
    sample_prompts: list[str] = Field(
        default_factory=lambda: ["Return the", "This module provides", "If the"],
    )
    max_new_tokens: int = Field(32, ge=1)
    generations: list[GenerationSettings] = Field(default_factory=_default_generations)


class GateConfig(Frozen):
    """Champion/challenger: promote only a candidate that beats production (or, with none, a bound)."""

    max_bits_per_byte: float = Field(
        3.0, gt=0, description="With no production model: the candidate must score at most this."
    )
    min_improvement: float = Field(0.0, ge=0, description="Bits per byte the candidate must gain over production.")
    confidence: float = Field(0.95, gt=0.5, lt=1, description="Confidence of the paired bootstrap interval.")
    bootstrap_samples: int = Field(1000, ge=100)
