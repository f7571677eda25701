"""The model itself: presets, pretrained models and LoRA, generation and scoring, compressed variants, loading,
and the traffic record a generation makes."""
from llmops.models.model.generation import (
    Completion,
    PromptScore,
    SamplingParams,
    complete,
    context_length,
    score_prompts,
)
from llmops.models.model.loading import VARIANTS, download_run_model, download_run_variant, load_model, load_tokenizer
from llmops.models.model.presets import PresetError, build_config
from llmops.models.model.pretrained import FinetuneError, tokenizer_config_for
from llmops.models.model.reference import reference_records
from llmops.models.model.traffic import traffic_record
from llmops.models.model.variants import VariantError, serving_variant

__all__ = [
    "Completion", "FinetuneError", "PresetError", "PromptScore", "SamplingParams", "VARIANTS", "build_config",
    "complete", "context_length", "download_run_model", "download_run_variant", "load_tokenizer", "load_model",
    "reference_records", "score_prompts", "serving_variant", "tokenizer_config_for", "traffic_record", "VariantError",
]
