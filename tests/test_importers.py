"""Dataset importers: fixtures, round trip through items.parquet, and one clear error per bad input."""

from __future__ import annotations

import copy
import json
import logging
from pathlib import Path
from typing import Any, Callable

import pytest

from knrecall.data.importers import import_dataset, read_dataset, run_import
from knrecall.data.items import Item, read_items, write_items
from knrecall.errors import KnrecallError
from knrecall.io import read_metadata

FIXTURES = Path(__file__).parent / "fixtures"
REAL = FIXTURES / "tfrkn_real.json"
MQUAKE = FIXTURES / "mquake_small.json"
JSONL = FIXTURES / "tfrkn_small.jsonl"


def tfrkn_record(case_id: Any = 0, **overrides: Any) -> dict[str, Any]:
    record = {
        "case_id": case_id,
        "two_hop": "What is the capital of the country where the Eiffel Tower is located?",
        "fact1_query": ["In which country is the Eiffel Tower located?"],
        "fact1_ans": "France",
        "fact2_query": ["What is the capital of France?"],
        "fact2_ans": "Paris",
        "two_hop_id": [["Q243", "P17", "Q142"], ["Q142", "P36", "Q90"]],
        "two_hop_label": [["Eiffel Tower", "country", "France"], ["France", "capital", "Paris"]],
    }
    record.update(overrides)
    return record


def write_json(path: Path, data: Any) -> Path:
    path.write_text(json.dumps(data))
    return path


# --------------------------------------------------------------------------------------------- fixtures


def test_real_tfrkn_fixture():
    items = import_dataset(REAL, "tfrkn")
    assert len(items) == 15
    assert [item.case_id for item in items] == [str(i) for i in range(15)]
    eiffel = items[0]
    assert eiffel.source == "tfrkn"
    assert eiffel.two_hop == "What is the capital of the country where the Eiffel Tower is located?"
    assert eiffel.fact1_ans == "France" and eiffel.fact2_ans == "Paris"
    assert eiffel.fact1_query[0] == "In which country is the Eiffel Tower located?"
    assert len(eiffel.fact1_query) == 4 and len(eiffel.fact2_query) == 4
    assert (eiffel.subject, eiffel.relation1, eiffel.relation2) == ("Eiffel Tower", "country", "capital")
    ids = (eiffel.subject_id, eiffel.relation1_id, eiffel.bridge_id, eiffel.relation2_id, eiffel.answer_id)
    assert ids == ("Q243", "P17", "Q142", "P36", "Q90")
    assert (eiffel.split, eiffel.shortcut_planted, eiffel.composable) == (None, None, None)
    assert eiffel.extra == {}
    for item in items:
        assert 3 <= len(item.fact1_query) <= 6 and 3 <= len(item.fact2_query) <= 6
        assert item.fact1_ans and item.fact2_ans and item.subject and item.answer_id
    liberty = next(item for item in items if item.subject == "Statue of Liberty")
    assert "USA" in liberty.fact1_aliases and "Washington" in liberty.answer_aliases


def test_real_fixture_auto_detects_tfrkn():
    result = read_dataset(REAL, "auto")
    assert result.fmt == "tfrkn" and result.n_skipped == 0 and len(result.items) == 15


def test_mquake_fixture_keeps_two_hop_records_and_counterfactual(caplog):
    with caplog.at_level(logging.WARNING):
        result = read_dataset(MQUAKE, "auto")
    assert result.fmt == "mquake"
    assert [item.case_id for item in result.items] == ["1", "2", "4"]
    assert result.skipped == {"3 hops": 1} and result.n_skipped == 1
    assert "skipped 1 of 4 records (1 with 3 hops)" in caplog.text and "mquake_small.json" in caplog.text

    louvre = result.items[0]
    assert louvre.source == "mquake"
    assert louvre.two_hop == "What is the official language of the country where the Louvre is located?"
    assert louvre.fact1_query == ["In which country is the Louvre located?"]
    assert (louvre.fact1_ans, louvre.fact2_ans) == ("France", "French")
    assert louvre.fact1_aliases == ["French Republic"]
    assert louvre.answer_aliases == ["French language"]
    assert (louvre.subject, louvre.relation1, louvre.relation2) == ("Louvre", "country", "official language")
    assert (louvre.subject_id, louvre.bridge_id, louvre.answer_id) == ("Q19675", "Q142", "Q150")
    assert louvre.extra["fact1_cloze"] == "The Louvre is located in the country of"
    assert len(louvre.extra["question_paraphrases"]) == 2
    counterfactual = louvre.extra["counterfactual"]
    assert set(counterfactual) == {"requested_rewrite", "new_answer", "new_answer_alias", "new_single_hops"}
    assert counterfactual["new_answer"] == "Italian"
    assert counterfactual["requested_rewrite"][0]["target_new"] == {"str": "Italy", "id": "Q38"}
    assert louvre.extra["orig"]["new_triples_labeled"][1] == ["Italy", "official language", "Italian"]

    toyota = result.items[1]
    assert "counterfactual" not in toyota.extra
    assert toyota.extra["note"] == "no counterfactual rewrite in this record"
    assert toyota.answer_aliases == ["Asian continent"]  # record answer_alias [] ∪ single_hops[1].answer_alias

    hamlet = result.items[2]
    assert hamlet.answer_aliases == ["Stratford", "Stratford upon Avon"]


