"""tokenizer.py: train a byte-level BPE on the data group's corpus; the script at the root calls cli()."""

from __future__ import annotations

import sys
import time
from pathlib import Path

import hydra
from hydra.utils import instantiate
from omegaconf import DictConfig, OmegaConf

from gptlit.cli.command_line import CONFIG_DIR, check_command_line
from gptlit.cli.user_errors import exit_on_user_error
from gptlit.core.tokenizer import TOKENIZER_FILE, load_tokenizer
from gptlit.data.tokenizer_training import bytes_per_token, train_bpe
from gptlit.errors import UserError
from gptlit.files import human_bytes, shown_path


def run(cfg: DictConfig) -> Path:
    if OmegaConf.is_missing(cfg, "out_dir"):
        raise UserError("tokenizer.py needs out_dir=DIR, the folder to write tokenizer.json into, e.g. "
                        "out_dir=tokenizers/mine")
    out = Path(cfg.out_dir) / TOKENIZER_FILE
    if out.exists() and not cfg.overwrite:
        raise UserError(f"{out} exists; choose another out_dir, or pass overwrite=true to replace it")
    datamodule = instantiate(cfg.data)
    datamodule.prepare_data()
    started = time.perf_counter()
    seen = 0

    def counted(documents):
        nonlocal seen
        for text in documents:
            seen += len(text.encode("utf-8"))
            yield text

    train_bpe(counted(datamodule.documents("train")), cfg.vocab_size, list(cfg.special_tokens), out, cfg.progress)
    trained = load_tokenizer(out)
    print(f"trained a byte-level BPE of {trained.n_vocab} tokens on {human_bytes(seen)} of {cfg.data.path} in "
          f"{time.perf_counter() - started:.1f} s; wrote {shown_path(out)}")
    held_out, size = [], 0
    for text in datamodule.documents("val"):
        if size >= cfg.held_out_chars:
            break
        held_out.append(text)
        size += len(text)
    if not held_out:
        print("the corpus has no validation part to measure compression on")
        return out
    sample = human_bytes(sum(len(t.encode("utf-8")) for t in held_out))
    print(f"compression on the validation part ({sample}, not trained on):")
    print(f"  {'tokenizer':<40} {'vocab':>7} {'tokens':>10} {'bytes/token':>12}")
    for name, tokenizer in ((shown_path(out), trained), ("GPT-2's BPE", load_tokenizer())):
        ratio, tokens = bytes_per_token(tokenizer, held_out)
        print(f"  {name:<40} {tokenizer.n_vocab:>7} {tokens:>10,} {ratio:>12.3f}")
    return out


@hydra.main(version_base="1.3", config_path=str(CONFIG_DIR), config_name="tokenizer")
def main(cfg: DictConfig) -> None:
    with exit_on_user_error():
        run(cfg)


def cli() -> None:
    check_command_line("tokenizer", sys.argv[1:])
    main()
