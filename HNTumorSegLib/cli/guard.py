"""How both command lines (``hntumorseg``, ``hntumorseg-train``) turn a user's mistake into one line.

A wrong path, a missing extra or a full disk is the user's to fix: they get ``PROG: error: ...`` and
status 2, never a traceback. Anything else is a bug and keeps its traceback.
"""

from __future__ import annotations

import signal
import sys

from HNTumorSegLib.errors import InputError


def _command_of(args) -> str:
    func = getattr(args, "func", None)
    name = getattr(func, "__name__", "")
    return name[len("cmd_"):] if name.startswith("cmd_") else "this command"


class Terminated(KeyboardInterrupt):
    """SIGTERM (``kill``, ``timeout``, a scheduler's time limit, ``docker stop``), raised where the command is, as
    Ctrl-C is: its clean-up runs (temporary files removed, a batch's summary written) where the default action
    ended the process on the spot and left hidden temporaries beside the outputs."""


#: The stop received while a command runs (Terminated or KeyboardInterrupt), kept for :func:`raise_pending_stop`.
_pending_stop: type[KeyboardInterrupt] | None = None


def _raise_stop(signum, frame) -> None:
    global _pending_stop
    _pending_stop = Terminated if signum == signal.SIGTERM else KeyboardInterrupt
    raise _pending_stop()


def raise_pending_stop() -> None:
    """Raise again a stop (SIGTERM, Ctrl-C) the command received and lost. Why: a stop that arrives while Python
    runs a ``__del__`` is raised there, printed as "Exception ignored" and dropped, and the command goes on; torch's
    DataLoader iterator shuts its workers down in ``__del__`` at each epoch's end, so a stop sent then left a
    training running to its last epoch (1 run in 4 of the process-group stop test). Long loops call this at each
    step: a stop that propagated never comes back here; a lost one is raised at the next step."""
    if _pending_stop is not None:
        raise _pending_stop()


def _quiet_lost_stops(unraisable) -> None:
    """``sys.unraisablehook`` while a command runs: a stop lost in a ``__del__`` is raised again at the next step
    (:func:`raise_pending_stop`), so Python's "Exception ignored" trace for it is noise; anything else is printed."""
    if _pending_stop is not None and isinstance(unraisable.exc_value, KeyboardInterrupt):
        return
    sys.__unraisablehook__(unraisable)


def run_guarded(prog: str, func, args, user_errors: tuple[type[BaseException], ...] = (InputError,)) -> int:
    """Run a command; a user's mistake becomes one ``PROG: error: ...`` line and status 2, no traceback; Ctrl-C
    status 130 and SIGTERM 143, each one line, after the command's clean-up. Ctrl-C is handled here too where
    Python's own handler is in place (not where SIGINT is ignored, as under ``nohup ... &``), so that a lost stop
    is raised again (:func:`raise_pending_stop`)."""
    global _pending_stop
    _pending_stop = None
    previous = {}
    try:
        previous[signal.SIGTERM] = signal.signal(signal.SIGTERM, _raise_stop)
        if signal.getsignal(signal.SIGINT) is signal.default_int_handler:
            previous[signal.SIGINT] = signal.signal(signal.SIGINT, _raise_stop)
    except ValueError:  # not the main thread: signals stay as they are
        pass
    hook, sys.unraisablehook = sys.unraisablehook, _quiet_lost_stops
    try:
        return _run(prog, func, args, user_errors)
    finally:
        for signum, handler in previous.items():
            signal.signal(signum, handler)
        sys.unraisablehook = hook
        _pending_stop = None


def _run(prog: str, func, args, user_errors: tuple[type[BaseException], ...]) -> int:
    try:
        return func(args)
    except user_errors as exc:
        lines = str(exc).splitlines()
        print(f"{prog}: error: {lines[0] if lines else type(exc).__name__}", file=sys.stderr)
        return 2
    except ModuleNotFoundError as exc:  # an extra that is not installed: name it and the pip that brings it
        from HNTumorSegLib.optional_packages import missing_package_message

        print(f"{prog}: error: {missing_package_message(exc.name or str(exc), prog + ' ' + _command_of(args))}",
              file=sys.stderr)
        return 2
    except OSError as exc:  # permissions, a full disk, a path that is a folder: the user's to fix
        where = f"{exc.filename}: " if exc.filename else ""
        print(f"{prog}: error: {where}{exc.strerror or exc}", file=sys.stderr)
        return 2
    except Terminated:
        print(f"{prog}: terminated", file=sys.stderr)
        return 143
    except KeyboardInterrupt:
        print(f"{prog}: interrupted", file=sys.stderr)
        return 130
