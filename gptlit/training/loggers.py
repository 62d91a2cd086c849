"""Experiment trackers beyond TensorBoard, as Lightning's own loggers, and the hyper-parameters every one shows.

``logger=mlflow`` and ``logger=wandb`` build Lightning's MLFlowLogger and WandbLogger; their packages are
optional, so a missing one is a one-line error that says what to install. ``log_hyperparameters`` records the
run's resolved config in whichever logger the run has, and for TensorBoard also in its HParams tab, which
Lightning fills only when hyper-parameters come with metric values (and gptlit has none at the start).
"""

from __future__ import annotations

import importlib.util
import os
from typing import Any, Mapping

from lightning.pytorch.loggers import Logger, MLFlowLogger, TensorBoardLogger, WandbLogger
from lightning.pytorch.utilities import rank_zero_only

from gptlit.errors import UserError

# The scalars the HParams tab shows beside each run's hyper-parameters (their last logged values).
HPARAM_METRICS = ("val/loss", "train/loss", "val/perplexity")


def require(module: str, group: str, package: str) -> None:
    if importlib.util.find_spec(module) is None:
        raise UserError(
            f"logger={group} needs the {package} package, which is not installed: pip install {package} "
            f"(or pip install -e '.[trackers]'), or choose logger=tensorboard"
        )


def mlflow_logger(tracking_uri: str | None = None, **kwargs: Any) -> MLFlowLogger:
    """Lightning's MLFlowLogger; ``tracking_uri`` is a server (http://...), a database or a local ``file:`` store."""
    require("mlflow", "mlflow", "mlflow-skinny")
    if tracking_uri and tracking_uri.startswith("file:"):
        # MLflow 3 refuses its file store unless told otherwise; it is the one store that needs neither a server
        # nor a database package. Set only for this process, and never over the user's own choice.
        os.environ.setdefault("MLFLOW_ALLOW_FILE_STORE", "true")
    return MLFlowLogger(tracking_uri=tracking_uri, **kwargs)


def wandb_logger(**kwargs: Any) -> WandbLogger:
    """Lightning's WandbLogger (``offline=true`` or ``WANDB_MODE=offline`` runs without an account)."""
    require("wandb", "wandb", "wandb")
    logger = WandbLogger(**kwargs)
    # Lightning always hands wandb.init an `anonymous` key (None when unset); wandb 0.2x warns on every run that
    # the setting has no effect. Unset, it is left out.
    if logger._wandb_init.get("anonymous") is None:
        logger._wandb_init.pop("anonymous", None)
    return logger


def flatten(params: Mapping[str, Any], prefix: str = "") -> dict[str, bool | int | float | str]:
    """``{"model": {"emb_dim": 768}}`` as ``{"model/emb_dim": 768}``, values TensorBoard cannot hold as text."""
    flat: dict[str, bool | int | float | str] = {}
    for key, value in params.items():
        name = f"{prefix}{key}"
        if isinstance(value, Mapping):
            flat.update(flatten(value, f"{name}/"))
        else:
            flat[name] = value if isinstance(value, (bool, int, float, str)) else str(value)
    return flat


@rank_zero_only
def _tensorboard_hparams(logger: TensorBoardLogger, params: Mapping[str, Any]) -> None:
    from torch.utils.tensorboard.summary import hparams

    # The metric values given here are not written: only their names, which the tab then reads from the run's
    # own scalars as training logs them.
    experiment, session_start, session_end = hparams(flatten(params), {name: 0.0 for name in HPARAM_METRICS})
    writer = logger.experiment._get_file_writer()
    for summary in (experiment, session_start, session_end):
        writer.add_summary(summary)


def log_hyperparameters(logger: Logger, params: Mapping[str, Any]) -> None:
    """The run's config in ``logger``: hparams.yaml (TensorBoard, CSV), MLflow's params, W&B's config, and
    TensorBoard's HParams tab."""
    logger.log_hyperparams(dict(params))
    if isinstance(logger, TensorBoardLogger):
        _tensorboard_hparams(logger, params)
