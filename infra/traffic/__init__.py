"""The traffic log: the typed record, hour partitions of JSONL, their compaction into Parquet, reading windows back."""
