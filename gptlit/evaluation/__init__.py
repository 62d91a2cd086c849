"""Evaluating a trained model: sliding-window perplexity on a text, HellaSwag. No Lightning or Hydra here."""
