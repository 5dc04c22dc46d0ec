"""A child process that a test kills at a known moment: it says when it is ready, the test waits for that.

Crash tests start a writer, let it reach a state, and ``SIGKILL`` it. Sleeping "long enough" for the child to get
there races with the machine's load (imports alone take seconds on a busy machine). Instead the child prints a
marker line when it has reached the state, and :meth:`Child.wait_for` blocks until that line arrives; its deadline
is generous and only fails the test when exceeded, never shortens it. A child that must stay in a state until it is
killed can block on ``sys.stdin.read()``: the test never writes to it, and the read returns (end of file) only once
the test has gone, so an orphaned child ends instead of hanging on. A random delay *after* the marker is still fine
where the moment of the kill is what the test is about.

Example::

    with Child([sys.executable, "-c", WRITER, str(path)]) as child:
        child.wait_for("ready")
        child.kill()
    assert ...  # what must hold after the crash
"""

from __future__ import annotations

import os
import queue
import signal
import subprocess
import threading
import time
from collections.abc import Mapping, Sequence
from types import TracebackType

__all__ = ["DEFAULT_DEADLINE_S", "Child"]

#: How long :meth:`Child.wait_for` waits by default: far more than the child needs, so it only fails when the child
#: is stuck or broken, never because the machine is busy.
DEFAULT_DEADLINE_S = 300.0

_EOF = None


class Child:
    """A ``subprocess.Popen`` whose standard output is read line by line on a thread, and that can be waited for.

    Standard error is inherited, so a child's traceback shows in the test's captured output. Standard input is a
    pipe the test keeps open and never writes to (see the module docstring).
    """

    def __init__(self, args: Sequence[str], *, env: Mapping[str, str] | None = None) -> None:
        self.process = subprocess.Popen(
            list(args),
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            text=True,
            bufsize=1,
            env=None if env is None else dict(env),
        )
        #: Every line the child printed that a wait has consumed or that :meth:`kill` collected, in order.
        self.lines: list[str] = []
        self._queue: queue.Queue[str | None] = queue.Queue()
        self._reader = threading.Thread(target=self._read, name=f"child-{self.process.pid}-stdout", daemon=True)
        self._reader.start()

    def _read(self) -> None:
        assert self.process.stdout is not None
        for line in self.process.stdout:
            self._queue.put(line.rstrip("\n"))
        self._queue.put(_EOF)

    def next_line(self, deadline_s: float = DEFAULT_DEADLINE_S) -> str:
        """Block until the child prints its next line and return it (it is also appended to :attr:`lines`).

        Raises ``AssertionError`` if the child's output ends first (it exited; its status is in the message) or if
        ``deadline_s`` passes without a line (the child is stuck).
        """
        try:
            line = self._queue.get(timeout=deadline_s)
        except queue.Empty:
            raise AssertionError(
                f"the child (pid {self.process.pid}) printed nothing more within {deadline_s:.0f} s"
            ) from None
        if line is _EOF:
            self._queue.put(_EOF)  # later reads see the end too
            count = len(self.lines)
            raise AssertionError(
                f"the child (pid {self.process.pid}) exited with status {self.process.wait()} "
                f"after printing {count} line{'' if count == 1 else 's'}"
            )
        self.lines.append(line)
        return line

    def wait_for(self, marker: str, deadline_s: float = DEFAULT_DEADLINE_S) -> list[str]:
        """Block until the child prints a line equal to ``marker``; return the lines it printed before it.

        Raises ``AssertionError``, naming the marker, if the child exits first or ``deadline_s`` passes.
        """
        before: list[str] = []
        give_up = time.monotonic() + deadline_s
        while True:
            try:
                line = self.next_line(max(0.0, give_up - time.monotonic()))
            except AssertionError as error:
                raise AssertionError(f"waiting for {marker!r}: {error}") from None
            if line == marker:
                return before
            before.append(line)

    def kill(self) -> int:
        """``SIGKILL`` the child (if it still runs), reap it, collect the rest of its output; return its status."""
        if self.process.poll() is None:
            os.kill(self.process.pid, signal.SIGKILL)
        status = self.process.wait()
        self._reader.join()
        while (line := self._queue.get()) is not _EOF:
            self.lines.append(line)
        self._queue.put(_EOF)
        for stream in (self.process.stdin, self.process.stdout):
            if stream is not None:
                stream.close()
        return status

    def __enter__(self) -> Child:
        return self

    def __exit__(
        self, _type: type[BaseException] | None, _value: BaseException | None, _traceback: TracebackType | None
    ) -> None:
        self.kill()
