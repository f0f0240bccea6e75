"""Reasoning-step positions in a generated chain (DESIGN.md §4, KN activation score), on token ids only.

Tokenizers are built here: the world's word-level one and a tiny byte-level BPE trained on an inline corpus whose
merges are checked first (`ĠParis` is one token, "Parisian" is `ĠParis` + `ian`, an invented name splits into many
pieces), so each test exercises the case it names.
"""

import pytest
from tokenizers import Tokenizer, decoders, models, pre_tokenizers, processors, trainers
from transformers import PreTrainedTokenizerFast

from knrecall.errors import KnrecallError
from knrecall.recall.steps import (ReasoningSteps, entity_token_variants, find_reasoning_steps,
                                   find_steps_in_text, prompt_input_ids, subject_last_position,
                                   word_boundary_check)
from knrecall.world.tokenizer import build_tokenizer

CORPUS = """\
The capital of France is Paris. Paris is a city in France. The Eiffel Tower is in Paris.
Velmor Labs is a company. The founder of Velmor Labs was born in Paris. Velmor Labs makes robots.
Alice works for Velmor Labs. The company is based in Paris. Bob lives in Paris too.
Paris is the answer. Paris is big. Paris has a river. Rome is in Italy. Berlin is in Germany.
Step 1: the company is based in a city. Step 2: the city is in a country. So the answer is France.
An Italian and a Christian met a Brazilian and an Indian. Italian food. Indian food.
The Parisian cafe is old. Berlin is the capital of Germany. Rome is the capital of Italy.
Quorvathelminex is the city of Quorvathelminex.
""".splitlines()
LONG = "Quorvathelminex"  # invented, rare in the corpus: byte-level BPE splits it
PROMPT = "Q: In which country is the company Alice works for based? A:"
COT_PROMPT = PROMPT + " Let's think step by step."


@pytest.fixture(scope="module")
def bpe():
    core = Tokenizer(models.BPE())
    core.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    core.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(vocab_size=330, special_tokens=["<|endoftext|>"], show_progress=False,
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet())
    core.train_from_iterator(CORPUS * 3, trainer)
    tok = PreTrainedTokenizerFast(tokenizer_object=core, bos_token="<|endoftext|>", eos_token="<|endoftext|>")
    pieces = lambda text: tok.convert_ids_to_tokens(tok(text).input_ids)  # noqa: E731
    # preconditions of the tests below: the merges this corpus was chosen for
    assert pieces(" Paris") == ["ĠParis"] and pieces("Paris") == ["Paris"]
    assert pieces(" Parisian") == ["ĠParis", "ian"]
    assert pieces(" Velmor Labs") == ["ĠVelmor", "ĠLabs"]
    assert len(pieces(" " + LONG)) >= 5
    return tok


@pytest.fixture(scope="module")
def world():
    return build_tokenizer(CORPUS + [PROMPT, COT_PROMPT, "Alice works for Velmor Labs , Velmor is based in Paris ."])


@pytest.fixture(params=["world", "bpe"])
def tok(request):
    return request.getfixturevalue(request.param)


def ids(tok, text):
    return tok(text, add_special_tokens=False).input_ids


def first_piece(tok, entity):
    """The token that starts the entity after a word (its leading-space form)."""
    return tok.convert_ids_to_tokens(ids(tok, "x " + entity)[len(ids(tok, "x")):])[0]


def predicted(tok, sequence, position):
    return tok.convert_ids_to_tokens(sequence[position + 1])


# ----------------------------------------------------------------------------------------------- variants

def test_variants_bpe_have_the_leading_space_and_the_line_start_forms(bpe):
    forms = [bpe.convert_ids_to_tokens(v) for v in entity_token_variants(bpe, "Paris")]
    assert forms == [["ĠParis"], ["Paris"]]  # the after-newline form equals the start form: deduplicated
    forms = [bpe.convert_ids_to_tokens(v) for v in entity_token_variants(bpe, " Velmor Labs ", ["Paris", "", "Paris"])]
    assert forms == [["ĠVelmor", "ĠLabs"], ["Velmor", "ĠLabs"], ["ĠParis"], ["Paris"]]


def test_variants_world_are_the_words(world):
    assert [world.convert_ids_to_tokens(v) for v in entity_token_variants(world, "Velmor Labs")] == [["Velmor", "Labs"]]


