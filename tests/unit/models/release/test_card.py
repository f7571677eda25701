"""The model card: Hugging Face front matter that parses, metrics equal to the evaluation, lineage, gate and
compression."""
from __future__ import annotations

import re
from typing import Optional

import pytest
import yaml
from huggingface_hub import ModelCard

from llmops.infra.config import PipelineConfig
from llmops.models.records import (
    CompressionReport,
    DatasetRef,
    EvalReport,
    GateDecision,
    Sample,
    SampleParams,
    SplitEval,
    SplitRef,
    TokenizerRef,
    TrainRef,
    VariantReport,
)
from llmops.models.release.card import render_card

DATA_SHA = "d" * 64
CONFIG = PipelineConfig.from_dict({"model_name": "card-lm", "model": {"preset": "tiny"},
                                   "train": {"block_size": 48, "max_steps": 7}})
DATASET = DatasetRef(
    name="corpus", uri="/store/datasets/corpus/dddd/manifest.json", sha256=DATA_SHA,
    splits={s: SplitRef(uri=f"/store/datasets/corpus/dddd/{s}.parquet", sha256=s[0] * 64, records=n, bytes=n * 100)
            for s, n in (("train", 900), ("validation", 50), ("test", 48))},
    rejected={"too_short": 3, "duplicate": 11}, sources=["builtin://stdlib-docstrings", "notes.md"],
)
TOKENIZER = TokenizerRef(uri="/store/tokenizers/abc", sha256="a1b2" * 16, kind="bpe", vocab_size=512,
                         eos_token_id=0, trained_on=DATA_SHA)
RUN = TrainRef(run_id="0123456789abcdef", uri="/store/runs/0123456789abcdef/final", sha256="f" * 64, steps=7,
               tokens_seen=7 * 16 * 48, final_train_loss=4.56789, final_val_loss=None, wall_s=3.21,
               metrics_uri="/store/runs/0123456789abcdef/metrics.jsonl",
               loss_plot_uri="/store/runs/0123456789abcdef/loss.png", parameters=30240, device="cpu",
               precision="fp32", resumed_from_step=4)


def split(name: str, loss: float, bpb: float) -> SplitEval:
    return SplitEval(split=name, documents=48, tokens=5000, bytes=12000, loss=loss, perplexity=2.718281828 ** loss,
                     bits_per_byte=bpb)


def evaluation(promote: bool = True, with_test: bool = True) -> EvalReport:
    splits = {"validation": split("validation", 3.3, 1.61234)}
    if with_test:
        splits["test"] = split("test", 3.21987, 1.5432189)
    return EvalReport(
        uri="/store/runs/0123456789abcdef/eval.json", sha256="e" * 64, splits=splits,
        samples=[Sample(setting="greedy", prompt="Return the", completion=" value | or\nNone"),
                 Sample(setting="top-k-40", prompt="If the", completion=" file is closed",
                        params=SampleParams(max_new_tokens=24, do_sample=True, temperature=0.8, top_k=40, top_p=1.0,
                                            repetition_penalty=1.1, seed=7))],
        gate=GateDecision(promote=promote, reason="candidate 1.5432 vs production v1 1.6000 bits/byte: better",
                          candidate_bits_per_byte=1.5432189, production_bits_per_byte=1.6, production_version=1,
                          difference=-0.0568, ci_low=-0.08, ci_high=-0.03, threshold=0.0, documents=48),
    )


COMPRESSION = CompressionReport(
    parent_bytes=128807, parent_tokens_per_s={1: 40.0, 8: 200.0}, parent_bits_per_byte=1.5432, documents=48,
    serve="int8", variants=[
        VariantReport(variant="int8", uri="/store/runs/0123456789abcdef/variants/int8", sha256="9" * 64,
                      bytes=40100, tokens_per_s={1: 120.5, 8: 480.0}, bits_per_byte=1.5501, bpb_increase=0.0069,
                      ci_low=0.004, ci_high=0.0095, relative_increase_high=0.0062, mean_kl=0.00123,
                      top1_agreement=0.987, faster=True, smaller=True, parity=True, servable=True),
        VariantReport(variant="bf16", uri="/store/runs/0123456789abcdef/variants/bf16", sha256="8" * 64,
                      bytes=64500, tokens_per_s={1: 12.0, 8: 90.0}, faster=False, smaller=True, servable=False,
                      reasons=["slower than fp32: batch 1 12.0 vs 40.0 tokens/s, batch 8 90.0 vs 200.0 tokens/s"]),
    ])


def store_key(uri: str) -> str:
    """The key of a URI of the test's store, rooted at /store (a path of the training machine)."""
    assert uri.startswith("/store/"), uri
    return uri.removeprefix("/store/")


def card(promote: bool = True, compression: Optional[CompressionReport] = COMPRESSION,
         with_test: bool = True) -> str:
    return render_card(store_key=store_key, name="card-lm", version=3, config=CONFIG, dataset=DATASET,
                       tokenizer=TOKENIZER, run=RUN, evaluation=evaluation(promote, with_test),
                       compression=compression)


