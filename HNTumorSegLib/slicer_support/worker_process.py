"""A child process tree that talks JSON lines, can be polled without blocking, and killed whole.

Why: the process a front-end starts is often not the one doing the work. Slicer's
``PythonSlicer`` is a launcher that starts the real interpreter as its child, and libraries may
start helpers of their own. Killing only the direct child would leave the rest running (a GPU
still busy, files still being written). So the worker starts in a session / process group of
its own and Cancel kills the whole group (``taskkill /T`` on Windows).

Reading happens on two background threads, so a GUI timer can call :meth:`WorkerProcess.poll`
and never block, and a full stderr pipe can never stall the worker.
"""

from __future__ import annotations

import collections
import os
import queue
import signal
import subprocess
import sys
import threading
from typing import Mapping, Optional, Sequence

from HNTumorSegLib.slicer_support.worker_protocol import parse_line

#: stderr lines kept for failure reports.
STDERR_TAIL = 200
#: stdout lines that are not events, and malformed events, kept apart from stderr. Why apart: a library
#: that prints thousands of lines to stdout would otherwise push the real cause, on stderr, out of the tail.
STDOUT_TAIL = 20


def _new_group_kwargs() -> dict:
    if sys.platform == "win32":
        return {"creationflags": subprocess.CREATE_NEW_PROCESS_GROUP}
    return {"start_new_session": True}


def kill_process_tree(process: subprocess.Popen) -> None:
    """Kill ``process`` and everything in its process group, then reap it."""
    if sys.platform == "win32":
        subprocess.run(["taskkill", "/F", "/T", "/PID", str(process.pid)],
                       stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, check=False)
        if process.poll() is None:
            process.kill()
    else:
        try:
            os.killpg(process.pid, signal.SIGKILL)  # start_new_session: the group id is the pid
        except (ProcessLookupError, PermissionError):
            pass  # the group is already gone
    process.wait()


class WorkerProcess:
    """Start a command; collect its protocol events and stderr; wait for or cancel it."""

    def __init__(self, command: Sequence[str], env: Optional[Mapping[str, str]] = None,
                 cwd: Optional[str] = None):
        self.command = [str(c) for c in command]
        self.env = dict(env) if env is not None else None
        self.cwd = cwd
        self.process: Optional[subprocess.Popen] = None
        self.cancelled = False
        self._events: "queue.Queue[dict]" = queue.Queue()
        self._stderr: "collections.deque[str]" = collections.deque(maxlen=STDERR_TAIL)
        self._stdout_other: "collections.deque[str]" = collections.deque(maxlen=STDOUT_TAIL)
        self._problems: "collections.deque[str]" = collections.deque(maxlen=STDOUT_TAIL)
        self._readers: list[threading.Thread] = []

    def start(self) -> "WorkerProcess":
        self.process = subprocess.Popen(
            self.command, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
            env=self.env, cwd=self.cwd, text=True, encoding="utf-8", errors="replace", bufsize=1,
            **_new_group_kwargs())
        self._readers = [threading.Thread(target=self._read_stdout, daemon=True),
                         threading.Thread(target=self._read_stderr, daemon=True)]
        for t in self._readers:
            t.start()
        return self

    def _read_stdout(self) -> None:
        for line in self.process.stdout:
            event, problem = parse_line(line)
            if event is not None:
                self._events.put(event)
                continue
            self._stdout_other.append(line.rstrip("\n"))  # not ours: keep it for the diagnostics
            if problem is not None:  # an event we cannot act on: say so, rather than crash or drop it silently
                self._problems.append(f"malformed worker event: {problem}")
        self.process.stdout.close()

    def _read_stderr(self) -> None:
        for line in self.process.stderr:
            self._stderr.append(line.rstrip("\n"))
        self.process.stderr.close()

    @property
    def pid(self) -> Optional[int]:
        return self.process.pid if self.process else None

    def poll(self) -> list[dict]:
        """Events received since the last call; never blocks."""
        events = []
        while True:
            try:
                events.append(self._events.get_nowait())
            except queue.Empty:
                return events

    @property
    def finished(self) -> bool:
        """The process has exited and all its output has been read."""
        return (self.process is not None and self.process.poll() is not None
                and not any(t.is_alive() for t in self._readers))

    @property
    def returncode(self) -> Optional[int]:
        return self.process.poll() if self.process else None

    def wait(self, timeout: Optional[float] = None) -> int:
        """Block until the process exits and its output is read; returns the exit status."""
        code = self.process.wait(timeout)
        for t in self._readers:
            t.join(timeout)
        return code

    def stderr_tail(self, lines: int = 20) -> list[str]:
        """The last stderr lines (where the worker's tracebacks and libraries' messages go)."""
        return list(self._stderr)[-lines:]

    def stdout_tail(self, lines: int = 20) -> list[str]:
        """The last stdout lines that were not events (a launcher's messages, malformed events)."""
        return list(self._stdout_other)[-lines:]

    def protocol_problems(self) -> list[str]:
        """One line for each of the last malformed events received (what was wrong with it)."""
        return list(self._problems)

    def cancel(self) -> None:
        """Kill the whole process tree (idempotent)."""
        if self.process is None:
            return
        self.cancelled = True
        kill_process_tree(self.process)
        for t in self._readers:  # the pipes close as soon as the last process holding them dies
            t.join(1.0)
