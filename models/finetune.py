"""Fine-tuning: a pretrained causal LM by path or hub id, its content identity, LoRA adapters (peft) and their merge."""
from __future__ import annotations

import hashlib
import logging
from pathlib import Path

import torch
from transformers import AutoConfig, AutoModelForCausalLM, PretrainedConfig, PreTrainedModel

from infra.config import LoraSettings, ModelConfig, TokenizerConfig
from infra.store import sha256_file

log = logging.getLogger("llmops.finetune")

_WEIGHT_PATTERNS = ("*.safetensors", "*.bin")


class FinetuneError(ValueError):
    """A pretrained model that cannot be loaded or adapted as configured."""


def tokenizer_config_for(tokenizer_cfg: TokenizerConfig, model_cfg: ModelConfig) -> TokenizerConfig:
    """The tokenizer a run uses: a pretrained model brings its own unless tokenizer.kind=pretrained names one."""
    if not model_cfg.pretrained or tokenizer_cfg.kind == "pretrained":
        return tokenizer_cfg
    log.info("model.pretrained is set: using the tokenizer of %s (tokenizer.kind=bpe is not trained)", model_cfg.pretrained)
    return tokenizer_cfg.model_copy(update={"kind": "pretrained", "path": model_cfg.pretrained})


def pretrained_identity(name_or_path: str) -> str:
    """``<path or id>@<hash>``: the hash covers config.json and every weight file (local folder),
    or the hub commit the config resolved to (hub id), so a changed checkpoint gives a new run id."""
    folder = Path(name_or_path).expanduser()
    digest = hashlib.sha256(b"pretrained-v1")
    if folder.is_dir():
        files = [folder / "config.json"] + sorted(f for p in _WEIGHT_PATTERNS for f in folder.glob(p))
        for f in files:
            if f.exists():
                digest.update(f"{f.name}\x00{sha256_file(f)}\x00".encode())
        return f"{folder.resolve()}@{digest.hexdigest()[:16]}"
    config = pretrained_config(name_or_path)
    digest.update((getattr(config, "_commit_hash", None) or config.to_json_string()).encode())
    return f"{name_or_path}@{digest.hexdigest()[:16]}"


def pretrained_config(name_or_path: str) -> PretrainedConfig:
    try:
        return AutoConfig.from_pretrained(name_or_path)
    except (OSError, ValueError) as exc:
        raise FinetuneError(f"cannot load the config of model.pretrained={name_or_path!r}: {exc}") from None


def load_pretrained(name_or_path: str, attention: str = "sdpa") -> PreTrainedModel:
    """The pretrained model in fp32: mixed precision keeps fp32 master weights and autocasts the math."""
    try:
        return AutoModelForCausalLM.from_pretrained(name_or_path, attn_implementation=attention, dtype=torch.float32)
    except (OSError, ValueError) as exc:
        raise FinetuneError(f"cannot load model.pretrained={name_or_path!r}: {exc}") from None


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
