"""The model a run trains: built fresh or loaded pretrained, checkpointed, placed (or sharded) on its device."""
from __future__ import annotations

from typing import Optional

import torch
from transformers import AutoModelForCausalLM, PretrainedConfig, PreTrainedModel

from llmops.infra.config import TrainConfig
from llmops.models.model.kernels import recompute_contexts
from llmops.models.model.lora import base_model
from llmops.models.model.pretrained import load_pretrained
from llmops.models.training.checkpoint import TrainingError
from llmops.models.training.distributed import Parallel


def build_model(config: PretrainedConfig, seed: int, init_from: Optional[str] = None,
                attention: str = "sdpa") -> PreTrainedModel:
    """A fresh model from ``config`` (seeded), or a pretrained one from a local path or hub id."""
    torch.manual_seed(seed)
    if init_from:
        return load_pretrained(init_from, attention)
    return AutoModelForCausalLM.from_config(config, attn_implementation=attention)


def enable_checkpointing(model: torch.nn.Module, onednn: bool = False) -> None:
    """Gradient (activation) checkpointing on the transformers model inside ``model``; idempotent.

    With ``onednn`` the recomputation in the backward pass runs the linear layers through oneDNN
    too (the forward's TorchFunctionMode is closed by then), so it saves what the forward saved.
    Enabled before with the other kernels (preflight's warm-up, then a calibration's choice), it is
    enabled again with these.
    """
    base = base_model(model)
    if not base.supports_gradient_checkpointing:
        raise TrainingError(f"{type(base).__name__} does not support train.gradient_checkpointing")
    enabled = getattr(base, "is_activation_checkpointing", None)
    if enabled is None:
        enabled = base.is_gradient_checkpointing
    if enabled and getattr(base, "_llmops_recompute_onednn", onednn) == onednn:
        return
    if enabled:  # the newer name where it exists, as below
        getattr(base, "activation_checkpointing_disable", base.gradient_checkpointing_disable)()
    base._llmops_recompute_onednn = onednn
    # non-reentrant checkpointing works when the inputs need no grad (LoRA's frozen embeddings)
    kwargs = {"use_reentrant": False}
    if onednn:
        kwargs["context_fn"] = recompute_contexts
    if hasattr(base, "activation_checkpointing_enable"):  # the newer name; the old one warns
        base.activation_checkpointing_enable(activation_checkpointing_kwargs=kwargs)
    else:
        base.gradient_checkpointing_enable(gradient_checkpointing_kwargs=kwargs)


def prepare_model(model: torch.nn.Module, cfg: TrainConfig, device: torch.device, onednn: bool = False,
                  parallel: Optional[Parallel] = None) -> None:
    """Checkpointing as configured, on ``device``, in training mode (idempotent: preflight and the loop both call it).

    Under FSDP (``parallel.sharded``) the model is sharded in place instead of moved: the whole
    model never goes to one device, and ranks other than 0 may pass a meta-device skeleton.
    """
    if cfg.gradient_checkpointing:
        enable_checkpointing(model, onednn)
    if parallel is not None and parallel.sharded:
        parallel.wrap(model, device)
    else:
        model.to(device)
    model.train()
