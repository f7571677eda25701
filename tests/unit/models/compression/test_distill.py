"""Knowledge distillation: the divergences, the loop with a teacher, the stage (run id, resume, vocabulary check)."""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from llmops.infra.config import DistillConfig, ModelConfig, TrainConfig
from llmops.infra.store import LocalStore, sha256_file
from llmops.models.compression import DistillationError, distill, student_config
from llmops.models.data.packing import pack_dataset
from llmops.models.records import DatasetRef, TokenizerRef
from llmops.models.training.batching import block_batch, pad_batch
from llmops.models.training.checkpoint import Checkpointer
from llmops.models.training.distillation import Teacher, TeacherSpec, distilled_run_id, divergence
from llmops.models.training.loop import read_metrics, train
from llmops.models.training.run import run_training
from llmops.models.training.run_id import run_identity
from tests.helpers import stdlib_texts, tiny_tokenizer
from tests.helpers import tiny_model as tiny_lm
from tests.unit.models.training.test_loop import BLOCK, VOCAB, config, patterned_blocks, tiny_model
from tests.unit.models.training.test_training_features import CrashAt, crash_at

pytestmark = pytest.mark.usefixtures("one_torch_thread")

LOSSES = [("forward_kl", None), ("reverse_kl", None), ("jsd", None), ("forward_kl", 5), ("reverse_kl", 5), ("jsd", 5)]


def _mean_divergence(teacher_model, student_model, cfg: DistillConfig, batch) -> float:
    teacher = Teacher(teacher_model, cfg, VOCAB)
    with torch.no_grad():
        logits = student_model(input_ids=batch.input_ids, attention_mask=batch.attention_mask).logits
        summed = teacher.summed_divergence(logits, batch)
    mean = teacher.pop_step_mean()
    assert mean == pytest.approx(summed.item() / batch.targets, rel=1e-6)
    return mean


# ---------------------------------------------------------------- the divergences


@pytest.mark.parametrize("loss,top_k", LOSSES)
def test_each_divergence_is_finite_positive_and_zero_for_the_teacher_itself(loss, top_k):
    cfg = DistillConfig(loss=loss, top_k=top_k, temperature=2.0)
    batch = pad_batch([np.arange(2, 30), np.arange(5, 14), np.arange(3, 25)])  # padding is not scored
    apart = _mean_divergence(tiny_model(seed=0), tiny_model(seed=1), cfg, batch)
    assert np.isfinite(apart) and apart > 1e-4
    same = _mean_divergence(tiny_model(seed=0), tiny_model(seed=0), cfg, batch)
    assert abs(same) < 1e-6


def test_forward_kl_is_hintons_term_and_jsd_is_trls():
    torch.manual_seed(0)
    s, t, temperature = torch.randn(12, VOCAB) * 3, torch.randn(12, VOCAB) * 3, 2.0
    student, teacher = F.log_softmax(s / temperature, -1), F.log_softmax(t / temperature, -1)
    hinton = F.kl_div(student, teacher, log_target=True, reduction="none").sum(-1)
    assert divergence(student, teacher, "forward_kl") == pytest.approx(hinton, rel=1e-5)
    assert divergence(student, teacher, "reverse_kl") == pytest.approx(
        F.kl_div(teacher, student, log_target=True, reduction="none").sum(-1), rel=1e-5)
    beta = 0.3  # TRL: mixture (1 - beta) * S + beta * T; beta * KL(T || M) + (1 - beta) * KL(S || M)
    mixture = torch.log((1 - beta) * student.exp() + beta * teacher.exp())
    trl = (beta * F.kl_div(mixture, teacher, log_target=True, reduction="none")
           + (1 - beta) * F.kl_div(mixture, student, log_target=True, reduction="none")).sum(-1)
    assert divergence(student, teacher, "jsd", beta) == pytest.approx(trl, rel=1e-4, abs=1e-7)
    assert divergence(student, teacher, "jsd", 0.5) == pytest.approx(divergence(teacher, student, "jsd", 0.5),
                                                                      rel=1e-5)


