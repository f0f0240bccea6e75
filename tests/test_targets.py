"""Answer target tokens (DESIGN.md §4) on tokenizers of the kinds real models use, all trained here (no downloads).

Byte-level BPE as GPT-2 (no BOS) and LLaMA-3 (split regex, BOS by a post-processor); SentencePiece-style Metaspace
as LLaMA-2 / Mistral (`prepend_scheme="first"`, BPE or Unigram, BOS added), one appending EOS as well; and the
world's word-level tokenizer.
"""

import json

import pytest
from tokenizers import Regex, Tokenizer, decoders, models, pre_tokenizers, processors, trainers
from transformers import PreTrainedTokenizerFast

from knrecall.errors import KnrecallError
from knrecall.targets import (TargetTokens, answer_token_ids, join_prompt_and_answer, target_tokens,
                              teacher_forced_contexts)
from knrecall.world.tokenizer import build_tokenizer

FACTS = """\
Paris is the capital of France. The capital of France is Paris. France has its capital in Paris.
Berlin is the capital of Germany. The capital of Germany is Berlin. Germany has its capital in Berlin.
Rome is the capital of Italy. The capital of Italy is Rome. Italy has its capital in Rome.
Madrid is the capital of Spain. The capital of Spain is Madrid. Spain has its capital in Madrid.
Tokyo is the capital of Japan. The capital of Japan is Tokyo. Japan has its capital in Tokyo.
Lisbon is the capital of Portugal. The capital of Portugal is Lisbon.
Ouagadougou is the capital of Burkina Faso. The capital of Burkina Faso is Ouagadougou.
Buenos Aires is the capital of Argentina. The capital of Argentina is Buenos Aires.
The Eiffel Tower is located in Paris. The Colosseum is located in Rome. The Brandenburg Gate is in Berlin.
Marie Curie was born in Warsaw. Warsaw is the capital of Poland. The capital of Poland is Warsaw.
Albert Einstein was born in Ulm. Ulm is a city in Germany. Einstein worked in Berlin and in Princeton.
Leonardo da Vinci was born in Vinci. Vinci is a town in Italy. Leonardo painted the Mona Lisa.
The Mona Lisa hangs in the Louvre. The Louvre is a museum in Paris. The Prado is a museum in Madrid.
Isaac Newton was born in England. London is the capital of England. The capital of England is London.
The Thames flows through London. The Seine flows through Paris. The Tiber flows through Rome.
The official language of France is French. The official language of Germany is German.
The official language of Italy is Italian. The official language of Spain is Spanish.
The official language of Japan is Japanese. The official language of Portugal is Portuguese.
Mount Fuji is the highest mountain in Japan. The Zugspitze is the highest mountain in Germany.
Pablo Picasso was born in Malaga. Malaga is a city in Spain. Picasso lived in Paris for many years.
Frederic Chopin was born near Warsaw. Chopin died in Paris. Chopin wrote music for the piano.
Goethe was born in Frankfurt. Frankfurt is a city in Germany. Goethe wrote Faust.
Dante was born in Florence. Florence is a city in Italy. Dante wrote the Divine Comedy.
Cervantes was born in Alcala. Cervantes wrote Don Quixote. Alcala is a town near Madrid.
"""
LINES = FACTS.splitlines()
PROMPT = "The capital of France is"
LLAMA3_SPLIT = (r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}{1,3}| ?[^\s\p{L}\p{N}]+[\r\n]*"
                r"|\s*[\r\n]+|\s+(?!\S)|\s+")


def byte_level(bos: str | None, special: list[str], llama3: bool) -> Tokenizer:
    core = Tokenizer(models.BPE())
    if llama3:
        core.pre_tokenizer = pre_tokenizers.Sequence([
            pre_tokenizers.Split(Regex(LLAMA3_SPLIT), behavior="isolated", invert=False),
            pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False),
        ])
    else:
        core.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    core.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(vocab_size=600, special_tokens=special,
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet(), show_progress=False)
    core.train_from_iterator(LINES * 3, trainer)
    if bos:
        core.post_processor = processors.TemplateProcessing(single=f"{bos} $A",
                                                            special_tokens=[(bos, core.token_to_id(bos))])
    else:
        core.post_processor = processors.ByteLevel(trim_offsets=False)
    return core


