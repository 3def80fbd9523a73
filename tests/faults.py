"""Real network faults for tests: a TCP proxy on loopback between a client and a server process.

    with FaultProxy(server.endpoint) as proxy:          # forwards to the server ("pass")
        store = S3Store("s3://bucket", proxy.endpoint, "path")
        proxy.set("reset", after=1_000_000, direction="up", times=1)
        store.put_file("big", path)                      # one connection is reset mid-upload
        proxy.set("stall")                               # bytes stop; connections stay open
        proxy.set("refuse")                              # nothing listens; open ones are closed
        proxy.set("throttle", rate=200_000)              # bytes per second, each direction
        proxy.set("delay", seconds=0.02)                 # latency before each response
        proxy.set("pass")

Modes apply at once to open connections too (`set` returns when the proxy runs in the new
mode):
- `pass`: forward both ways.
- `refuse`: the listening socket is closed, so connecting fails with ECONNREFUSED, and open
  connections are closed (a pooled keep-alive connection would otherwise still get through).
  The port is bound again when the mode changes.
- `reset`: a connection is aborted with a TCP RST (SO_LINGER 0) once `after` bytes have gone
  through it in `direction` ("up": client to server, the upload; "down": the response; "any"),
  both towards the client and the server, as a network failure would. `times` limits how many
  connections are reset (None: all of them).
- `stall`: nothing is forwarded and nothing closed, so the client's read timeout fires.
- `throttle`: each direction of each connection at `rate` bytes per second.
- `delay`: `seconds` of latency before the first bytes of each response (the first chunk from
  the server after the client sent something): a distant server's time to first byte.

Everything runs in threads of this process (an acceptor, two pumps per connection); `close()`
ends them all and `threads()` lists any still alive, for tests that check nothing outlives them.
"""

from __future__ import annotations

import contextlib
import select
import socket
import struct
import sys
import threading
import time
from dataclasses import dataclass
from urllib.parse import urlsplit

MODES = ("pass", "refuse", "reset", "stall", "throttle", "delay")
POLL = 0.02  # seconds between looks at the mode while idle
CHUNK = 64 * 1024


@dataclass(frozen=True)
class Mode:
    name: str = "pass"
    after: int = 0
    direction: str = "any"
    rate: int = 0
    seconds: float = 0.0


class FaultProxy:
    def __init__(self, upstream: str) -> None:
        """`upstream`: the server's endpoint URL (http://127.0.0.1:PORT) or host:port."""
        parts = urlsplit(upstream if "://" in upstream else f"tcp://{upstream}")
        self.upstream = (parts.hostname or "127.0.0.1", parts.port or 80)
        self.mode = Mode()
        self.resets = 0  # connections reset so far
        self.connections = 0  # connections accepted so far
        self.carried = {"up": 0, "down": 0}  # bytes passed on so far, by direction
        self._resets_left: int | None = None
        self._lock = threading.Lock()
        self._applied = threading.Condition(self._lock)
        self._generation = self._seen = 0
        self._closed = False
        self._listener: socket.socket | None = self._bind(0)
        self.port = self._listener.getsockname()[1]
        self.endpoint = f"http://127.0.0.1:{self.port}"
        self._open: set[_Connection] = set()
        self._threads: list[threading.Thread] = []
        self._spawn(self._accept, "fault-proxy-accept")

    def __enter__(self) -> FaultProxy:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def set(self, mode: str, *, after: int = 0, direction: str = "any",
            times: int | None = None, rate: int = 0, seconds: float = 0.0) -> None:
        """Switch mode; returns once the acceptor thread has applied it."""
        if mode not in MODES or direction not in ("up", "down", "any"):
            raise ValueError(f"mode {mode!r} direction {direction!r}")
        if mode == "throttle" and rate <= 0:
            raise ValueError("throttle needs rate > 0 (bytes per second)")
        with self._lock:
            self.mode = Mode(mode, after, direction, rate, seconds)
            self._resets_left = times
            self._generation += 1
            target = self._generation
            if not self._applied.wait_for(lambda: self._seen >= target or self._closed, 10):
                raise RuntimeError("the proxy's acceptor did not apply the mode")
        # Every pump looks at the mode at least once a POLL: after two, none still works in the
        # old one (a stall must stall the very next request).
        time.sleep(2 * POLL)

    def close(self) -> None:
        with self._lock:
            self._closed = True
            connections = list(self._open)
        for connection in connections:
            connection.close()
        for thread in self._threads:
            thread.join(timeout=10)
        if self._listener is not None:
            self._listener.close()
            self._listener = None

    def threads(self) -> list[threading.Thread]:
        """This proxy's threads still alive (none after close())."""
        return [t for t in self._threads if t.is_alive()]

    # -- inside the proxy's threads --

    def _bind(self, port: int) -> socket.socket:
        listener = socket.socket()
        listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        listener.bind(("127.0.0.1", port))
        listener.listen(64)
        return listener

    def _spawn(self, target: object, name: str, *args: object) -> None:
        thread = threading.Thread(target=target, args=args, name=name, daemon=True)
        with self._lock:
            self._threads = [t for t in self._threads if t.is_alive()] + [thread]
        thread.start()

    def _accept(self) -> None:
        while True:
            with self._lock:
                if self._closed:
                    return
                mode, generation = self.mode, self._generation
            self._apply(mode)
            with self._lock:
                self._seen = max(self._seen, generation)
                self._applied.notify_all()
            if self._listener is None:
                time.sleep(POLL)
                continue
            if not select.select([self._listener], [], [], POLL)[0]:
                continue
            client, _ = self._listener.accept()
            try:
                server = socket.create_connection(self.upstream, timeout=5)
            except OSError:  # the server is down: the client sees its connection dropped
                client.close()
                continue
            connection = _Connection(self, client, server)
            with self._lock:
                self.connections += 1
                self._open.add(connection)
            self._spawn(connection.pump, "fault-proxy-up", "up")
            self._spawn(connection.pump, "fault-proxy-down", "down")

    def _apply(self, mode: Mode) -> None:
        if mode.name == "refuse" and self._listener is not None:
            self._listener.close()
            self._listener = None
            with self._lock:
                connections = list(self._open)
            for connection in connections:
                connection.close()
        elif mode.name != "refuse" and self._listener is None:
            self._listener = self._bind(self.port)

    def _take_reset(self) -> bool:
        with self._lock:
            if self._resets_left is not None:
                if self._resets_left <= 0:
                    return False
                self._resets_left -= 1
            self.resets += 1
            return True

    def _forget(self, connection: _Connection) -> None:
        with self._lock:
            self._open.discard(connection)