def test_the_comparison_is_over_the_tokenizers_vocabulary_and_the_same_targets_as_the_loss():
    """Logits past ``vocab`` (a larger embedding matrix) are left out; the last position predicts nothing."""
    model, batch = tiny_model(seed=0), block_batch(torch.from_numpy(patterned_blocks(4).astype(np.int64)))
    teacher = Teacher(model, DistillConfig(), VOCAB)
    with torch.no_grad():
        logits = model(input_ids=batch.input_ids).logits
        wider = torch.cat([logits, torch.full_like(logits[..., :8], 50.0)], -1)  # 8 extra ids, very likely
        assert abs(teacher.summed_divergence(wider, batch).item()) < 1e-4
        shifted = logits.clone()
        shifted[:, -1] = torch.randn_like(shifted[:, -1]) * 10  # the last position has no target
        assert abs(teacher.summed_divergence(shifted, batch).item()) < 1e-4
    assert teacher.pop_step_mean() == pytest.approx(0.0, abs=1e-6) and teacher.pop_step_mean() == 0.0
    assert not any(p.requires_grad for p in model.parameters()) and not model.training


# ---------------------------------------------------------------- the loop with a teacher


def test_a_distilled_student_lowers_its_loss_and_its_divergence(tmp_path):
    blocks = patterned_blocks()
    teacher = train(tiny_model(seed=0), blocks, blocks[:16], config(max_steps=40),
                    Checkpointer(LocalStore(tmp_path / "t"), "ck"), tmp_path / "teacher.jsonl").model
    assert all("kl" not in r for r in read_metrics(tmp_path / "teacher.jsonl"))
    cfg = DistillConfig(alpha=0.5, temperature=2.0)
    out = train(tiny_model(seed=7), blocks, blocks[:16], config(max_steps=40),
                Checkpointer(LocalStore(tmp_path / "s"), "ck"), tmp_path / "student.jsonl",
                teacher=Teacher(teacher, cfg, VOCAB))
    rows = read_metrics(tmp_path / "student.jsonl")
    assert len(rows) == 40 and all(r["kl"] > 0 for r in rows)
    first, last = rows[:5], rows[-5:]
    assert np.mean([r["loss"] for r in last]) < 0.6 * np.mean([r["loss"] for r in first])
    assert np.mean([r["kl"] for r in last]) < 0.6 * np.mean([r["kl"] for r in first])
    assert out.state.last_val_loss < rows[0]["loss"]


# ---------------------------------------------------------------- the stage


def _setup(tmp_path: Path, teacher_vocab: int = 400):
    """A store with packed blocks of the 400-token tokenizer, and a teacher folder (trained a few steps)."""
    tok, store = tiny_tokenizer(), LocalStore(tmp_path / "store")
    dataset = DatasetRef(name="d", uri="/d/manifest.json", sha256="d" * 64, splits={}, sources=["docs"])
    tok_ref = TokenizerRef(uri="/t", sha256="t" * 64, kind="bpe", vocab_size=len(tok), eos_token_id=tok.eos_token_id)
    texts = stdlib_texts()[:60]
    packed = pack_dataset(store, dataset, tok_ref, {"train": texts, "validation": texts[:8]}, tok, BLOCK)
    teacher_tok = tok if teacher_vocab == 400 else tiny_tokenizer(teacher_vocab)
    folder = tmp_path / "teacher"
    tiny_lm(teacher_tok, seed=1).save_pretrained(folder)
    teacher_tok.save_pretrained(folder)
    return store, tok, tok_ref, packed, folder


def _train_cfg(**overrides) -> TrainConfig:
    base = dict(max_steps=6, max_minutes=None, batch_size=8, block_size=BLOCK, eval_every=6, eval_batches=1,
                checkpoint_every=2, num_threads=1, lr=3e-3, warmup_steps=1)
    return TrainConfig(**{**base, **overrides})


def _distill(tmp_path, store, tok, tok_ref, packed, folder, cfg=DistillConfig(), student=ModelConfig(preset="tiny"),
             train_cfg=None, **kwargs):
    return distill(store, packed, tok_ref, tok, folder, student, train_cfg or _train_cfg(), cfg, tmp_path / "cache",
                   **kwargs)


