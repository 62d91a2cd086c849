"""The framework-free core: the model, its KV cache, the tokenizer and decoding. Imports neither Lightning nor Hydra."""
