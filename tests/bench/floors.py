"""The floors rdv's hot paths are built on, measured in the same `make bench` run as the paths themselves.

On a shared 2-core machine an absolute figure says little (the backend read measured 403 µs p50 in one quick run
and 215 µs in another); its ratio to the floor under it, measured minutes apart, says what rdv itself costs.
Each echo server is a Python process of its own, as rdv's servers are, on loopback:

- floor_socket_echo: a bare UNIX-socket echo of a 32-byte message (blocking recv_into/sendall on both ends);
- floor_vfio_user_echo: a vfio-user REGION_READ round trip against a do-nothing server (reads the header and
  payload into preallocated buffers, answers zeros with one sendmsg), from the benchmarks' synchronous client;
- floor_grpc_echo: a bare gRPC bidi-stream echo of a 20-byte message: a grpc.aio server with the services'
  options (services.common.server.server_options), a sync client with the links' channel options
  (frontend_shim.session_stream.channel_options), requests from a queue, replies read in the caller's thread.

`grpc_echo_pattern` records compare the client patterns grpcio offers for a session stream (why rdv's links drive
the sync stream directly: see README, "Benchmarks"). `grpc_core` records time the same echo with
gRPC's default core (EventEngine) and with rdv's choice (services/common/grpc_runtime.py), both ends started
with that GRPC_EXPERIMENTS, alternated round by round; `ratio` is the median over the rounds of default / rdv.

    .venv/bin/python -m tests.bench.floors [--n 3000]        # prints the records
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import queue
import socket
import subprocess
import sys
import threading
import time
from collections import deque
from collections.abc import Callable, Iterator
from contextlib import ExitStack, contextmanager
from dataclasses import dataclass
from pathlib import Path

import grpc

from frontend_shim.commands.processes import ROOT
from frontend_shim.links import grpc_direct
from frontend_shim.links.session_stream import Waiter, channel_options
from services.common import grpc_runtime
from services.common.server import DEFAULT_KEEPALIVE, DEFAULT_MAX_MESSAGE_BYTES, server_options
from tests.bench.stats import percentile, record, time_calls
from tests.bench.vfio_client import HDR, REPLY, RW, SyncVfioUserClient

ECHO_METHOD = "/rdv.bench.Echo/Echo"
SOCKET_MSG = bytes(range(32))
GRPC_MSG = bytes(range(20))  # about a RegisterAccess request on the session stream


# ---------------------------------------------------------------------------------------------- servers
def _accept_one(path: str) -> socket.socket:
    listener = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    listener.bind(path)
    listener.listen(1)
    print(f"listening on {path}", flush=True)
    return listener.accept()[0]


def _serve_socket_echo(path: str) -> None:
    conn = _accept_one(path)
    buf = bytearray(len(SOCKET_MSG))
    view = memoryview(buf)
    while True:
        got = 0
        while got < len(buf):
            k = conn.recv_into(view[got:])
            if not k:
                return
            got += k
        conn.sendall(buf)


def _serve_vfio_user_echo(path: str) -> None:
    """A vfio-user server that does nothing: every request is answered at once, reads with zeros. Like rdv's
    server it takes a message with as few reads as the kernel allows (one: the client sends it with one send)."""
    conn = _accept_one(path)
    buf = bytearray(1 << 16)
    view = memoryview(buf)
    out = bytearray(HDR.size + RW.size + 8)
    while True:
        got, size = 0, HDR.size
        while got < size:
            k = conn.recv_into(view[got:])
            if not k:
                return
            got += k
            if got >= HDR.size:
                size = HDR.unpack_from(buf)[2]
        mid, cmd, size, _, _ = HDR.unpack_from(buf)
        if cmd == 9:  # REGION_READ: echo offset, region, count; the data are zeros
            count = min(8, RW.unpack_from(buf, HDR.size)[2])
            n = HDR.size + RW.size + count
            out[HDR.size : n] = bytes(buf[HDR.size : HDR.size + RW.size]) + bytes(count)
        else:
            n = HDR.size
        HDR.pack_into(out, 0, mid, cmd, n, REPLY, 0)
        conn.sendall(memoryview(out)[:n])


async def _serve_grpc_echo() -> None:
    async def echo(requests, context):  # noqa: ANN001, ANN202
        async for msg in requests:
            yield msg

    keepalive_ms = int(DEFAULT_KEEPALIVE * 1000)
    server = grpc.aio.server(options=server_options(DEFAULT_MAX_MESSAGE_BYTES, keepalive_ms))
    handler = grpc.stream_stream_rpc_method_handler(echo)  # bytes in, bytes out: no protobuf
    server.add_generic_rpc_handlers((grpc.method_handlers_generic_handler("rdv.bench.Echo", {"Echo": handler}),))
    port = server.add_insecure_port("127.0.0.1:0")
    await server.start()
    print(f"listening on 127.0.0.1:{port}", flush=True)
    await server.wait_for_termination()


@dataclass(frozen=True)
class EchoServer:
    address: str  # a socket path, or HOST:PORT for grpc
    pid: int


@contextmanager
def echo_server(kind: str, workdir: Path, env: dict[str, str] | None = None) -> Iterator[EchoServer]:
    """Start one echo server process (`env`: added to ours)."""
    path = str(workdir / f"floor-{kind}-{os.getpid()}-{time.monotonic_ns()}.sock")
    proc = subprocess.Popen(
        [sys.executable, "-m", "tests.bench.floors", "serve", kind, path],
        cwd=ROOT,
        stdout=subprocess.PIPE,
        text=True,
        env={**os.environ, **(env or {})},
    )
    try:
        line = proc.stdout.readline() if proc.stdout else ""
        if not line.startswith("listening on "):
            raise RuntimeError(f"echo server {kind} did not start: {line!r}")
        yield EchoServer(line.split(" ", 2)[2].strip(), proc.pid)
    finally:
        proc.kill()
        proc.wait(10)
        if os.path.exists(path):
            os.unlink(path)


# ---------------------------------------------------------------------------------------------- clients
def open_socket_echo(path: str) -> tuple[Callable[[], None], Callable[[], None]]:
    """A connected client of the socket echo: (one round trip, close)."""
    s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    s.connect(path)
    buf = bytearray(len(SOCKET_MSG))
    view = memoryview(buf)

    def once() -> None:
        s.sendall(SOCKET_MSG)
        got = 0
        while got < len(buf):
            got += s.recv_into(view[got:])

    return once, s.close


def open_vfio_user_echo(path: str) -> tuple[Callable[[], None], Callable[[], None]]:
    client = SyncVfioUserClient(path)
    client.version()
    return lambda: client.read32(0, 0), client.close


def open_grpc_echo(address: str, pattern: str = "sync") -> tuple[Callable[[], None], Callable[[], None]]:
    """Round trips of one message on a bidi stream, with one of grpcio's client patterns:
    sync: requests from a queue, the reply read with next() in the caller's thread (the floor);
    sync+reader: as rdv's links did it until 2026-12-06 (and do with --no-grpc-direct): requests from a queue that
    grpcio's request thread consumes, a reader thread hands each reply to the waiting caller;
    direct: as rdv's links do it (frontend_shim/links/grpc_direct.py): the caller sends, gRPC's channel thread
    hands the reply to the waiting caller."""
    channel = grpc.insecure_channel(address, channel_options())
    if pattern == "direct":
        return _open_grpc_echo_direct(channel)
    requests: queue.SimpleQueue[bytes | None] = queue.SimpleQueue()
    call = channel.stream_stream(ECHO_METHOD)(iter(requests.get, None))

    def close() -> None:
        requests.put(None)
        call.cancel()
        channel.close()

    if pattern == "sync":

        def once() -> None:
            requests.put(GRPC_MSG)
            next(call)

        return once, close
    waiting: list[Waiter] = []

    def read() -> None:
        try:
            for _ in call:
                waiting.pop().set()
        except grpc.RpcError:
            pass  # cancelled at the end

    threading.Thread(target=read, daemon=True).start()

    def once_with_reader() -> None:
        waiter = Waiter()
        waiting.append(waiter)
        requests.put(GRPC_MSG)
        waiter.wait(5.0)

    return once_with_reader, close


def _open_grpc_echo_direct(channel: grpc.Channel) -> tuple[Callable[[], None], Callable[[], None]]:
    pending: deque[bytes] = deque()
    waiting: list[Waiter] = []
    direct = grpc_direct.DirectCall(
        lambda: pending.popleft() if pending else None, bytes, lambda _reply: waiting.pop().set(), lambda _c, _d: None
    )
    direct.start(channel.stream_stream(ECHO_METHOD)(direct.requests()))

    def once() -> None:
        waiter = Waiter()
        waiting.append(waiter)
        pending.append(GRPC_MSG)
        direct.kick()
        waiter.wait(5.0)

    def close() -> None:
        direct.cancel()
        channel.close()

    return once, close


def _timed(opened: tuple[Callable[[], None], Callable[[], None]], n: int) -> list[int]:
    once, close = opened
    try:
        return time_calls(once, n)
    finally:
        close()


def socket_echo(path: str, n: int) -> list[int]:
    return _timed(open_socket_echo(path), n)


def vfio_user_echo(path: str, n: int) -> list[int]:
    return _timed(open_vfio_user_echo(path), n)


def grpc_echo(address: str, n: int, pattern: str = "sync") -> list[int]:
    """`open_grpc_echo`'s patterns, and aio: grpc.aio on an event-loop thread, the caller waiting on a future."""
    if pattern == "aio":
        return _grpc_echo_aio(address, n)
    return _timed(open_grpc_echo(address, pattern), n)


