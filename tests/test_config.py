"""The typed parameter model, its generated schema, and one-line errors naming the key."""

import copy
import subprocess
import sys

import pytest
import yaml

from knrecall.config import Params, load_params, parse_params, schema_yaml, validate_against_schema
from knrecall.errors import KnrecallError

from conftest import ROOT

SCHEMA = ROOT / "schemas" / "params.schema.yaml"


def test_schema_file_is_current():
    assert SCHEMA.read_text() == schema_yaml(), "schema is stale: run `make schema`"


def test_repository_params_are_valid_and_complete():
    params = load_params(ROOT / "params.yaml")
    raw = yaml.safe_load((ROOT / "params.yaml").read_text())
    validate_against_schema(raw, SCHEMA)
    # every parameter of the model is spelled out in params.yaml, so the README table and the file agree
    assert raw.keys() == Params.model_fields.keys()
    for block in ("world", "world_model", "answer", "dataset", "attribution", "kns"):
        assert raw[block].keys() == type(getattr(params, block)).model_fields.keys()


BAD = [
    ({"world": {"people": "many"}}, "key 'world.people'"),
    ({"wrld": {}}, "unknown key 'wrld'"),
    ({"world": {"peeple": 3}}, "unknown key 'world.peeple'"),
    ({"world_model": {"learning_rate": "fast"}}, "key 'world_model.learning_rate'"),
    ({"world": {"shortcut_fraction": 1.5}}, "key 'world.shortcut_fraction'"),
    ({"models": {"world": {"path": "world", "dtype": "float8"}}}, "key 'models.world.dtype'"),
    ({"answer": {"conditions": ["telepathy"]}}, "key 'answer.conditions"),
    ({"seed": 1.5}, "key 'seed'"),
    ({"attribution": {"neuron": "post_activation"}}, "key 'attribution.neuron'"),
]


@pytest.mark.parametrize("bad, needle", BAD)
def test_typed_model_names_the_key(bad, needle):
    with pytest.raises(KnrecallError) as err:
        parse_params(bad)
    message = str(err.value)
    assert needle in message and "\n" not in message


@pytest.mark.parametrize("bad, needle", BAD)
def test_schema_names_the_key(bad, needle):
    base = yaml.safe_load((ROOT / "params.yaml").read_text())
    merged = copy.deepcopy(base)
    for key, value in bad.items():
        if isinstance(value, dict) and isinstance(merged.get(key), dict):
            merged[key] = {**merged[key], **value}
        else:
            merged[key] = value
    with pytest.raises(KnrecallError) as err:
        validate_against_schema(merged, SCHEMA)
    assert needle.split("'")[1].split(".")[0] in str(err.value) and "\n" not in str(err.value)


def test_cross_field_rules():
    with pytest.raises(KnrecallError, match="dataset.path is required"):
        parse_params({"dataset": {"source": "tfrkn"}})
    with pytest.raises(KnrecallError, match="divisible"):
        parse_params({"world_model": {"hidden_size": 30, "num_heads": 4}})
    with pytest.raises(KnrecallError, match=r"\{question\}"):
        parse_params({"prompts": {"direct": "no placeholder"}})
    only_direct = {"prompts": {"direct": "Q: {question} A:"}, "answer": {"conditions": ["direct"]}}
    with pytest.raises(KnrecallError, match=r"no template for condition 'zero_shot_cot' \(interventions.conditions\)"):
        parse_params(only_direct)
    assert parse_params({**only_direct, "interventions": {"conditions": ["direct"]}})


def test_check_params_command(tmp_path):
    bad = tmp_path / "params.yaml"
    bad.write_text("world:\n  people: lots\n")
    result = subprocess.run([sys.executable, "-m", "knrecall", "check-params", str(bad)], capture_output=True, text=True)
    assert result.returncode == 2
    assert result.stderr.strip().count("\n") == 0 and "world.people" in result.stderr
    good = subprocess.run([sys.executable, "-m", "knrecall", "check-params", str(ROOT / "params.yaml")],
                          capture_output=True, text=True)
    assert good.returncode == 0, good.stderr
