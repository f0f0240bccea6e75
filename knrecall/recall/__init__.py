"""Recall measurement on two-hop prompts: reasoning-step positions in a generated chain (DESIGN.md §4)."""