def test_jsonl_fixture_world_fields_aliases_and_extra():
    result = read_dataset(JSONL, "auto")
    assert result.fmt == "jsonl"
    world, eiffel, fuji = result.items
    assert world.source == "world" and world.case_id == "w-001"
    assert (world.split, world.shortcut_planted, world.composable) == ("heldout_subject", False, True)
    assert eiffel.source == "jsonl" and eiffel.case_id == "7"
    assert eiffel.answer_aliases == ["Paris, France"]  # given as the synonym fact2_aliases
    assert (eiffel.subject_id, eiffel.relation1_id, eiffel.answer_id) == ("243", "17", "90")  # int ids → str
    assert eiffel.subject is None  # no two_hop_label
    assert eiffel.extra == {"difficulty": "easy", "tags": ["landmark", "capital"]}
    assert fuji.fact1_aliases == ["Nippon"] and fuji.answer_aliases == ["yen", "JPY"]
    assert fuji.subject_id is None and fuji.subject == "Mount Fuji"


@pytest.mark.parametrize("path", [REAL, MQUAKE, JSONL], ids=lambda p: p.name)
def test_round_trip_preserves_every_field(tmp_path, path):
    items = import_dataset(path, "auto")
    write_items(items, tmp_path / "items.parquet")
    assert read_items(tmp_path / "items.parquet") == items


def test_unknown_fields_are_kept_verbatim(tmp_path):
    odd = {"nested": {"a": [1, 2.5, None, True]}, "n": 3}
    path = write_json(tmp_path / "data.json", [tfrkn_record(0, notes="keep me", odd=odd)])
    (item,) = import_dataset(path, "tfrkn")
    assert item.extra == {"notes": "keep me", "odd": odd}
    write_items([item], tmp_path / "items.parquet")
    assert read_items(tmp_path / "items.parquet")[0].extra == {"notes": "keep me", "odd": odd}


def test_world_source_and_ground_truth(tmp_path):
    record = tfrkn_record("w1", source="world", split="heldout_bridge", shortcut_planted=True, composable=False)
    (item,) = import_dataset(write_json(tmp_path / "world.json", [record]), "auto")
    assert (item.source, item.split, item.shortcut_planted, item.composable) == ("world", "heldout_bridge", True, False)
    assert item.extra == {}


def test_equal_alias_synonyms_are_accepted(tmp_path):
    record = tfrkn_record(0, answer_aliases=["City of Paris"], fact2_aliases=["City of Paris"], fact1_aliases=[])
    (item,) = import_dataset(write_json(tmp_path / "d.json", [record]), "tfrkn")
    assert item.answer_aliases == ["City of Paris"] and item.fact1_aliases == []


def test_jsonl_skips_blank_lines_and_numbers_lines(tmp_path):
    lines = ["", json.dumps(tfrkn_record(0)), "   ", json.dumps(tfrkn_record(1, two_hop=""))]
    path = tmp_path / "d.jsonl"
    path.write_text("\n".join(lines) + "\n")
    with pytest.raises(KnrecallError, match=r"d\.jsonl: line 4: field 'two_hop': expected a non-empty string"):
        import_dataset(path, "auto")
    path.write_text("\n".join(lines[:3]) + "\n")
    assert [item.case_id for item in import_dataset(path, "jsonl")] == ["0"]


# --------------------------------------------------------------------------------------------- run_import


