import warnings

import pytest
import torch
from llms_from_scratch.ch04 import GPTModel as BookGPTModel
from llms_from_scratch.ch04 import generate_text_simple as book_generate_text_simple
from llms_from_scratch.ch05 import generate as book_generate

from gptlit.training.callbacks.sample_text import SampleText
from gptlit.errors import UserError
from gptlit.core.generation import (
    DecodingConfig,
    generate,
    generate_batch,
    next_token,
    sampling_logits,
    stream,
    top_k_filter,
    top_p_filter,
)
from gptlit.core.kv_cache import KVCache
from gptlit.core.model import GPTModel


@pytest.fixture
def models(tiny_cfg):
    """Our model and the book's, with the same weights, in eval mode."""
    # A small vocabulary keeps each step cheap; the tokenizer plays no part here.
    tiny_cfg.update(context_length=16, vocab_size=1000)
    ours = GPTModel(tiny_cfg).eval()
    book = BookGPTModel(tiny_cfg).eval()
    book.load_state_dict({**book.state_dict(), **ours.state_dict()})
    return ours, book


def prompt(n, batch=1, seed=1):
    return torch.randint(0, 1000, (batch, n), generator=torch.Generator().manual_seed(seed))


@pytest.mark.parametrize("n_prompt, new", [(5, 8), (5, 40), (16, 3)])
def test_cached_greedy_matches_the_books_generate_text_simple(models, n_prompt, new):
    # (5, 40) and (16, 3) run past the 16-token context, where the book crops and the cache is rebuilt.
    ours, book = models
    idx = prompt(n_prompt, batch=2)
    expected = book_generate_text_simple(book, idx, new, context_size=16)
    assert torch.equal(generate(ours, idx, new, context_size=16), expected)
    assert torch.equal(generate(ours, idx, new, context_size=16, use_cache=False), expected)


def test_cached_greedy_with_a_context_size_shorter_than_the_model(models):
    ours, book = models
    idx = prompt(4)
    assert torch.equal(generate(ours, idx, 20, context_size=7), book_generate_text_simple(book, idx, 20, 7))


@pytest.mark.parametrize("new", [10, 30])
def test_sampling_draws_the_books_tokens_under_one_seed(models, new):
    ours, book = models
    idx = prompt(4)
    torch.manual_seed(123)
    expected = book_generate(book, idx, new, context_size=16, temperature=1.4, top_k=25)
    torch.manual_seed(123)
    assert torch.equal(generate(ours, idx, new, context_size=16, temperature=1.4, top_k=25), expected)


def test_cached_sampling_equals_uncached_with_top_p_and_a_generator(models):
    ours, _ = models
    idx = prompt(3, batch=3)
    runs = [
        generate(ours, idx, 30, 16, decoding=DecodingConfig(temperature=0.8, top_p=0.9),
                 generator=torch.Generator().manual_seed(7), use_cache=c)
        for c in (True, False)
    ]
    assert torch.equal(*runs)


def test_cached_logits_match_the_full_forward(models):
    ours, _ = models
    idx = prompt(12, batch=2)
    cache = KVCache.for_model(ours, batch_size=2)
    with torch.no_grad():
        full = ours(idx)
        torch.testing.assert_close(ours(idx[:, :9], cache=cache)[:, -1], full[:, 8], atol=1e-5, rtol=1e-5)
        for t in range(9, 12):
            torch.testing.assert_close(ours(idx[:, t : t + 1], cache=cache)[:, -1], full[:, t], atol=1e-5, rtol=1e-5)


def test_top_p_keeps_the_smallest_nucleus():
    logits = torch.tensor([[0.5, 0.3, 0.15, 0.05]]).log()
    kept = lambda p: torch.isfinite(top_p_filter(logits, p)).squeeze(0).tolist()  # noqa: E731
    assert kept(0.4) == [True, False, False, False]
    assert kept(0.75) == [True, True, False, False]
    assert kept(0.85) == [True, True, True, False]
    assert kept(1.0) == [True, True, True, True]


def test_top_k_then_top_p_on_a_batch():
    logits = torch.tensor([[0.1, 0.2, 0.3, 0.4], [0.7, 0.1, 0.1, 0.1]]).log()
    kept = torch.isfinite(sampling_logits(logits, DecodingConfig(temperature=1.0, top_k=3, top_p=0.5)))
    assert kept.tolist() == [[False, False, True, True], [True, False, False, False]]


