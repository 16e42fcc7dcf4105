"""What the stages hand each other: model presets and loading, tokenizer, templates, shards, ..."""
