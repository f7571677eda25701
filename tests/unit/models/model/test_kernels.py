"""oneDNN fp32 linear layers: the same numbers as F.linear, forward and backward, in the loop and under compile."""
from __future__ import annotations

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from llmops.infra.config import TrainConfig
from llmops.infra.store import LocalStore
from llmops.models.model.kernels import linear_kernels, mkl_slow_here, onednn_available, use_onednn
from llmops.models.training.checkpoint import Checkpointer
from llmops.models.training.loop import read_metrics, train
from llmops.models.training.precision import ForwardContext
from tests.unit.models.training.test_loop import patterned_blocks, tiny_model

pytestmark = [pytest.mark.usefixtures("one_torch_thread"),
              pytest.mark.skipif(not onednn_available(), reason="this torch build has no oneDNN")]
CPU = torch.device("cpu")


def _linear_and_grads(x, w, b, routed: bool):
    x, w = x.clone().requires_grad_(), w.clone().requires_grad_()
    b = b.clone().requires_grad_() if b is not None else None
    with linear_kernels(routed):
        y = F.linear(x, w, b)
    (y * torch.linspace(-1, 1, y.shape[-1])).sum().backward()
    return y, x.grad, w.grad, (b.grad if b is not None else None)


@pytest.mark.parametrize("bias", [True, False])
@pytest.mark.parametrize("shape", [(3, 5, 24), (7, 24), (24,)])
def test_onednn_linear_matches_f_linear_forward_and_backward(shape, bias):
    gen = torch.Generator().manual_seed(0)
    x, w = torch.randn(*shape, generator=gen), torch.randn(40, 24, generator=gen)
    b = torch.randn(40, generator=gen) if bias else None
    got, want = _linear_and_grads(x, w, b, True), _linear_and_grads(x, w, b, False)
    assert got[0].grad_fn.name() == "OneDNNLinearBackward" and want[0].grad_fn.name() != "OneDNNLinearBackward"
    for g, e in zip(got, want):
        if e is None:
            assert g is None
        else:
            assert g.shape == e.shape and g.is_contiguous()
            torch.testing.assert_close(g, e, rtol=1e-5, atol=1e-5)


def test_frozen_weight_gets_no_gradient_and_other_dtypes_keep_their_kernels():
    x, w = torch.randn(4, 8, requires_grad=True), torch.randn(6, 8)  # w frozen (a LoRA base layer)
    with linear_kernels(True):
        y = F.linear(x, w)
        y16 = F.linear(x.bfloat16(), w.bfloat16())
        with torch.autocast("cpu", dtype=torch.bfloat16):
            y_auto = F.linear(x, w)
    y.sum().backward()
    assert y.grad_fn is not None and x.grad.shape == x.shape and w.grad is None
    assert y16.dtype == torch.bfloat16 and y16.grad_fn.name() != "OneDNNLinearBackward"
    assert y_auto.dtype == torch.bfloat16 and y_auto.grad_fn.name() != "OneDNNLinearBackward"


def test_use_onednn_only_for_fp32_on_cpu_and_auto_follows_the_cpu():
    assert use_onednn("onednn", CPU, "fp32")
    assert not use_onednn("aten", CPU, "fp32")
    assert not use_onednn("onednn", CPU, "bf16")
    assert not use_onednn("onednn", torch.device("cuda"), "fp32")
    assert use_onednn("auto", CPU, "fp32") == mkl_slow_here()
    assert ForwardContext(CPU, "fp32", "onednn").onednn and not ForwardContext(CPU, "bf16", "onednn").onednn


def _losses(tmp_path, name: str, **overrides) -> list[float]:
    data = patterned_blocks()
    cfg = TrainConfig(max_steps=12, max_minutes=None, batch_size=8, block_size=data.shape[1], lr=1e-2, warmup_steps=2,
                      eval_every=6, eval_batches=2, checkpoint_every=100, device="cpu", precision="fp32", **overrides)
    train(tiny_model(), data, data[:16], cfg, Checkpointer(LocalStore(tmp_path / name), "ck"),
          tmp_path / f"{name}.jsonl")
    return [r["loss"] for r in read_metrics(tmp_path / f"{name}.jsonl")]


def test_training_through_onednn_computes_what_aten_computes(tmp_path):
    onednn, aten = _losses(tmp_path, "onednn", cpu_matmul="onednn"), _losses(tmp_path, "aten", cpu_matmul="aten")
    assert onednn == pytest.approx(aten, rel=1e-4)
    assert np.mean(onednn[-3:]) < 0.8 * np.mean(onednn[:3])


def test_compiled_training_calls_the_onednn_op(tmp_path):
    """Inductor's own lowering of _linear_pointwise wants frozen weights; the custom op stays opaque and is called."""
    from torch.profiler import profile

    x = torch.from_numpy(patterned_blocks()[:4].astype(np.int64))
    eager, compiled = tiny_model(), torch.compile(tiny_model())
    want = eager(input_ids=x, labels=x).loss
    want.backward()
    with profile() as prof, linear_kernels(True):
        got = compiled(input_ids=x, labels=x).loss
        got.backward()
    assert "llmops::onednn_matmul_t" in {e.name for e in prof.events()}
    assert got.item() == pytest.approx(want.item(), rel=1e-5)
    for (name, p), q in zip(compiled.named_parameters(), eager.parameters()):
        torch.testing.assert_close(p.grad, q.grad, rtol=1e-4, atol=1e-6, msg=name)
