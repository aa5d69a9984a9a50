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


def _raise_terminated(signum, frame) -> None:
    raise Terminated()


def run_guarded(prog: str, func, args, user_errors: tuple[type[BaseException], ...] = (InputError,)) -> int:
    """Run a command; a user's mistake becomes one ``PROG: error: ...`` line and status 2, no traceback; Ctrl-C
    status 130 and SIGTERM 143, each one line, after the command's clean-up."""
    try:
        previous = signal.signal(signal.SIGTERM, _raise_terminated)
    except ValueError:  # not the main thread: signals stay as they are
        previous = None
    try:
        return _run(prog, func, args, user_errors)
    finally:
        if previous is not None:
            signal.signal(signal.SIGTERM, previous)


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