def front_matter(text: str) -> dict:
    match = re.match(r"\A---\n(.*?)\n---\n", text, re.S)
    assert match, "the card must start with a YAML front matter block"
    return yaml.safe_load(match.group(1))


def section(text: str, title: str) -> str:
    """The body of ``## title`` up to the next second-level heading."""
    match = re.search(rf"^## {re.escape(title)}\n(.*?)(?=^## |\Z)", text, re.S | re.M)
    assert match, f"no section {title!r}"
    return match.group(1)


def table_rows(body: str) -> list[list[str]]:
    """Cells of every markdown table row in ``body`` (escaped pipes stay inside their cell)."""
    rows = []
    for line in body.splitlines():
        if line.startswith("|") and not line.startswith("|---"):
            rows.append([c.strip() for c in re.split(r"(?<!\\)\|", line)[1:-1]])
    return rows


def test_front_matter_is_hugging_face_metadata_with_the_test_metrics():
    text = card()
    meta = front_matter(text)
    assert meta["license"] == "mit" and meta["library_name"] == "transformers"
    assert meta["pipeline_tag"] == "text-generation"
    assert meta["tags"] == ["llmops", "causal-lm", "tiny"] and "base_model" not in meta
    assert meta["datasets"] == ["corpus@" + DATA_SHA[:16]]
    (entry,) = meta["model-index"]
    assert entry["name"] == "card-lm-v3"
    (result,) = entry["results"]
    assert result["dataset"] == {"name": "corpus", "type": "corpus", "revision": DATA_SHA[:16], "split": "test"}
    test = evaluation().splits["test"]
    assert {m["type"]: m["value"] for m in result["metrics"]} == {
        "perplexity": round(test.perplexity, 4), "bits_per_byte": round(test.bits_per_byte, 4)}
    # and Hugging Face's own parser reads the same results
    parsed = ModelCard(text, ignore_metadata_errors=False)
    assert parsed.data.model_name == "card-lm-v3"
    assert {r.metric_type: r.metric_value for r in parsed.data.eval_results} == {
        "perplexity": pytest.approx(test.perplexity, abs=1e-4), "bits_per_byte": pytest.approx(1.5432, abs=1e-9)}


def test_sections_come_in_order_and_record_lineage_and_training():
    text = card()
    titles = re.findall(r"^## (.+)$", text, re.M)
    assert titles == ["Data lineage", "Training", "Evaluation", "Gate decision", "Samples", "Compression",
                      "Intended use and limitations"]
    assert text.count("\n# card-lm — version 3\n") == 1
    assert "30,240 parameters, context 48 tokens" in text
    lineage = dict(table_rows(section(text, "Data lineage"))[1:])
    assert lineage["dataset sha256"] == f"`{DATA_SHA}`"
    assert lineage["sources"] == "`builtin://stdlib-docstrings`, `notes.md`"
    assert (lineage["train records"], lineage["validation records"], lineage["test records"]) == ("900", "50", "48")
    assert lineage["quarantined"] == "duplicate: 11, too_short: 3"
    assert lineage["tokenizer"] == f"bpe, 512 tokens, sha256 `{'a1b2' * 4}`"
    assert lineage["training run"] == "`0123456789abcdef`"
    training = dict(table_rows(section(text, "Training"))[1:])
    assert training["steps"] == "7" and training["tokens seen"] == "5,376"
    assert training["final train loss"] == "4.5679" and training["final validation loss"] == "n/a"
    assert training["resumed from step"] == "4" and training["device / precision"] == "cpu / fp32"
    # store keys linked relative to the card (models/card-lm/versions/3/README.md), no path of the training machine
    assert training["loss curve"] == "[`runs/0123456789abcdef/loss.png`](../../../../runs/0123456789abcdef/loss.png)"
    assert lineage["dataset snapshot"] == (
        "[`datasets/corpus/dddd/manifest.json`](../../../../datasets/corpus/dddd/manifest.json)")
    assert "/store/" not in text
    config_block = re.search(r"```yaml\n(.*?)```", section(text, "Training"), re.S).group(1)
    assert yaml.safe_load(config_block) == {"model": CONFIG.model.model_dump(), "train": CONFIG.train.model_dump()}


def test_evaluation_table_lists_every_split():
    rows = table_rows(section(card(), "Evaluation"))
    assert rows[0] == ["split", "documents", "tokens", "loss (nats/token)", "perplexity", "bits/byte"]
    assert rows[1:] == [["validation", "48", "5000", "3.3000", f"{2.718281828 ** 3.3:.2f}", "1.6123"],
                        ["test", "48", "5000", "3.2199", f"{2.718281828 ** 3.21987:.2f}", "1.5432"]]


@pytest.mark.parametrize("promote, verdict", [(True, "**promoted**"), (False, "**not promoted**")])
def test_gate_decision_states_the_outcome_and_reason(promote, verdict):
    body = section(card(promote=promote), "Gate decision").strip()
    assert body == f"{verdict} — candidate 1.5432 vs production v1 1.6000 bits/byte: better"