def metaspace(model: str, append_eos: bool = False) -> Tokenizer:
    special = ["<unk>", "<s>", "</s>"]
    if model == "bpe":
        core = Tokenizer(models.BPE(unk_token="<unk>"))
        trainer = trainers.BpeTrainer(vocab_size=500, special_tokens=special, show_progress=False)
    else:
        core = Tokenizer(models.Unigram())
        trainer = trainers.UnigramTrainer(vocab_size=400, special_tokens=special, unk_token="<unk>",
                                          show_progress=False)
    core.pre_tokenizer = pre_tokenizers.Metaspace(replacement="▁", prepend_scheme="first")
    core.decoder = decoders.Metaspace(replacement="▁", prepend_scheme="first")
    core.train_from_iterator(LINES * 3, trainer)
    template = "<s> $A </s>" if append_eos else "<s> $A"
    core.post_processor = processors.TemplateProcessing(
        single=template, special_tokens=[("<s>", core.token_to_id("<s>")), ("</s>", core.token_to_id("</s>"))])
    return core


def wrap(core: Tokenizer, **special) -> PreTrainedTokenizerFast:
    return PreTrainedTokenizerFast(tokenizer_object=core, **special)


# name -> (tokenizer, leading-space marker of a word after a space, whether it adds a BOS)
@pytest.fixture(scope="module")
def tokenizers_():
    eot = "<|endoftext|>"
    return {
        "gpt2": (wrap(byte_level(None, [eot], llama3=False), bos_token=eot, eos_token=eot), "Ġ", False),
        "llama3": (wrap(byte_level("<|begin_of_text|>", ["<|begin_of_text|>", "<|end_of_text|>"], llama3=True),
                        bos_token="<|begin_of_text|>", eos_token="<|end_of_text|>"), "Ġ", True),
        "llama2_bpe": (wrap(metaspace("bpe"), bos_token="<s>", eos_token="</s>", unk_token="<unk>"), "▁", True),
        "llama2_unigram": (wrap(metaspace("unigram"), bos_token="<s>", eos_token="</s>", unk_token="<unk>"), "▁",
                           True),
        "world": (build_tokenizer(LINES), "", True),
    }


KINDS = ["gpt2", "llama3", "llama2_bpe", "llama2_unigram", "world"]
SUBWORD = KINDS[:4]


@pytest.fixture(params=KINDS)
def kind(request, tokenizers_):
    return (request.param, *tokenizers_[request.param])


def test_separator_rule():
    assert join_prompt_and_answer("A:", "  Paris ") == ("A:", "A: Paris")
    assert join_prompt_and_answer("A: ", "Paris") == ("A:", "A: Paris")
    assert join_prompt_and_answer("A:\t ", "Paris") == ("A:", "A:\t Paris")
    assert join_prompt_and_answer("A:\n", "Paris") == ("A:\n", "A:\nParis")
    assert join_prompt_and_answer("A:\n  ", "Paris") == ("A:\n", "A:\n  Paris")
    assert join_prompt_and_answer("A:", ".com") == ("A:", "A: .com")


def test_single_token_answer_has_the_leading_space_form(kind):
    name, tok, marker, _ = kind
    assert f"{marker}Paris" in tok.get_vocab()  # the corpus makes it one token: the test checks we pick it
    ids = answer_token_ids(tok, PROMPT, "Paris")
    assert tok.convert_ids_to_tokens(ids) == [f"{marker}Paris"]
    assert tok.decode(ids).strip() == "Paris"
    assert answer_token_ids(tok, PROMPT, "  Paris \n") == ids  # the answer is stripped


@pytest.mark.parametrize("answer", ["Buenos Aires", "Burkina Faso", "Don Quixote."])
def test_multi_token_answer(kind, answer):
    name, tok, marker, _ = kind
    prompt = "The capital of Argentina is" if answer == "Buenos Aires" else "Q: What is it? A:"
    ids = answer_token_ids(tok, prompt, answer)
    tokens = tok.convert_ids_to_tokens(ids)
    assert len(ids) >= 2
    assert tokens[0].startswith(marker) and tokens[0] != marker
    if name == "world":
        assert tokens == tok.tokenize(answer)
    # byte-level decodes the answer's own leading space; Metaspace's decoder drops the first token's "▁"
    assert tok.decode(ids) == (" " + answer if name in ("gpt2", "llama3") else answer)
    assert tok.decode(ids).strip() == answer


