from pathlib import Path

import pytest
from hydra.utils import instantiate

from gptlit.data.text import TextDataModule
from gptlit.core.generation import DecodingConfig
from gptlit.core.llama import LlamaConfig
from gptlit.core.model import GPTConfig
from gptlit.cli.build import fit as train

from ..conftest import ROOT, compose_config, compose_run

CONF = Path(__file__).resolve().parents[2] / "conf"
BOOK_SIZES = {"gpt124m": (768, 12, 12), "gpt355m": (1024, 16, 24), "gpt774m": (1280, 20, 36), "gpt1558m": (1600, 25, 48)}


def test_defaults_are_the_books_chapter_5_run():
    cfg = compose_run()
    model = instantiate(cfg.model)
    assert model == GPTConfig(vocab_size=50257, context_length=256, emb_dim=768, n_heads=12, n_layers=12,
                              drop_rate=0.1, qkv_bias=False)
    dm = instantiate(cfg.data)
    assert isinstance(dm, TextDataModule)
    assert (dm.context_length, dm.stride, dm.batch_size, dm.train_ratio) == (256, 256, 2, 0.9)
    optimizer = instantiate(cfg.optimizer)
    assert optimizer.keywords == {"lr": 0.0004, "weight_decay": 0.1, "fused": True, "decay": "all"}
    assert not cfg.scheduler and cfg.trainer.gradient_clip_val is None
    assert cfg.trainer.tokens_per_step is None and cfg.trainer.max_tokens is None
    assert cfg.trainer.max_epochs == 10 and cfg.trainer.val_check_interval == 5
    assert cfg.trainer.limit_val_batches == 5 and cfg.seed == 123
    assert instantiate(cfg.decoding) == DecodingConfig()
    assert cfg.sample.start_context == "Every effort moves you" and cfg.sample.max_new_tokens == 50


@pytest.mark.parametrize("name", sorted(BOOK_SIZES))
def test_model_sizes(name):
    model = instantiate(compose_run(f"model={name}").model)
    assert (model.emb_dim, model.n_heads, model.n_layers) == BOOK_SIZES[name]


def test_data_context_length_resizes_the_model_too():
    cfg = compose_run("model=gpt355m", "data.context_length=128")
    assert instantiate(cfg.model).context_length == 128 and instantiate(cfg.data).context_length == 128


def test_sample_decoding_has_the_books_values():
    assert instantiate(compose_run("decoding=sample").decoding) == DecodingConfig(temperature=1.4, top_k=25)


@pytest.mark.parametrize("group", ["cpu", "gpu", "mps"])
def test_trainer_accelerators(group):
    cfg = compose_run(f"trainer={group}")
    assert cfg.trainer.accelerator == group and cfg.trainer.val_check_interval == 5


@pytest.mark.parametrize("logger", ["tensorboard", "csv"])
def test_fast_dev_run_composes_every_part(tmp_path, verdict_path, logger):
    cfg = compose_run(
        "model=tiny", f"data.path={verdict_path}", "data.context_length=32", f"logger={logger}",
        "+trainer.fast_dev_run=2", "trainer.accelerator=cpu", run_dir=tmp_path,
    )
    trainer = train(cfg)
    assert trainer.global_step == 2
    callbacks = {type(c).__name__ for c in trainer.callbacks}
    assert {"ModelCheckpoint", "SampleText", "LossPlot", "ProgressBar"} <= callbacks


@pytest.mark.parametrize("name", sorted(p.stem for p in (ROOT / "conf" / "model").glob("*.yaml")))
@pytest.mark.parametrize("entry", ["train", "generate"])
def test_every_model_config_instantiates_in_every_entry_config(entry, name):
    # The model group is an architecture and nothing else: instantiate() builds it as it stands.
    config = instantiate(compose_config(f"model={name}", config=entry).model)
    assert isinstance(config, (GPTConfig, LlamaConfig))
    # Without a data group the model's own context: GPT-2's 1024, Llama 3.2's 131,072, Qwen3's 40,960.
    native = {"llama3_2_1b": 131072, "qwen3_0_6b": 40960}.get(name, 1024)
    assert config.context_length == (256 if entry == "train" else native)


def test_weights_read_the_sizes_of_conf_model():
    # gptlit.weights names the `model=` a file fits from conf/model/ itself, as Hydra composes those files.
    from hydra.utils import instantiate as build

    from gptlit.weights.io import model_sizes

    found = {}
    for path in sorted((ROOT / "conf" / "model").glob("*.yaml")):
        config = build(compose_config(f"model={path.stem}", config="generate").model)
        if config.family != "gpt2":
            continue  # a file without a config is GPT-2's (the book's model.pth): only GPT-2's sizes name it
        found[path.stem] = {"emb_dim": config.emb_dim, "n_heads": config.n_heads, "n_layers": config.n_layers}
    assert found == model_sizes() and len(found) == 5
