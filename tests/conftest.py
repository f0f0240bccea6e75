import os
import sys
from pathlib import Path

import pytest

os.environ["HF_HUB_OFFLINE"] = "1"
os.environ.setdefault("TRANSFORMERS_NO_ADVISORY_WARNINGS", "1")

ROOT = Path(__file__).resolve().parents[1]
FIXTURES = Path(__file__).resolve().parent / "fixtures"

# A world and a model small enough to generate, train and answer in seconds.
TINY_PARAMS = {
    "seed": 0,
    "world": {"people": 12, "cities": 6, "countries": 3, "companies": 4, "languages": 2, "currencies": 2,
              "heldout_subject_fraction": 0.3, "heldout_bridge_fraction": 0.2, "shortcut_fraction": 0.5,
              "cot_fraction": 0.5, "context_fraction": 0.5},
    "world_model": {"hidden_size": 16, "intermediate_size": 32, "num_layers": 1, "num_heads": 2, "epochs": 1,
                    "batch_size": 64, "learning_rate": 0.002, "weight_decay": 0.1, "warmup_steps": 2},
    "answer": {"conditions": ["direct", "zero_shot_cot", "few_shot_cot", "conflict_hop1", "conflict_hop2"],
               "max_new_tokens": 3, "cot_max_new_tokens": 6},
    "interventions": {"random_seeds": 2},
}


@pytest.fixture
def knrecall_cmd():
    """The CLI as a subprocess argv prefix, with the venv's interpreter."""
    return [sys.executable, "-m", "knrecall"]
