"""Model presets: decoder-only transformers configs by name, each overridable field by field."""
from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from transformers import AutoConfig, PretrainedConfig

# Llama-style (RMSNorm, SwiGLU, RoPE) unless the preset says otherwise. Sizes are the trunk;
# the embedding (tied with the LM head) adds vocab_size * hidden_size parameters.
PRESETS: dict[str, dict[str, Any]] = {
    # For tests: trains in seconds, learns patterned text.
    "tiny": dict(model_type="llama", hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                 num_attention_heads=2, num_key_value_heads=2),
    # The CPU default: ~0.8 M trunk parameters, a few minutes of training on 2 cores.
    "mini": dict(model_type="llama", hidden_size=128, intermediate_size=352, num_hidden_layers=4,
                 num_attention_heads=4, num_key_value_heads=4),
    # ~10 M with an 8k vocabulary: CPU demos that want a model that writes sentences.
    "small": dict(model_type="llama", hidden_size=256, intermediate_size=688, num_hidden_layers=8,
                  num_attention_heads=8, num_key_value_heads=8),
    # GPT-2-124M class (Llama layout at GPT-2 small's width and depth): GPUs.
    "gpt2-124m": dict(model_type="llama", hidden_size=768, intermediate_size=2048, num_hidden_layers=12,
                      num_attention_heads=12, num_key_value_heads=12),
    # The original GPT-2 architecture at 124M, for comparisons with nanoGPT and the literature.
    "gpt2": dict(model_type="gpt2", n_embd=768, n_layer=12, n_head=12),
    # ~1B class (Llama-3.2-1B shape): GPUs, bf16.
    "llama-1b": dict(model_type="llama", hidden_size=2048, intermediate_size=8192, num_hidden_layers=16,
                     num_attention_heads=32, num_key_value_heads=8, rope_theta=500000.0),
}


class PresetError(ValueError):
    """An unknown preset or a bad override."""


def build_config(preset: str, *, vocab_size: int, context_length: int, bos_token_id: int,
                 eos_token_id: int, overrides: Mapping[str, Any] | None = None) -> PretrainedConfig:
    """A transformers config for ``preset`` sized to the tokenizer and context, with ``overrides`` applied."""
    if preset not in PRESETS:
        raise PresetError(f"unknown model preset {preset!r}; choose one of {', '.join(PRESETS)}")
    fields = dict(PRESETS[preset])
    model_type = fields.pop("model_type")
    if model_type == "gpt2":
        fields.update(n_positions=context_length, vocab_size=vocab_size)
    else:
        fields.update(max_position_embeddings=context_length, vocab_size=vocab_size, tie_word_embeddings=True)
    fields.update(bos_token_id=bos_token_id, eos_token_id=eos_token_id)
    config = AutoConfig.for_model(model_type, **fields)
    for key, value in (overrides or {}).items():
        if not hasattr(config, key):
            raise PresetError(f"model.overrides.{key}: {type(config).__name__} has no field {key!r}")
        setattr(config, key, value)
    return config
