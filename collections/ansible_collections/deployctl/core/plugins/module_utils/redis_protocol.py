# Copyright: deployctl maintainers
# MIT License (see galaxy.yml)
"""A Redis client small enough to carry: RESP2 over TCP or a unix socket, AUTH sent over the connection (never
on a command line or in an environment), pipelined commands.

Standard library only: runs on the managed hosts (Python 3.8+)."""

from __future__ import annotations

import contextlib
import socket


class RedisError(Exception):
    """The connection failed, or the server answered an error (``reply`` is then True)."""

    def __init__(self, msg, reply=False):
        super().__init__(msg)
        self.msg = msg
        self.reply = reply


def _encode(args):
    out = [b"*%d\r\n" % len(args)]
    for arg in args:
        data = arg if isinstance(arg, bytes) else str(arg).encode("utf-8")
        out.append(b"$%d\r\n%s\r\n" % (len(data), data))
    return b"".join(out)


class RedisConnection:
    """One connection. ``where`` names the server in messages; replies are bytes, ints, lists, or RedisError
    instances for error replies inside a pipeline."""

    def __init__(self, host=None, port=None, socket_path=None, username=None, password=None, timeout=10.0):
        self.where = socket_path or f"{host or '127.0.0.1'}:{port or 6379}"
        try:
            if socket_path:
                self._sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
                self._sock.settimeout(timeout)
                self._sock.connect(socket_path)
            else:
                self._sock = socket.create_connection((host or "127.0.0.1", int(port or 6379)), timeout=timeout)
        except OSError as exc:
            raise RedisError(f"redis at {self.where} cannot be reached: {exc.strerror or exc}") from None
        self._buf = b""
        if password is not None:
            try:
                self.command(*(["AUTH", username, password] if username else ["AUTH", password]))
            except RedisError as exc:
                self.close()
                raise RedisError(f"redis at {self.where} refused the credentials: {exc.msg}",
                                 reply=exc.reply) from None

    def close(self):
        with contextlib.suppress(OSError):
            self._sock.close()

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()

    def _fill(self):
        try:
            data = self._sock.recv(65536)
        except OSError as exc:
            raise RedisError(f"redis at {self.where}: {exc.strerror or exc}") from None
        if not data:
            raise RedisError(f"redis at {self.where} closed the connection")
        self._buf += data

    def _line(self):
        while b"\r\n" not in self._buf:
            self._fill()
        line, self._buf = self._buf.split(b"\r\n", 1)
        return line

    def _exact(self, size):
        while len(self._buf) < size + 2:
            self._fill()
        data, self._buf = self._buf[:size], self._buf[size + 2:]
        return data

    def _reply(self):
        line = self._line()
        kind, rest = line[:1], line[1:]
        if kind == b"+":
            return rest
        if kind == b"-":
            return RedisError(rest.decode("utf-8", "replace"), reply=True)
        if kind == b":":
            return int(rest)
        if kind == b"$":
            size = int(rest)
            return None if size < 0 else self._exact(size)
        if kind == b"*":
            count = int(rest)
            return None if count < 0 else [self._reply() for _element in range(count)]
        raise RedisError(f"redis at {self.where} answered something that is not RESP: {line[:80]!r}")

    def pipeline(self, commands):
        """Send every command, then read every reply (error replies are RedisError instances, not raised)."""
        if not commands:
            return []
        try:
            self._sock.sendall(b"".join(_encode(c) for c in commands))
        except OSError as exc:
            raise RedisError(f"redis at {self.where}: {exc.strerror or exc}") from None
        return [self._reply() for _command in commands]

    def command(self, *args):
        reply = self.pipeline([args])[0]
        if isinstance(reply, RedisError):
            raise reply
        return reply

    def info(self, section=None):
        """INFO as a dict of its fields (values as text)."""
        text = self.command(*(["INFO", section] if section else ["INFO"])).decode("utf-8", "replace")
        fields = {}
        for line in text.splitlines():
            if line and not line.startswith("#") and ":" in line:
                key, value = line.split(":", 1)
                fields[key] = value.strip()
        return fields


def keyspace(info):
    """{db index: {keys, expires}} from the fields of INFO keyspace."""
    found = {}
    for key, value in info.items():
        if key.startswith("db") and key[2:].isdigit():
            parts = dict(item.split("=", 1) for item in value.split(",") if "=" in item)
            found[int(key[2:])] = {"keys": int(parts.get("keys", 0)), "expires": int(parts.get("expires", 0))}
    return found
