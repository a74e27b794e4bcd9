"""--metrics-port: a real service serves Prometheus metrics that follow what happens to it (sessions from
ListSessions, bytes and times of its RPCs, the audio path's latencies)."""

from __future__ import annotations

import json
import time
import urllib.request

import grpc
from prometheus_client.parser import text_string_to_metric_families

from frontend_shim.guests.pcm import PcmFormat, melody, write_wav
from rdv.common.v1 import common_pb2
from rdv.input.v1 import input_pb2, input_pb2_grpc
from tests.helpers import run_shim


def scrape(url: str) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    with urllib.request.urlopen(url, timeout=10) as reply:
        text = reply.read().decode()
    return {(s.name, tuple(sorted(s.labels.items()))): s.value
            for family in text_string_to_metric_families(text) for s in family.samples}  # fmt: skip


def metrics_url(svc) -> str:
    line = svc.proc.stdout.readline()
    assert " metrics on http://" in line, line
    return line.rsplit(" ", 1)[-1].strip()


def value(samples: dict, name: str, **labels: str) -> float:
    return samples.get((name, tuple(sorted(labels.items()))), 0.0)


def test_sessions_and_rpcs_of_the_input_service(services) -> None:
    svc = services("input", "--metrics-port", "0")
    url = metrics_url(svc)
    assert value(scrape(url), "rdv_sessions", service="input") == 0
    with grpc.insecure_channel(svc.address) as channel:
        stub = input_pb2_grpc.InputServiceStub(channel)
        events = stub.Subscribe(input_pb2.SubscribeRequest(vm="vm1"))
        deadline = time.monotonic() + 30
        while stub.GetFocus(input_pb2.GetFocusRequest(), timeout=10).focused != "vm1":  # subscribed yet?
            assert time.monotonic() < deadline, "the subscription never arrived"
            time.sleep(0.05)
        reply = stub.Inject(input_pb2.InjectRequest(events=[_key("a", True), _key("a", False)]), timeout=10)
        assert reply.delivered == 2
        stub.ListSessions(common_pb2.ListSessionsRequest(), timeout=10)
        samples = scrape(url)
        events.cancel()
    assert value(samples, "rdv_sessions", service="input") == 1
    session = next(dict(labels)["session"] for name, labels in samples if name == "rdv_session_age_seconds")
    assert value(samples, "rdv_session_counter", service="input", session=session, vm="vm1", counter="pending") <= 2
    assert value(samples, "rdv_rpc_duration_seconds_count", service="input", method="Inject") == 1
    assert value(samples, "rdv_rpc_duration_seconds_count", service="input", method="ListSessions") == 1
    assert value(samples, "rdv_rpc_duration_seconds_count", service="input", method="GetFocus") >= 1
    received = value(samples, "rdv_rpc_bytes_total", service="input", method="Inject", direction="received")
    assert received == input_pb2.InjectRequest(events=[_key("a", True), _key("a", False)]).ByteSize()


def _key(qcode: str, pressed: bool) -> input_pb2.InputEvent:
    return input_pb2.InputEvent(key=input_pb2.Key(qcode=qcode, pressed=pressed))


def test_audio_bytes_and_latency(services, tmp_path) -> None:
    svc = services("audio", "--sink", "null", "--metrics-port", "0", "--clock-scale", "4")
    url = metrics_url(svc)
    fmt = PcmFormat(44100, 2, 16)
    pcm = melody(fmt, 0.5)
    write_wav(str(tmp_path / "in.wav"), fmt, pcm)
    res = run_shim("play", "--wav", str(tmp_path / "in.wav"), "--audio", svc.address, "--json", "--clock-scale", "4")
    assert res.returncode == 0, res.stderr
    summary = json.loads(res.stdout)
    samples = scrape(url)
    received = value(samples, "rdv_rpc_bytes_total", service="audio", method="Session", direction="received")
    assert received > len(pcm)  # the PCM and the register traffic around it
    chunks = value(samples, "rdv_latency_seconds_count", service="audio", path="audio_chunk")
    assert chunks >= 1 and summary["periods"] >= 1