def _grpc_echo_aio(address: str, n: int) -> list[int]:
    loop = asyncio.new_event_loop()
    thread = threading.Thread(target=loop.run_forever, daemon=True)
    thread.start()

    async def open_call():  # noqa: ANN202
        channel = grpc.aio.insecure_channel(address, channel_options())
        return channel, channel.stream_stream(ECHO_METHOD)()

    channel, call = asyncio.run_coroutine_threadsafe(open_call(), loop).result(10)

    async def once_async() -> None:
        await call.write(GRPC_MSG)
        await call.read()

    try:
        return time_calls(lambda: asyncio.run_coroutine_threadsafe(once_async(), loop).result(5), n)
    finally:
        asyncio.run_coroutine_threadsafe(channel.close(), loop).result(10)
        loop.call_soon_threadsafe(loop.stop)
        thread.join(5)


class Floors(dict[str, Callable[[], None]]):
    """{floor name: one round trip}; `pids`: {floor name: its echo server's process}."""

    def __init__(self) -> None:
        super().__init__()
        self.pids: dict[str, int] = {}


@contextmanager
def floor_clients(workdir: Path) -> Iterator[Floors]:
    """The three echo servers up and a client of each connected, for floor rounds interleaved with the rounds of
    the paths built on them (tests/bench/vfio.py)."""
    with ExitStack() as stack:
        calls = Floors()
        for name, kind, opener in (
            ("floor_socket_echo", "socket", open_socket_echo),
            ("floor_vfio_user_echo", "vfio-user", open_vfio_user_echo),
            ("floor_grpc_echo", "grpc", open_grpc_echo),
        ):
            server = stack.enter_context(echo_server(kind, workdir))
            once, close = opener(server.address)
            stack.callback(close)
            calls[name], calls.pids[name] = once, server.pid
        yield calls


