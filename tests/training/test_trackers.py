"""Experiment trackers: the run's hyper-parameters and losses reach TensorBoard's HParams tab, MLflow and W&B,
all offline."""

from __future__ import annotations

import pytest
from omegaconf import open_dict
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator
from tensorboard.plugins.hparams import plugin_data_pb2

from gptlit.cli.build import build, fit
from gptlit.errors import UserError, find_user_error
from gptlit.training import loggers
from tests.conftest import compose_config, compose_train

QUICK = ("trainer.max_steps=2", "trainer.val_check_interval=2")


def compose_with_logger(run_dir, logger: str, *overrides: str):
    """compose_train's quick run, with logger=<logger> instead of none."""
    cfg = compose_train(run_dir, *QUICK, *overrides)
    with open_dict(cfg):
        cfg.logger = compose_config(f"logger={logger}", f"run_dir={run_dir}").logger
    return cfg


def test_tensorboard_hparams_tab_holds_the_config_and_the_loss_metrics(tmp_path):
    fit(compose_with_logger(tmp_path, "tensorboard"))
    events = EventAccumulator(str(tmp_path / "tensorboard"), size_guidance={"tensors": 0}).Reload()
    content = events.PluginTagToContent("hparams")
    start = plugin_data_pb2.HParamsPluginData.FromString(content["_hparams_/session_start_info"]).session_start_info
    assert start.hparams["model/emb_dim"].number_value == 32
    assert start.hparams["data/context_length"].number_value == 32
    assert start.hparams["optimizer/lr"].number_value == pytest.approx(4e-4)
    assert start.hparams["trainer/_target_"].string_value == "gptlit.training.trainer.Trainer"
    experiment = plugin_data_pb2.HParamsPluginData.FromString(content["_hparams_/experiment"]).experiment
    assert {m.name.tag for m in experiment.metric_infos} == set(loggers.HPARAM_METRICS)
    assert [e.step for e in events.Scalars("val/loss")] == [2]  # the metric the tab shows, logged by training


def test_mlflow_local_file_store_gets_params_and_metrics(tmp_path, monkeypatch):
    mlflow = pytest.importorskip("mlflow")
    monkeypatch.delenv("MLFLOW_ALLOW_FILE_STORE", raising=False)
    store = f"file:{tmp_path / 'mlruns'}"
    monkeypatch.setenv("MLFLOW_TRACKING_URI", store)  # the config's tracking_uri follows it
    trainer = fit(compose_with_logger(tmp_path, "mlflow"))
    client = mlflow.tracking.MlflowClient(store)
    (run,) = client.search_runs([client.get_experiment_by_name("gptlit").experiment_id])
    assert run.info.run_id == trainer.logger.run_id
    assert run.data.params["model/emb_dim"] == "32" and run.data.params["optimizer/lr"] == "0.0004"
    assert {"val/loss", "train/loss", "train/batch_loss"} <= run.data.metrics.keys()
    assert run.data.tags["run_dir"] == str(tmp_path)


def test_wandb_offline_run_gets_config_and_metrics(tmp_path, monkeypatch, capsys):
    pytest.importorskip("wandb")
    monkeypatch.setenv("WANDB_MODE", "offline")
    trainer = fit(compose_with_logger(tmp_path, "wandb"))
    assert "anonymous setting" not in capsys.readouterr().err  # Lightning's unset `anonymous` no longer reaches wandb
    run = trainer.logger.experiment
    try:
        assert run.offline and run.config["model"]["emb_dim"] == 32 and run.config["optimizer"]["lr"] == 4e-4
        assert "val/loss" in run.summary.keys()
    finally:
        run.finish()
    # The run's record for `wandb sync`, in the run directory.
    assert len(list((tmp_path / "wandb").glob("offline-run-*/run-*.wandb"))) == 1


@pytest.mark.parametrize("group,package", [("mlflow", "mlflow-skinny"), ("wandb", "wandb")])
def test_missing_tracker_package_is_one_line(tmp_path, monkeypatch, group, package):
    real = loggers.importlib.util.find_spec
    monkeypatch.setattr(loggers.importlib.util, "find_spec", lambda name: None if name == group else real(name))
    with pytest.raises(Exception) as caught:
        build(compose_with_logger(tmp_path, group))
    error = find_user_error(caught.value)
    assert isinstance(error, UserError)
    assert str(error).startswith(f"logger={group} needs the {package} package, which is not installed: pip install {package}")
