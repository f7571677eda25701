"""The id of a training run: a content address of its data, tokenizer, configuration and pretrained weights.

Which configuration fields count is marked on the fields themselves (``llmops.infra.config.RunIdRule``).
"""
from __future__ import annotations

from typing import Optional

from pydantic import BaseModel

from llmops.infra.config import ModelConfig, RunIdRule, TrainConfig
from llmops.infra.store import content_key
from llmops.models.model.pretrained import pretrained_identity
from llmops.models.records import PackedRef, TokenizerRef


def id_json(cfg: BaseModel) -> str:
    """``cfg`` as hashed into a run id: execution-only fields left out, later additions left out at their
    defaults, pinned fields at their pinned value."""
    skip, pinned = set(), {}
    for name, field in type(cfg).model_fields.items():
        rule = next((m for m in field.metadata if isinstance(m, RunIdRule)), None)
        if rule is None:
            continue
        if rule.rule == "execution_only" or (rule.rule == "omitted_at_default" and getattr(cfg, name) == field.default):
            skip.add(name)
        elif rule.rule == "pinned":
            pinned[name] = rule.value
    return cfg.model_copy(update=pinned).model_dump_json(exclude=skip)


def run_id_for(packed: PackedRef, tokenizer: TokenizerRef, model_cfg: ModelConfig, train_cfg: TrainConfig,
               base_model: Optional[str] = None) -> str:
    """The same data, tokenizer, configs (and pretrained weights) give the same id, so a rerun resumes (or reuses)
    the run.

    Args:
        base_model: :func:`llmops.models.model.pretrained.pretrained_identity` of ``model_cfg.pretrained``: path
            and content hash, so fine-tuning a changed checkpoint at the same path is a new run.
    """
    parts = ["run-v1", packed.sha256, tokenizer.sha256, id_json(model_cfg), id_json(train_cfg)]
    if base_model:
        parts.append(base_model)
    return content_key(*parts)[:16]


def run_identity(packed: PackedRef, tokenizer: TokenizerRef, model_cfg: ModelConfig,
                 train_cfg: TrainConfig) -> tuple[str, Optional[str]]:
    """(run id, pretrained identity or None) of the run these inputs make."""
    base = pretrained_identity(model_cfg.pretrained) if model_cfg.pretrained else None
    return run_id_for(packed, tokenizer, model_cfg, train_cfg, base), base
