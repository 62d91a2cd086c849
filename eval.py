"""Evaluate a model: `python eval.py ckpt_path=...|pretrained=gpt2 [task=perplexity|hellaswag] [key=value ...]`."""

from gptlit.cli.eval import cli

if __name__ == "__main__":
    cli()
