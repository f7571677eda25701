"""LoRA adapters (peft) on a causal LM, their merge for deployment, and the model inside a wrapper."""
from __future__ import annotations

import torch
from transformers import PreTrainedModel

from llmops.infra.config import LoraSettings
from llmops.models.model.pretrained import FinetuneError


def apply_lora(model: PreTrainedModel, settings: LoraSettings) -> torch.nn.Module:
    """Wrap ``model`` in LoRA adapters: the adapters train, every base weight is frozen.

    The default targets (peft's ``all-linear``) are every Linear/Conv1D projection of the
    attention and MLP blocks, the LM head excluded. Works on a ``meta``-device model too (for
    counting parameters without allocating them).
    """
    from peft import LoraConfig, get_peft_model  # peft imports in seconds: only when fine-tuning

    config = LoraConfig(
        task_type="CAUSAL_LM", r=settings.r, lora_alpha=settings.alpha, lora_dropout=settings.dropout,
        target_modules=settings.target_modules or "all-linear",
    )
    try:
        return get_peft_model(model, config)
    except ValueError as exc:  # e.g. target modules not found in the model
        raise FinetuneError(f"train.lora: {exc}") from None



def is_lora(model: torch.nn.Module) -> bool:
    return hasattr(model, "peft_config") and hasattr(model, "merge_and_unload")



def merge_for_deployment(model: torch.nn.Module) -> PreTrainedModel:
    """A plain transformers model: LoRA adapters merged into the base weights (W + B·A·alpha/r), else as is."""
    if is_lora(model):
        return model.merge_and_unload()
    return model



def base_model(model: torch.nn.Module) -> PreTrainedModel:
    """The transformers model inside a peft wrapper (or the model itself)."""
    return model.get_base_model() if is_lora(model) else model
