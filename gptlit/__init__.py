"""gptlit: pretrain, evaluate and sample GPT-2 models as in chapter 5 of the book, with Lightning and Hydra."""

__version__ = "0.1.0"
