"""Train a tokenizer on your corpus: `python tokenizer.py data=textfiles data.path=DIR vocab_size=8192 out_dir=DIR`."""

from gptlit.cli.tokenizer import cli

if __name__ == "__main__":
    cli()
