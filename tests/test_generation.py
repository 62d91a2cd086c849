import pytest
import torch
from llms_from_scratch.ch04 import generate_text_simple as book_generate_text_simple
from llms_from_scratch.ch05 import generate as book_generate

from gptlit.errors import UserError
from gptlit.generation import DecodingConfig, filter_logits, generate, generate_text_simple
from gptlit.model import GPTModel


@pytest.fixture
def model(tiny_cfg):
    return GPTModel({**tiny_cfg, "context_length": 16}).eval()


@pytest.fixture
def prompt():
    return torch.tensor([[6109, 3626, 6100, 345]])  # "Every effort moves you"


def test_greedy_is_the_books_generate_text_simple(model, prompt):
    # 30 new tokens on a 16-token context also checks cropping the context to its last tokens.
    expected = book_generate_text_simple(model, prompt, 30, context_size=16)
    assert torch.equal(generate_text_simple(model, prompt, 30, context_size=16), expected)
    assert torch.equal(generate(model, prompt, 30, context_size=16), expected)


def test_greedy_is_argmax_of_the_logits(model, prompt):
    out = generate(model, prompt, 5, context_size=16)
    with torch.no_grad():
        logits = model(out[:, :-1])
    assert torch.equal(out[0, 4:], logits[0, 3:].argmax(-1))


def test_top_k_1_is_greedy(model, prompt):
    greedy = generate(model, prompt, 10, context_size=16)
    torch.manual_seed(1)
    assert torch.equal(generate(model, prompt, 10, context_size=16, temperature=1.5, top_k=1), greedy)


def test_sampling_is_the_books_under_the_same_seed(model, prompt):
    torch.manual_seed(123)
    expected = book_generate(model, prompt, 15, context_size=16, temperature=1.4, top_k=25)
    torch.manual_seed(123)
    assert torch.equal(generate(model, prompt, 15, context_size=16, temperature=1.4, top_k=25), expected)


def test_sampling_is_reproducible_with_a_generator_and_leaves_the_global_state_alone(model, prompt):
    state = torch.get_rng_state()
    a = generate(model, prompt, 15, 16, temperature=1.0, generator=torch.Generator().manual_seed(7))
    b = generate(model, prompt, 15, 16, temperature=1.0, generator=torch.Generator().manual_seed(7))
    assert torch.equal(a, b)
    assert torch.equal(torch.get_rng_state(), state)


def test_eos_stops_like_the_book(model, prompt):
    greedy = generate(model, prompt, 10, context_size=16)
    eos = greedy[0, 7].item()
    expected = book_generate(model, prompt, 10, context_size=16, eos_id=eos)
    out = generate(model, prompt, 10, context_size=16, eos_id=eos)
    assert torch.equal(out, expected)
    assert out.shape[1] == 7


def test_top_k_keeps_the_k_largest():
    logits = torch.tensor([[1.0, 5.0, 3.0, 4.0, 2.0]])
    assert torch.isinf(filter_logits(logits, top_k=2)).tolist() == [[True, False, True, False, True]]


def test_top_p_keeps_the_smallest_set_reaching_p():
    probs = torch.tensor([[0.5, 0.05, 0.3, 0.15]])
    kept = ~torch.isinf(filter_logits(probs.log(), top_p=0.8))
    assert kept.tolist() == [[True, False, True, False]]
    kept = ~torch.isinf(filter_logits(probs.log(), top_p=0.81))
    assert kept.tolist() == [[True, False, True, True]]
    assert (~torch.isinf(filter_logits(probs.log(), top_p=0.1))).sum() == 1


@pytest.mark.parametrize(
    "kwargs, message",
    [
        ({"temperature": -0.1}, "decoding.temperature must be >= 0"),
        ({"top_k": 0}, "decoding.top_k must be a positive integer"),
        ({"top_p": 0.0}, r"decoding.top_p must be in \(0, 1\]"),
        ({"top_p": 1.5}, r"decoding.top_p must be in \(0, 1\]"),
    ],
)
def test_bad_decoding_values_are_refused(kwargs, message):
    with pytest.raises(UserError, match=message):
        DecodingConfig(**kwargs)
