"""Register and deploy stage: a new registry version, a smoke test, and promotion through the gate."""
from __future__ import annotations

from typing import Optional

from prefect import get_run_logger, task
from prefect.artifacts import create_link_artifact
from prefect.events import emit_event

from llmops.infra.config import PipelineConfig
from llmops.models.records import (
    DatasetRef,
    EvalReport,
    ModelVersionRef,
    ProfileRef,
    QuantReport,
    TokenizerRef,
    TrainRef,
)
from llmops.models.release import Registry, register_candidate, release, smoke_test
from llmops.tasks.core.context import artifact_key, cache_dir, link, store


@task(name="reserve-version")
def reserve_version(model_name: str) -> int:
    """Claim the next version number now, so the profile and card can name it; a failed run leaves a gap."""
    return Registry(store(), model_name).claim_version()


@task(name="register-model")
def register_model(config: PipelineConfig, version: int, dataset: DatasetRef, tokenizer: TokenizerRef, run: TrainRef,
                   evaluation: EvalReport, quant: Optional[QuantReport],
                   reference_profile: Optional[ProfileRef]) -> ModelVersionRef:
    ref = register_candidate(store(), config, version=version, dataset=dataset, tokenizer=tokenizer, run=run,
                             evaluation=evaluation, quant=quant, reference_profile=reference_profile,
                             cache_dir=cache_dir())
    card_uri = ref.uri.rsplit("/", 1)[0] + "/README.md"
    create_link_artifact(link(card_uri), link_text=f"model card: {ref.name} v{ref.version}",
                         key=artifact_key(ref.name, "model-card"))
    get_run_logger().info("registered %s version %d (%s)", ref.name, ref.version, ", ".join(ref.variants))
    return ref


@task(name="promote-model")
def promote_model(version: ModelVersionRef, evaluation: EvalReport, promote: bool = True) -> Optional[int]:
    """Smoke-test the version, move staging (and production if the gate passed), and emit the decision as an event."""
    st = store()
    samples = smoke_test(st, version.name, version.version, cache_dir())
    passed = evaluation.gate.promote and promote
    production = release(st, version.name, version.version, passed, evaluation.gate.reason)
    emit_event(
        event="llmops.model.promoted" if passed else "llmops.model.rejected",
        resource={"prefect.resource.id": f"llmops.model.{version.name}", "prefect.resource.name": version.name},
        payload={"version": version.version, "production_version": production, "gate": evaluation.gate.model_dump()},
    )
    get_run_logger().info("v%d smoke test ok %s; production is now v%s", version.version, samples, production)
    return production
