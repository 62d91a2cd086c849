"""Serve a model: `python serve.py ckpt_path=...|pretrained=gpt2 [host=127.0.0.1] [port=8000] [api_key=...]`."""

from gptlit.cli.serve import cli

if __name__ == "__main__":
    cli()
