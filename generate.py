"""Generate text: `python generate.py ckpt_path=...|pretrained=gpt2 prompt="..." [decoding=sample] [key=value ...]`."""

from gptlit.cli.generate import cli

if __name__ == "__main__":
    cli()
