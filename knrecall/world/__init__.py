"""The embedded synthetic world: a knowledge graph with ground truth, its corpus, tokenizer and model."""
