"""The numeric precision an evaluation runs in, named as Lightning names training precisions.

Evaluation defaults to fp32 so its numbers compare across machines; a mixed precision autocasts the matmuls
(the loss is still taken in fp32), a true one casts the weights.
"""

from __future__ import annotations

import contextlib
from typing import ContextManager

from torch import nn
import torch

from gptlit.core.device import model_device, precision_dtype
from gptlit.errors import UserError

PRECISIONS = ("32-true", "bf16-mixed", "16-mixed", "bf16-true", "16-true")


def at_precision(model: nn.Module, precision: str | None) -> ContextManager:
    """The context to run ``model`` in at ``precision``; a true precision casts ``model`` in place first. None
    runs the model as it is (a caller such as a training callback has set the precision already)."""
    if precision is None:
        return contextlib.nullcontext()
    precision = str(precision)
    if precision == "32":
        precision = "32-true"
    if precision not in PRECISIONS:
        raise UserError(f"precision={precision} is not one of {', '.join(PRECISIONS)}")
    dtype = precision_dtype(precision)
    if precision.endswith("-true"):
        model.to(dtype)
        return contextlib.nullcontext()
    return torch.autocast(model_device(model).type, dtype=dtype)
