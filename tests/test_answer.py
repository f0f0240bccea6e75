"""Answer extraction, correctness, target tokens, and greedy generation against a hand-written greedy loop."""

import pytest
import torch
from transformers import LlamaConfig, LlamaForCausalLM

from knrecall.answer import Query, extract_span, greedy_answers, is_correct, predictions_table
from knrecall.data.items import Item
from knrecall.errors import KnrecallError
from knrecall.targets import answer_token_ids
from knrecall.world.tokenizer import build_tokenizer

TEXTS = ["Q: Where was Ada Vell born? A: Zorin .", "Q: In which country is Zorin? A: Kestria .",
         "Q: In which country was Ada Vell born? A: Kestria .", "Velmor Labs"]


@pytest.fixture(scope="module")
def tiny():
    torch.manual_seed(0)
    tokenizer = build_tokenizer(TEXTS)
    config = LlamaConfig(vocab_size=len(tokenizer), hidden_size=16, intermediate_size=32, num_hidden_layers=2,
                         num_attention_heads=2, num_key_value_heads=2, max_position_embeddings=32,
                         bos_token_id=tokenizer.bos_token_id, eos_token_id=tokenizer.eos_token_id,
                         pad_token_id=tokenizer.pad_token_id)
    return LlamaForCausalLM(config).eval(), tokenizer


@pytest.mark.parametrize("generation, span", [("Kestria. Q: more", "Kestria"), (" Velmor Labs\nnext", "Velmor Labs"),
                                              ("no stop at all", "no stop at all"), ("", "")])
def test_extract_span(generation, span):
    assert extract_span(generation) == span


def test_correctness_is_whole_word_and_case_insensitive():
    assert is_correct("the answer is kestria", "Kestria", ())
    assert not is_correct("Kestrian", "Kestria", ())
    assert is_correct("Velmor Labs", "Velmor  Labs", ())
    assert is_correct("USA", "United States", ("USA",))
    assert not is_correct("Velmor", "Velmor Labs", ())


def test_answer_token_ids_are_the_suffix(tiny):
    _, tokenizer = tiny
    prompt = "Q: Where was Ada Vell born? A:"
    ids = answer_token_ids(tokenizer, prompt, "Velmor Labs")
    assert tokenizer.convert_ids_to_tokens(ids) == ["Velmor", "Labs"]
    with pytest.raises(KnrecallError, match="tokenizes to nothing"):
        answer_token_ids(tokenizer, prompt, "   ")


@torch.no_grad()
def manual_greedy(model, tokenizer, prompt, steps):
    ids = tokenizer(prompt, return_tensors="pt").input_ids
    first = None
    for _ in range(steps):
        logits = model(ids).logits[0, -1].float()
        first = torch.softmax(logits, -1) if first is None else first
        nxt = int(logits.argmax())
        ids = torch.cat([ids, torch.tensor([[nxt]])], dim=1)
        if nxt == tokenizer.eos_token_id:
            break
    return ids[0, len(tokenizer(prompt).input_ids):], first


def test_batched_greedy_matches_a_manual_loop(tiny):
    model, tokenizer = tiny
    queries = [Query("Q: Where was Ada Vell born? A:", "Zorin", ()), Query("Q: In which country is Zorin? A:", "Kestria", ()),
               Query("Q: In which country was Ada Vell born? A:", "Kestria", ())]
    results = greedy_answers(model, tokenizer, queries, max_new_tokens=4, batch_size=2, device="cpu")
    for query in queries:
        new_ids, first_probs = manual_greedy(model, tokenizer, query.prompt, 4)
        text = tokenizer.decode(new_ids, skip_special_tokens=True)
        # the batch stops at '.' as well as EOS: compare up to the first stop
        assert results[query]["answer_span"] == extract_span(text)
        gold = answer_token_ids(tokenizer, query.prompt, query.gold)[0]
        assert results[query]["gold_first_token_prob"] == pytest.approx(float(first_probs[gold]), rel=1e-4)


def test_prompt_longer_than_context_is_an_error(tiny):
    model, tokenizer = tiny
    long_question = " ".join(["Zorin"] * 40)
    item = Item("long", "tfrkn", long_question, ["Where was Ada Vell born?"], "Zorin", ["In which country is Zorin?"], "Kestria")
    with pytest.raises(KnrecallError, match="context of 32"):
        predictions_table([item], {"direct": "Q: {question} A:"}, ["direct"], model, tokenizer, 4, 8, "cpu")


def test_predictions_cover_every_prompt(tiny):
    model, tokenizer = tiny
    item = Item("a", "tfrkn", "In which country was Ada Vell born?", ["Where was Ada Vell born?"], "Zorin",
                ["In which country is Zorin?", "Zorin lies in which country?"], "Kestria")
    table = predictions_table([item], {"direct": "Q: {question} A:"}, ["direct"], model, tokenizer, 3, 8, "cpu")
    rows = table.to_pylist()
    assert [(r["kind"], r["paraphrase"]) for r in rows] == [("hop1", 0), ("hop2", 0), ("hop2", 1), ("two_hop", 0)]
    assert rows[-1]["prompt"] == "Q: In which country was Ada Vell born? A:" and rows[-1]["gold"] == "Kestria"


# ------------------------------------------------------------------------------------ conditions
from knrecall.answer import chain_names_bridge, follows, plan_prompts, trim_generated  # noqa: E402
from knrecall.data.conditions import DEFAULT_TEMPLATES  # noqa: E402


