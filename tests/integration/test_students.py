"""Students through a real Prefect API: the training pipeline prunes its candidate, heals it by distillation and
releases it as its own version; ``llmops distill`` distills a preset student from a registered teacher."""
from __future__ import annotations

import uuid

import pytest

from llmops.flows.cli import main
from llmops.infra.config import PipelineConfig
from llmops.infra.store import open_store, sha256_file
from llmops.models.model.loading import download_run_model
from llmops.models.release.registry import Registry
from tests.helpers import make_registered_model

pytestmark = pytest.mark.usefixtures("prefect_api")


def test_the_pipeline_prunes_heals_and_releases_a_student_with_its_lineage(tmp_path):
    from llmops.flows.training_pipeline import training_pipeline

    config = PipelineConfig.from_yaml("configs/tiny.yaml").with_overrides([
        f"model_name=students-{uuid.uuid4().hex[:8]}", "compress.variants=[]", "compress.prune.enabled=true",
        "compress.prune.keep=0.5", "compress.prune.calibration_docs=16", "train.max_steps=30"])
    report = training_pipeline(config)
    student = report.student
    assert student is not None and student.pruned is not None
    assert report.version.version == 1 and student.version.version == 2
    teacher_params, student_params = report.run.parameters, student.run.parameters
    assert student.pruned.parameters_after == student_params < 0.85 * teacher_params
    assert any(after < before for before, after in student.pruned.shape.values())

    run = student.run
    assert run.method == "distill" and run.distillation is not None
    store = open_store()
    teacher_dir = download_run_model(store, report.run, tmp_path)
    assert run.distillation.teacher_sha256 == sha256_file(teacher_dir / "model.safetensors")
    assert run.distillation.teacher_version == 1 and run.distillation.loss == "forward_kl"
    assert run.steps == config.train.max_steps

    registry = Registry(store, config.model_name)
    assert registry.manifest(2).metadata.run_id == run.run_id
    card = registry.read_file(2, "README.md").decode()
    assert "pruned decoder-only language model distilled from a teacher" in card
    assert f"| teacher | `{report.run.uri}` (version 1), sha256 `{run.distillation.teacher_sha256[:16]}`" in card
    # gated against production like any candidate: promoted exactly when its gate says so
    assert student.promoted == student.evaluation.gate.promote
    assert (registry.alias("production") == 2) == student.promoted


def test_llmops_distill_trains_a_preset_student_from_a_registered_teacher(capsys):
    name = f"teacher-{uuid.uuid4().hex[:8]}"
    teacher = make_registered_model(open_store(), name, context_length=64)
    code = main(["distill", "--config", "configs/tiny.yaml", "--teacher", "production", "--student-preset", "tiny",
                 "--set", f"model_name={name}", "--set", "compress.variants=[]", "--set", "train.max_steps=20",
                 "--set", "compress.distill.student_overrides={num_hidden_layers: 1}",
                 "--set", "compress.distill.loss=jsd", "--set", "compress.distill.top_k=16"])
    assert code == 0
    registry = Registry(open_store(), name)
    assert registry.versions() == [1, 2]
    assert f"registered as {name} v2" in capsys.readouterr().out
    meta = registry.manifest(2).metadata
    assert meta.tokenizer_sha256, "the data was tokenized with the teacher's own tokenizer"
    card = registry.read_file(2, "README.md").decode()
    assert f"| teacher | `{teacher.uri}` (version 1)" in card and "jsd, alpha 0.5, temperature 2, top-16" in card
    assert "num_hidden_layers: 1" in card, "the student's own model section is recorded, not the teacher's"


def test_a_teacher_that_does_not_exist_is_a_clear_error(capsys):
    name = f"teacher-{uuid.uuid4().hex[:8]}"
    make_registered_model(open_store(), name)
    assert main(["distill", "--config", "configs/tiny.yaml", "--teacher", "no-such-alias",
                 "--set", f"model_name={name}"]) == 2
    assert f"llmops distill: error: model '{name}' has no 'no-such-alias' alias" in capsys.readouterr().err
