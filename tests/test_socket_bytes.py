"""`SocketBytes`: the kernel's byte counts of this process's TCP connections to one address."""

from __future__ import annotations

import socket
import threading

import pytest

from frontend_shim.links.socket_bytes import SocketBytes


class Echo:
    """A loopback TCP server that sends back what it gets, doubled (so the two directions differ)."""

    def __init__(self) -> None:
        self.listener = socket.create_server(("127.0.0.1", 0))
        self.address = f"127.0.0.1:{self.listener.getsockname()[1]}"
        threading.Thread(target=self._serve, daemon=True).start()

    def _serve(self) -> None:
        while True:
            try:
                conn, _ = self.listener.accept()
            except OSError:
                return
            threading.Thread(target=self._echo, args=(conn,), daemon=True).start()

    @staticmethod
    def _echo(conn: socket.socket) -> None:
        with conn:
            while data := conn.recv(65536):
                conn.sendall(data * 2)


def exchange(sock: socket.socket, n: int) -> None:
    sock.sendall(b"x" * n)
    got = 0
    while got < 2 * n:
        got += len(sock.recv(65536))


def test_counts_what_connections_to_the_target_moved_and_nothing_else() -> None:
    echo, other = Echo(), Echo()
    before = socket.create_connection(("127.0.0.1", int(echo.address.rsplit(":", 1)[1])))
    exchange(before, 100)  # moved before counting began: not counted
    wire = SocketBytes(echo.address)
    assert wire.counts() == (0, 0)
    exchange(before, 1000)
    assert wire.counts() == (1000, 2000)
    with socket.create_connection(("127.0.0.1", int(other.address.rsplit(":", 1)[1]))) as unrelated:
        exchange(unrelated, 5000)
    with socket.create_connection(("127.0.0.1", int(echo.address.rsplit(":", 1)[1]))) as second:
        exchange(second, 300)
        assert wire.counts() == (1300, 2600)
    assert wire.counts() == (1300, 2600)  # a closed connection keeps its counts
    with socket.socket(socket.AF_INET6, socket.SOCK_STREAM) as dual:  # as gRPC connects: IPv4 mapped into IPv6
        dual.connect(("::ffff:127.0.0.1", int(echo.address.rsplit(":", 1)[1])))
        exchange(dual, 10)
        assert wire.counts() == (1310, 2620)
    exchange(before, 1)
    assert wire.counts() == (1311, 2622)
    before.close()


@pytest.mark.parametrize("target", ["localhost", "nohost:http", ":50052"])
def test_a_target_that_is_not_host_port_is_refused(target: str) -> None:
    with pytest.raises(ValueError, match="HOST:PORT"):
        SocketBytes(target)
