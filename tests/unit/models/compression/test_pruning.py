"""Structured pruning: identity at keep=1, the least important layers/channels/heads are the ones removed, sizes
land near the target, the result round-trips through save_pretrained and generates, bad inputs are refused."""
from __future__ import annotations

import json

import pytest
import torch
from transformers import AutoModelForCausalLM, AutoTokenizer, GPT2Config, GPT2LMHeadModel, LlamaConfig, LlamaForCausalLM

from llmops.models.compression import PruneReport, prune, save_pruned
from llmops.models.compression.students import REPORT_FILE
from llmops.models.data.tokenizer import train_bpe

pytestmark = pytest.mark.usefixtures("one_torch_thread")

VOCAB = 128
TEXTS = [
    "Return a new list containing all items from the iterable in ascending order.",
    "Open file and return a stream. Raise OSError upon failure.",
    "Split the pathname path into a pair (head, tail) where tail is the last component.",
    "Deserialize a str instance containing a JSON document to a Python object.",
    "Return the number of items in a container; the argument may be a sequence or a collection.",
    "Make an iterator that returns accumulated sums, or results of other binary functions.",
]


def llama(heads: int = 4, kv_heads: int = 2, layers: int = 4, inter: int = 96, vocab: int = VOCAB,
          seed: int = 0) -> LlamaForCausalLM:
    config = LlamaConfig(vocab_size=vocab, hidden_size=32, intermediate_size=inter, num_hidden_layers=layers,
                         num_attention_heads=heads, num_key_value_heads=kv_heads, max_position_embeddings=64,
                         tie_word_embeddings=True, bos_token_id=0, eos_token_id=0, pad_token_id=0)
    torch.manual_seed(seed)
    return LlamaForCausalLM(config).eval()


def gpt2(layers: int = 4, seed: int = 0) -> GPT2LMHeadModel:
    config = GPT2Config(vocab_size=VOCAB, n_embd=32, n_layer=layers, n_head=4, n_positions=64,
                        bos_token_id=0, eos_token_id=0, pad_token_id=0)
    torch.manual_seed(seed)
    return GPT2LMHeadModel(config).eval()


def calibration(n: int = 8, seed: int = 1) -> list[torch.Tensor]:
    gen = torch.Generator().manual_seed(seed)
    return [torch.randint(0, VOCAB, (int(length),), generator=gen)
            for length in torch.randint(8, 48, (n,), generator=gen)]


def probe() -> torch.Tensor:
    return torch.randint(0, VOCAB, (2, 20), generator=torch.Generator().manual_seed(2))


def logits(model, ids: torch.Tensor) -> torch.Tensor:
    with torch.no_grad():
        return model(input_ids=ids).logits


def kept_columns(new: torch.Tensor, old: torch.Tensor) -> list[int]:
    """Which columns of ``old`` the columns of ``new`` are, in order."""
    same = (new.T[:, None, :] == old.T[None, :, :]).all(-1)
    assert bool((same.sum(1) == 1).all())
    return same.int().argmax(1).tolist()


@pytest.mark.parametrize("make", [llama, lambda: llama(kv_heads=4), gpt2], ids=["llama-gqa", "llama-mha", "gpt2"])
@pytest.mark.parametrize("axes", ["depth", "width", "both"])
def test_keep_one_gives_identical_logits(make, axes):
    model = make()
    pruned, report = prune(model, calibration(), 1.0, axes)
    assert pruned is not model
    assert torch.equal(logits(pruned, probe()), logits(model, probe()))
    assert report.trunk_params_after == report.trunk_params_before
    assert report.kept_layers == tuple(range(report.layers_before))


def test_the_original_is_untouched_and_its_hooks_removed():
    model = llama().train()
    before = {k: v.clone() for k, v in model.state_dict().items()}
    prune(model, calibration(), 0.5, "both")
    assert model.training
    assert all(torch.equal(before[k], v) for k, v in model.state_dict().items())
    assert not any(m._forward_hooks or m._forward_pre_hooks for m in model.modules())


def test_depth_drops_the_identity_layer_llama():
    model = llama()
    with torch.no_grad():
        model.model.layers[1].self_attn.o_proj.weight.zero_()
        model.model.layers[1].mlp.down_proj.weight.zero_()
    pruned, report = prune(model, calibration(), 0.75, "depth")
    assert report.layer_importance[1] < 1e-6 < 1e-3 < min(report.layer_importance[i] for i in (0, 2, 3))
    assert report.kept_layers == (0, 2, 3)
    assert [layer.self_attn.layer_idx for layer in pruned.model.layers] == [0, 1, 2]
    # the dropped layer was an identity: nothing changes
    assert torch.allclose(logits(pruned, probe()), logits(model, probe()), atol=1e-5)


