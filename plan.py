"""What a training run will cost, before it runs: `python plan.py [the same overrides as train.py]`."""

from gptlit.cli.plan import cli

if __name__ == "__main__":
    cli()
