"""Bad input from the user, reported as one line that names the problem and the fix."""

from __future__ import annotations


class UserError(ValueError):
    """Raised for input a user can fix (a config value, a file); entry points print it without a traceback."""


def find_user_error(err: BaseException | None) -> UserError | None:
    # Hydra's instantiate wraps constructor errors in its own exception; the cause chain keeps ours.
    while err is not None:
        if isinstance(err, UserError):
            return err
        err = err.__cause__ or err.__context__
    return None
