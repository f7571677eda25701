"""Data: built-in corpora, ingest (read, validate, quarantine, dedupe, split, snapshot), tokenizers, packing."""