def test_depth_drops_the_identity_layer_gpt2():
    model = gpt2()
    with torch.no_grad():
        for proj in (model.transformer.h[2].attn.c_proj, model.transformer.h[2].mlp.c_proj):
            proj.weight.zero_()
            proj.bias.zero_()
    pruned, report = prune(model, calibration(), 0.75, "depth")
    assert report.kept_layers == (0, 1, 3)
    assert pruned.config.n_layer == 3
    assert torch.allclose(logits(pruned, probe()), logits(model, probe()), atol=1e-5)


def test_generation_with_the_cache_matches_full_recompute_after_depth_pruning():
    pruned, _ = prune(llama(), calibration(), 0.5, "depth")
    prompt = probe()[:1, :5]
    out = pruned.generate(prompt, attention_mask=torch.ones_like(prompt), max_new_tokens=6, do_sample=False)
    ids = prompt
    for _ in range(6):
        ids = torch.cat([ids, logits(pruned, ids)[:, -1].argmax(-1, keepdim=True)], dim=1)
    assert torch.equal(out, ids)


def test_width_keeps_the_most_active_mlp_channels_llama():
    model = llama()
    dead = [3, 10, 17, 40, 41, 77]
    with torch.no_grad():
        for layer in model.model.layers:
            layer.mlp.up_proj.weight[dead] = 0
    pruned, report = prune(model, calibration(), 0.5, "width")
    assert 0 < report.intermediate_after < 96 - len(dead)
    for i, (old, new) in enumerate(zip(model.model.layers, pruned.model.layers)):
        assert all(report.channel_importance[i][c] == 0 for c in dead)
        kept = kept_columns(new.mlp.down_proj.weight, old.mlp.down_proj.weight)
        assert not set(kept) & set(dead)
        assert kept == sorted(kept)
        assert torch.equal(new.mlp.gate_proj.weight, old.mlp.gate_proj.weight[kept])


def test_width_keeps_the_most_active_mlp_channels_gpt2():
    model = gpt2()
    dead = [0, 5, 64, 100]
    with torch.no_grad():
        for block in model.transformer.h:
            block.mlp.c_fc.weight[:, dead] = 0
            block.mlp.c_fc.bias[dead] = 0
    pruned, report = prune(model, calibration(), 0.5, "width")
    assert report.heads_after == report.heads_before == 4
    assert pruned.config.n_inner == report.intermediate_after < 128 - len(dead)
    for old, new in zip(model.transformer.h, pruned.transformer.h):
        kept = kept_columns(new.mlp.c_proj.weight.T, old.mlp.c_proj.weight.T)  # Conv1D: (in, out)
        assert not set(kept) & set(dead)
        assert torch.equal(new.mlp.c_fc.bias, old.mlp.c_fc.bias[kept])


def test_width_drops_a_silent_kv_group_with_its_query_heads():
    model = llama(heads=4, kv_heads=2)
    head_dim = 8
    with torch.no_grad():
        for layer in model.model.layers:
            layer.self_attn.v_proj.weight[:head_dim] = 0  # group 0 serves query heads 0 and 1
    pruned, report = prune(model, calibration(), 0.5, "width")
    assert (report.heads_after, report.kv_heads_after) == (2, 1)
    assert report.kept_heads == ((2, 3),) * 4
    assert pruned.config.head_dim == head_dim and pruned.config.num_key_value_heads == 1
    for old, new in zip(model.model.layers, pruned.model.layers):
        assert torch.equal(new.self_attn.q_proj.weight, old.self_attn.q_proj.weight[2 * head_dim:])
        assert torch.equal(new.self_attn.k_proj.weight, old.self_attn.k_proj.weight[head_dim:])
        assert torch.equal(new.self_attn.o_proj.weight, old.self_attn.o_proj.weight[:, 2 * head_dim:])


def test_width_drops_silent_heads_with_multi_head_attention():
    model = llama(heads=4, kv_heads=4)
    with torch.no_grad():
        for layer in model.model.layers:
            layer.self_attn.v_proj.weight[8:24] = 0  # heads 1 and 2
    pruned, report = prune(model, calibration(), 0.5, "width")
    assert report.kept_heads == ((0, 3),) * 4
    assert pruned.config.num_attention_heads == pruned.config.num_key_value_heads == 2
    assert all(report.head_importance[i][h] == 0 for i in range(4) for h in (1, 2))


@pytest.mark.parametrize("make", [lambda: llama(kv_heads=4, inter=88), llama, gpt2], ids=["llama", "gqa", "gpt2"])
@pytest.mark.parametrize("axes", ["depth", "width", "both"])
def test_half_the_trunk_lands_near_half(make, axes):
    model = make()
    pruned, report = prune(model, calibration(), 0.5, axes)
    assert abs(report.trunk_params_after / (report.trunk_params_before / 2) - 1) <= 0.15
    embeddings = report.total_params_before - report.trunk_params_before
    assert report.total_params_after - report.trunk_params_after == embeddings
    assert report.total_params_after == sum(p.numel() for p in pruned.parameters())
    if axes != "width":
        assert len(report.kept_layers) < report.layers_before
    if axes != "depth":
        assert report.intermediate_after < report.intermediate_before


