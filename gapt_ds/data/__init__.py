"""Data: text sources, tokenizers, the shared token cache, packed per-rank batches, the arithmetic task."""