def test_variants_metaspace():
    core = Tokenizer(models.BPE(unk_token="<unk>"))
    core.pre_tokenizer = pre_tokenizers.Metaspace(replacement="▁", prepend_scheme="first")
    core.decoder = decoders.Metaspace(replacement="▁", prepend_scheme="first")
    core.train_from_iterator(CORPUS * 3, trainers.BpeTrainer(vocab_size=300, special_tokens=["<unk>", "<s>", "</s>"],
                                                             show_progress=False))
    tok = PreTrainedTokenizerFast(tokenizer_object=core, bos_token="<s>", eos_token="</s>", unk_token="<unk>")
    variants = entity_token_variants(tok, "Paris")
    assert tok.convert_ids_to_tokens(variants[0]) == ["▁Paris"]
    assert all(tok.unk_token_id not in v for v in variants)  # "\n" is unknown to it: no [UNK] inside a variant


def test_unknown_entity_is_an_error_and_unknown_alias_is_dropped(world):
    with pytest.raises(KnrecallError, match="Zyx"):
        entity_token_variants(world, "Zyx")  # only [UNK]: it would match every unknown word
    with pytest.raises(KnrecallError):
        entity_token_variants(world, "  ")
    assert entity_token_variants(world, "Paris", ["Zyx"]) == [ids(world, "Paris")]


# --------------------------------------------------------------------------------------- positions on ids

def test_no_cot_uses_the_last_prompt_position(tok):
    prompt = prompt_input_ids(tok, PROMPT)
    gen = ids(tok, " Velmor Labs is based in Paris. So the answer is France.")
    steps = find_reasoning_steps(prompt, gen, entity_token_variants(tok, "Paris"),
                                 entity_token_variants(tok, "France"), cot=False)
    assert steps == ReasoningSteps(len(prompt) - 1, len(prompt) - 1, True, True)


def test_exact_positions_world(world):
    prompt = prompt_input_ids(world, COT_PROMPT)
    assert world.convert_ids_to_tokens(prompt[:1]) == ["[BOS]"]
    # generation words: Alice(0) works(1) for(2) Velmor(3) Labs(4) ,(5) Velmor(6) is(7) based(8) in(9) Paris(10)
    gen = ids(world, "Alice works for Velmor Labs , Velmor is based in Paris .")
    steps = find_reasoning_steps(prompt, gen, entity_token_variants(world, "Paris"),
                                 entity_token_variants(world, "Velmor Labs"), cot=True)
    n = len(prompt)
    # bridge "Paris" at generated 10; the answer "Velmor Labs" occurs only before it (generated 3): absent
    assert steps == ReasoningSteps(n + 9, n - 1, True, False)
    steps = find_reasoning_steps(prompt, gen, entity_token_variants(world, "Velmor Labs"),
                                 entity_token_variants(world, "Paris"), cot=True)
    assert steps == ReasoningSteps(n + 2, n + 9, True, True)
    seq = prompt + gen
    assert predicted(world, seq, steps.hop1_position) == "Velmor" and seq[steps.hop1_position + 2] == seq[n + 4]
    assert predicted(world, seq, steps.hop2_position) == "Paris"


@pytest.mark.parametrize("bridge", ["Velmor Labs", LONG])
def test_chain_bridge_then_answer(tok, bridge):
    prompt = prompt_input_ids(tok, COT_PROMPT)
    gen = ids(tok, f" Alice works for {bridge}. {bridge} is based in Paris. Paris is in France. So it is France.")
    bv, av = entity_token_variants(tok, bridge), entity_token_variants(tok, "France")
    steps = find_reasoning_steps(prompt, gen, bv, av, cot=True)
    seq = prompt + gen
    assert steps.hop1_found and steps.hop2_found
    assert predicted(tok, seq, steps.hop1_position) == first_piece(tok, bridge)
    assert predicted(tok, seq, steps.hop2_position) == first_piece(tok, "France")
    # the whole entity follows, and it is the first mention: no earlier position predicts it
    whole = ids(tok, "x " + bridge)[len(ids(tok, "x")):]
    assert seq[steps.hop1_position + 1: steps.hop1_position + 1 + len(whole)] == whole
    assert all(seq[p + 1: p + 1 + len(whole)] != whole for p in range(len(prompt) - 1, steps.hop1_position))
    assert len(prompt) <= steps.hop1_position < steps.hop2_position


