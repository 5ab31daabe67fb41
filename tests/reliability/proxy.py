"""A loopback TCP proxy that can turn every connection through it half-open (a peer that vanished)."""

from __future__ import annotations

import contextlib
import logging
import socket
import threading
import time


class _Pipe:
    """One client connection and its upstream; `dead` pipes keep both sockets open and drop every byte."""

    def __init__(self, client: socket.socket, upstream: socket.socket | None) -> None:
        self.client = client
        self.upstream = upstream
        self.dead = upstream is None

    def close(self) -> None:
        for sock in (self.client, self.upstream):
            if sock is not None:
                with contextlib.suppress(OSError):
                    sock.shutdown(socket.SHUT_RDWR)
                sock.close()


class BlackholeProxy:
    """Forwards 127.0.0.1:`port` to `target_port`, until `blackhole()`.

    `blackhole()`: every connection open now, and every one accepted until `heal()`, stays open but drops every
    byte in both directions: no RST, no FIN, nothing ever answers (a half-open TCP connection, as after a NAT
    entry expired or the server's host vanished). `heal()`: connections accepted from then on forward again;
    the blackholed ones stay dead until their client gives up on them, as they would in the real case.
    """

    def __init__(self, target_port: int, target_host: str = "127.0.0.1") -> None:
        self.target = (target_host, target_port)
        self._listener = socket.create_server(("127.0.0.1", 0))
        self.port: int = self._listener.getsockname()[1]
        self._lock = threading.Lock()
        self._pipes: list[_Pipe] = []
        self._blackholing = False
        self._closed = False
        #: connections accepted so far (a client that reconnects opens a new one).
        self.accepted = 0
        threading.Thread(target=self._accept_loop, name="blackhole-proxy", daemon=True).start()

    @property
    def url(self) -> str:
        return f"nats://127.0.0.1:{self.port}"

    def blackhole(self) -> None:
        with self._lock:
            self._blackholing = True
            for pipe in self._pipes:
                pipe.dead = True

    def heal(self) -> None:
        with self._lock:
            self._blackholing = False

    def close(self) -> None:
        with self._lock:
            self._closed = True
            pipes, self._pipes = self._pipes, []
        with contextlib.suppress(OSError):
            self._listener.close()
        for pipe in pipes:
            pipe.close()

    def __enter__(self) -> BlackholeProxy:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def _accept_loop(self) -> None:
        while True:
            try:
                client, _ = self._listener.accept()
            except OSError:
                return
            with self._lock:
                blackholing = self._blackholing
            upstream = None
            if not blackholing:
                try:
                    upstream = socket.create_connection(self.target, timeout=5)
                    upstream.settimeout(None)
                except OSError:
                    client.close()  # the server is down: refuse, as a direct connection would be
                    continue
            pipe = _Pipe(client, upstream)
            with self._lock:
                if self._closed:
                    pipe.close()
                    return
                self.accepted += 1
                self._pipes.append(pipe)
            threading.Thread(target=self._pump, args=(pipe, client, upstream), daemon=True).start()
            if upstream is not None:
                threading.Thread(target=self._pump, args=(pipe, upstream, client), daemon=True).start()

    def _pump(self, pipe: _Pipe, source: socket.socket, sink: socket.socket | None) -> None:
        while True:
            try:
                data = source.recv(65536)
            except OSError:
                data = b""
            if not data:  # an end closes the whole pipe, unless the pipe is dead: a vanished peer says nothing
                if not pipe.dead:
                    pipe.close()
                else:
                    with contextlib.suppress(OSError):
                        source.close()
                return
            if pipe.dead or sink is None:
                continue
            try:
                sink.sendall(data)
            except OSError:
                pipe.close()
                return


class LinkEvents(logging.Handler):
    """Times at which bgjob logged losing and regaining its connection (a handler on the `bgjob.client` logger,
    removed by `close()`): how a test sees, through bgjob's public log output, when a client noticed."""

    def __init__(self) -> None:
        super().__init__(logging.DEBUG)
        self.disconnected: list[float] = []
        self.reconnected: list[float] = []
        self._logger = logging.getLogger("bgjob.client")
        self._logger.addHandler(self)

    def emit(self, record: logging.LogRecord) -> None:
        message = record.getMessage()
        if message.startswith("nats: disconnected"):
            self.disconnected.append(time.monotonic())
        elif message.startswith("nats: reconnected"):
            self.reconnected.append(time.monotonic())

    def close(self) -> None:
        self._logger.removeHandler(self)
        super().close()
