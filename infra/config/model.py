"""The model section: a preset or a pretrained model to fine-tune, and its attention kernel."""
from __future__ import annotations

from typing import Annotated, Literal, Optional, Union

from pydantic import Field

from llmops.infra.config.base import ADDED_LATER, EXECUTION_ONLY, Frozen

# The names of llmops.models.model.presets.PRESETS (a test keeps the two equal): checked when the config loads,
# not after ingest and tokenization have run.
PresetName = Literal["auto", "tiny", "mini", "small", "gpt2-124m", "gpt2", "llama-1b"]


class ModelConfig(Frozen):
    """What is trained: a preset decoder-only architecture built from scratch (Llama-style, or the original GPT-2),
    sized to the tokenizer's vocabulary with train.block_size as its context, with fields of its transformers config
    overridable; or a pretrained causal LM to fine-tune; and the attention kernel it runs with."""

    preset: PresetName = Field(
        "mini",
        description="A preset from models/model/presets.py: tiny (tests), mini and small (CPU), gpt2-124m and gpt2 "
        "(GPT-2-124M class), llama-1b; auto: sized to the run's wall-clock budget on this machine "
        "(train.time_budget_s or max_minutes; models/training/budget.py); ignored when `pretrained` is set.",
    )
    overrides: dict[str, Union[int, float, str, bool]] = Field(
        default_factory=dict, description="Fields of the transformers config to override, e.g. {num_hidden_layers: 2}."
    )
    attention: Annotated[Literal["sdpa", "eager"], EXECUTION_ONLY] = Field(
        "sdpa",
        description="Attention kernel: PyTorch scaled_dot_product_attention (flash/memory-efficient on GPU), "
        "or the eager matmul-softmax reference.",
    )
    pretrained: Annotated[Optional[str], ADDED_LATER] = Field(
        None,
        description="Fine-tune this causal LM instead of training a preset from scratch: a local folder "
        "(save_pretrained layout) or a hub id when online. Its tokenizer is used unless "
        "tokenizer.kind=pretrained names another.",
    )
