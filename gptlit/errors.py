"""Bad input from the user, reported as one line that names the problem and the fix."""

from __future__ import annotations


class UserError(ValueError):
    """Raised for input a user can fix (a config value, a file); entry points print it without a traceback."""


def check_int(name: str, value, minimum: int = 1, what: str = "a positive integer") -> None:
    """Refuse anything but an integer >= ``minimum`` (bools included, which Python counts as ints)."""
    if isinstance(value, bool) or not isinstance(value, int) or value < minimum:
        raise UserError(f"{name} must be {what}, got {value!r}")


def find_user_error(err: BaseException | None) -> UserError | None:
    # Hydra's instantiate wraps constructor errors in its own exception; the cause chain keeps ours.
    while err is not None:
        if isinstance(err, UserError):
            return err
        err = err.__cause__ or err.__context__
    return None
