"""Weights in and out of files: gptlit's own exports, the book's model.pth, OpenAI's GPT-2. No Lightning, no Hydra."""
