"""Prometheus metrics of a service (`--metrics-port`), all gathered here.

- Sessions: read at scrape time from what the service's ListSessions reports (the same counters a person sees
  with grpcurl), so whatever counters a session keeps are exported without code here knowing them:
  `rdv_sessions{service}`, `rdv_session_age_seconds{service,session,vm}` and
  `rdv_session_counter{service,session,vm,counter}` (underruns, bytes_played, pcm_bytes, frames, ...).
- Every RPC, measured by an interceptor: bytes in and out (`rdv_rpc_bytes_total{service,method,direction}`),
  the time a unary call took (`rdv_rpc_duration_seconds{service,method}`, a histogram).
- Latencies a session measures itself, as histograms (`rdv_latency_seconds{service,path}`): code calls
  `observe(path, seconds)`, which does nothing while metrics are off.

prometheus_client (rdv[node]) is imported only when metrics are turned on.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable, Iterator
from typing import Any

import grpc

from rdv.common.v1 import common_pb2

ListSessions = Callable[[], Awaitable[common_pb2.ListSessionsResponse]]
SCRAPE_TIMEOUT = 5.0
LATENCY_BUCKETS = (0.0005, 0.001, 0.002, 0.005, 0.01, 0.02, 0.05, 0.1, 0.2, 0.5, 1.0, 2.0)

_latency: Any = None  # the histogram once metrics are on
_service = ""


def observe(path: str, seconds: float) -> None:
    """One latency measurement of `path` (e.g. "audio_chunk"); free when metrics are off."""
    if _latency is not None:
        _latency.labels(_service, path).observe(seconds)


class Metrics:
    """The metrics of one service: start() serves them over HTTP; interceptor() measures the RPCs."""

    def __init__(self, service: str) -> None:
        global _latency, _service
        import prometheus_client as prom

        prom.disable_created_metrics()  # no *_created series: nothing here needs them
        self.service = service
        self.registry = prom.CollectorRegistry()
        prom.ProcessCollector(registry=self.registry)
        self.rpc_bytes = prom.Counter(
            "rdv_rpc_bytes", "gRPC message bytes", ["service", "method", "direction"], registry=self.registry
        )
        self.rpc_seconds = prom.Histogram(
            "rdv_rpc_duration_seconds", "time a unary RPC took", ["service", "method"], registry=self.registry,
            buckets=LATENCY_BUCKETS,
        )  # fmt: skip
        _latency = prom.Histogram(
            "rdv_latency_seconds", "latencies measured by the sessions", ["service", "path"], registry=self.registry,
            buckets=LATENCY_BUCKETS,
        )  # fmt: skip
        _service = service
        self._server: Any = None

    def serve(self, servicer: object, host: str, port: int) -> int:
        """Serve /metrics (from the running event loop); returns the bound port (port 0 picks one).
        The sessions are what `servicer.ListSessions` reports."""
        import prometheus_client as prom

        list_sessions = getattr(servicer, "ListSessions", None)
        if list_sessions is not None:
            ask: ListSessions = lambda: list_sessions(common_pb2.ListSessionsRequest(), None)  # noqa: E731
            self.registry.register(_SessionCollector(self.service, ask, asyncio.get_running_loop()))

        self._server, _thread = prom.start_http_server(port, addr=host, registry=self.registry)
        return self._server.server_address[1]

    def stop(self) -> None:
        global _latency
        if self._server is not None:
            self._server.shutdown()
            self._server.server_close()
        _latency = None

    def interceptor(self) -> grpc.aio.ServerInterceptor:
        return _Measure(self)


class _SessionCollector:
    """Reads ListSessions on the service's event loop at each scrape."""

    def __init__(self, service: str, list_sessions: ListSessions, loop: asyncio.AbstractEventLoop) -> None:
        self.service, self.list_sessions, self.loop = service, list_sessions, loop

    def collect(self) -> Iterator[Any]:
        from prometheus_client.core import GaugeMetricFamily

        reply = asyncio.run_coroutine_threadsafe(self.list_sessions(), self.loop).result(SCRAPE_TIMEOUT)
        open_ = GaugeMetricFamily("rdv_sessions", "open sessions (streams)", labels=["service"])
        open_.add_metric([self.service], len(reply.sessions))
        age = GaugeMetricFamily(
            "rdv_session_age_seconds", "how long the session is open", labels=["service", "session", "vm"]
        )
        counter = GaugeMetricFamily(
            "rdv_session_counter",
            "a session's counters as ListSessions reports them (totals since the session opened, or levels)",
            labels=["service", "session", "vm", "counter"],
        )
        for s in reply.sessions:
            age.add_metric([self.service, s.session_id, s.vm], s.age_seconds)
            for name, value in sorted(s.counters.items()):
                counter.add_metric([self.service, s.session_id, s.vm, name], value)
        yield from (open_, age, counter)


class _Measure(grpc.aio.ServerInterceptor):
    def __init__(self, metrics: Metrics) -> None:
        self.metrics = metrics

    async def intercept_service(
        self, continuation: Callable, handler_call_details: grpc.HandlerCallDetails
    ) -> grpc.RpcMethodHandler | None:
        handler = await continuation(handler_call_details)
        if handler is None:
            return None
        method = handler_call_details.method.rsplit("/", 1)[-1]
        return _measured(handler, self.metrics, method)


def _measured(handler: Any, metrics: Metrics, method: str) -> Any:
    """The same handler, counting message bytes and timing unary calls."""
    received = metrics.rpc_bytes.labels(metrics.service, method, "received")
    sent = metrics.rpc_bytes.labels(metrics.service, method, "sent")
    parse, serialize = handler.request_deserializer, handler.response_serializer

    def read(raw: bytes) -> object:
        received.inc(len(raw))
        return parse(raw) if parse else raw

    def write(message: Any) -> bytes:
        raw = serialize(message) if serialize else message
        sent.inc(len(raw))
        return raw

    handler = handler._replace(request_deserializer=read, response_serializer=write)
    if handler.unary_unary is not None:
        inner, seconds = handler.unary_unary, metrics.rpc_seconds.labels(metrics.service, method)

        async def timed(request: object, context: grpc.aio.ServicerContext) -> object:
            start = time.perf_counter()
            try:
                result = inner(request, context)
                return await result if asyncio.iscoroutine(result) else result
            finally:
                seconds.observe(time.perf_counter() - start)

        handler = handler._replace(unary_unary=timed)
    return handler
