"""How both command lines (``hntumorseg``, ``hntumorseg-train``) turn a user's mistake into one line.

A wrong path, a missing extra or a full disk is the user's to fix: they get ``PROG: error: ...`` and
status 2, never a traceback. Anything else is a bug and keeps its traceback.
"""

from __future__ import annotations

import sys

from HNTumorSegLib.errors import InputError


def _command_of(args) -> str:
    func = getattr(args, "func", None)
    name = getattr(func, "__name__", "")
    return name[len("cmd_"):] if name.startswith("cmd_") else "this command"


def run_guarded(prog: str, func, args, user_errors: tuple[type[BaseException], ...] = (InputError,)) -> int:
    """Run a command; a user's mistake becomes one ``PROG: error: ...`` line and status 2, no traceback."""
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
    except KeyboardInterrupt:
        print(f"{prog}: interrupted", file=sys.stderr)
        return 130