def test_entity_at_the_start_of_the_generation(tok):
    prompt = prompt_input_ids(tok, PROMPT)
    gen = ids(tok, " Paris , and Paris is in France")
    steps = find_reasoning_steps(prompt, gen, entity_token_variants(tok, "Paris"),
                                 entity_token_variants(tok, "France"), cot=True)
    assert steps.hop1_position == len(prompt) - 1 and steps.hop1_found  # the last prompt token predicts it
    assert predicted(tok, prompt + gen, steps.hop1_position) == first_piece(tok, "Paris")
    # a generation starting with the no-space form (e.g. after a prompt ending in a newline)
    gen = ids(tok, "Paris is in France")
    steps = find_reasoning_steps(prompt, gen, entity_token_variants(tok, "Paris"),
                                 entity_token_variants(tok, "France"), cot=True)
    assert (steps.hop1_position, steps.hop1_found) == (len(prompt) - 1, True)


def test_absent_bridge_and_absent_answer(tok):
    prompt = prompt_input_ids(tok, PROMPT + " Paris?")  # the bridge in the prompt is not a step of the chain
    n = len(prompt)
    gen = ids(tok, " The company is based in a city. So the answer is France.")
    steps = find_reasoning_steps(prompt, gen, entity_token_variants(tok, "Paris"),
                                 entity_token_variants(tok, "France"), cot=True)
    assert (steps.hop1_position, steps.hop1_found) == (n - 1, False)
    assert steps.hop2_found and predicted(tok, prompt + gen, steps.hop2_position) == first_piece(tok, "France")
    gen = ids(tok, " The company is based in Paris. So the answer is Italy.")
    steps = find_reasoning_steps(prompt, gen, entity_token_variants(tok, "Paris"),
                                 entity_token_variants(tok, "France"), cot=True)
    assert steps.hop1_found and (steps.hop2_position, steps.hop2_found) == (n - 1, False)
    steps = find_reasoning_steps(prompt, [], entity_token_variants(tok, "Paris"),
                                 entity_token_variants(tok, "France"), cot=True)
    assert steps == ReasoningSteps(n - 1, n - 1, False, False)


def test_answer_before_and_after_the_bridge_takes_the_one_after(tok):
    prompt = prompt_input_ids(tok, COT_PROMPT)
    gen = ids(tok, " France? Alice works for Velmor Labs. Velmor Labs is in Paris, in France. So France.")
    steps = find_reasoning_steps(prompt, gen, entity_token_variants(tok, "Velmor Labs"),
                                 entity_token_variants(tok, "France"), cot=True)
    france = ids(tok, "x France")[-1]
    seq = prompt + gen
    mentions = [i for i, t in enumerate(seq) if t == france]
    assert len(mentions) == 3 and mentions[0] == len(prompt)
    assert steps.hop1_position < mentions[1] - 1
    assert steps.hop2_position == mentions[1] - 1  # not mentions[0] - 1 (before the bridge), not the last one


def test_alias_match(tok):
    prompt = prompt_input_ids(tok, COT_PROMPT)
    gen = ids(tok, " Alice works for Velmor Labs, in Paris. So France.")
    bv = entity_token_variants(tok, "Quorvathelminex", ["Velmor Labs"])
    steps = find_reasoning_steps(prompt, gen, bv, entity_token_variants(tok, "France"), cot=True)
    assert steps.hop1_found and predicted(tok, prompt + gen, steps.hop1_position) == first_piece(tok, "Velmor")
    assert not find_reasoning_steps(prompt, gen, entity_token_variants(tok, "Quorvathelminex"),
                                    entity_token_variants(tok, "France"), cot=True).hop1_found


def test_earliest_start_then_longest_variant():
    a, b, c = 11, 12, 13
    # bridge variants a and a b: at the same start the longer one wins, so the answer b is searched after it
    steps = find_reasoning_steps([1, 2], [c, a, b, c, b], [[a], [a, b]], [[b]], cot=True)
    assert steps == ReasoningSteps(hop1_position=2, hop2_position=5, hop1_found=True, hop2_found=True)
    # an earlier start beats a longer variant later
    steps = find_reasoning_steps([1, 2], [b, c, a, b], [[a, b], [b]], [[c]], cot=True)
    assert steps == ReasoningSteps(hop1_position=1, hop2_position=2, hop1_found=True, hop2_found=True)
    # an empty variant never matches
    assert not find_reasoning_steps([1], [a], [[]], [[]], cot=True).hop1_found