class _Connection:
    def __init__(self, proxy: FaultProxy, client: socket.socket, server: socket.socket) -> None:
        self.proxy, self.client, self.server = proxy, client, server
        for s in (client, server):
            s.settimeout(30)
            # Chunks are passed on as they come: Nagle's algorithm would hold small ones back.
            s.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        self.carried = {"up": 0, "down": 0}
        self.turn = "down"  # which way bytes went last: a response starts when it turns
        self.ended = 0
        self.closed = False
        self.lock = threading.Lock()

    def pump(self, direction: str) -> None:
        source, target = ((self.client, self.server) if direction == "up"
                          else (self.server, self.client))
        with contextlib.suppress(OSError, ValueError):  # closed under us: reset, refuse, close
            self._pump(direction, source, target)
        with self.lock:
            self.ended += 1
            last = self.ended == 2
        if last:
            self.close()

    def _pump(self, direction: str, source: socket.socket, target: socket.socket) -> None:
        while not self.closed:
            mode = self.proxy.mode
            if mode.name == "stall":
                time.sleep(POLL)
                continue
            if not select.select([source], [], [], POLL)[0]:
                continue
            mode = self.proxy.mode  # it may have changed while this thread waited
            if mode.name == "stall":
                continue
            size = max(1, min(CHUNK, mode.rate // 20)) if mode.name == "throttle" else CHUNK
            data = source.recv(size)
            if not data:
                target.shutdown(socket.SHUT_WR)  # pass the half-close on
                return
            if mode.name == "reset" and mode.direction in (direction, "any") and (
                    self.carried[direction] + len(data) > mode.after) and self.proxy._take_reset():
                target.sendall(data[:max(0, mode.after - self.carried[direction])])
                self.reset()
                return
            self.carried[direction] += len(data)
            with self.proxy._lock:
                self.proxy.carried[direction] += len(data)
            if mode.name == "delay" and direction == "down" and self.turn == "up":
                time.sleep(mode.seconds)
            self.turn = direction
            target.sendall(data)
            if mode.name == "throttle":
                time.sleep(len(data) / mode.rate)

    def reset(self) -> None:
        """Abort both sides with an RST rather than a FIN: SO_LINGER on, timeout 0, and a close
        without shutdown (a shutdown would send a FIN first)."""
        self.close(abort=True)

    def close(self, abort: bool = False) -> None:
        with self.lock:
            if self.closed:
                return
            self.closed = True
        for s in (self.client, self.server):
            with contextlib.suppress(OSError):
                if abort:
                    s.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
                else:  # wakes the other pump if it is blocked sending
                    s.shutdown(socket.SHUT_RDWR)
            s.close()
        self.proxy._forget(self)


def main() -> None:
    """`python tests/faults.py UPSTREAM MODE [key=value...]`: a proxy in a process of its own
    (so its threads do not compete with the measured client for the GIL); prints its endpoint,
    runs until stdin closes."""
    upstream, mode, *options = sys.argv[1:]
    settings = dict(option.split("=", 1) for option in options)
    with FaultProxy(upstream) as proxy:
        proxy.set(mode, **{k: (float(v) if k == "seconds" else int(v) if k != "direction" else v)
                           for k, v in settings.items()})
        print(proxy.endpoint, flush=True)
        sys.stdin.read()


if __name__ == "__main__":
    main()
