"""Framing of the messages between the driver and its workers, over one Unix socket pair per worker.

A frame is an 8-byte little-endian length and a pickle (protocol 5) of a message encoded as a
plain tuple whose first item is the message kind (`messages.encode`); a reader hands out the
messages decoded (`messages.decode`), so receivers read them by name. Messages on one socket
arrive in the order they were sent; the reference counting protocol relies on that (a worker's
borrow report always precedes its "done").

The driver never blocks on a send: `Channel.send` writes what the socket takes at once and keeps
the rest for the io thread, which flushes it when the socket is writable. A worker uses plain
blocking sends (`send_frame`), which cannot deadlock because the driver's io thread always reads.
"""

from __future__ import annotations

import pickle
import socket
import struct
import threading
from collections import deque

from core._private.local.messages import Message, decode, encode

_LEN = struct.Struct("<Q")


def dumps(msg: Message) -> bytes:
    body = pickle.dumps(encode(msg), protocol=5)
    return _LEN.pack(len(body)) + body


def send_frame(sock: socket.socket, msg: Message) -> int:
    """Blocking send of one message (worker side). Returns bytes sent."""
    data = dumps(msg)
    sock.sendall(data)
    return len(data)


class FrameReader:
    """Accumulates bytes from a socket and yields whole messages, decoded."""

    __slots__ = ("_buf", "bytes_received")

    def __init__(self) -> None:
        self._buf = bytearray()
        self.bytes_received = 0

    def feed(self, data: bytes) -> list[Message]:
        self._buf += data
        self.bytes_received += len(data)
        out = []
        buf = self._buf
        pos = 0
        while len(buf) - pos >= 8:
            (n,) = _LEN.unpack_from(buf, pos)
            if len(buf) - pos - 8 < n:
                break
            out.append(decode(pickle.loads(memoryview(buf)[pos + 8: pos + 8 + n])))
            pos += 8 + n
        if pos:
            del buf[:pos]
        return out


def recv_blocking(sock: socket.socket, reader: FrameReader) -> list[Message]:
    """Block until at least one whole message is in; return all that are (worker side)."""
    while True:
        data = sock.recv(1 << 20)
        if not data:
            raise EOFError("the driver closed the connection")
        msgs = reader.feed(data)
        if msgs:
            return msgs


class Channel:
    """Driver end of a worker socket: non-blocking sends with a backlog the io thread flushes."""

    def __init__(self, sock: socket.socket, on_backlog) -> None:
        sock.setblocking(False)
        self.sock = sock
        self.reader = FrameReader()
        self._backlog: deque[memoryview] = deque()
        self._lock = threading.Lock()
        self._on_backlog = on_backlog  # called (outside the lock) when the io thread must flush
        self.closed = False

    def send(self, msg: Message) -> None:
        data = dumps(msg)
        with self._lock:
            if self.closed:
                return
            if self._backlog:
                self._backlog.append(memoryview(data))
                return
            try:
                n = self.sock.send(data)
            except (BlockingIOError, InterruptedError):
                n = 0
            except OSError:
                return  # the worker is gone; its death is handled by the reader side
            if n == len(data):
                return
            self._backlog.append(memoryview(data)[n:])
        self._on_backlog(self)

    def has_backlog(self) -> bool:
        return bool(self._backlog)

    def flush(self) -> bool:
        """Write what the socket takes; True once the backlog is empty."""
        with self._lock:
            while self._backlog:
                chunk = self._backlog[0]
                try:
                    n = self.sock.send(chunk)
                except (BlockingIOError, InterruptedError):
                    return False
                except OSError:
                    self._backlog.clear()
                    return True
                if n == len(chunk):
                    self._backlog.popleft()
                else:
                    self._backlog[0] = chunk[n:]
                    return False
            return True

    def close(self) -> None:
        with self._lock:
            self.closed = True
            self._backlog.clear()
        try:
            self.sock.close()
        except OSError:
            pass
