"""Several VMs on one node kept apart. Over mTLS a certificate paired for one VM (an `rdv:vm:` name) sees and
controls only that VM's sessions; another VM's screenshot, state, focus, input or session name is
PERMISSION_DENIED; a bad or unknown VM name is INVALID_ARGUMENT / NOT_FOUND with a message naming what there is.
A VM that floods, stalls or crashes holds back no other VM's pictures."""

from __future__ import annotations

import random
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import grpc
import pytest

from rdv.common.v1 import common_pb2
from rdv.display.v1 import display_pb2, display_pb2_grpc
from rdv.input.v1 import input_pb2, input_pb2_grpc
from services.common import certs, tls
from tests.helpers import ROOT, run_shim

DENIED = grpc.StatusCode.PERMISSION_DENIED


@pytest.fixture(scope="module")
def pki(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("pki")
    certs.make_ca(root / "ca")
    certs.issue(root / "ca", root / "node", "remote", ["localhost", "127.0.0.1"], ["*"])  # no VM: sees all
    for vm in ("A", "B"):
        certs.issue(root / "ca", root / vm, f"rdv shim {vm}", [], ["display", "input"], vm=vm)
    return root


def port(svc: object) -> str:
    return svc.address.rpartition(":")[2]  # type: ignore[attr-defined]


def drawing(stub: display_pb2_grpc.DisplayServiceStub) -> bool:
    listed = stub.ListSessions(common_pb2.ListSessionsRequest(), timeout=5).sessions
    if sorted(s.vm for s in listed) != ["A", "B"]:
        return False
    return all(stub.GetDisplayState(display_pb2.GetDisplayStateRequest(vm=vm), timeout=5).mode.width for vm in "AB")


def code_of(call: object) -> grpc.StatusCode:
    try:
        call()  # type: ignore[operator]
    except grpc.RpcError as exc:
        return exc.code()
    return grpc.StatusCode.OK


@pytest.fixture
def node(services, pki: Path) -> Iterator[tuple]:
    inp = services("input", "--tls-dir", str(pki / "node"))
    disp = services("display", "--headless", "--tls-dir", str(pki / "node"), "--input", f"localhost:{port(inp)}")
    drawers = [
        subprocess.Popen([sys.executable, "-m", "frontend_shim", "draw-demo", "--display", f"localhost:{port(disp)}",
                          "--vm", vm, "--seconds", "60", "--fps", "5", "--width", "320", "--height", "200",
                          "--tls-dir", str(pki / vm)], cwd=ROOT, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
        for vm in ("A", "B")
    ]  # fmt: skip
    try:
        with tls.channel(f"localhost:{port(disp)}", str(pki / "node")) as ch:
            stub = display_pb2_grpc.DisplayServiceStub(ch)
            deadline = time.monotonic() + 30
            while not drawing(stub):
                assert time.monotonic() < deadline, "the two VMs did not open their sessions and draw"
                time.sleep(0.1)
            ids = {s.vm: s.session_id for s in stub.ListSessions(common_pb2.ListSessionsRequest(), timeout=5).sessions}
        yield inp, disp, ids
    finally:
        for p in drawers:
            p.kill()
            p.wait(10)


def test_a_vm_certificate_sees_and_controls_its_own_vm_only(node, pki: Path) -> None:
    inp, disp, ids = node
    with tls.channel(f"localhost:{port(disp)}", str(pki / "A")) as ch:
        d = display_pb2_grpc.DisplayServiceStub(ch)
        assert d.Screenshot(display_pb2.ScreenshotRequest(vm="A"), timeout=10).session_id == ids["A"]
        assert d.Screenshot(display_pb2.ScreenshotRequest(), timeout=10).session_id == ids["A"]  # its own by default
        assert [s.vm for s in d.ListSessions(common_pb2.ListSessionsRequest(), timeout=10).sessions] == ["A"]
        for call in (lambda: d.Screenshot(display_pb2.ScreenshotRequest(vm="B"), timeout=10),
                     lambda: d.Screenshot(display_pb2.ScreenshotRequest(session_id=ids["B"]), timeout=10),
                     lambda: d.GetDisplayState(display_pb2.GetDisplayStateRequest(vm="B"), timeout=10),
                     lambda: d.GetDisplayState(display_pb2.GetDisplayStateRequest(session_id=ids["B"]), timeout=10)):
            assert code_of(call) == DENIED  # fmt: skip
        with pytest.raises(grpc.RpcError) as err:
            d.Screenshot(display_pb2.ScreenshotRequest(vm="B"), timeout=10)
        assert "paired for vm 'A'" in err.value.details()
    # A's certificate cannot open a session that says it is B.
    posing = run_shim("draw-demo", "--display", f"localhost:{port(disp)}", "--vm", "B", "--seconds", "0.2",
                      "--tls-dir", str(pki / "A"))  # fmt: skip
    assert posing.returncode != 0 and "PERMISSION_DENIED" in posing.stderr
    with tls.channel(f"localhost:{port(inp)}", str(pki / "A")) as ch:
        i = input_pb2_grpc.InputServiceStub(ch)
        key = input_pb2.InputEvent(key=input_pb2.Key(qcode="a", pressed=True))
        assert code_of(lambda: i.SetFocus(input_pb2.SetFocusRequest(vm="B"), timeout=10)) == DENIED
        assert code_of(lambda: i.Inject(input_pb2.InjectRequest(vm="B", events=[key]), timeout=10)) == DENIED
        sub = i.Subscribe(input_pb2.SubscribeRequest(vm="B"), timeout=10)
        assert code_of(lambda: next(sub)) == DENIED
        assert code_of(lambda: i.Publish(iter([input_pb2.InputEvent(key=key.key, vm="B")]), timeout=10)) == DENIED
        state = i.GetFocus(input_pb2.GetFocusRequest(), timeout=10)
        assert set(state.subscribed) <= {"A"} and state.focused in ("", "A")


def test_bad_and_unknown_vm_names(node, pki: Path) -> None:
    _, disp, _ = node
    with tls.channel(f"localhost:{port(disp)}", str(pki / "node")) as ch:  # the node's own certificate sees all
        d = display_pb2_grpc.DisplayServiceStub(ch)
        assert d.Screenshot(display_pb2.ScreenshotRequest(vm="B"), timeout=10).width == 320
        with pytest.raises(grpc.RpcError) as err:
            d.Screenshot(display_pb2.ScreenshotRequest(vm="nobody"), timeout=10)
        assert err.value.code() == grpc.StatusCode.NOT_FOUND and "open VMs: A, B" in err.value.details()
        with pytest.raises(grpc.RpcError) as err:
            d.GetDisplayState(display_pb2.GetDisplayStateRequest(vm="two words"), timeout=10)
        assert err.value.code() == grpc.StatusCode.INVALID_ARGUMENT and "vm must be" in err.value.details()


def test_a_flooding_stalled_or_crashed_vm_does_not_hold_another_back(services) -> None:
    """VM B floods full-screen frames and never reads its acknowledgements (a slow consumer), then stalls, then
    vanishes; VM A draws on meanwhile: every frame of A is presented and its picture stays exact."""
    from tests.display_helpers import guest_rgb, screenshot, start_guest
    from tests.test_display_bad_input import MODE, frame, pixels, rect

    disp = services("display", "--presenter", "sdl", "--headless")  # SDL's dummy driver: the real render path
    stalled = threading.Event()
    release = threading.Event()
    noise = random.Random(5).randbytes(MODE.width * MODE.height * 4)

    def flood() -> Iterator[display_pb2.FrontendMessage]:
        yield display_pb2.FrontendMessage(open=display_pb2.Open(vm="B", mode=common_pb2.COHERENCE_MODE_MIRRORED))
        for i in range(1, 3000):  # more acknowledgements than HTTP/2's window holds: B's writes block
            update = (pixels(rect(0, 0, MODE.width, MODE.height), display_pb2.ENCODING_RAW, noise) if i % 100 == 1
                      else display_pb2.DisplayUpdate(fill=display_pb2.Fill(rect=rect(0, 0, 8, 8), color=i)))
            yield frame(update, frame_id=i)  # fmt: skip
        stalled.set()
        release.wait(60)  # stalls: sends nothing more, reads nothing

    with grpc.insecure_channel(disp.address) as ch:
        b = display_pb2_grpc.DisplayServiceStub(ch).Session(flood(), timeout=120)  # its replies are never read
        driver, link = start_guest([disp.address], "mirrored", "lz4", vm="A", seed=3)
        try:
            for phase in ("flooding", "stalled", "gone"):
                if phase == "stalled":
                    assert stalled.wait(60), "B did not finish flooding"
                    stub = display_pb2_grpc.DisplayServiceStub(ch)
                    deadline = time.monotonic() + 60
                    while {x.vm: x.counters["frames"] for x in stub.ListSessions(
                            common_pb2.ListSessionsRequest(), timeout=10).sessions}.get("B") != 2999:  # fmt: skip
                        assert time.monotonic() < deadline, "the service did not take B's frames"
                        time.sleep(0.05)
                elif phase == "gone":
                    b.cancel()  # B's process died
                    release.set()
                started = time.monotonic()
                driver.run(seconds=30, fps=0, max_ticks=10)
                driver.sync()
                assert link.flush(15), phase  # every frame of A acknowledged
                assert time.monotonic() - started < 15, phase
                _, _, rgb, _ = screenshot(disp.address, vm="A")
                assert rgb == guest_rgb(driver), phase
            assert link.stats.reconnects == 0
        finally:
            release.set()
            link.close()