def test_run_import_writes_items_and_provenance(tmp_path):
    out = tmp_path / "out" / "items.parquet"
    n = run_import(MQUAKE, "auto", out, params={"seed": 3})
    assert n == 3
    assert read_items(out) == import_dataset(MQUAKE, "mquake")
    meta = read_metadata(out)
    assert meta["format"] == "mquake" and meta["skipped"] == 1 and meta["n_items"] == 3
    assert meta["source_file"] == str(MQUAKE) and meta["params"] == {"seed": 3}


# --------------------------------------------------------------------------------------------- bad inputs

Records = list[dict[str, Any]]


def mutate(index: int, **changes: Any) -> Callable[[Records], Records]:
    """Set (or, with value `DELETE`, remove) fields of record `index`."""

    def apply(records: Records) -> Records:
        for key, value in changes.items():
            if value is DELETE:
                del records[index][key]
            else:
                records[index][key] = value
        return records

    return apply


DELETE = object()
FIELD_ERRORS = [
    # (case id, change to three valid records, expected "record N: field 'x': ..." fragment)
    ("missing-case_id", mutate(1, case_id=DELETE), "record 1: field 'case_id': missing required field"),
    ("missing-two_hop", mutate(2, two_hop=DELETE), "record 2: field 'two_hop': missing required field"),
    ("missing-fact1_query", mutate(0, fact1_query=DELETE), "record 0: field 'fact1_query': missing required"),
    ("missing-fact1_ans", mutate(1, fact1_ans=DELETE), "record 1: field 'fact1_ans': missing required field"),
    ("missing-fact2_query", mutate(1, fact2_query=DELETE), "record 1: field 'fact2_query': missing required"),
    ("missing-fact2_ans", mutate(2, fact2_ans=DELETE), "record 2: field 'fact2_ans': missing required field"),
    ("query-is-string", mutate(1, fact1_query="Paris"),
     "record 1: field 'fact1_query': expected a non-empty list of strings, got 'Paris'"),
    ("query-element-int", mutate(1, fact2_query=["ok?", 3]),
     "record 1: field 'fact2_query': element 1: expected a non-empty string, got 3"),
    ("ans-not-string", mutate(0, fact1_ans=["France"]), "record 0: field 'fact1_ans': expected a non-empty string"),
    ("ans-null", mutate(0, fact2_ans=None), "record 0: field 'fact2_ans': expected a non-empty string, got None"),
    ("case_id-float", mutate(2, case_id=1.5), "record 2: field 'case_id': expected an integer or a non-empty string"),
    ("case_id-bool", mutate(2, case_id=True), "record 2: field 'case_id': expected an integer or a non-empty string"),
    ("flag-not-bool", mutate(1, shortcut_planted="yes"), "record 1: field 'shortcut_planted': expected true or false"),
    ("aliases-not-list", mutate(1, answer_aliases="Paris"), "record 1: field 'answer_aliases': expected a list"),
    ("empty-two_hop", mutate(1, two_hop="  "), "record 1: field 'two_hop': expected a non-empty string, got '  '"),
    ("empty-fact2_query", mutate(2, fact2_query=[]),
     "record 2: field 'fact2_query': expected a non-empty list of strings, got []"),
    ("empty-query-element", mutate(0, fact1_query=["Where?", ""]),
     "record 0: field 'fact1_query': element 1: expected a non-empty string, got ''"),
    ("empty-alias", mutate(0, fact1_aliases=[""]), "record 0: field 'fact1_aliases': element 0"),
    ("duplicate-case_id", mutate(2, case_id="0"), "record 2: field 'case_id': duplicate case_id '0' (also record 0)"),
    ("bad-split", mutate(1, split="test"),
     "record 1: field 'split': expected one of train_subject, heldout_subject, heldout_bridge, got 'test'"),
    ("bad-source", mutate(1, source="web"), "record 1: field 'source': expected one of world, tfrkn, mquake, jsonl"),
    ("label-chain-broken",
     mutate(1, two_hop_label=[["Eiffel Tower", "country", "France"], ["Spain", "capital", "Madrid"]]),
     "record 1: field 'two_hop_label': triplet chain broken: the first triplet's object 'France' differs from the "
     "second triplet's subject 'Spain'"),
    ("id-chain-broken", mutate(2, two_hop_id=[["Q243", "P17", "Q142"], [29, "P36", "Q2807"]]),
     "record 2: field 'two_hop_id': triplet chain broken"),
    ("triplet-shape", mutate(0, two_hop_label=[["Eiffel Tower", "country", "France"]]),
     "record 0: field 'two_hop_label': expected two [subject, relation, object] triplets"),
    ("triplet-element", mutate(0, two_hop_label=[["Eiffel Tower", 5, "France"], ["France", "capital", "Paris"]]),
     "record 0: field 'two_hop_label': triplet element: expected a non-empty string, got 5"),
    ("alias-synonym-conflict", mutate(0, answer_aliases=["a"], fact2_aliases=["b"]),
     "record 0: field 'fact2_aliases': is a synonym of 'answer_aliases' but differs"),
]


