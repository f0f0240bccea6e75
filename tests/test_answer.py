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
