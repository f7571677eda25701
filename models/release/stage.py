"""Releasing a trained run: register it as a version with card and profile, smoke-test it, promote through the gate."""
from __future__ import annotations

import logging
import math
from pathlib import Path
from typing import Optional

from llmops.infra.config import PipelineConfig
from llmops.infra.store import ArtifactStore, sha256_bytes
from llmops.models.model.generation import SamplingParams, complete
from llmops.models.model.loading import download_run_model, download_run_variant
from llmops.models.records import (
    CompressionReport,
    DatasetRef,
    EvalReport,
    ModelVersionRef,
    ProfileRef,
    TokenizerRef,
    TrainRef,
    VersionMetadata,
)
from llmops.models.release.card import render_card
from llmops.models.release.registry import Registry, RegistryError

log = logging.getLogger("llmops.release")


def register_candidate(store: ArtifactStore, config: PipelineConfig, *, version: int, dataset: DatasetRef,
                       tokenizer: TokenizerRef, run: TrainRef, evaluation: EvalReport,
                       compression: Optional[CompressionReport],
                       reference_profile: Optional[ProfileRef], cache_dir: Path) -> ModelVersionRef:
    """Fill the reserved ``version`` with the model, its card, eval report, reference profile and the variants
    that passed their gate."""
    registry = Registry(store, config.model_name)
    card = render_card(name=config.model_name, version=version, config=config, dataset=dataset,
                       tokenizer=tokenizer, run=run, evaluation=evaluation, compression=compression,
                       store_key=store.key_for)
    files: dict = {"README.md": card, "eval.json": store.get_bytes(store.key_for(evaluation.uri)),
                   "pipeline_config.yaml": config.to_yaml()}
    if reference_profile is not None:
        files["reference_profile.json"] = _verified(store, reference_profile)
    variants = {}
    for variant in compression.servable() if compression else []:
        variants[variant.variant] = download_run_variant(store, run, variant, cache_dir)
    metadata = VersionMetadata(run_id=run.run_id, dataset=dataset.uri, dataset_sha256=dataset.sha256,
                               tokenizer_sha256=tokenizer.sha256, gate=evaluation.gate,
                               test_bits_per_byte=evaluation.splits["test"].bits_per_byte,
                               serving_variant=compression.serve if compression else None)
    return registry.register(download_run_model(store, run, cache_dir), version=version, files=files,
                             variants=variants, metadata=metadata)


def _verified(store: ArtifactStore, ref: ProfileRef) -> bytes:
    """The staged profile's bytes, refused if they are not the ones its record hashed."""
    data = store.get_bytes(store.key_for(ref.uri))
    if sha256_bytes(data) != ref.sha256:
        raise RegistryError(f"{ref.uri} changed after it was profiled (sha256 {sha256_bytes(data)[:12]}, "
                            f"expected {ref.sha256[:12]}): rebuild the reference profile")
    return data


def smoke_test(store: ArtifactStore, name: str, version: int, cache_dir: Path) -> dict[str, str]:
    """Load every variant of the version exactly as the server will and generate a few tokens with each.

    Returns:
        The greedy completion of "The" per variant.
    """
    registry = Registry(store, name)
    samples = {}
    for variant in registry.manifest(version).variants:
        loaded = registry.load(version, variant=variant, cache_dir=cache_dir)
        params = SamplingParams(max_new_tokens=4, do_sample=False)
        completion = complete(loaded.model, loaded.tokenizer, ["The"], params)[0][0]
        if not math.isfinite(completion.mean_logprob):
            raise RegistryError(f"{name} version {version} ({variant}) failed its smoke test: "
                                f"log-prob {completion.mean_logprob}")
        samples[variant] = completion.text
    return samples


def release(store: ArtifactStore, name: str, version: int, promote: bool, reason: str,
            canary: Optional[str] = None) -> Optional[int]:
    """Point staging at the new version, and production too when the gate passed (the ``canary`` alias instead,
    when given: the canary check promotes it later); return production's version."""
    registry = Registry(store, name)
    registry.set_alias("staging", version, reason)
    if promote:
        registry.set_alias(canary or "production", version, reason)
    return registry.alias("production")
