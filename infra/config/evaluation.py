"""The eval and gate sections: how a candidate is scored, sampled and gated."""
from __future__ import annotations

from typing import Optional

from pydantic import Field

from llmops.infra.config.base import Frozen


class GenerationSettings(Frozen):
    """One decoding setting of the evaluation samples: greedy or sampled, with its temperature, top-k, top-p and
    repetition penalty. Each setting completes every sample prompt as one seeded batch, so its samples are drawn
    again by generating the same prompts with the same settings."""

    name: str = Field(description="Label of the setting in the evaluation report and model card, e.g. greedy.")
    do_sample: bool = Field(
        False, description="Sample from the distribution; false: greedy argmax, and temperature, top_k, top_p are "
        "ignored."
    )
    temperature: float = Field(
        1.0, gt=0, description="Logits are divided by it before sampling (do_sample): below 1 sharper, above flatter."
    )
    top_k: Optional[int] = Field(
        None, ge=1, description="Sample among the k most likely tokens only (do_sample); null: no cut."
    )
    top_p: Optional[float] = Field(
        None, gt=0, le=1,
        description="Nucleus sampling: only the most likely tokens whose probabilities sum to top_p (do_sample); "
        "null: no cut.",
    )
    repetition_penalty: float = Field(
        1.0, gt=0,
        description="transformers' repetition penalty on tokens already in the prompt or completion: above 1 "
        "discourages repeats, 1 is none; greedy decoding too.",
    )
    seed: int = Field(0, description="torch seed set before this setting generates, so its samples are reproducible.")


def _default_generations() -> list[GenerationSettings]:
    return [
        GenerationSettings(name="greedy"),
        GenerationSettings(name="temperature-0.8", do_sample=True, temperature=0.8),
        GenerationSettings(name="top-k-40", do_sample=True, top_k=40),
        GenerationSettings(name="top-p-0.9", do_sample=True, top_p=0.9),
    ]


class EvalConfig(Frozen):
    """How a trained candidate is measured: up to max_docs validation and test documents are scored in bits per byte
    (sliding windows over the model's context), production is scored on the same test documents for the gate, and
    every generation setting completes every sample prompt for the evaluation report and model card."""

    max_docs: Optional[int] = Field(400, ge=1, description="Score at most this many documents per split.")
    stride: Optional[int] = Field(
        None, ge=1, description="Sliding-window stride for long documents (default: half the context)."
    )
    batch_size: int = Field(
        16, ge=1,
        description="Context windows per forward pass when scoring documents (candidate and production): memory and "
        "speed, not the scores.",
    )
    sample_prompts: list[str] = Field(
        default_factory=lambda: ["Return the", "This module provides", "If the"],
        description="Prompts every generation setting completes; the completions go into the evaluation report and "
        "model card.",
    )
    max_new_tokens: int = Field(
        32, ge=1,
        description="Tokens generated per sample completion; the prompt keeps its last (context - this) tokens.",
    )
    generations: list[GenerationSettings] = Field(
        default_factory=_default_generations,
        description="Decoding settings each sample prompt is completed with (default: greedy, temperature 0.8, "
        "top-k 40, top-p 0.9).",
    )


class GateConfig(Frozen):
    """Champion/challenger: promote only a candidate that beats production (or, with none, a bound)."""

    max_bits_per_byte: float = Field(
        3.0, gt=0, description="With no production model: the candidate must score at most this."
    )
    min_improvement: float = Field(0.0, ge=0, description="Bits per byte the candidate must gain over production.")
    confidence: float = Field(0.95, gt=0.5, lt=1, description="Confidence of the paired bootstrap interval.")
    bootstrap_samples: int = Field(
        1000, ge=100,
        description="Resamples of the documents in the paired bootstrap (also the adaptation gate's): more gives a "
        "steadier interval, slower.",
    )