def test_the_run_id_holds_the_teacher_and_the_settings(tmp_path):
    store, tok, tok_ref, packed, folder = _setup(tmp_path)
    student, train_cfg, cfg = ModelConfig(preset="tiny"), _train_cfg(max_steps=2), DistillConfig(alpha=0.5)
    ref = _distill(tmp_path, store, tok, tok_ref, packed, folder, cfg, train_cfg=train_cfg, teacher_version=3)
    plain, _ = run_identity(packed, tok_ref, student, train_cfg)
    sha = sha256_file(folder / "model.safetensors")
    spec = TeacherSpec(torch.nn.Linear(1, 1), cfg, str(folder.resolve()), sha, 3)
    assert ref.run_id == distilled_run_id(plain, spec.record()) != plain
    assert ref.method == "distill" and ref.distillation == spec.record()
    assert ref.distillation.teacher_sha256 == sha and ref.distillation.jsd_beta is None
    assert json.loads(Path(store.local_path(f"runs/{ref.run_id}/manifest.json")).read_text())["method"] == "distill"
    assert all("kl" in r for r in read_metrics(store.local_path(f"runs/{ref.run_id}/metrics.jsonl")))

    def run_id(**changes) -> str:
        record = spec.record().model_copy(update=changes)
        return distilled_run_id(plain, record)

    assert run_id(alpha=0.7) != ref.run_id and run_id(temperature=1.0) != ref.run_id
    assert run_id(loss="jsd", jsd_beta=0.5) != ref.run_id and run_id(top_k=5) != ref.run_id
    assert run_id(teacher_sha256="0" * 64) != ref.run_id  # another teacher
    assert run_id(teacher="s3://elsewhere/final", teacher_version=None) == ref.run_id  # the same weights elsewhere
    other = _distill(tmp_path, store, tok, tok_ref, packed, folder, DistillConfig(alpha=0.7), train_cfg=train_cfg)
    assert other.run_id == run_id(alpha=0.7, teacher_version=None)
    again = _distill(tmp_path, store, tok, tok_ref, packed, folder, cfg, train_cfg=train_cfg, teacher_version=3)
    assert again == ref  # a finished run is reused


def test_a_killed_distillation_resumes_from_its_checkpoint_with_the_same_run_id(tmp_path):
    """Crash after step 5, rerun: it resumes from step 4 and its later losses match an uninterrupted run."""
    store, tok, tok_ref, packed, folder = _setup(tmp_path)
    train_cfg = _train_cfg(max_steps=8, eval_every=8)
    with pytest.raises(CrashAt):
        _distill(tmp_path, store, tok, tok_ref, packed, folder, train_cfg=train_cfg, on_metrics=crash_at(5))
    resumed = _distill(tmp_path, store, tok, tok_ref, packed, folder, train_cfg=train_cfg)
    assert resumed.resumed_from_step == 4 and resumed.steps == 8
    straight_store, _, _, straight_packed, _ = _setup(tmp_path / "s")
    straight = _distill(tmp_path / "s", straight_store, tok, tok_ref, straight_packed, folder, train_cfg=train_cfg)
    assert straight.run_id == resumed.run_id and straight.resumed_from_step is None
    rows = read_metrics(store.local_path(f"runs/{resumed.run_id}/metrics.jsonl"))
    want = read_metrics(straight_store.local_path(f"runs/{straight.run_id}/metrics.jsonl"))
    assert [r["step"] for r in rows] == list(range(1, 9))
    for key in ("loss", "kl"):
        assert [r[key] for r in rows[4:]] == pytest.approx([r[key] for r in want[4:]], rel=1e-5, abs=1e-6)


def test_another_vocabulary_is_refused_before_anything_trains(tmp_path):
    store, tok, tok_ref, packed, folder = _setup(tmp_path, teacher_vocab=300)
    with pytest.raises(DistillationError, match=r"teacher's tokenizer \(300 tokens\).*data's \(400 tokens\)"):
        _distill(tmp_path, store, tok, tok_ref, packed, folder)
    assert list(store.list("runs")) == []


def test_a_teacher_whose_output_layer_is_smaller_than_the_tokenizer_is_refused(tmp_path):
    store, tok, tok_ref, packed, folder = _setup(tmp_path)
    config = json.loads((folder / "config.json").read_text())
    (folder / "config.json").write_text(json.dumps({**config, "vocab_size": 300}))
    with pytest.raises(DistillationError, match="scores 300 ids but the tokenizer has 400"):
        _distill(tmp_path, store, tok, tok_ref, packed, folder)
    assert list(store.list("runs")) == []


