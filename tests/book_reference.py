"""The book's chapter-5 data set-up, from its own package, and the weight comparison, shared by the tests that
rerun its training code."""

import torch
from llms_from_scratch.ch02 import GPTDatasetV1
from torch.utils.data import DataLoader


def book_loaders(text: str, tokenizer, context: int) -> tuple[DataLoader, DataLoader]:
    """The book's 90/10 split into windows of ``context`` tokens (stride ``context``), batches of 2; the train
    loader is shuffled with torch's global generator seeded 123, as the book seeds it just before."""
    split = int(0.9 * len(text))
    torch.manual_seed(123)
    train_loader = DataLoader(GPTDatasetV1(text[:split], tokenizer, context, context), batch_size=2,
                              shuffle=True, drop_last=True)
    val_loader = DataLoader(GPTDatasetV1(text[split:], tokenizer, context, context), batch_size=2,
                            shuffle=False, drop_last=False)
    return train_loader, val_loader


def assert_same_weights(ours: torch.nn.Module, book: torch.nn.Module) -> None:
    """Bit-identical weights, tensor by tensor (the book's causal-mask buffers are not weights)."""
    book_state = book.state_dict()
    for name, tensor in ours.state_dict().items():
        assert torch.equal(tensor, book_state[name]), name