GRPC_CORES = {"rdv": grpc_runtime.EXPERIMENTS, "grpc default": ""}  # GRPC_EXPERIMENTS of both ends


def grpc_core_comparison(workdir: Path, n: int, rounds: int = 4) -> list[dict]:
    """The bare gRPC echo under each of GRPC_CORES; the client runs in a process of its own too (this one's core
    is rdv's), `n` round trips each in `rounds` alternated rounds."""
    samples: dict[str, list[int]] = {name: [] for name in GRPC_CORES}
    ratios = []
    with ExitStack() as stack:
        servers = {
            name: stack.enter_context(echo_server("grpc", workdir, {"GRPC_EXPERIMENTS": experiments})).address
            for name, experiments in GRPC_CORES.items()
        }
        for k in range(rounds):
            p50 = {}
            for name in list(GRPC_CORES)[k % 2 :] + list(GRPC_CORES)[: k % 2]:
                out = subprocess.run(
                    [sys.executable, "-m", "tests.bench.floors", "time-grpc", servers[name], str(max(1, n // rounds))],
                    cwd=ROOT,
                    capture_output=True,
                    text=True,
                    timeout=300,
                    env={**os.environ, "GRPC_EXPERIMENTS": GRPC_CORES[name]},
                    check=True,
                )
                got = json.loads(out.stdout)
                samples[name] += got
                p50[name] = percentile(got, 0.5)
            ratios.append(round(p50["grpc default"] / p50["rdv"], 2))
    ratio = sorted(ratios)[len(ratios) // 2]
    return [
        record("grpc_core", name, got, None, message_bytes=20, grpc_experiments=GRPC_CORES[name],
               **({"ratio": ratio, "ratio_rounds": ratios} if name == "grpc default" else {}))  # fmt: skip
        for name, got in samples.items()
    ]


# ---------------------------------------------------------------------------------------------- records
FLOORS = ("floor_socket_echo", "floor_vfio_user_echo", "floor_grpc_echo")


def measure(workdir: Path, n: int, patterns: bool = True) -> list[dict]:
    records = []
    with echo_server("socket", workdir) as server:
        records.append(record("floor_socket_echo", "floor", socket_echo(server.address, n), None, message_bytes=32))
    with echo_server("vfio-user", workdir) as server:
        records.append(
            record("floor_vfio_user_echo", "floor", vfio_user_echo(server.address, n), None, message_bytes=32)
        )
    with echo_server("grpc", workdir) as server:
        address = server.address
        records.append(record("floor_grpc_echo", "floor", grpc_echo(address, n), None, message_bytes=20))
        if patterns:
            for pattern in ("direct", "sync+reader", "aio"):
                records.append(
                    record("grpc_echo_pattern", pattern, grpc_echo(address, n, pattern), None, message_bytes=20)
                )
            records += grpc_core_comparison(workdir, n)
    return records


def run(quick: bool, workdir: Path) -> list[dict]:
    return measure(workdir, 1000 if quick else 5000)


def main() -> None:
    if len(sys.argv) > 1 and sys.argv[1] == "serve":
        kind, path = sys.argv[2], sys.argv[3]
        if kind == "socket":
            _serve_socket_echo(path)
        elif kind == "vfio-user":
            _serve_vfio_user_echo(path)
        else:
            asyncio.run(_serve_grpc_echo())
        return
    if len(sys.argv) > 1 and sys.argv[1] == "time-grpc":  # grpc_core_comparison's client: the samples as JSON
        print(json.dumps(grpc_echo(sys.argv[2], int(sys.argv[3]))))
        return
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--n", type=int, default=3000)
    args = p.parse_args()
    out = ROOT / "build" / "bench"
    out.mkdir(parents=True, exist_ok=True)
    for r in measure(out, args.n):
        shown = ("metric", "mode", "p50", "p99", "unit", "ratio", "ratio_rounds")
        print(json.dumps({k: r[k] for k in shown if k in r}))


if __name__ == "__main__":
    main()
