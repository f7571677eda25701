"""The traffic log: hour partitions of JSONL records, their compaction into Parquet, and reading windows back."""