def valid_records() -> Records:
    return [tfrkn_record(i) for i in range(3)]


def assert_clean_error(exc: KnrecallError, *fragments: str) -> None:
    message = str(exc)
    assert "\n" not in message
    assert exc.__cause__ is None and (exc.__context__ is None or exc.__suppress_context__)  # no chained traceback
    for fragment in fragments:
        assert fragment in message, f"{fragment!r} not in {message!r}"


def assert_no_output(out_dir: Path) -> None:
    assert not out_dir.exists() or list(out_dir.iterdir()) == []


@pytest.mark.parametrize("change, expected", [case[1:] for case in FIELD_ERRORS], ids=[c[0] for c in FIELD_ERRORS])
def test_bad_record_fields(tmp_path, change, expected):
    path = write_json(tmp_path / "data.json", change(valid_records()))
    with pytest.raises(KnrecallError) as info:
        import_dataset(path, "tfrkn")
    assert_clean_error(info.value, f"{path}: {expected}")
    out_dir = tmp_path / "out"
    with pytest.raises(KnrecallError):
        run_import(path, "auto", out_dir / "items.parquet")
    assert_no_output(out_dir)


def test_bad_field_in_jsonl_names_the_line(tmp_path):
    records = mutate(1, fact1_query="Paris")(valid_records())
    path = tmp_path / "data.jsonl"
    path.write_text("\n".join(json.dumps(r) for r in records) + "\n")
    with pytest.raises(KnrecallError) as info:
        import_dataset(path, "auto")
    assert_clean_error(info.value, f"{path}: line 2: field 'fact1_query': expected a non-empty list of strings")


FILE_ERRORS = [
    # (case id, file name, file text (None: bytes that are not UTF-8), format, expected text after "<path>: ")
    ("invalid-json", "data.json", '[\n  {"case_id": 1,\n   "two_hop" "x"}\n]', "auto",
     "not valid JSON: Expecting ':' delimiter at line 3, column 14"),
    ("not-a-list", "data.json", '{"case_id": 1}', "tfrkn",
     "expected a JSON list of records at the top level, got an object"),
    ("record-not-object", "data.json", json.dumps([tfrkn_record(0), ["x"]]), "tfrkn",
     "record 1: expected a JSON object, got a list"),
    ("empty-list", "data.json", "[]", "auto", "no usable items (the file holds an empty list)"),
    ("empty-list-explicit", "data.json", "[]", "tfrkn", "no usable items (the file holds no records)"),
    ("empty-jsonl", "data.jsonl", "\n\n", "auto", "no usable items (the file holds no records)"),
    ("jsonl-invalid-line", "data.jsonl", json.dumps(tfrkn_record(0)) + "\n{oops}\n", "jsonl",
     "line 2: not valid JSON: Expecting property name enclosed in double quotes at column 2"),
    ("jsonl-not-object", "data.jsonl", json.dumps(tfrkn_record(0)) + "\n\n[1]\n", "jsonl",
     "line 3: expected a JSON object, got a list"),
    ("unknown-format", "data.json", "[]", "xml", "unknown format 'xml' (expected one of: tfrkn, mquake, jsonl, auto)"),
    ("cannot-guess", "data.json", json.dumps([{"case_id": 1, "question": "?"}]), "auto",
     "record 0: cannot tell the format (no 'two_hop', 'single_hops' or 'requested_rewrite' field)"),
    ("not-utf8", "data.json", None, "auto", "not UTF-8 text (bad byte at offset 17)"),
]


