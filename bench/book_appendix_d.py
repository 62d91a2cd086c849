"""The book's own appendix-D run (package llms-from-scratch), to diff against experiment=book_appendix_d.

python bench/book_appendix_d.py [--epochs 15] [--emb-dim 768 --n-heads 12 --n-layers 12 --context 256]

Appendix D's training cells as its code runs them: seed 123 before the dataloaders and again before the model,
GPT-2 124M at context 256, batch 2, AdamW lr 1e-3 weight decay 0.1, warmup over int(0.2 x total steps) from
1e-5, cosine decay to 1e-5, llms_from_scratch.appendix_d.train_model with eval_freq=5 and eval_iter=1 (clipping
from step >= warmup_steps), fp32 on the CPU. Only the tokenizer is gptlit's (same ids, no network). Compare with
`python train.py experiment=book_appendix_d` (with the same model.* and data.context_length overrides when the
size flags are given).
"""

import argparse
import sys
import time
from pathlib import Path

import torch
from llms_from_scratch.appendix_d import train_model
from llms_from_scratch.ch02 import GPTDatasetV1
from llms_from_scratch.ch04 import GPTModel
from torch.utils.data import DataLoader

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from gptlit.core.tokenizer import get_tokenizer  # noqa: E402


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--epochs", type=int, default=15)
    parser.add_argument("--emb-dim", type=int, default=768)
    parser.add_argument("--n-heads", type=int, default=12)
    parser.add_argument("--n-layers", type=int, default=12)
    parser.add_argument("--context", type=int, default=256)
    parser.add_argument("--data", default="data/the-verdict.txt")
    parser.add_argument("--smoke", action="store_true", help="a tiny model for one epoch: CI's check that this runs")
    args = parser.parse_args()
    if args.smoke:
        args.epochs, args.emb_dim, args.n_heads, args.n_layers, args.context = 1, 32, 2, 2, 32

    text = Path(args.data).read_text(encoding="utf-8")
    tokenizer = get_tokenizer()
    split = int(0.9 * len(text))
    torch.manual_seed(123)
    train_loader = DataLoader(GPTDatasetV1(text[:split], tokenizer, args.context, args.context), batch_size=2,
                              shuffle=True, drop_last=True, num_workers=0)
    val_loader = DataLoader(GPTDatasetV1(text[split:], tokenizer, args.context, args.context), batch_size=2,
                            shuffle=False, drop_last=False, num_workers=0)
    warmup_steps = int(0.2 * len(train_loader) * args.epochs)
    torch.manual_seed(123)
    model = GPTModel({"vocab_size": 50257, "context_length": args.context, "emb_dim": args.emb_dim,
                      "n_heads": args.n_heads, "n_layers": args.n_layers, "drop_rate": 0.1, "qkv_bias": False})
    optimizer = torch.optim.AdamW(model.parameters(), lr=0.001, weight_decay=0.1)
    start = time.perf_counter()
    train_model(model, train_loader, val_loader, optimizer, "cpu", n_epochs=args.epochs, eval_freq=5, eval_iter=1,
                start_context="Every effort moves you", tokenizer=tokenizer, warmup_steps=warmup_steps,
                initial_lr=1e-5, min_lr=1e-5)
    print(f"Training completed in {(time.perf_counter() - start) / 60:.2f} minutes.")


if __name__ == "__main__":
    main()
