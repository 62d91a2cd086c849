"""Tiny Llama 3 and Qwen3 folders as the hub stores them, made here in a second: a byte-level BPE trained by
``tokenizers`` on a few sentences, set up as Meta's and Qwen's tokenizer.json are (their split patterns, Llama's
BOS post-processor, Qwen's NFC normalizer, their special tokens at the end of the vocabulary), and a random model
written by transformers' save_pretrained (whole or in shards), with tokenizer_config.json and
generation_config.json."""

from __future__ import annotations

import json
from pathlib import Path

import torch

# Meta's Llama 3 split pattern (digits in groups of up to three) and Qwen2/3's (single digits).
LLAMA3_PATTERN = (r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}{1,3}| ?[^\s\p{L}\p{N}]+[\r\n]*"
                  r"|\s*[\r\n]+|\s+(?!\S)|\s+")
QWEN_PATTERN = (r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}| ?[^\s\p{L}\p{N}]+[\r\n]*"
                r"|\s*[\r\n]+|\s+(?!\S)|\s+")
CORPUS = [
    "Every effort moves you closer to the light.",
    "I HAD always thought Jack Gisburn rather a cheap genius, though a good fellow enough.",
    "It's 1234 steps to the top; we'll count them: 5, 67, 890.",
    "naïve café — “quotes” and 日本語 text, tabs\tand\nnew lines\n\nhere.",
    "The quick brown fox jumps over the lazy dog, again and again and again.",
]
SAMPLES = [
    "Every effort moves you",
    "It's 12345 steps, isn't it?  Two  spaces\n\nand lines",
    "naïve café — 日本語 😀 unseen words",
    "<|endoftext|> a special token's name in the text",
]
SPECIAL = {
    "llama3": ["<|begin_of_text|>", "<|end_of_text|>", "<|start_header_id|>", "<|end_header_id|>", "<|eot_id|>"],
    "qwen3": ["<|endoftext|>", "<|im_start|>", "<|im_end|>"],
}


def tiny_tokenizer(family: str, folder: Path, vocab: int = 300) -> int:
    """Write tokenizer.json and tokenizer_config.json of ``family``'s kind into ``folder``; its vocabulary size."""
    from tokenizers import AddedToken, Regex, Tokenizer, decoders, models, normalizers, pre_tokenizers, processors, trainers

    tokenizer = Tokenizer(models.BPE())
    pattern = LLAMA3_PATTERN if family == "llama3" else QWEN_PATTERN
    if family == "qwen3":
        tokenizer.normalizer = normalizers.NFC()
    tokenizer.pre_tokenizer = pre_tokenizers.Sequence([
        pre_tokenizers.Split(Regex(pattern), behavior="isolated", invert=False),
        pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False)])
    tokenizer.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(vocab_size=vocab, show_progress=False,
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet())
    tokenizer.train_from_iterator(CORPUS * 3, trainer=trainer)
    # As in the hub's files: the special tokens follow the vocabulary; Qwen3 adds ordinary ones too.
    tokenizer.add_special_tokens([AddedToken(t, special=True, normalized=False) for t in SPECIAL[family]])
    if family == "qwen3":
        tokenizer.add_tokens([AddedToken("<think>", special=False, normalized=False)])
        tokenizer.post_processor = processors.ByteLevel(trim_offsets=False)
        config = {"tokenizer_class": "Qwen2Tokenizer", "bos_token": None, "eos_token": "<|im_end|>",
                  "pad_token": "<|endoftext|>", "unk_token": None, "model_max_length": 64}
    else:
        bos = "<|begin_of_text|>"
        tokenizer.post_processor = processors.Sequence([
            processors.ByteLevel(trim_offsets=False),
            processors.TemplateProcessing(single=f"{bos} $A", pair=f"{bos} $A {bos} $B",
                                          special_tokens=[(bos, tokenizer.token_to_id(bos))])])
        config = {"tokenizer_class": "PreTrainedTokenizerFast", "bos_token": bos, "eos_token": "<|end_of_text|>",
                  "model_max_length": 64}
    tokenizer.save(str(folder / "tokenizer.json"))
    (folder / "tokenizer_config.json").write_text(json.dumps(config, indent=2))
    return tokenizer.get_vocab_size(with_added_tokens=True)


def randomize(model: torch.nn.Module, seed: int = 0) -> None:
    """Weights far from their initial values (norm scales too), so that a swapped or mis-scaled tensor shows and
    greedy decoding has clear winners."""
    generator = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, p in model.named_parameters():
            noise = torch.randn(p.shape, generator=generator)
            p.copy_(1 + 0.3 * noise if "norm" in name else 0.15 * noise)


def tiny_folder(family: str, folder: Path, shard: bool = False, tied: bool = True, padding: int = 0,
                context: int = 64):
    """A random tiny ``family`` model with its tokenizer in ``folder``, as the hub holds one; the transformers model.

    ``padding`` ids beyond the tokenizer's round the vocabulary up (as Qwen3's 151,936 rows for 151,669 ids); their
    embedding rows are zero, so that neither model ever prefers one. ``shard`` splits the weights into several
    files with an index (model.safetensors.index.json), as the hub stores models above a few GB."""
    import transformers

    folder.mkdir(parents=True, exist_ok=True)
    n_vocab = tiny_tokenizer(family, folder)
    tokenizer = json.loads((folder / "tokenizer.json").read_text())
    ids = {t["content"]: t["id"] for t in tokenizer["added_tokens"]}
    common = dict(vocab_size=n_vocab + padding, hidden_size=64, intermediate_size=96, num_hidden_layers=2,
                  num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=context,
                  tie_word_embeddings=tied)
    if family == "llama3":
        config = transformers.LlamaConfig(
            **common, rms_norm_eps=1e-5, bos_token_id=ids["<|begin_of_text|>"], eos_token_id=ids["<|end_of_text|>"],
            rope_parameters={"rope_type": "llama3", "rope_theta": 500_000.0, "factor": 8.0, "low_freq_factor": 1.0,
                             "high_freq_factor": 4.0, "original_max_position_embeddings": 16})
        model = transformers.LlamaForCausalLM(config)
        eos = ids["<|end_of_text|>"]
    else:
        config = transformers.Qwen3Config(**common, head_dim=32, rms_norm_eps=1e-6, bos_token_id=None,
                                          eos_token_id=ids["<|im_end|>"],
                                          rope_parameters={"rope_type": "default", "rope_theta": 1_000_000.0})
        model = transformers.Qwen3ForCausalLM(config)
        eos = [ids["<|im_end|>"], ids["<|endoftext|>"]]
    model.eval()
    randomize(model)
    with torch.no_grad():
        model.get_input_embeddings().weight[n_vocab:] = 0
        model.get_output_embeddings().weight[n_vocab:] = 0
    model.generation_config = transformers.GenerationConfig(eos_token_id=eos, bos_token_id=config.bos_token_id)
    model.save_pretrained(folder, max_shard_size="40KB" if shard else "5GB")
    return model
