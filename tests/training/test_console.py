"""What a run shows its user also goes into its log; Lightning's start-up chatter goes nowhere."""

import logging
import warnings

import pytest

from gptlit.cli.user_errors import exit_on_user_error
from gptlit.errors import UserError
from gptlit import console


@pytest.fixture
def logged(monkeypatch):
    """The records the run's log (train.log under train.py) would get."""
    records = []
    handler = logging.Handler()
    handler.emit = records.append
    console.log.addHandler(handler)
    level = console.log.level
    console.log.setLevel(logging.INFO)  # as conf/hydra/job_logging/run.yaml sets the root logger
    yield lambda: [r.getMessage() for r in records]
    console.log.setLevel(level)
    console.log.removeHandler(handler)


def test_show_prints_and_logs(capsys, logged):
    console.show("Ep 1 (Step 000005): Train loss 10.990, Val loss 10.924")
    assert capsys.readouterr().out == "Ep 1 (Step 000005): Train loss 10.990, Val loss 10.924\n"
    assert logged() == ["Ep 1 (Step 000005): Train loss 10.990, Val loss 10.924"]


def test_warnings_show_as_before_and_go_into_the_log(monkeypatch, logged):
    shown = []
    monkeypatch.setattr(warnings, "showwarning", lambda message, *args, **kwargs: shown.append(str(message)))
    console.copy_warnings_to_log()
    console.copy_warnings_to_log()  # a multirun's second job: still one copy per warning
    with warnings.catch_warnings():
        warnings.simplefilter("always")
        warnings.warn("the val split is short", UserWarning)
    assert shown == ["the val split is short"]
    assert logged() == ["UserWarning: the val split is short"]


def test_errors_go_into_the_log(capsys, logged):
    with pytest.raises(SystemExit):
        with exit_on_user_error():
            raise UserError("training loss is nan at step 3")
    assert capsys.readouterr().err == "error: training loss is nan at step 3\n"
    assert logged() == ["error: training loss is nan at step 3"]


@pytest.mark.parametrize(
    "name, level, message, kept",
    [
        ("lightning.pytorch.utilities.rank_zero", logging.INFO, "GPU available: False, used: False", False),
        ("lightning.pytorch.utilities.rank_zero", logging.INFO, "TPU available: False, using: 0 TPU cores", False),
        ("lightning.pytorch.utilities.rank_zero", logging.INFO, "💡 Tip: For seamless cloud logging ...", False),
        ("lightning.pytorch.utilities.rank_zero", logging.INFO, "Restoring states from the checkpoint path at x", True),
        ("lightning.pytorch.utilities.rank_zero", logging.WARNING, "GPU available: but something is wrong", True),
        ("gptlit.weights.io", logging.INFO, "GPU available: a message of ours", True),
    ],
)
def test_only_lightnings_chatter_is_dropped(name, level, message, kept):
    record = logging.LogRecord(name, level, __file__, 1, message, None, None)
    assert console.QuietLightning().filter(record) is kept
