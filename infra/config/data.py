"""The data and tokenizer sections: where the text comes from, how it is validated and split, how it is tokenized."""
from __future__ import annotations

import re
from typing import Literal, Optional

from pydantic import Field, field_validator, model_validator

from llmops.infra.config.base import Frozen

# Secrets and personal data that must not become training data: e-mail addresses, card or phone-like digit runs,
# and provider keys (OpenAI-style sk-..., AWS access key ids, GitHub tokens, bearer tokens).
DEFAULT_REDACT_PATTERNS = [
    r"[A-Za-z0-9._%+-]+@[A-Za-z0-9.-]+\.[A-Za-z]{2,}",
    r"(?<![\w.])\+?\d(?:[ -]?\d){12,18}(?!\w|\.\d)",
    r"\bsk-[A-Za-z0-9_-]{16,}",
    r"\bAKIA[0-9A-Z]{16}\b",
    r"\bgh[pousr]_[A-Za-z0-9]{30,}\b",
    r"(?i)\bbearer\s+[A-Za-z0-9._~+/-]{20,}=*",
]


class RedactSettings(Frozen):
    """What runs on every captured prompt before it becomes training data (traffic:// and adaptation alike)."""

    patterns: list[str] = Field(
        default_factory=lambda: list(DEFAULT_REDACT_PATTERNS),
        description="Regular expressions whose matches are replaced by `replacement` (default: e-mail addresses, "
        "13-19 digit runs such as card or phone numbers, API keys and bearer tokens).",
    )
    replacement: str = Field("[REDACTED]", description="What a match is replaced with.")
    hook: Optional[str] = Field(
        None, pattern=r"^[A-Za-z_][\w.]*:[A-Za-z_]\w*$",
        description="`package.module:function` called with each prompt after the patterns: it returns the text to "
        "keep (possibly changed) or None to drop the record.",
    )

    @field_validator("patterns")
    @classmethod
    def _compiles(cls, patterns: list[str]) -> list[str]:
        for i, pattern in enumerate(patterns):
            try:
                re.compile(pattern)
            except re.error as exc:
                raise ValueError(f"patterns[{i}] {pattern!r} is not a valid regular expression: {exc}") from None
        return patterns


class DataConfig(Frozen):
    """Where the text comes from and how it is validated and split."""

    dataset_name: str = Field(
        "corpus", pattern=r"^[A-Za-z0-9][A-Za-z0-9_.-]*$",
        description="Name of the dataset snapshots in the store (datasets/<name>/<sha>/); an adaptation's snapshot "
        "is <name>-adapt.",
    )
    sources: list[str] = Field(
        default_factory=lambda: ["builtin://stdlib-docstrings", "traffic://"],
        description=(
            "Files, folders, globs (.txt/.md/.jsonl/.parquet), s3://bucket/prefix, a `datasets` dataset "
            "saved to disk, builtin://stdlib-docstrings or builtin://stdlib-code (text every Python "
            "install has), and traffic:// (prompts this model served, from the store)."
        ),
    )
    text_field: str = Field("text", description="The field holding the text in JSONL/Parquet/datasets records.")
    min_chars: int = Field(32, ge=1, description="Shorter records are quarantined as too short.")
    max_chars: int = Field(20_000, ge=1, description="Longer records are quarantined as too long.")
    max_records_per_source: Optional[int] = Field(
        None, ge=1, description="Read at most this many records from each source."
    )
    val_fraction: float = Field(
        0.05, gt=0, lt=0.5,
        description="Share of the records hashed into the validation split (validation loss, eval, the monitor's "
        "reference profile); what neither split takes trains.",
    )
    test_fraction: float = Field(
        0.05, gt=0, lt=0.5,
        description="Share of the records hashed into the test split, on which the gate compares the candidate "
        "with production.",
    )
    split_seed: int = Field(0, description="Salt of the hash that assigns a record to a split.")
    traffic_days: int = Field(30, ge=1, description="How far back traffic:// reads captured prompts.")
    redact: RedactSettings = Field(
        default_factory=RedactSettings,
        description="Redaction of captured prompts before they become training data (traffic:// and adaptation).",
    )
    chunk_chars: int = Field(
        2000, ge=1,
        description="Plain-text files (.txt/.md) are cut into records of at most this many characters, "
        "at blank lines first, then at line ends.",
    )

    @model_validator(mode="after")
    def _check(self) -> DataConfig:
        if self.min_chars > self.max_chars:
            raise ValueError(f"min_chars ({self.min_chars}) exceeds max_chars ({self.max_chars})")
        if not self.sources:
            raise ValueError("sources is empty: name at least one file, folder, s3:// prefix or builtin:// corpus")
        return self


class TokenizerConfig(Frozen):
    """How text becomes token ids: a byte-level BPE (GPT-2 style, no unknown tokens) trained on the snapshot's train
    split, or an existing tokenizer attached from a local path or hub id. It is stored content-addressed by the train
    split and this section (num_proc aside), so an unchanged snapshot reuses it instead of training again."""

    kind: Literal["bpe", "pretrained"] = Field(
        "bpe",
        description="Train a byte-level BPE, or attach an existing tokenizer. With model.pretrained set, bpe "
        "means the pretrained model's own tokenizer.",
    )
    vocab_size: int = Field(
        4096, ge=260, le=1_000_000,
        description="Tokens of the trained BPE, its 256 byte symbols and end-of-text token included (kind=bpe; a small "
        "corpus may give fewer); sizes the model's embedding and LM head.",
    )
    min_frequency: int = Field(
        2, ge=1,
        description="A pair of symbols becomes a merged token only if it occurs at least this many times in the train "
        "split (kind=bpe).",
    )
    path: Optional[str] = Field(None, description="Local path or hub id of a tokenizer to attach (kind=pretrained).")
    num_proc: int = Field(1, ge=1, description="Processes for datasets.map when packing.")

    @model_validator(mode="after")
    def _check(self) -> TokenizerConfig:
        if self.kind == "pretrained" and not self.path:
            raise ValueError("tokenizer.kind=pretrained needs tokenizer.path")
        return self