def test_a_match_needs_the_whole_variant(tok):
    prompt = prompt_input_ids(tok, COT_PROMPT)
    gen = ids(tok, " Alice works for Velmor. Labs is in Paris. Velmor")  # never "Velmor Labs" in a row
    steps = find_reasoning_steps(prompt, gen, entity_token_variants(tok, "Velmor Labs"),
                                 entity_token_variants(tok, "Paris"), cot=True)
    assert not steps.hop1_found and steps.hop2_found


def test_word_boundaries(bpe):
    """Ids alone match `ĠParis` inside "Parisian" (`ĠParis` + `ian`); the boundary check rejects it."""
    prompt = prompt_input_ids(bpe, PROMPT)
    gen = ids(bpe, " The Parisian company is in Paris.")
    paris = ids(bpe, " Paris")[0]
    bv, av = entity_token_variants(bpe, "Paris"), entity_token_variants(bpe, "France")
    loose = find_reasoning_steps(prompt, gen, bv, av, cot=True)
    strict = find_reasoning_steps(prompt, gen, bv, av, cot=True, boundary=word_boundary_check(bpe))
    seq = prompt + gen
    assert bpe.convert_ids_to_tokens(seq[loose.hop1_position + 1: loose.hop1_position + 3]) == ["ĠParis", "ian"]
    assert strict.hop1_found and seq[strict.hop1_position + 1] == paris and strict.hop1_position > loose.hop1_position
    assert bpe.convert_ids_to_tokens(seq[strict.hop1_position + 2]) == "."
    # the no-space form glued to a preceding word ("TheParis") is rejected too; at the end of the text it matches
    glued = [ids(bpe, " The")[0], ids(bpe, "Paris")[0]]
    assert len(glued) == 2 and bpe.decode(glued) == " TheParis"
    assert find_reasoning_steps(prompt, glued, bv, av, cot=True).hop1_found
    assert not find_reasoning_steps(prompt, glued, bv, av, cot=True, boundary=word_boundary_check(bpe)).hop1_found
    assert find_reasoning_steps(prompt, glued[1:], bv, av, cot=True, boundary=word_boundary_check(bpe)).hop1_found
    # find_steps_in_text checks whole words by default
    assert not find_steps_in_text(bpe, PROMPT, " The Parisian cafe.", "Paris", "France").hop1_found
    assert find_steps_in_text(bpe, PROMPT, " The Parisian cafe.", "Paris", "France", whole_words=False).hop1_found


def test_word_boundary_check_on_the_world_tokenizer(world):
    prompt = prompt_input_ids(world, PROMPT)
    gen = ids(world, "Velmor Labs is in Paris .")
    check = word_boundary_check(world)
    seq = prompt + gen
    assert all(check(seq, s, s + 1) for s in range(len(seq)))  # words are whole tokens


# ------------------------------------------------------------------------------------------------ on texts

def test_find_steps_in_text_matches_ids(tok):
    text = " Alice works for Velmor Labs. Velmor Labs is based in Paris. So the answer is Paris."
    steps = find_steps_in_text(tok, COT_PROMPT, text, "Velmor Labs", "Paris")
    prompt = prompt_input_ids(tok, COT_PROMPT)
    assert prompt == tok(COT_PROMPT).input_ids  # leading special tokens kept (the world's BOS)
    assert steps == find_reasoning_steps(prompt, ids(tok, text), entity_token_variants(tok, "Velmor Labs"),
                                         entity_token_variants(tok, "Paris"), cot=True)
    assert steps.hop1_found and steps.hop2_found
    seq = prompt + ids(tok, text)
    assert predicted(tok, seq, steps.hop2_position) == first_piece(tok, "Paris")
    assert find_steps_in_text(tok, COT_PROMPT, text, "Velmor Labs", "Paris", cot=False) == ReasoningSteps(
        len(prompt) - 1, len(prompt) - 1, True, True)
    assert find_steps_in_text(tok, COT_PROMPT, "", "Velmor Labs", "Paris") == ReasoningSteps(
        len(prompt) - 1, len(prompt) - 1, False, False)