@pytest.mark.parametrize("temperature, top_p", [(2.0, 0.75), (0.5, 0.75), (1.4, 0.9), (0.7, 0.3)])
def test_top_p_takes_the_nucleus_after_the_temperature_like_transformers(temperature, top_p):
    from transformers.generation.logits_process import TemperatureLogitsWarper, TopPLogitsWarper

    logits = torch.tensor([[0.5, 0.3, 0.15, 0.05], [0.05, 0.25, 0.6, 0.1]]).log()
    ours = sampling_logits(logits, DecodingConfig(temperature=temperature, top_p=top_p))
    theirs = TopPLogitsWarper(top_p)(None, TemperatureLogitsWarper(temperature)(None, logits.clone()))
    assert torch.equal(torch.isfinite(ours), torch.isfinite(theirs))
    torch.testing.assert_close(ours.softmax(-1), theirs.softmax(-1))


def test_sampling_draws_from_the_tempered_nucleus():
    # At temperature 2 the probabilities flatten to 0.38, 0.29, 0.21, 0.12: top_p=0.75 keeps three tokens
    # (before the temperature it would keep two).
    logits = torch.tensor([[0.5, 0.3, 0.15, 0.05]]).log().expand(400, 4)
    draws = next_token(logits, DecodingConfig(temperature=2.0, top_p=0.75), torch.Generator().manual_seed(0))
    assert set(draws.flatten().tolist()) == {0, 1, 2}


def test_top_k_keeps_ties_at_the_kth_logit_like_the_book():
    logits = torch.tensor([[3.0, 1.0, 2.0, 2.0, 0.5]])
    assert torch.isfinite(top_k_filter(logits, 2)).tolist() == [[True, False, True, True, False]]


def test_generate_takes_a_decoding_config_or_the_books_arguments_not_both(models):
    ours, _ = models
    idx = prompt(4)
    torch.manual_seed(5)
    books = generate(ours, idx, 6, 16, 1.4, 25)
    torch.manual_seed(5)
    assert torch.equal(generate(ours, idx, 6, 16, decoding=DecodingConfig(temperature=1.4, top_k=25)), books)
    with pytest.raises(TypeError, match="either decoding= or temperature"):
        generate(ours, idx, 6, 16, temperature=1.4, decoding=DecodingConfig())


def test_eos_stops_like_the_book(models):
    ours, book = models
    idx = prompt(4)
    greedy = generate(ours, idx, 10, 16)
    eos_id = greedy[0, 7].item()  # the fourth generated token
    expected = book_generate(book, idx, 10, context_size=16, eos_id=eos_id)
    out = generate(ours, idx, 10, 16, eos_id=eos_id)
    assert torch.equal(out, expected)
    assert out.shape[1] < greedy.shape[1]


def test_batch_of_prompts_of_different_lengths_equals_each_alone(models):
    ours, book = models
    prompts = [[11, 12, 13], [5, 6, 7, 8, 9, 10, 11, 12, 13], [42]]
    for new in (6, 25):  # 25 crosses the 16-token context for every row, at different steps
        batch = generate_batch(ours, prompts, new)
        for p, out in zip(prompts, batch):
            assert out == book_generate_text_simple(book, torch.tensor([p]), new, 16)[0].tolist()


def test_batch_cuts_each_row_at_its_own_eos(models):
    ours, _ = models
    prompts = [[11, 12, 13], [5, 6, 7, 8, 9]]
    alone = [generate(ours, torch.tensor([p]), 8, 16)[0].tolist() for p in prompts]
    eos_id = alone[0][5]  # the third token generated for the first prompt
    batch = generate_batch(ours, prompts, 8, decoding=DecodingConfig(eos_id=eos_id))
    for p, out, full in zip(prompts, batch, alone):
        new = full[len(p) :]
        expected = full[: len(p) + new.index(eos_id)] if eos_id in new else full
        assert out == expected
    assert len(batch[0]) == 5


def test_stream_yields_each_token_before_computing_the_next(models):
    ours, _ = models
    calls = []
    handle = ours.register_forward_hook(lambda module, args, output: calls.append(args[0].shape[1]))
    try:
        tokens = stream(ours, prompt(4), 6, 16)
        first = next(tokens)
        assert calls == [4]  # one prefill of the prompt, nothing more yet
        rest = list(tokens)
    finally:
        handle.remove()
    assert calls == [4, 1, 1, 1, 1, 1]  # then one token per step, thanks to the cache
    streamed = torch.cat([first, *rest], dim=1)
    assert torch.equal(streamed, generate(ours, prompt(4), 6, 16, use_cache=False)[:, 4:])


