"""How ``pods_train`` / ``pods_test`` report a failure: one line for a user's mistake, the
traceback first for a bug.

A user error (a missing file, a bad config value, an unknown dataset, a peer that never
joined) is fixed from its message alone; its traceback would only bury that message, so it
goes to log.txt (and to the terminal with ``--debug``). Anything else is a bug in crowdloss,
in the experiment's code or in how a library is called, and its traceback is what whoever
fixes it needs.
"""
from __future__ import annotations

import sys
import traceback

__all__ = ["is_user_error", "report_failure"]


def _always_user_errors() -> tuple:
    from crowdloss.config.config_dict import ConfigKeyError
    from crowdloss.engine.weight_files import UnreadableWeightsError
    from crowdloss.evaluation.expected import ExpectedResultsError
    from crowdloss.utils.lock import DirectoryLockedError

    from .common import CLIError

    # A truncated / foreign weights file, or results outside TEST.EXPECTED_RESULTS in "error"
    # mode: the message says it all; the traceback adds nothing.
    return (CLIError, ConfigKeyError, DirectoryLockedError, OSError, UnreadableWeightsError,
            ExpectedResultsError)


def _raised_by_a_validator(exc: BaseException) -> bool:
    """Whether crowdloss or the experiment's own code raised ``exc`` (a check with a message
    written for the user), not a library underneath (torch's ValueErrors explain nothing
    without their traceback)."""
    tb = exc.__traceback__
    if tb is None:  # constructed, not raised: judge by type alone
        return True
    while tb.tb_next is not None:
        tb = tb.tb_next
    module = str(tb.tb_frame.f_globals.get("__name__", ""))
    return module.split(".")[0] == "crowdloss" or module.startswith("crowdloss_exp_")


def is_user_error(exc: BaseException) -> bool:
    """A mistake the user fixes from the message alone (no traceback needed).

    CLI / config / lock errors and ``OSError`` (missing or unreadable files) always; a
    ``ValueError`` (bad value), ``FloatingPointError`` (a diverged loss) or a ``KeyError``
    whose message is a sentence (unknown dataset) when crowdloss or the experiment raised it;
    a ``LaunchError`` (a peer that never joined) unless it carries a worker's bug.
    """
    from crowdloss.engine.workers import LaunchError

    if isinstance(exc, LaunchError):
        return exc.user_error or exc.detail is None
    if isinstance(exc, _always_user_errors()):
        return True
    if isinstance(exc, KeyError):
        sentence = len(exc.args) == 1 and isinstance(exc.args[0], str) and " " in exc.args[0]
        return sentence and _raised_by_a_validator(exc)
    return isinstance(exc, (ValueError, FloatingPointError)) and _raised_by_a_validator(exc)


def report_failure(prog: str, exc: BaseException, *, debug: bool = False) -> None:
    """Print ``<prog>: error: <message>`` on stderr (after the traceback, for a bug or with
    ``debug``), then exit with status 1."""
    from crowdloss.engine.workers import LaunchError, error_message

    user = is_user_error(exc)
    if debug or not user:
        detail = getattr(exc, "detail", None)  # a worker's traceback, sent by launch
        if detail:
            print(detail, file=sys.stderr)
        else:
            traceback.print_exception(type(exc), exc, exc.__traceback__, file=sys.stderr)
    if isinstance(exc, LaunchError) and exc.user_error:
        message = exc.message  # say which rank, unless the message itself names ranks
        if not message.startswith("rank"):
            message = f"rank {exc.rank}: {message}"
    elif isinstance(exc, LaunchError) and exc.detail:
        message = str(exc).splitlines()[0]
    else:
        message = error_message(exc)
        if not user:
            message = f"{type(exc).__name__}: {message}"
    print(f"{prog}: error: {message}", file=sys.stderr)
    sys.exit(1)
