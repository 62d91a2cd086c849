"""Export a model to Hugging Face transformers: `python export.py ckpt_path=...|pretrained=... out_dir=...`."""

from gptlit.cli.export import cli

if __name__ == "__main__":
    cli()