def test_sample_callback_uses_the_cache_and_gives_the_uncached_text(tiny_cfg):
    ours = GPTModel({**tiny_cfg, "context_length": 16}).eval()
    calls = []
    handle = ours.register_forward_hook(lambda module, args, output: calls.append(args[0].shape[1]))
    try:
        text = SampleText(max_new_tokens=12).sample(ours)
    finally:
        handle.remove()
    assert calls[1:] == [1] * 11
    from gptlit.core.tokenizer import text_to_token_ids, token_ids_to_text

    expected = generate(ours, text_to_token_ids("Every effort moves you"), 12, 16, use_cache=False)
    assert text == token_ids_to_text(expected)


DEVICES = ["cpu"] + (["cuda"] if torch.cuda.is_available() else [])


@pytest.mark.parametrize("device", DEVICES)
def test_sampling_after_an_epoch_leaves_trainings_random_state_alone(tiny_cfg, device):
    # The global generators of the CPU and the GPU drive training's dropout: the epoch-end sample must not draw
    # from them, on the GPU as on the CPU, and its own draws follow its seed.
    model = GPTModel({**tiny_cfg, "context_length": 16}).to(device).eval()
    decoding = DecodingConfig(temperature=1.4, top_k=25)
    states = (torch.get_rng_state(), torch.cuda.get_rng_state() if device == "cuda" else None)
    first = SampleText(max_new_tokens=8, decoding=decoding, seed=7).sample(model)
    assert torch.equal(torch.get_rng_state(), states[0])
    if device == "cuda":
        assert torch.equal(torch.cuda.get_rng_state(), states[1])
    assert SampleText(max_new_tokens=8, decoding=decoding, seed=7).sample(model) == first


def test_long_prompt_is_cropped_from_the_left_with_a_warning(models):
    ours, book = models
    idx = prompt(20)
    with pytest.warns(UserWarning, match="the prompt has 20 tokens but the context holds 16"):
        out = generate(ours, idx, 5, 16)
    assert torch.equal(out, book_generate_text_simple(book, idx, 5, 16))


def test_prompt_within_the_context_gives_no_warning(models):
    ours, _ = models
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        generate(ours, prompt(16), 2, 16)


@pytest.mark.parametrize(
    "kwargs, message",
    [
        ({"temperature": -0.5}, r"decoding.temperature must be >= 0"),
        ({"top_k": 0}, r"decoding.top_k must be a positive integer"),
        ({"top_k": 1001, "temperature": 1.0}, r"decoding.top_k \(1001\) exceeds the vocabulary size \(1000\)"),
        ({"top_p": 0.0}, r"decoding.top_p must be in \(0, 1\]"),
        ({"top_p": 1.5}, r"decoding.top_p must be in \(0, 1\]"),
        ({"max_new_tokens": -1}, r"max_new_tokens must be an integer >= 0"),
        ({"idx": torch.zeros(1, 0, dtype=torch.long)}, r"the prompt is empty"),
    ],
)
def test_bad_decoding_values_are_refused(models, kwargs, message):
    ours, _ = models
    args = {"idx": prompt(3), "max_new_tokens": 3, **kwargs}
    with pytest.raises(UserError, match=message):
        if "top_p" in args:
            args["decoding"] = DecodingConfig(top_p=args.pop("top_p"))
        generate(ours, context_size=16, **args)


def test_empty_prompt_in_a_batch_is_refused(models):
    with pytest.raises(UserError, match="a prompt is empty"):
        generate_batch(models[0], [[1, 2], []], 3)


def test_zero_new_tokens_returns_the_prompt(models):
    idx = prompt(3)
    assert torch.equal(generate(models[0], idx, 0, 16), idx)


def test_book_model_runs_uncached(models):
    _, book = models
    idx = prompt(3)
    assert torch.equal(generate(book, idx, 5, 16), book_generate_text_simple(book, idx, 5, 16))


def test_decode_stream_holds_back_split_characters():
    from gptlit.core.tokenizer import decode_stream, encode, get_tokenizer

    text = "naïve café — “quotes” 日本語 😀 emoji"
    ids = encode(text)
    pieces = list(decode_stream(ids))
    assert "".join(pieces) == get_tokenizer().decode(ids) == text
    assert all("\ufffd" not in p for p in pieces)  # no piece ends inside a character
    assert len(pieces) < len(ids)  # some tokens only carry part of a character
