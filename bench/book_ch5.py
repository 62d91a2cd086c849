"""The book's own chapter-5 run (package llms-from-scratch), for the reference table and its time here.

python bench/book_ch5.py [--epochs 10] [--smoke]

The book's script as it stands in chapter 5: seed 123 before the dataloaders and again before the model,
GPT-2 124M at context 256, AdamW lr 4e-4 weight decay 0.1, train_model_simple with eval_freq=5 and
eval_iter=5, fp32 on the CPU. Only the tokenizer is gptlit's (tiktoken's gpt2 needs the network; the ids are
identical). Compare with `python train.py experiment=book_ch5`. ``--smoke`` runs one epoch of a tiny model at
context 32 on the first 4000 characters, to check that the script runs (tests/test_bench.py).
"""

import argparse
import sys
import time
from pathlib import Path

import torch
from llms_from_scratch.ch02 import GPTDatasetV1
from llms_from_scratch.ch04 import GPTModel
from llms_from_scratch.ch05 import train_model_simple
from torch.utils.data import DataLoader

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from gptlit.core.model import GPTConfig  # noqa: E402
from gptlit.core.tokenizer import get_tokenizer  # noqa: E402
from gptlit.weights.io import model_sizes  # noqa: E402

# The book's GPT_CONFIG_124M (GPTConfig's defaults, the book's keys) at context 256; conf/model/tiny.yaml.
GPT_CONFIG_124M = GPTConfig(context_length=256).to_dict()
SMOKE_CONFIG = GPTConfig(context_length=32, **model_sizes()["tiny"]).to_dict()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--epochs", type=int, default=10)
    parser.add_argument("--data", default="data/the-verdict.txt")
    parser.add_argument("--smoke", action="store_true", help="one epoch of a tiny model: does the script run?")
    args = parser.parse_args()
    config = SMOKE_CONFIG if args.smoke else GPT_CONFIG_124M
    epochs = 1 if args.smoke else args.epochs

    text = Path(args.data).read_text(encoding="utf-8")
    if args.smoke:
        text = text[:4000]  # 14 steps, 2 val batches
    tokenizer = get_tokenizer()
    split = int(0.9 * len(text))
    context = config["context_length"]
    torch.manual_seed(123)
    train_loader = DataLoader(GPTDatasetV1(text[:split], tokenizer, context, context), batch_size=2,
                              shuffle=True, drop_last=True, num_workers=0)
    val_loader = DataLoader(GPTDatasetV1(text[split:], tokenizer, context, context), batch_size=2,
                            shuffle=False, drop_last=False, num_workers=0)
    torch.manual_seed(123)
    model = GPTModel(config)
    optimizer = torch.optim.AdamW(model.parameters(), lr=0.0004, weight_decay=0.1)
    start = time.perf_counter()
    train_model_simple(model, train_loader, val_loader, optimizer, "cpu", num_epochs=epochs, eval_freq=5,
                       eval_iter=5, start_context="Every effort moves you", tokenizer=tokenizer)
    print(f"Training completed in {(time.perf_counter() - start) / 60:.2f} minutes.")


if __name__ == "__main__":
    main()