def test_answer_alias_in_text(tok):
    steps = find_steps_in_text(tok, COT_PROMPT, " Velmor Labs is in Paris, Italy.", "Velmor Labs", "France",
                               answer_aliases=["Italy"])
    assert steps.hop2_found


def test_empty_prompt_is_an_error():
    with pytest.raises(KnrecallError, match="prompt"):
        find_reasoning_steps([], [1, 2], [[1]], [[2]], cot=True)


def test_prompt_ids_keep_a_leading_bos_and_drop_an_appended_eos():
    tok = build_tokenizer([PROMPT])
    bos, eos = tok.bos_token_id, tok.eos_token_id
    tok.backend_tokenizer.post_processor = processors.TemplateProcessing(
        single="[BOS] $A [EOS]", special_tokens=[("[BOS]", bos), ("[EOS]", eos)])
    assert tok(PROMPT).input_ids[-1] == eos  # the tokenizer appends EOS now
    prompt = prompt_input_ids(tok, PROMPT)
    assert prompt == [bos] + ids(tok, PROMPT)
    steps = find_steps_in_text(tok, PROMPT, "", "Q", "A", cot=False)
    assert steps.hop1_position == len(prompt) - 1


# --- the subject's last token in the prompt ------------------------------------------------------------------------


def _metaspace():
    core = Tokenizer(models.BPE(unk_token="<unk>"))
    core.pre_tokenizer = pre_tokenizers.Metaspace(replacement="▁", prepend_scheme="first")
    core.decoder = decoders.Metaspace(replacement="▁", prepend_scheme="first")
    trainer = trainers.BpeTrainer(vocab_size=300, special_tokens=["<unk>", "<s>"], show_progress=False)
    core.train_from_iterator(CORPUS * 3, trainer)
    return PreTrainedTokenizerFast(tokenizer_object=core, unk_token="<unk>", bos_token="<s>", eos_token="<s>")


@pytest.mark.parametrize("kind", ["world", "bpe", "metaspace"])
def test_subject_last_position_multi_token_name(kind, request):
    tok = _metaspace() if kind == "metaspace" else request.getfixturevalue(kind)
    prompt = "Q: Where is Velmor Labs based? A:"
    prompt_ids = ids(tok, prompt)
    position = subject_last_position(prompt_ids, entity_token_variants(tok, "Velmor Labs"))
    # the token at the position ends the name, and the text up to it ends with the name
    assert tok.decode(prompt_ids[: position + 1]).rstrip().endswith("Velmor Labs")
    assert not tok.decode(prompt_ids[: position]).rstrip().endswith("Velmor Labs")
    if kind != "world":
        assert len(entity_token_variants(tok, "Velmor Labs")[0]) >= 2  # a multi-token name: the LAST token counts


@pytest.mark.parametrize("kind", ["world", "bpe", "metaspace"])
def test_subject_twice_takes_the_last_occurrence(kind, request):
    tok = _metaspace() if kind == "metaspace" else request.getfixturevalue(kind)
    prompt = "Paris is big. Bob lives in Paris too. Rome is in Italy"  # words every test tokenizer knows
    prompt_ids = ids(tok, prompt)
    position = subject_last_position(prompt_ids, entity_token_variants(tok, "Paris"))
    assert tok.decode(prompt_ids[: position + 1]).endswith("Bob lives in Paris")
    first = subject_last_position(ids(tok, "Paris is big."), entity_token_variants(tok, "Paris"))
    assert first is not None and first < position


def test_subject_absent_or_only_inside_a_longer_word(bpe):
    assert subject_last_position(ids(bpe, "Q: Where is Rome? A:"), entity_token_variants(bpe, "Paris")) is None
    # "Parisian" contains the id of ĠParis: ids alone match it, the word-boundary check does not
    prompt_ids = ids(bpe, "Q: Is the Parisian cafe old? A:")
    variants = entity_token_variants(bpe, "Paris")
    assert subject_last_position(prompt_ids, variants) is not None
    assert subject_last_position(prompt_ids, variants, boundary=word_boundary_check(bpe)) is None