@pytest.mark.parametrize("name, text, fmt, expected", [c[1:] for c in FILE_ERRORS], ids=[c[0] for c in FILE_ERRORS])
def test_bad_files(tmp_path, name, text, fmt, expected):
    path = tmp_path / name
    if text is None:
        path.write_bytes(b'[{"two_hop": "caf\xe9"}]')
    else:
        path.write_text(text)
    with pytest.raises(KnrecallError) as info:
        import_dataset(path, fmt)
    assert_clean_error(info.value, f"{path}: {expected}")
    out_dir = tmp_path / "out"
    with pytest.raises(KnrecallError):
        run_import(path, fmt, out_dir / "items.parquet")
    assert_no_output(out_dir)


def test_missing_file(tmp_path):
    path = tmp_path / "nope.json"
    with pytest.raises(KnrecallError) as info:
        import_dataset(path, "auto")
    assert_clean_error(info.value, f"{path}: file not found")
    with pytest.raises(KnrecallError):
        run_import(path, "auto", tmp_path / "out" / "items.parquet")
    assert_no_output(tmp_path / "out")


def test_failed_import_keeps_an_existing_output(tmp_path):
    out = tmp_path / "items.parquet"
    run_import(JSONL, "auto", out)
    before = out.read_bytes()
    bad = write_json(tmp_path / "bad.json", mutate(0, fact1_ans="")(valid_records()))
    with pytest.raises(KnrecallError):
        run_import(bad, "auto", out)
    assert out.read_bytes() == before
    assert sorted(p.name for p in tmp_path.iterdir()) == ["bad.json", "items.parquet"]  # no temp file left


# --------------------------------------------------------------------------------------------- MQuAKE errors


def mquake_records() -> Records:
    return json.loads(MQUAKE.read_text())


def set_path(record: dict[str, Any], dotted: str, value: Any) -> None:
    *parents, last = dotted.split(".")
    target: Any = record
    for part in parents:
        target = target[int(part)] if part.isdigit() else target[part]
    if value is DELETE:
        del target[last]
    else:
        target[int(last) if last.isdigit() else last] = value


MQUAKE_ERRORS = [
    ("answer-mismatch", 0, "answer", "Français",
     "record 0: field 'answer': 'Français' differs from single_hops[1].answer 'French'"),
    ("hop-question-missing", 0, "single_hops.1.question", DELETE,
     "record 0: field 'single_hops[1].question': missing required field"),
    ("hop-not-object", 1, "single_hops.0", "Japan", "record 1: field 'single_hops[0]': expected a JSON object"),
    ("single_hops-empty", 1, "single_hops", [], "record 1: field 'single_hops': expected a non-empty list of objects"),
    ("orig-missing", 3, "orig", DELETE, "record 3: field 'orig': missing required field"),
    ("orig-chain-broken", 3, "orig.triples.1.0", "Q1", "record 3: field 'orig.triples': triplet chain broken"),
    ("questions-empty", 1, "questions", [], "record 1: field 'questions': expected a non-empty list of strings"),
    ("answer_alias-missing", 1, "answer_alias", DELETE, "record 1: field 'answer_alias': missing required field"),
    ("duplicate-case_id", 3, "case_id", "1", "record 3: field 'case_id': duplicate case_id '1' (also record 0)"),
]


@pytest.mark.parametrize("index, dotted, value, expected", [c[1:] for c in MQUAKE_ERRORS],
                         ids=[c[0] for c in MQUAKE_ERRORS])
def test_bad_mquake_records(tmp_path, index, dotted, value, expected):
    records = mquake_records()
    set_path(records[index], dotted, value)
    path = write_json(tmp_path / "mq.json", records)
    with pytest.raises(KnrecallError) as info:
        import_dataset(path, "mquake")
    assert_clean_error(info.value, f"{path}: {expected}")


def test_mquake_with_only_long_chains_has_no_usable_items(tmp_path):
    records = [r for r in mquake_records() if len(r["single_hops"]) == 3]
    records.append(copy.deepcopy(records[0]) | {"case_id": 99})
    path = write_json(tmp_path / "mq.json", records)
    with pytest.raises(KnrecallError) as info:
        run_import(path, "auto", tmp_path / "out" / "items.parquet")
    assert_clean_error(info.value, f"{path}: no usable items (all 2 records skipped: 2 with 3 hops)")
    assert_no_output(tmp_path / "out")


def test_items_are_plain_item_objects():
    assert all(type(item) is Item for item in import_dataset(JSONL, "auto"))
