"""Bad input from the user, reported as one line that names the problem and the fix."""

from __future__ import annotations

import contextlib
import os
import sys
from typing import Iterator


class UserError(ValueError):
    """Raised for input a user can fix (a config value, a file); entry points print it without a traceback."""


def find_user_error(err: BaseException | None) -> UserError | None:
    # Hydra's instantiate wraps constructor errors in its own exception; the cause chain keeps ours.
    while err is not None:
        if isinstance(err, UserError):
            return err
        err = err.__cause__ or err.__context__
    return None


@contextlib.contextmanager
def exit_on_user_error() -> Iterator[None]:
    """Turn a UserError into `error: <message>` on stderr and exit status 2 (HYDRA_FULL_ERROR=1 keeps the traceback)."""
    try:
        yield
    except Exception as err:
        user_error = find_user_error(err)
        if user_error is None or os.environ.get("HYDRA_FULL_ERROR") == "1":
            raise
        print(f"error: {user_error}", file=sys.stderr)
        sys.exit(2)
