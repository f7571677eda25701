"""Loading a model for inference: a run's or a version's folder, as fp32 or as one of its compressed variants.

The one loader evaluation, compression, drift scoring, the registry and serving share.
"""
from __future__ import annotations

from pathlib import Path
from typing import Optional, Union

import torch
from transformers import AutoModelForCausalLM, AutoTokenizer, PreTrainedModel, PreTrainedTokenizerBase

from llmops.infra.store import ArtifactStore
from llmops.models.model.variants import VARIANTS, VariantError, load_variant
from llmops.models.records import TrainRef, VariantReport


def load_model(model_dir: Union[str, Path], variant: str = "fp32", *, variant_dir: Optional[Path] = None,
               device: str = "cpu", attention: str = "sdpa") -> tuple[PreTrainedModel, PreTrainedTokenizerBase]:
    """The model (in eval mode) and tokenizer of a save_pretrained folder.

    Args:
        model_dir: The fp32 model's folder (config.json, model.safetensors, tokenizer files).
        variant: ``fp32``, or a compressed variant (``bf16``, ``int8``; llmops.models.model.variants) loaded from
            its own folder (an int8 one rebuilt on the fp32 config).
        variant_dir: Where the variant's files are (default: ``model_dir/variants/<variant>``, a registry
            version's layout).
        device: Where an fp32 or bf16 model goes (the int8 variant runs on CPU).
        attention: The attention kernel (``model.attention``).
    """
    model_dir = _saved_model(model_dir)
    tokenizer = AutoTokenizer.from_pretrained(model_dir)
    if variant == "fp32":
        model = AutoModelForCausalLM.from_pretrained(model_dir, attn_implementation=attention).to(torch.device(device))
    elif variant in VARIANTS:
        model = load_variant(model_dir, variant_dir or model_dir / "variants" / variant, attention)
        if variant != "int8":
            model = model.to(torch.device(device))
    else:
        raise VariantError(f"unknown model variant {variant!r}; known: {', '.join(VARIANTS)}")
    return model.eval(), tokenizer


def load_tokenizer(model_dir: Union[str, Path]) -> PreTrainedTokenizerBase:
    """The tokenizer of a saved model folder alone (what drift checks need to count tokens)."""
    return AutoTokenizer.from_pretrained(_saved_model(model_dir))


def _saved_model(model_dir: Union[str, Path]) -> Path:
    model_dir = Path(model_dir)
    if not (model_dir / "config.json").is_file():  # else transformers tries the Hub and fails offline
        raise FileNotFoundError(f"{model_dir} is not a saved model folder (no config.json)")
    return model_dir


def download_run_model(store: ArtifactStore, ref: TrainRef, cache_dir: Path) -> Path:
    """A local copy of the run's final model folder."""
    local = Path(cache_dir) / "runs" / ref.run_id / "final"
    if not (local / "model.safetensors").exists():
        store.download_dir(store.key_for(ref.uri), local)
    return local


def download_run_variant(store: ArtifactStore, run: TrainRef, variant: VariantReport, cache_dir: Path) -> Path:
    """A local copy of one of the run's variants as the compress stage stored it."""
    local = Path(cache_dir) / "runs" / run.run_id / "variants-download" / variant.variant
    store.download_dir(store.key_for(variant.uri), local)
    return local
