"""The fused LM head + cross-entropy: the loss and gradients of F.cross_entropy(F.linear(...)), in the loop too."""
from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from llmops.infra.config import TrainConfig
from llmops.infra.store import LocalStore
from llmops.models.model.kernels import onednn_available
from llmops.models.model.presets import build_config
from llmops.models.training.batching import IGNORE_INDEX
from llmops.models.training.checkpoint import Checkpointer
from llmops.models.training.fused_loss import HiddenStatesHead, LinearCrossEntropy, fusable_head, fused_head
from llmops.models.training.loop import read_metrics, train
from llmops.models.training.setup import build_model
from tests.unit.models.training.test_loop import BLOCK, VOCAB, patterned_blocks, tiny_model
from tests.unit.models.training.test_training_features import patterned_documents

pytestmark = pytest.mark.usefixtures("one_torch_thread")
KERNELS = [False] + ([True] if onednn_available() else [])


def _reference(hidden, weight, targets):
    h, w = hidden.detach().clone().requires_grad_(), weight.detach().clone().requires_grad_()
    loss = F.cross_entropy(F.linear(h, w), targets, ignore_index=IGNORE_INDEX, reduction="sum")
    loss.backward()
    return loss, h.grad, w.grad


def _fused(hidden, weight, targets, onednn, scale=1.0):
    h, w = hidden.clone().requires_grad_(), weight.clone().requires_grad_()
    loss = LinearCrossEntropy.apply(h, w, targets, True, onednn)
    (loss * scale).backward()
    return loss, h.grad, w.grad


@pytest.mark.parametrize("onednn", KERNELS)
def test_loss_and_gradients_match_cross_entropy_over_many_chunks(onednn):
    gen = torch.Generator().manual_seed(0)
    vocab = 2 ** 16  # 32 rows a chunk: 100 rows make three full chunks and a partial one
    # logits of a few units, as at initialisation: peaked softmaxes over 65k entries would cost fp32 itself 1e-4
    hidden, weight = torch.randn(100, 8, generator=gen), 0.2 * torch.randn(vocab, 8, generator=gen)
    targets = torch.randint(0, vocab, (100,), generator=gen)
    targets[::9] = IGNORE_INDEX
    want = _reference(hidden, weight, targets)
    got = _fused(hidden, weight, targets, onednn)
    for g, w in zip(got, want):
        torch.testing.assert_close(g, w, rtol=1e-5, atol=1e-5)
    scaled = _fused(hidden, weight, targets, onednn, scale=0.25)  # the backward scales by the incoming gradient
    torch.testing.assert_close(scaled[2], want[2] * 0.25, rtol=1e-5, atol=1e-6)


def test_a_target_too_unlikely_for_fp32_probabilities_is_scored_exactly():
    hidden = torch.tensor([[1.0, 0.0], [0.0, 1.0]])
    weight = torch.tensor([[120.0, 0.0], [0.0, 0.0], [0.0, 3.0]])  # row 0: p(target 1) = e^-120, far below fp32's range
    targets = torch.tensor([1, 2])
    got, want = _fused(hidden, weight, targets, False), _reference(hidden, weight, targets)
    assert torch.isfinite(got[0]) and got[0].item() == pytest.approx(want[0].item(), rel=1e-6)
    torch.testing.assert_close(got[1], want[1])


def test_without_grad_only_the_loss_is_computed():
    hidden, weight = torch.randn(10, 4), torch.randn(30, 4, requires_grad=True)
    with torch.no_grad():
        loss = LinearCrossEntropy.apply(hidden, weight, torch.arange(10), False, False)
    assert loss.grad_fn is None and loss.item() == pytest.approx(_reference(hidden, weight, torch.arange(10))[0].item(),
                                                                 rel=1e-6)


def test_the_head_is_swapped_only_inside_and_keeps_its_parameter_and_key():
    model = tiny_model()
    head, keys = model.lm_head, list(model.state_dict())
    with fused_head(model, True, False) as fused:
        assert isinstance(model.lm_head, HiddenStatesHead) and model.lm_head.weight is head.weight
        assert fused.weight is head.weight and list(model.state_dict()) == keys
        hidden = model(input_ids=torch.zeros(1, 5, dtype=torch.long)).logits
        assert hidden.shape == (1, 5, model.config.hidden_size)
    assert model.lm_head is head
    with fused_head(model, False, False) as fused:
        assert fused is None and model.lm_head is head


def test_heads_that_transform_their_logits_are_not_fused():
    assert fusable_head(tiny_model()) is not None
    gemma = build_config("tiny", vocab_size=VOCAB, context_length=BLOCK, bos_token_id=0, eos_token_id=0)
    gemma.model_type = "gemma2"  # soft-caps its logits after the head
    model = build_model(gemma, 0)
    model.config.model_type = "gemma2"
    assert fusable_head(model) is None
    biased = tiny_model()
    biased.lm_head = nn.Linear(biased.config.hidden_size, VOCAB, bias=True)
    assert fusable_head(biased) is None


def _run(tmp_path, name, data, **overrides):
    cfg = TrainConfig(max_steps=10, max_minutes=None, batch_size=8, block_size=BLOCK, lr=1e-2, warmup_steps=2,
                      eval_every=5, eval_batches=2, checkpoint_every=5, device="cpu", precision="fp32",
                      cpu_matmul="aten", **overrides)
    out = train(tiny_model(), data, data, cfg, Checkpointer(LocalStore(tmp_path / name), "ck"),
                tmp_path / f"{name}.jsonl")
    return out, read_metrics(tmp_path / f"{name}.jsonl")


@pytest.mark.parametrize("batching", ["pack", "pad"])
def test_training_with_the_fused_loss_computes_what_the_model_s_loss_computes(tmp_path, batching):
    data = patterned_blocks() if batching == "pack" else patterned_documents()
    fused, fused_rows = _run(tmp_path, "fused", data, batching=batching, fused_loss=True)
    plain, plain_rows = _run(tmp_path, "plain", data, batching=batching, fused_loss=False)
    assert [r["loss"] for r in fused_rows] == pytest.approx([r["loss"] for r in plain_rows], rel=1e-5)
    val = [[r["val_loss"] for r in rows if "val_loss" in r] for rows in (fused_rows, plain_rows)]
    assert len(val[0]) == 2 and val[0] == pytest.approx(val[1], rel=1e-5)
    assert type(fused.model.lm_head) is nn.Linear  # restored for saving and serving
    for (name, a), b in zip(fused.model.state_dict().items(), plain.model.state_dict().values()):
        torch.testing.assert_close(a, b, rtol=1e-4, atol=1e-6, msg=name)
