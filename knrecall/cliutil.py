"""Small helpers the subcommands share: `--params` JSON, a rule's model and neuron definition, threads, JSON files."""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from knrecall.errors import KnrecallError


def parse_json(text: str, what: str):
    try:
        return json.loads(text)
    except json.JSONDecodeError as exc:
        raise KnrecallError(f"--params for {what}: not valid JSON ({exc})") from None



def rule_payload(text: str, what: str, keys: tuple[str, ...]) -> dict:
    """The `--params` JSON object of a rule, with its required blocks."""
    payload = parse_json(text, what)
    if not isinstance(payload, dict) or not set(keys) <= payload.keys():
        wanted = ", ".join(f"'{key}'" for key in keys)
        raise KnrecallError(f"--params for {what}: expected a JSON object with {wanted}")
    return payload



def load_rule_model(payload: dict, args: argparse.Namespace):
    """The model of a rule's `--params` ('model' block; `--model-path` overrides the path): (spec, model, tokenizer,
    wrap), `wrap` turning a question prompt into the model's prompt (its chat prompt with `chat_template`)."""
    from knrecall.config import ModelParams, parse_params
    from knrecall.models.chat import prompt_wrapper
    from knrecall.models.load import ModelSpec, load_model

    params = parse_params(payload["model"], "--params (model)", ModelParams)
    spec = ModelSpec(args.model_path or params.path, params.revision, params.dtype, params.trust_remote_code,
                     params.allow_pickle)
    model, tokenizer = load_model(spec, args.device)
    wrap = prompt_wrapper(tokenizer, params.chat_template, args.model_name or params.path)
    return spec, model, tokenizer, wrap



def model_meta(args: argparse.Namespace, spec, payload: dict) -> dict:
    """The `model` block of an output's metadata."""
    return {"name": args.model_name, "path": spec.path, "revision": spec.revision, "dtype": spec.dtype,
            "chat_template": bool(payload["model"].get("chat_template", False))}



def json_params(text: str, model, what: str):
    """`--params` JSON validated against one block of the typed parameter model."""
    from knrecall.config import parse_params

    return parse_params(parse_json(text, what), f"--params ({what})", model)



def rule_neuron(payload: dict, what: str, kns_path: str | None = None) -> str:
    """The neuron definition (`attribution.neuron`) of a rule's `--params` ('attribution' block, optional: the
    default `ffn_input`), checked against the one the KN file was selected under, if given."""
    from knrecall.config import AttributionParams, parse_params
    from knrecall.io import read_metadata

    neuron = parse_params(payload.get("attribution", {}), f"--params ({what}: attribution)", AttributionParams).neuron
    if kns_path is not None:
        try:
            meta = read_metadata(kns_path)
        except Exception:  # missing or unreadable: reading the KN file itself reports it
            meta = {}
        recorded = meta.get("thresholds", {}).get("neuron", "ffn_input")
        if recorded != neuron:
            raise KnrecallError(f"{kns_path}: the KNs were selected with attribution.neuron = {recorded}, but this "
                                f"run reads neurons as {neuron}; attribute and select KNs again")
    return neuron



def set_threads(threads: int | None) -> None:
    if threads:
        import torch

        torch.set_num_threads(threads)



def read_jsonl(path: Path) -> list[dict]:
    if not path.exists():
        raise KnrecallError(f"{path}: file not found")
    rows = []
    for number, line in enumerate(path.read_text().splitlines(), start=1):
        if line.strip():
            try:
                rows.append(json.loads(line))
            except json.JSONDecodeError as exc:
                raise KnrecallError(f"{path}: line {number}: not valid JSON ({exc.msg})") from None
    return rows



def read_json_file(path: Path, kind: type, what: str):
    """A JSON file holding a `kind` (list or dict); a missing, unreadable or other file is one line naming it."""
    if not path.exists():
        raise KnrecallError(f"{path}: file not found")
    try:
        data = json.loads(path.read_text())
    except json.JSONDecodeError as exc:
        raise KnrecallError(f"{path}: not valid JSON ({exc.msg} at line {exc.lineno})") from None
    if not isinstance(data, kind):
        raise KnrecallError(f"{path}: expected {what}")
    return data



def read_json_list(path: Path) -> list:
    return read_json_file(path, list, "a JSON list of items")



def read_metrics_json(path: str) -> dict:
    """A metrics JSON file (a JSON object); a missing or unreadable file is one line naming it."""
    return read_json_file(Path(path), dict, "a JSON object")



def model_run_arguments(p: argparse.ArgumentParser, batch_size: int) -> None:
    """The arguments of a subcommand that runs a model over batches of sequences."""
    p.add_argument("--model-path", help="override the model path (the workflow passes the trained world model)")
    p.add_argument("--model-name", default="")
    p.add_argument("--batch-size", type=int, default=batch_size, help="sequences per forward (runtime knob)")
    p.add_argument("--device", default="cpu")
    p.add_argument("--threads", type=int, default=None)
