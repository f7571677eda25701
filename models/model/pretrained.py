"""Pretrained models: a causal LM by local path or hub id, its config, its content identity, its tokenizer."""
from __future__ import annotations

import hashlib
import logging
from pathlib import Path

import torch
from transformers import AutoConfig, AutoModelForCausalLM, PretrainedConfig, PreTrainedModel

from llmops.infra.config import ModelConfig, TokenizerConfig
from llmops.infra.store import sha256_file

log = logging.getLogger("llmops.pretrained")

_WEIGHT_PATTERNS = ("*.safetensors", "*.bin")


class FinetuneError(ValueError):
    """A pretrained model that cannot be loaded or adapted as configured."""


def tokenizer_config_for(tokenizer_cfg: TokenizerConfig, model_cfg: ModelConfig) -> TokenizerConfig:
    """The tokenizer a run uses: a pretrained model brings its own unless tokenizer.kind=pretrained names one."""
    if not model_cfg.pretrained or tokenizer_cfg.kind == "pretrained":
        return tokenizer_cfg
    log.info("model.pretrained is set: using the tokenizer of %s (tokenizer.kind=bpe is not trained)",
             model_cfg.pretrained)
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


