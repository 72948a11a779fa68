"""A command run on a real pseudo-terminal of a given size, as an operator's shell runs it: the terminal is
its controlling terminal (Ctrl-C reaches it as SIGINT), stdin, stdout and stderr are all the terminal."""

from __future__ import annotations

import contextlib
import errno
import fcntl
import os
import pty
import re
import signal
import struct
import termios
import threading
import time

# what a terminal shows: escape sequences (colours, cursor moves, line erases) taken out
ESCAPE = re.compile(r"\x1b\[[0-9;?]*[A-Za-z]")


class Terminal:
    def __init__(self, argv: list[str], columns: int = 80, rows: int = 24, env: dict | None = None,
                 cwd: str | None = None):
        self.pid, self.fd = pty.fork()
        if self.pid == 0:  # the child: the terminal is its controlling terminal already
            try:
                if cwd:
                    os.chdir(cwd)
                os.execvpe(argv[0], argv, {**os.environ, "TERM": "xterm-256color", **(env or {})})
            finally:
                os._exit(127)
        fcntl.ioctl(self.fd, termios.TIOCSWINSZ, struct.pack("HHHH", rows, columns, 0, 0))
        self._data = bytearray()
        self._lock = threading.Lock()
        self._reader = threading.Thread(target=self._read, daemon=True)
        self._reader.start()
        self.code: int | None = None

    def _read(self) -> None:
        while True:
            try:
                chunk = os.read(self.fd, 65536)
            except OSError as exc:  # EIO: the child side is closed
                if exc.errno in (errno.EIO, errno.EBADF):
                    return
                raise
            if not chunk:
                return
            with self._lock:
                self._data.extend(chunk)

    @property
    def raw(self) -> str:
        """Everything written to the terminal, escape sequences and carriage returns included."""
        with self._lock:
            return self._data.decode(errors="replace")

    @property
    def text(self) -> str:
        """What was written, without escape sequences."""
        return ESCAPE.sub("", self.raw)

    def expect(self, pattern: str, timeout: float = 300) -> re.Match:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            found = re.search(pattern, self.text)
            if found:
                return found
            if self.code is None and self.poll() is not None:
                time.sleep(0.2)  # what the reader has not read yet
                found = re.search(pattern, self.text)
                if found:
                    return found
                raise AssertionError(f"exited {self.code} before {pattern!r} appeared:\n{self.text[-3000:]}")
            time.sleep(0.05)
        raise AssertionError(f"{pattern!r} did not appear within {timeout} s:\n{self.text[-3000:]}")

    def send(self, text: str) -> None:
        os.write(self.fd, text.encode())

    def interrupt(self) -> None:
        """Ctrl-C, typed: the terminal sends SIGINT to its foreground process group."""
        self.send("\x03")

    def poll(self) -> int | None:
        if self.code is None:
            pid, status = os.waitpid(self.pid, os.WNOHANG)
            if pid:
                self.code = os.waitstatus_to_exitcode(status)
        return self.code

    def wait(self, timeout: float = 600) -> int:
        deadline = time.monotonic() + timeout
        while self.poll() is None:
            if time.monotonic() > deadline:
                os.kill(self.pid, signal.SIGKILL)
                raise AssertionError(f"still running after {timeout} s:\n{self.text[-3000:]}")
            time.sleep(0.1)
        self._reader.join(5)
        return self.code

    def hang_up(self) -> None:
        """The terminal goes away (an SSH session dropped): the kernel sends SIGHUP."""
        os.close(self.fd)

    def close(self) -> None:
        if self.poll() is None:
            os.kill(self.pid, signal.SIGKILL)
            self.wait()
        with contextlib.suppress(OSError):
            os.close(self.fd)


def screen_lines(raw: str) -> list[str]:
    """The lines a terminal keeps on screen: each carriage return starts its line over, and a line erased
    (ESC[2K) or written over is gone; ESC[1A moves up a line. Enough of a terminal for rich's output."""
    lines: list[str] = [""]
    row, column = 0, 0
    for token in re.split(r"(\x1b\[[0-9;?]*[A-Za-z]|\r\n|\r|\n)", raw):
        if not token:
            continue
        if token in ("\r\n", "\n"):
            row += 1
            column = 0
            if row == len(lines):
                lines.append("")
        elif token == "\r":
            column = 0
        elif token.startswith("\x1b["):
            if token.endswith("K") and token[2:-1] in ("2",):
                lines[row] = ""
                column = 0
            elif token.endswith("A"):
                row = max(0, row - int(token[2:-1] or 1))
        else:
            line = lines[row]
            lines[row] = line[:column] + token + line[column + len(token):]
            column += len(token)
    return lines
