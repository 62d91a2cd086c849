"""Pretrain a GPT model: `python train.py [model=gpt124m] [data.context_length=256] [key=value ...]`."""

from gptlit.cli.train import cli

if __name__ == "__main__":
    cli()