def test_a_pruned_copy_of_the_teacher_fine_tunes_from_its_folder(tmp_path):
    """The student ``pretrained=<teacher folder>`` starts as the teacher: its first step's divergence is ~0."""
    store, tok, tok_ref, packed, folder = _setup(tmp_path)
    ref = _distill(tmp_path, store, tok, tok_ref, packed, folder, DistillConfig(max_minutes=5.0),
                   student=ModelConfig(pretrained=str(folder)), train_cfg=_train_cfg(max_steps=2, eval_every=2))
    rows = read_metrics(store.local_path(f"runs/{ref.run_id}/metrics.jsonl"))
    assert rows[0]["kl"] < 1e-5 and ref.method == "distill" and ref.base_model.startswith(str(folder.resolve()))


def test_the_student_config_is_the_preset_and_overrides_from_scratch():
    base = ModelConfig(preset="mini", attention="eager", pretrained="/some/model", overrides={"hidden_size": 64})
    student = student_config(DistillConfig(student_preset="tiny", student_overrides={"num_hidden_layers": 1}), base)
    assert (student.preset, student.overrides, student.pretrained, student.attention) == (
        "tiny", {"num_hidden_layers": 1}, None, "eager")


def test_without_a_teacher_training_is_unchanged(tmp_path):
    """run_training's record of a plain run: method scratch, no distillation, no kl in the metrics."""
    store, tok, tok_ref, packed, _ = _setup(tmp_path)
    ref = run_training(store, packed, tok_ref, tok, ModelConfig(preset="tiny"), _train_cfg(max_steps=2), tmp_path)
    assert ref.method == "scratch" and ref.distillation is None
    assert all("kl" not in r for r in read_metrics(store.local_path(f"runs/{ref.run_id}/metrics.jsonl")))


def test_a_distributed_distillation_matches_one_process(tmp_path, monkeypatch):
    """Two DDP ranks under torchrun, each loading the teacher: the same run id, steps and losses as one process."""
    from tests.unit.models.training.test_distributed import ROOT, _stored_inputs, two_ranks

    monkeypatch.setenv("PYTHONPATH", str(ROOT))
    monkeypatch.setenv("OMP_NUM_THREADS", "1")
    _, _, _, _, folder = _setup(tmp_path)
    store = LocalStore(tmp_path / "dist")
    tok, tok_ref, packed = _stored_inputs(store)  # the ranks read the tokenizer from the store
    train_cfg = _train_cfg(max_steps=4, eval_every=4, preflight_steps=1, fused_adamw=False)
    cfg = DistillConfig(loss="reverse_kl", top_k=32)
    ddp = _distill(tmp_path, store, tok, tok_ref, packed, folder, cfg,
                   train_cfg=train_cfg.model_copy(update={"distributed": two_ranks(strategy="ddp")}))
    single_store = LocalStore(tmp_path / "single")
    _, single_tok_ref, single_packed = _stored_inputs(single_store)
    single = _distill(tmp_path / "single", single_store, tok, single_tok_ref, single_packed, folder, cfg,
                      train_cfg=train_cfg)

    assert ddp.run_id == single.run_id and ddp.method == single.method == "distill"
    assert ddp.distillation == single.distillation and ddp.steps == single.steps == 4
    ddp_rows = read_metrics(store.local_path(f"runs/{ddp.run_id}/metrics.jsonl"))
    one_rows = read_metrics(single_store.local_path(f"runs/{single.run_id}/metrics.jsonl"))
    for key in ("loss", "kl"):
        assert [r[key] for r in ddp_rows] == pytest.approx([r[key] for r in one_rows], rel=1e-4)


def test_a_teacher_folder_without_a_saved_model_is_a_distillation_error_the_cli_reports(tmp_path):
    import subprocess
    import sys

    from llmops.models.compression.students import resolve_teacher

    empty = tmp_path / "not-a-model"
    empty.mkdir()
    with pytest.raises(DistillationError, match="folder without config.json"):
        resolve_teacher(LocalStore(tmp_path / "store"), "lm", str(empty), tmp_path / "cache")
    cli = subprocess.run([sys.executable, "-m", "llmops.flows.cli", "distill", "--teacher", str(empty)],
                         capture_output=True, text=True, timeout=300, cwd=tmp_path)
    assert cli.returncode == 2, cli.stderr[-2000:]  # a one-line error, not a traceback
    assert "llmops distill: error: teacher" in cli.stderr
