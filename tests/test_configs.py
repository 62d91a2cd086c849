from pathlib import Path

import pytest
from hydra.utils import instantiate

from gptlit.data import TextDataModule
from gptlit.generation import DecodingConfig
from gptlit.model import GPTConfig
from train import model_config, train

from .conftest import compose_config

CONF = Path(__file__).resolve().parents[1] / "conf"
BOOK_SIZES = {"gpt124m": (768, 12, 12), "gpt355m": (1024, 16, 24), "gpt774m": (1280, 20, 36), "gpt1558m": (1600, 25, 48)}


def compose_train(*overrides, run_dir="unused"):
    return compose_config(f"run_dir={run_dir}", *overrides)


def test_defaults_are_the_books_chapter_5_run():
    cfg = compose_train()
    model = model_config(cfg.model)[0]
    assert model == GPTConfig(vocab_size=50257, context_length=256, emb_dim=768, n_heads=12, n_layers=12,
                              drop_rate=0.1, qkv_bias=False)
    dm = instantiate(cfg.data)
    assert isinstance(dm, TextDataModule)
    assert (dm.context_length, dm.stride, dm.batch_size, dm.train_ratio) == (256, 256, 2, 0.9)
    optimizer = instantiate(cfg.optimizer)
    assert optimizer.keywords == {"lr": 0.0004, "weight_decay": 0.1, "fused": True}
    assert cfg.trainer.max_epochs == 10 and cfg.trainer.val_check_interval == 5
    assert cfg.trainer.limit_val_batches == 5 and cfg.seed == 123
    assert instantiate(cfg.decoding) == DecodingConfig()
    assert cfg.sample.start_context == "Every effort moves you" and cfg.sample.max_new_tokens == 50


@pytest.mark.parametrize("name", sorted(BOOK_SIZES))
def test_model_sizes(name):
    model = model_config(compose_train(f"model={name}").model)[0]
    assert (model.emb_dim, model.n_heads, model.n_layers) == BOOK_SIZES[name]


def test_data_context_length_resizes_the_model_too():
    cfg = compose_train("model=gpt355m", "data.context_length=128")
    assert model_config(cfg.model)[0].context_length == 128 and instantiate(cfg.data).context_length == 128


def test_sample_decoding_has_the_books_values():
    assert instantiate(compose_train("decoding=sample").decoding) == DecodingConfig(temperature=1.4, top_k=25)


@pytest.mark.parametrize("group", ["cpu", "gpu", "mps"])
def test_trainer_accelerators(group):
    cfg = compose_train(f"trainer={group}")
    assert cfg.trainer.accelerator == group and cfg.trainer.val_check_interval == 5


@pytest.mark.parametrize("logger", ["tensorboard", "csv"])
def test_fast_dev_run_composes_every_part(tmp_path, verdict_path, logger):
    cfg = compose_train(
        "model=tiny", f"data.path={verdict_path}", "data.context_length=32", f"logger={logger}",
        "+trainer.fast_dev_run=2", "trainer.accelerator=cpu", run_dir=tmp_path,
    )
    trainer = train(cfg)
    assert trainer.global_step == 2
    callbacks = {type(c).__name__ for c in trainer.callbacks}
    assert {"ModelCheckpoint", "SampleText", "LossPlot", "ProgressBar"} <= callbacks