@pytest.mark.parametrize("name", SUBWORD)
def test_word_split_into_subwords(tokenizers_, name):
    tok, marker, _ = tokenizers_[name]
    ids = answer_token_ids(tok, PROMPT, "Parisian")  # unseen word: several pieces, the first with the space
    tokens = tok.convert_ids_to_tokens(ids)
    assert len(ids) >= 2 and tokens[0].startswith(marker)
    assert tok.decode(ids).strip() == "Parisian"


@pytest.mark.parametrize("prompt, answer", [(PROMPT, "Paris"), (PROMPT, "Buenos Aires"), ("Chopin died in", "Paris."),
                                            ("Q: Who wrote Faust? A:", "Goethe")])
def test_prompt_and_answer_ids_are_the_joint_tokenization(kind, prompt, answer):
    name, tok, _, adds_bos = kind
    prompt_ids, answer_ids = teacher_forced_contexts(tok, prompt, answer)
    assert prompt_ids + answer_ids == tok(f"{prompt} {answer}").input_ids
    assert prompt_ids == tok(prompt).input_ids
    assert (prompt_ids[0] == tok.bos_token_id) == adds_bos
    assert tok.bos_token_id not in answer_ids
    assert not set(answer_ids) & set(tok.all_special_ids)
    target = target_tokens(tok, prompt, answer)
    assert isinstance(target, TargetTokens) and target.input_ids == prompt_ids + answer_ids
    contexts = target.contexts()
    assert [gold for _, gold in contexts] == answer_ids
    assert [ctx for ctx, _ in contexts] == [prompt_ids + answer_ids[:j] for j in range(len(answer_ids))]


@pytest.mark.parametrize("answer", ["", "   ", "\n\t"])
def test_empty_answer_is_an_error(kind, answer):
    _, tok, _, _ = kind
    with pytest.raises(KnrecallError, match="tokenizes to nothing"):
        answer_token_ids(tok, PROMPT, answer)


def test_empty_prompt_is_an_error(kind):
    _, tok, _, _ = kind
    with pytest.raises(KnrecallError, match="prompt is empty"):
        answer_token_ids(tok, "  ", "Paris")


def test_answer_with_a_special_token_is_an_error(kind):
    _, tok, _, _ = kind
    for special in {tok.eos_token, tok.bos_token}:
        for answer in (f"Paris{special}", f"Paris {special}", special):
            with pytest.raises(KnrecallError, match="special tokens") as err:
                answer_token_ids(tok, PROMPT, answer)
            assert repr(PROMPT) in str(err.value) and repr(answer) in str(err.value)


def test_unknown_word_is_an_error_for_the_world_tokenizer(tokenizers_):
    tok = tokenizers_["world"][0]
    with pytest.raises(KnrecallError, match=r"special tokens \['\[UNK\]'\].*does not know"):
        answer_token_ids(tok, PROMPT, "Atlantis")


def test_prompt_ending_in_a_space_moves_the_space_to_the_answer(kind):
    name, tok, marker, _ = kind
    plain = target_tokens(tok, PROMPT, "Paris")
    spaced = target_tokens(tok, PROMPT + " ", "Paris")
    assert spaced.prompt_ids == plain.prompt_ids and spaced.answer_ids == plain.answer_ids
    assert spaced.context == PROMPT and spaced.text == PROMPT + " Paris"
    assert tok.convert_ids_to_tokens(spaced.answer_ids) == [f"{marker}Paris"]
    if name != "world":
        # why: tokenized literally, the prompt ends in a lone space token the joint text never contains
        literal = tok(PROMPT + " ").input_ids
        assert tok(PROMPT + " Paris").input_ids[: len(literal)] != literal
    two = target_tokens(tok, PROMPT + "  ", "Paris")  # two spaces: the answer keeps both, as the text has them
    assert two.context == PROMPT and tok.decode(two.answer_ids).strip() == "Paris"
    assert two.prompt_ids + two.answer_ids == tok(PROMPT + "  Paris").input_ids


