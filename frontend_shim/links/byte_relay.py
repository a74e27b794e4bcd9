"""A loopback TCP relay that counts the bytes each way: what a connection really costs on the wire.

gRPC does not tell how many bytes a stream put on the socket (HTTP/2 frame headers, flow-control and ping
frames, TLS records). A client that connects to `ByteRelay.address` instead of the service gets the same
connection, and `to_service` / `from_service` count every byte the relay moved. Used by `replay-frames`.
"""

from __future__ import annotations

import selectors
import socket
import threading


class ByteRelay:
    """Listens on 127.0.0.1:0 and forwards each accepted connection to `target` (HOST:PORT)."""

    _CHUNK = 256 * 1024

    def __init__(self, target: str) -> None:
        host, _, port = target.rpartition(":")
        if not host or not port.isdigit():
            raise ValueError(f"{target!r} is not HOST:PORT")
        self.target = (host.strip("[]"), int(port))
        self.to_service = 0
        self.from_service = 0
        self._lock = threading.Lock()
        self._listener = socket.create_server(("127.0.0.1", 0))
        self.address = f"127.0.0.1:{self._listener.getsockname()[1]}"
        self._sel = selectors.DefaultSelector()
        self._sel.register(self._listener, selectors.EVENT_READ, None)
        self._stop = False
        self._socks: list[socket.socket] = []
        self._thread = threading.Thread(target=self._run, name="byte-relay", daemon=True)
        self._thread.start()

    def counts(self) -> tuple[int, int]:
        with self._lock:
            return self.to_service, self.from_service

    def close(self) -> None:
        self._stop = True
        self._thread.join(5)
        for s in (*self._socks, self._listener):
            s.close()
        self._sel.close()

    def _run(self) -> None:
        while not self._stop:
            for key, _ in self._sel.select(0.05):
                if key.data is None:
                    self._accept()
                else:
                    self._pump(key.fileobj, *key.data)  # type: ignore[arg-type]

    def _accept(self) -> None:
        client, _ = self._listener.accept()
        try:
            upstream = socket.create_connection(self.target, timeout=5)
        except OSError:
            client.close()  # the client sees the connection fail, as it would without the relay
            return
        for s in (client, upstream):
            s.setblocking(True)
            s.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            self._socks.append(s)
        self._sel.register(client, selectors.EVENT_READ, (upstream, True))
        self._sel.register(upstream, selectors.EVENT_READ, (client, False))

    def _pump(self, src: socket.socket, dst: socket.socket, upward: bool) -> None:
        try:
            data = src.recv(self._CHUNK)
        except OSError:
            data = b""
        if not data:
            for s in (src, dst):
                if s in self._socks:
                    self._sel.unregister(s)
                    self._socks.remove(s)
                    s.close()
            return
        with self._lock:
            if upward:
                self.to_service += len(data)
            else:
                self.from_service += len(data)
        try:
            dst.sendall(data)
        except OSError:
            pass
