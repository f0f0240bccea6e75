"""Loading models and tokenizers by hub id or local path."""