def test_importance_does_not_depend_on_batching():
    model, cal = llama(), calibration(n=7)
    _, one = prune(model, cal, 0.5, "both", batch_size=1)
    _, many = prune(model, cal, 0.5, "both", batch_size=4)
    for field in ("layer_importance", "channel_importance", "head_importance"):
        assert torch.allclose(torch.tensor(getattr(one, field)), torch.tensor(getattr(many, field)), atol=1e-6)
    assert one.calibration_tokens == many.calibration_tokens == sum(len(s) for s in cal)


def test_calibration_is_truncated_to_the_context():
    _, report = prune(llama(), [torch.randint(0, VOCAB, (200,))], 0.5, "depth")
    assert report.calibration_tokens == 64


def test_texts_round_trip_through_save_pretrained_and_generate(tmp_path):
    tokenizer = train_bpe(TEXTS, vocab_size=300, min_frequency=1)
    model = llama(vocab=len(tokenizer))
    pruned, report = prune(model, TEXTS, 0.5, "both", tokenizer=tokenizer)
    folder = save_pruned(pruned, tokenizer, report, tmp_path / "pruned")
    save_pruned(pruned, tokenizer, report, folder)  # replaces an existing folder
    assert sorted(p.name for p in tmp_path.iterdir()) == ["pruned"]
    loaded = AutoModelForCausalLM.from_pretrained(folder).eval()
    assert type(loaded) is LlamaForCausalLM
    for field in ("num_hidden_layers", "intermediate_size", "num_attention_heads", "num_key_value_heads", "head_dim"):
        assert getattr(loaded.config, field) == getattr(pruned.config, field)
    assert loaded.lm_head.weight.data_ptr() == loaded.model.embed_tokens.weight.data_ptr()
    ids = torch.tensor([tokenizer.encode("def read a file")])
    assert torch.equal(logits(loaded, ids), logits(pruned, ids))
    out = loaded.generate(ids, attention_mask=torch.ones_like(ids), max_new_tokens=4, do_sample=False,
                          pad_token_id=tokenizer.eos_token_id)
    assert out.shape[1] == ids.shape[1] + 4
    assert len(AutoTokenizer.from_pretrained(folder)) == len(tokenizer)
    saved = json.loads((folder / REPORT_FILE).read_text())
    assert saved["kept_layers"] == list(report.kept_layers) and saved["axes"] == "both"
    assert saved["trunk_params_after"] == report.trunk_params_after


def test_gpt2_round_trips(tmp_path):
    pruned, report = prune(gpt2(), calibration(), 0.5, "both")
    folder = save_pruned(pruned, None, report, tmp_path / "gpt2")
    loaded = AutoModelForCausalLM.from_pretrained(folder).eval()
    assert type(loaded) is GPT2LMHeadModel and loaded.config.n_inner == report.intermediate_after
    assert torch.equal(logits(loaded, probe()), logits(pruned, probe()))


def test_a_failed_save_leaves_the_existing_folder_and_no_temp(tmp_path):
    class Broken:
        def save_pretrained(self, path):
            raise OSError("disk full")

    (tmp_path / "pruned").mkdir()
    (tmp_path / "pruned" / "marker").write_text("old")
    _, report = prune(llama(), calibration(), 0.5, "depth")
    with pytest.raises(OSError, match="disk full"):
        save_pruned(Broken(), None, report, tmp_path / "pruned")
    assert [p.name for p in tmp_path.iterdir()] == ["pruned"]
    assert (tmp_path / "pruned" / "marker").read_text() == "old"


def test_the_report_is_frozen():
    _, report = prune(llama(), calibration(), 0.5, "depth")
    assert isinstance(report, PruneReport)
    with pytest.raises(AttributeError):
        report.keep = 0.1


@pytest.mark.parametrize("keep", [0, -0.5, 1.5, "half", True])
def test_keep_out_of_range_is_refused(keep):
    with pytest.raises(ValueError, match="keep"):
        prune(llama(), calibration(), keep, "both")


@pytest.mark.parametrize(("kwargs", "field"), [
    (dict(axes="deep"), "axes"),
    (dict(calibration=[]), "calibration"),
    (dict(calibration=[torch.tensor([], dtype=torch.long)]), "calibration"),
    (dict(calibration=[torch.tensor([1, VOCAB])]), "calibration"),
    (dict(calibration=["some text"]), "tokenizer"),
])
def test_bad_inputs_name_the_field(kwargs, field):
    args = dict(calibration=calibration(), keep=0.5, axes="both") | kwargs
    with pytest.raises(ValueError, match=field):
        prune(llama(), **args)


def test_an_unsupported_model_names_its_type_and_the_supported_ones():
    message = r"model: Linear is not supported; supported: LlamaForCausalLM, GPT2LMHeadModel"
    with pytest.raises(ValueError, match=message):
        prune(torch.nn.Linear(2, 2), calibration(), 0.5, "both")