@pytest.mark.parametrize("name", ["gpt2", "llama3", "world"])
def test_prompt_ending_in_a_line_break_keeps_it(tokenizers_, name):
    tok = tokenizers_[name][0]
    prompt = "Q: What is the capital of France? A:\n"
    target = target_tokens(tok, prompt, "Paris")
    assert target.context == prompt and target.text == prompt + "Paris"
    assert target.prompt_ids == tok(prompt).input_ids
    assert tok.decode(target.answer_ids) == "Paris"  # no leading space after a line break
    if name != "world":
        assert tok.convert_ids_to_tokens(target.prompt_ids)[-1] == "Ċ"
        assert tok.convert_ids_to_tokens(target.answer_ids) == ["Paris"]


def test_eos_appended_by_the_tokenizer_is_not_part_of_the_answer():
    tok = wrap(metaspace("bpe", append_eos=True), bos_token="<s>", eos_token="</s>", unk_token="<unk>")
    prompt_ids, answer_ids = teacher_forced_contexts(tok, PROMPT, "Buenos Aires")
    joint = tok(f"{PROMPT} Buenos Aires").input_ids
    assert joint[-1] == tok.eos_token_id and joint[0] == tok.bos_token_id
    assert prompt_ids + answer_ids == joint[:-1]
    assert tok.decode(answer_ids) == "Buenos Aires"


def with_boundary_merge(tok: PreTrainedTokenizerFast) -> PreTrainedTokenizerFast:
    """`tok` without whitespace pre-splitting, plus a top-priority piece spanning "s" + space (as in "is Paris")."""
    data = json.loads(tok.backend_tokenizer.to_str())
    model = data["model"]
    if data["pre_tokenizer"]["type"] == "Metaspace":
        space = "▁"
        data["pre_tokenizer"]["split"] = False
    else:  # byte level: one pre-token for the whole text
        space = "Ġ"
        data["pre_tokenizer"] = {"type": "ByteLevel", "add_prefix_space": False, "trim_offsets": True,
                                 "use_regex": False}
    if model["type"] == "BPE":
        model["vocab"][f"s{space}"] = max(model["vocab"].values()) + 1
        model["merges"].insert(0, ["s", space])
    else:  # Unigram: the most likely piece wins
        model["vocab"].append([f"s{space}Paris", 0.0])
    core = Tokenizer.from_str(json.dumps(data))
    return wrap(core, bos_token=tok.bos_token, eos_token=tok.eos_token, unk_token=tok.unk_token)


@pytest.mark.parametrize("name", SUBWORD)
def test_merge_across_the_boundary_is_an_error(tokenizers_, name):
    tok = tokenizers_[name][0]
    merged = with_boundary_merge(tok)
    # the modified tokenizer still tokenizes the prompt and the answer as before on their own...
    assert merged(PROMPT).input_ids == tok(PROMPT).input_ids
    assert answer_token_ids(merged, "Chopin died in", "Paris") == answer_token_ids(tok, "Chopin died in", "Paris")
    # ...but joins the prompt's last "s" with the answer's space
    assert answer_token_ids(tok, PROMPT, "Paris")
    with pytest.raises(KnrecallError, match="not a prefix.*merged across the boundary") as err:
        answer_token_ids(merged, PROMPT, "Paris")
    assert repr(PROMPT) in str(err.value) and "'Paris'" in str(err.value)


def test_special_token_text_is_an_error_even_when_the_tokenizer_splits_it(tokenizers_):
    tok = tokenizers_["llama2_bpe"][0]
    splitting = wrap(Tokenizer.from_str(tok.backend_tokenizer.to_str()), bos_token="<s>", eos_token="</s>",
                     unk_token="<unk>", split_special_tokens=True)
    assert splitting.eos_token_id not in splitting("Paris</s>", add_special_tokens=False).input_ids  # plain text here
    with pytest.raises(KnrecallError, match=r"special tokens \['</s>'\]"):
        answer_token_ids(splitting, PROMPT, "Paris</s>")