def world_items():
    people = ["Ada Vell", "Bo Rask", "Cy Dunn", "Di Moor"]
    cities = ["Zorin", "Telk", "Murr", "Telk"]
    country = {"Zorin": "Kestria", "Telk": "Vamor", "Murr": "Quell"}
    return [
        Item(f"c{i}", "world", f"In which country was {p} born?", [f"Where was {p} born?"], c,
             [f"In which country is {c}?"], country[c], subject=p, relation1="born_in", relation2="located_in")
        for i, (p, c) in enumerate(zip(people, cities))
    ]


@pytest.mark.parametrize("generation, span", [
    ("Where was Ada born? Zorin. In which country is Zorin? Kestria. So the answer is Kestria.", "Kestria"),
    ("Zorin. So the answer is Vamor. So the answer is Kestria", "Kestria"),
    ("Where was Ada born? Zorin. Kestria", "Kestria"),
    ("", ""),
])
def test_cot_span_is_after_the_last_marker(generation, span):
    assert extract_span(generation, cot=True) == span


def test_chain_and_conflict_judgements():
    chain = "Where was Ada Vell born? Zorin. In which country is Zorin? Kestria. So the answer is Kestria."
    assert chain_names_bridge(chain, "Zorin", [])
    assert not chain_names_bridge("So the answer is Zorin.", "Zorin", [])  # only the final answer names it
    assert follows("Vamor", "Vamor", "Kestria", ()) == "context"
    assert follows("Kestria", "Vamor", "Kestria", ()) == "memory"
    assert follows("Quell", "Vamor", "Kestria", ()) == "neither"
    assert follows("Kestria", None, "Kestria", ()) == "memory"


def test_trim_generated_stops_at_the_first_stop_and_drops_padding():
    assert trim_generated([5, 6, 3, 0, 0], stops=[3], pad=0) == [5, 6, 3]
    assert trim_generated([5, 6, 7], stops=[3], pad=0) == [5, 6, 7]


def test_plans_for_every_condition():
    items = world_items()
    direct = plan_prompts(items, DEFAULT_TEMPLATES, "direct", seed=0, few_shot_k=1)
    assert [p.kind for p in direct[:3]] == ["hop1", "hop2", "two_hop"]
    assert direct[2].query.prompt == "Q: In which country was Ada Vell born? A:" and not direct[2].query.cot
    zero = plan_prompts(items, DEFAULT_TEMPLATES, "zero_shot_cot", 0, 1, single_hop=False)
    assert len(zero) == len(items) and zero[0].query.cot
    assert zero[0].query.prompt == "Q: In which country was Ada Vell born? A: Let's think step by step."
    few = plan_prompts(items, DEFAULT_TEMPLATES, "few_shot_cot", 0, 1, single_hop=False)
    for planned in few:
        subject = planned.item.subject
        assert planned.query.prompt.endswith(f"Q: {planned.item.two_hop} A:")
        assert planned.query.prompt.count(subject) == 1  # the exemplar is another item
    hop2 = plan_prompts(items, DEFAULT_TEMPLATES, "conflict_hop2", 0, 1, single_hop=False)
    for planned in hop2:
        assert planned.context_answer not in (None, planned.item.fact2_ans)
        assert planned.query.prompt.startswith(f"Context: In which country is {planned.item.fact1_ans}? {planned.context_answer}.")
    hop1 = plan_prompts(items, DEFAULT_TEMPLATES, "conflict_hop1", 0, 1, single_hop=False)
    country = {it.fact1_ans: it.fact2_ans for it in items}
    for planned in hop1:
        fake_bridge = planned.query.prompt.split("born? ")[1].split(".")[0]
        assert fake_bridge != planned.item.fact1_ans and planned.context_answer == country[fake_bridge]


def test_predictions_under_every_condition():
    items = world_items()[:2]
    conditions = ["direct", "zero_shot_cot", "few_shot_cot", "conflict_hop1", "conflict_hop2"]
    texts = [p.query.prompt + " " + p.query.gold for c in conditions for p in plan_prompts(items, DEFAULT_TEMPLATES, c, 0, 1)]
    tokenizer = build_tokenizer(texts + ["So the answer is"])
    torch.manual_seed(0)
    config = LlamaConfig(vocab_size=len(tokenizer), hidden_size=16, intermediate_size=32, num_hidden_layers=1,
                         num_attention_heads=2, num_key_value_heads=2, max_position_embeddings=128,
                         bos_token_id=tokenizer.bos_token_id, eos_token_id=tokenizer.eos_token_id,
                         pad_token_id=tokenizer.pad_token_id)
    model = LlamaForCausalLM(config).eval()
    table = predictions_table(items, DEFAULT_TEMPLATES, conditions, model, tokenizer, 3, 8, "cpu",
                              cot_max_new_tokens=5, few_shot_k=1)
    rows = table.to_pylist()
    two_hop = [r for r in rows if r["kind"] == "two_hop"]
    assert [r["condition"] for r in two_hop] == [c for c in conditions for _ in items]
    assert len([r for r in rows if r["kind"] != "two_hop"]) == 4  # single-hop prompts once, not per condition
    for r in two_hop:
        assert (r["chain_names_bridge"] is not None) == r["condition"].endswith("cot")
        assert (r["follows"] is not None) == r["condition"].startswith("conflict")
        assert 1 <= len(r["generated_ids"]) <= (5 if r["condition"].endswith("cot") else 3)