def test_sample_text_with_pipes_and_newlines_stays_in_its_cell():
    rows = table_rows(section(card(), "Samples"))
    assert rows == [["setting", "knobs", "prompt", "completion"], ["greedy", "-", "Return the", r"value \| or None"],
                    ["top-k-40", "24 tokens, temperature 0.8, top-k 40, repetition penalty 1.1, seed 7", "If the",
                     "file is closed"]]


def test_compression_section_only_with_a_compression_report():
    body = section(card(), "Compression")
    assert table_rows(body)[1:] == [
        ["fp32", "128,807", "40.0", "200.0", "1.5432", "—", "—", "—", "parent"],
        ["int8", "40,100", "120.5", "480.0", "1.5501", "+0.0069 [+0.0040, +0.0095]", "0.00123", "0.987", "yes"],
        ["bf16", "64,500", "12.0", "90.0", "—", "—", "—", "—",
         "no: slower than fp32: batch 1 12.0 vs 40.0 tokens/s, batch 8 90.0 vs 200.0 tokens/s"]]
    assert "`serve.variant: auto` serves **int8** on CPU (48 test documents scored)." in body
    assert "## Compression" not in card(compression=None)


def test_a_run_without_a_loss_plot_or_resume_says_so():
    run = RUN.model_copy(update={"loss_plot_uri": None, "resumed_from_step": None, "final_val_loss": 4.0})
    text = render_card(store_key=store_key, name="card-lm", version=1, config=CONFIG, dataset=DATASET,
                       tokenizer=TOKENIZER, run=run, evaluation=evaluation(), compression=None)
    training = dict(table_rows(section(text, "Training"))[1:])
    assert (training["loss curve"], training["resumed from step"], training["final validation loss"]) == (
        "n/a", "no", "4.0000")


def test_without_a_test_split_the_model_index_is_empty_but_the_card_renders():
    text = card(with_test=False)
    assert front_matter(text)["model-index"] == []
    assert [r[0] for r in table_rows(section(text, "Evaluation"))[1:]] == ["validation"]


def fine_tune_card(base: str, method: str = "lora") -> str:
    config = PipelineConfig.from_dict({"model_name": "card-lm", "model": {"preset": "tiny", "pretrained": base}})
    run = RUN.model_copy(update={"method": method, "base_model": f"{base}@0123456789abcdef"})
    return render_card(store_key=store_key, name="card-lm", version=1, config=config, dataset=DATASET,
                       tokenizer=TOKENIZER, run=run, evaluation=evaluation(), compression=None)


@pytest.mark.parametrize("method, tags", [("full", ["fine-tuned"]), ("lora", ["fine-tuned", "lora"])])
def test_a_fine_tune_names_its_base_takes_its_license_and_drops_the_ignored_preset(tmp_path, method, tags):
    (tmp_path / "README.md").write_text("---\nlicense: apache-2.0\ntags: [base]\n---\n# Base\n", encoding="utf-8")
    text = fine_tune_card(str(tmp_path), method)
    meta = front_matter(text)
    # a local folder is not a hub id: no base_model metadata; its path is only in the configuration as given
    outside_config = re.sub(r"```yaml\n.*?```", "", text, flags=re.S)
    assert meta["license"] == "apache-2.0" and "base_model" not in meta and str(tmp_path) not in outside_config
    assert meta["tags"] == ["llmops", "causal-lm", *tags]
    parsed = ModelCard(text, ignore_metadata_errors=False).data
    assert (parsed.license, parsed.base_model) == ("apache-2.0", None)
    # the folder's name and content hash stay in the body's lineage; the limitations point at the base
    assert dict(table_rows(section(text, "Data lineage"))[1:])["base model"] == (
        f"local folder `{tmp_path.name}`, content `0123456789abcdef`")
    assert f"Fine-tuned from `{tmp_path.name}`: that model's license" in section(text, "Intended use and limitations")


def test_a_base_with_another_license_keeps_its_name_and_only_a_link_that_resolves_here(tmp_path):
    (tmp_path / "README.md").write_text("---\nlicense: other\nlicense_name: base-license\nlicense_link: LICENSE\n---\n")
    assert {k: v for k, v in front_matter(fine_tune_card(str(tmp_path))).items() if k.startswith("license")} == {
        "license": "other", "license_name": "base-license"}
    (tmp_path / "README.md").write_text("---\nlicense: other\nlicense_link: https://example.com/terms\n---\n")
    assert front_matter(fine_tune_card(str(tmp_path)))["license_link"] == "https://example.com/terms"


@pytest.mark.parametrize("readme", [None, "# no front matter\n", "---\ntags: [x]\n---\n", "---\nlicense: [\n---\n"])
def test_a_fine_tune_whose_base_license_cannot_be_read_here_states_none(tmp_path, readme):
    if readme is not None:
        (tmp_path / "README.md").write_text(readme)
    for base, named in ((str(tmp_path), None), ("some-org/some-model", "some-org/some-model")):  # a folder, a hub id
        text = fine_tune_card(base)
        meta = front_matter(text)
        assert "license" not in meta and meta.get("base_model") == named and "tiny" not in meta["tags"]
        ModelCard(text, ignore_metadata_errors=False)
