"""Data: built-in corpora, ingest (read, validate, quarantine, dedupe, split, snapshot), adaptation data from traffic,
tokenizers, packing."""
from llmops.models.data.adaptation import NotEnoughTraffic, adaptation_snapshot
from llmops.models.data.corpus import stdlib_code, stdlib_docstrings
from llmops.models.data.formats import IngestError, read_file
from llmops.models.data.ingest import ingest
from llmops.models.data.packing import Ragged, layout_for, load_packed, pack_dataset
from llmops.models.data.snapshot import SPLITS, load_ref, read_split
from llmops.models.data.tokenizer import TokenizerError, build_tokenizer, load_tokenizer

__all__ = [
    "IngestError", "NotEnoughTraffic", "adaptation_snapshot",
    "Ragged", "SPLITS", "TokenizerError", "build_tokenizer", "ingest", "layout_for", "load_packed",
    "load_ref", "load_tokenizer", "pack_dataset", "read_file", "read_split", "stdlib_code", "stdlib_docstrings",
]
