import pytest
import torch
import torch.nn.functional as F
from llms_from_scratch.ch04 import GPTModel as BookGPTModel

from gptlit.errors import UserError
from gptlit.core.model import Dropout, GPTConfig, GPTModel


def test_same_parameter_names_and_shapes_as_the_book(tiny_cfg):
    ours = {k: v.shape for k, v in GPTModel(tiny_cfg).state_dict().items()}
    book = {k: v.shape for k, v in BookGPTModel(tiny_cfg).state_dict().items() if not k.endswith(".att.mask")}
    assert ours == book


@pytest.mark.parametrize("qkv_bias", [False, True])
def test_book_model_pth_loads_and_gives_the_books_logits(tmp_path, tiny_cfg, qkv_bias):
    tiny_cfg["qkv_bias"] = qkv_bias
    book = BookGPTModel(tiny_cfg).eval()
    torch.save(book.state_dict(), tmp_path / "model.pth")
    ours = GPTModel(tiny_cfg)
    ours.load_state_dict(torch.load(tmp_path / "model.pth", weights_only=True))
    ours.eval()
    idx = torch.randint(0, tiny_cfg["vocab_size"], (3, tiny_cfg["context_length"]))
    with torch.no_grad():
        assert (ours(idx) - book(idx)).abs().max().item() <= 1e-5
        assert (ours(idx[:, :7]) - book(idx[:, :7])).abs().max().item() <= 1e-5


def test_same_seed_gives_the_books_initial_weights(tiny_cfg):
    torch.manual_seed(123)
    book = BookGPTModel(tiny_cfg).state_dict()
    torch.manual_seed(123)
    ours = GPTModel(tiny_cfg).state_dict()
    for name, tensor in ours.items():
        assert torch.equal(tensor, book[name]), name


def test_book_kernels_match_fused(tiny_cfg):
    fused = GPTModel(tiny_cfg).eval()
    book = GPTModel({**tiny_cfg, "kernels": "book"}).eval()
    book.load_state_dict(fused.state_dict())
    idx = torch.randint(0, tiny_cfg["vocab_size"], (2, 20))
    with torch.no_grad():
        torch.testing.assert_close(book(idx), fused(idx), atol=1e-5, rtol=1e-5)


def test_book_kernels_train_bit_for_bit_like_the_book(tiny_cfg):
    """Same dropout draws, same logits, same gradients to the last bit: the fused kernels' rounding would grow
    into the third printed decimal of a 15-epoch run (appendix D)."""
    book = BookGPTModel(tiny_cfg).train()
    ours = GPTModel({**tiny_cfg, "kernels": "book"}).train()
    ours.load_state_dict(book.state_dict())
    idx = torch.randint(0, tiny_cfg["vocab_size"], (2, 16))
    targets = torch.randint(0, tiny_cfg["vocab_size"], (2, 16))
    torch.manual_seed(5)
    expected = book(idx)
    torch.manual_seed(5)
    got = ours(idx)
    assert torch.equal(got, expected)
    F.cross_entropy(expected.flatten(0, 1), targets.flatten()).backward()
    F.cross_entropy(got.flatten(0, 1), targets.flatten()).backward()
    book_grads = dict(book.named_parameters())
    for name, param in ours.named_parameters():
        assert torch.equal(param.grad, book_grads[name].grad), name


def test_dropout_only_in_training(tiny_cfg):
    model = GPTModel({**tiny_cfg, "drop_rate": 0.5})
    idx = torch.randint(0, tiny_cfg["vocab_size"], (1, 10))
    model.eval()
    with torch.no_grad():
        assert torch.equal(model(idx), model(idx))
    model.train()
    with torch.no_grad():
        assert not torch.equal(model(idx), model(idx))


def test_attention_is_causal(tiny_cfg):
    model = GPTModel(tiny_cfg).eval()
    idx = torch.randint(0, tiny_cfg["vocab_size"], (1, 12))
    changed = idx.clone()
    changed[0, 8:] = (changed[0, 8:] + 1) % tiny_cfg["vocab_size"]
    with torch.no_grad():
        torch.testing.assert_close(model(idx)[:, :8], model(changed)[:, :8])


def test_gpt124m_has_the_books_parameter_count():
    cfg = {**GPTConfig().to_dict(), "context_length": 1024}
    with torch.device("meta"):
        model = GPTModel(cfg)
    assert sum(p.numel() for p in model.parameters()) == 163_009_536  # the book's figure, untied head


@pytest.mark.parametrize(
    "change, message",
    [
        ({"emb_dim": 30, "n_heads": 4}, "divisible by model.n_heads"),
        ({"n_layers": 0}, "model.n_layers must be a positive integer"),
        ({"vocab_size": -1}, "model.vocab_size must be a positive integer"),
        ({"drop_rate": 1.0}, "model.drop_rate must be in [0, 1)"),
        ({"drop_rate": -0.1}, "model.drop_rate must be in [0, 1)"),
        ({"kernels": "fast"}, "model.kernels must be one of"),
    ],
)
def test_invalid_config_is_refused(tiny_cfg, change, message):
    with pytest.raises(UserError, match=message.replace("[", r"\[").replace("(", r"\(").replace(")", r"\)")):
        GPTConfig.from_any({**tiny_cfg, **change})


def test_input_longer_than_context_is_refused(tiny_cfg):
    model = GPTModel(tiny_cfg)
    with pytest.raises(UserError, match="context_length is 64"):
        model(torch.zeros(1, 65, dtype=torch.long))


def test_cpu_dropout_keeps_one_minus_p_scaled_exactly_and_its_gradient_is_the_same_mask():
    dropout = Dropout(0.1).train()
    x = torch.randn(4, 256, 768, requires_grad=True)
    torch.manual_seed(1)
    y = dropout(x)
    kept = y != 0
    scale = 65536 / (65536 - round(0.1 * 65536))
    assert kept.float().mean().item() == pytest.approx(0.9, abs=0.002)
    assert torch.equal(y[kept], x[kept] * scale)
    y.sum().backward()
    assert torch.equal(x.grad, kept * torch.tensor(scale))
    torch.manual_seed(1)
    assert torch.equal(dropout(x), y)  # the global generator's stream: seeded runs repeat and resume
    assert dropout.eval()(x) is x
