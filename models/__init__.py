"""The model and its lifecycle in plain Python: data, tokenizer, training, evaluation, compression, registry,
serving."""
