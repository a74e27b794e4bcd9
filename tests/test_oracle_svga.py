"""QEMU's vmware-svga judges our SVGA II: the same registers and FIFO command sequences against both.

The screens must be pixel-equal: QEMU's screendump (PPM) against our framebuffer, and the raw VRAM behind
them (which also holds the fourth byte of each pixel that a screendump drops). Modes are 32 bpp (the only
depth QEMU has) and never 640x480 (QEMU's placeholder quirk, see tests/oracle/svga.py).

Deliberate deviations of our model, each shown by a test here:
1. Registers (test_registers_against_qemu): we advertise PITCHLOCK and the cursor capabilities (Linux 6.1
   vmwgfx refuses a device without pitchlock; QEMU offers cursors only with a UI), report the FIFO register
   count in MEM_REGS and one display in NUM_DISPLAYS (Linux makes no fbdev with 0), keep PITCHLOCK, palette
   entries, ENABLE's HIDE bit and CURSOR_ON values 2/3 as written (QEMU reads 0 / drops them), accept 8 and
   16 bpp (QEMU turns CONFIG_DONE off), and answer 0 at the BIOS port and the IRQSTATUS port (QEMU: 0xcafe
   and all ones; we do not offer IRQMASK, so no driver reads it).
2. Rectangles outside the framebuffer (test_out_of_bounds_deviation): QEMU drops a fill or copy that does not
   fit entirely; we do the part that fits (our choice, see svga.py: clipped to the framebuffer).
3. Commands QEMU miscounts (test_miscounted_commands_deviation): QEMU reads UPDATE_VERBOSE as 5 words (its
   `reason` word is then taken for a command), treats FENCE, SURFACE_FILL/COPY and FRONT_ROP_FILL as one-word
   no-ops (their arguments are then taken for commands), and does not count no-ops against the words queued,
   so after one it runs past NEXT_CMD through whatever the ring holds (up to 1023 words per pass). We skip
   every command by its real length and never read past NEXT_CMD. Linux vmwgfx sends none of these to a
   device without the capabilities they belong to.
The whole path is judged too (test_display_service_against_qemu): the same sequence through our shim's
DisplayLink to a real display service, whose Screenshot must equal QEMU's screendump.
Not observable here: cursors (a screendump has none), and QEMU's FIFO memory beyond the four registers (ours
also fills FIFO_CAPABILITIES/FLAGS at CONFIG_DONE and clears word 290 on each pass: the driver reads them).
"""

from __future__ import annotations

import random
from collections.abc import Iterator

import pytest
from hypothesis import HealthCheck, Phase, given, settings
from hypothesis import strategies as st

from services.devices import svga_regs as R
from services.devices.svga import CAPABILITIES
from tests.oracle import require_qemu
from tests.oracle.svga import FIFO_MAX, FIFO_MIN, ModelSvga, QemuSvga, ServiceSvga

MODES = [(800, 600), (1024, 768), (320, 200), (1000, 700), (720, 400)]


@pytest.fixture
def pair() -> Iterator[tuple[QemuSvga, ModelSvga]]:
    require_qemu()
    qemu = QemuSvga()
    yield qemu, ModelSvga()
    qemu.close()


def paint(sides: tuple[QemuSvga, ModelSvga], width: int, height: int, seed: int) -> None:
    """The same noisy picture (all 32 bits random) straight into both VRAMs, as a guest would draw it."""
    data = random.Random(seed).randbytes(width * height * 4)
    for side in sides:
        side.write_vram(0, data)


def assert_same_screen(qemu: QemuSvga, ours: ModelSvga) -> None:
    qw, qh, qrgb = qemu.screen()
    ow, oh, orgb = ours.screen()
    assert (ow, oh) == (qw, qh)
    if orgb != qrgb:
        first = next(i for i in range(len(qrgb)) if qrgb[i] != orgb[i]) // 3
        pytest.fail(f"screens differ: {first % qw},{first // qw} is {orgb[first * 3 : first * 3 + 3].hex()} in ours, "
                    f"{qrgb[first * 3 : first * 3 + 3].hex()} in QEMU")  # fmt: skip
    span = qw * qh * 4
    assert ours.read_vram(0, span) == qemu.read_vram(0, span)
    assert ours.fifo_registers() == qemu.fifo_registers()


def run(sides: tuple[QemuSvga, ModelSvga], commands: list[tuple[int, ...]], drain: bool = True) -> None:
    for side in sides:
        for words in commands:
            if words == ("sync",):
                side.sync()
            else:
                side.command(words)
        side.sync(drain)


# ----------------------------------------------------------------------------------------- registers
# index -> (QEMU's value, ours, why)
REGISTER_DEVIATIONS = {
    R.REG_CAPABILITIES: (R.CAP_RECT_FILL | R.CAP_RECT_COPY, CAPABILITIES, "pitchlock and cursors"),
    R.REG_MEM_REGS: (0, R.FIFO_NUM_REGS, "FIFO registers the guest may use"),
    R.REG_NUM_DISPLAYS: (0, 1, "Linux creates no fbdev with 0 displays"),
}


def test_registers_against_qemu(pair: tuple[QemuSvga, ModelSvga]) -> None:
    qemu, ours = pair
    for side in pair:
        side.start(800, 600)
    differ = {}
    for index in [*range(R.REG_TOP_IMPLEMENTED), R.REG_TRACES, R.PALETTE_BASE, R.SCRATCH_BASE, R.SCRATCH_BASE + 9]:
        q, o = qemu.read_reg(index), ours.read_reg(index)
        if q != o:
            differ[index] = (q, o)
    assert differ == {i: (q, o) for i, (q, o, _) in REGISTER_DEVIATIONS.items()}

    # Writes both keep the same way.
    for index, value in [(R.REG_GUEST_ID, 0x5008), (R.REG_CURSOR_X, 17), (R.REG_CURSOR_Y, 33), (R.REG_CURSOR_ID, 4),
                         (R.REG_CURSOR_ON, R.CURSOR_ON_SHOW), (R.SCRATCH_BASE + 3, 0xDEADBEEF), (R.REG_ID, 0x1234),
                         (R.REG_WIDTH, 5000), (R.REG_HEIGHT, 1000)]:  # fmt: skip
        for side in pair:
            side.write_reg(index, value)
        assert ours.read_reg(index) == qemu.read_reg(index), f"register {index} after writing {value:#x}"
    # Deviation 1: what QEMU drops or cannot do.
    for index, value, q_reads, o_reads in [
        (R.REG_PITCHLOCK, 3300, 0, 3300),
        (R.PALETTE_BASE + 5, 0x80, 0, 0x80),
        (R.REG_CURSOR_ON, R.CURSOR_ON_REMOVE_FROM_FB, R.CURSOR_ON_SHOW, R.CURSOR_ON_REMOVE_FROM_FB),
        (R.REG_ENABLE, R.ENABLE_ENABLE | R.ENABLE_HIDE, 1, 3),
    ]:
        for side in pair:
            side.write_reg(index, value)
        assert (qemu.read_reg(index), ours.read_reg(index)) == (q_reads, o_reads)
    for side in pair:
        side.write_reg(R.REG_BITS_PER_PIXEL, 16)
    assert (qemu.read_reg(R.REG_CONFIG_DONE), ours.read_reg(R.REG_CONFIG_DONE)) == (0, 1)
    assert (qemu.io_read(R.BIOS_PORT), ours.io_read(R.BIOS_PORT)) == (0xCAFE, 0)
    assert (qemu.io_read(R.IRQSTATUS_PORT), ours.io_read(R.IRQSTATUS_PORT)) == (0xFFFFFFFF, 0)


# ----------------------------------------------------------------------------------------- FIFO sequences
def test_fills_copies_updates_and_mode_sets(pair: tuple[QemuSvga, ModelSvga]) -> None:
    qemu, ours = pair
    for side in pair:
        side.start(800, 600)
    paint(pair, 800, 600, seed=1)
    run(pair, [
        (R.CMD_RECT_FILL, 0xFF112233, 10, 10, 100, 50),
        (R.CMD_RECT_FILL, 0x00ABCDEF, 0, 0, 800, 1),  # a whole row; the top byte must land in VRAM too
        (R.CMD_RECT_COPY, 0, 0, 50, 30, 200, 100),  # overlapping, down and right
        (R.CMD_RECT_COPY, 60, 40, 10, 5, 300, 200),  # overlapping, up and left
        (R.CMD_RECT_COPY, 100, 300, 101, 300, 400, 1),  # same row, one pixel right
        (R.CMD_RECT_COPY, 101, 310, 100, 310, 400, 7),  # same rows, one pixel left
        (R.CMD_UPDATE, 0, 0, 800, 600),
        (R.CMD_UPDATE, 5, 5, 10, 10),
        (R.CMD_RECT_FILL, 0x00FF0000, 799, 599, 1, 1),  # the last pixel
        (R.CMD_RECT_COPY, 0, 0, 0, 0, 800, 600),  # onto itself
    ])  # fmt: skip
    assert_same_screen(qemu, ours)
    for width, height in [(1024, 768), (320, 200)]:  # the same VRAM read with another pitch, then drawn on
        for side in pair:
            side.set_mode(width, height)
            side.refresh()
        assert_same_screen(qemu, ours)
        fill = (R.CMD_RECT_FILL, 0x336699, 1, 2, width - 2, 3)
        run(pair, [fill, (R.CMD_RECT_COPY, 0, 0, 7, 9, width - 7, height - 9)])
        assert_same_screen(qemu, ours)
    assert ours.errors == []


def test_fifo_wraps_around(pair: tuple[QemuSvga, ModelSvga]) -> None:
    """Several laps of the 12 KiB ring, with commands split across its end and SYNCs only when it is full."""
    qemu, ours = pair
    for side in pair:
        side.start(1000, 700)
    paint(pair, 1000, 700, seed=2)
    rng = random.Random(3)
    commands: list[tuple[int, ...]] = []
    for i in range(1500):  # ~40 KiB of commands
        x, y = rng.randrange(990), rng.randrange(690)
        if i % 3:
            w, h = rng.randint(1, 1000 - x), rng.randint(1, 700 - y)
            commands.append((R.CMD_RECT_FILL, rng.getrandbits(32), x, y, w, h))
        else:
            w, h = rng.randint(1, 1000 - max(x, 5)), rng.randint(1, 700 - max(y, 5))
            commands.append((R.CMD_RECT_COPY, x, y, rng.randrange(1000 - w + 1), rng.randrange(700 - h + 1), w, h))
    run(pair, commands)
    assert_same_screen(qemu, ours)
    lo, hi, nxt, _ = ours.fifo_registers()
    assert (lo, hi) == (FIFO_MIN, FIFO_MAX) and sum(len(c) for c in commands) * 4 > 3 * (hi - lo)
    assert ours.errors == []


@st.composite
def sequences(draw: st.DrawFn) -> tuple[tuple[int, int], list[tuple[int, ...]]]:
    width, height = draw(st.sampled_from(MODES))
    coord = st.tuples(st.integers(0, width - 1), st.integers(0, height - 1))

    def rect() -> tuple[int, int, int, int]:
        x, y = draw(coord)
        return x, y, draw(st.integers(1, width - x)), draw(st.integers(1, height - y))

    commands: list[tuple[int, ...]] = []
    for kind in draw(st.lists(st.sampled_from(["fill", "copy", "update", "sync"]), min_size=1, max_size=40)):
        if kind == "fill":
            commands.append((R.CMD_RECT_FILL, draw(st.integers(0, 0xFFFFFFFF)), *rect()))
        elif kind == "copy":
            x, y, w, h = rect()
            dx, dy = draw(st.integers(0, width - w)), draw(st.integers(0, height - h))
            commands.append((R.CMD_RECT_COPY, x, y, dx, dy, w, h))
        elif kind == "update":
            commands.append((R.CMD_UPDATE, *rect()))
        else:
            commands.append(("sync",))  # type: ignore[arg-type]
    return (width, height), commands


@pytest.fixture(scope="module")
def qemu_svga() -> Iterator[QemuSvga]:
    require_qemu()
    qemu = QemuSvga()
    qemu.start(800, 600)
    yield qemu
    qemu.close()


# No shrinking: each example costs ~80 ms of QEMU, and shrinking a 40-command list takes minutes; the
# failing example is printed as generated.
@settings(
    max_examples=25,
    deadline=None,
    phases=[Phase.explicit, Phase.reuse, Phase.generate],
    suppress_health_check=[HealthCheck.function_scoped_fixture],
)
@given(case=sequences(), seed=st.integers(0, 1000))
def test_random_sequences(qemu_svga: QemuSvga, case: tuple[tuple[int, int], list[tuple[int, ...]]], seed: int) -> None:
    """In-bounds fills, copies and updates in any mix and order, in any of several modes."""
    (width, height), commands = case
    ours = ModelSvga()
    ours.start(800, 600)
    for side in (qemu_svga, ours):
        side.set_mode(width, height)
        side.refresh()
    # Our FIFO starts where QEMU's stands after the previous examples, so the ring positions agree too.
    ours.writer.set_registers(*qemu_svga.fifo_registers())  # type: ignore[union-attr]
    paint((qemu_svga, ours), width, height, seed)
    run((qemu_svga, ours), commands)
    assert_same_screen(qemu_svga, ours)
    assert ours.errors == []


# ----------------------------------------------------------------------------------------- deviations
def test_out_of_bounds_deviation(pair: tuple[QemuSvga, ModelSvga]) -> None:
    """Deviation 2: QEMU drops a rectangle that sticks out; we draw the part inside."""
    qemu, ours = pair
    for side in pair:
        side.start(320, 200)
    paint(pair, 320, 200, seed=4)
    before = qemu.screen()
    run(pair, [(R.CMD_RECT_FILL, 0x00FFFFFF, 300, 190, 40, 40), (R.CMD_RECT_COPY, 0, 0, 310, 0, 20, 20)])
    assert qemu.screen() == before  # nothing happened at QEMU
    width, _, rgb = ours.screen()
    assert rgb[(195 * width + 310) * 3 : (195 * width + 310) * 3 + 3] == b"\xff\xff\xff"  # ours filled the inside
    assert len([e for e in ours.errors if "outside" in e]) == 0  # clipped, not refused


@pytest.mark.parametrize(
    "first", [(R.CMD_FENCE, R.CMD_UPDATE), (R.CMD_UPDATE_VERBOSE, 0, 0, 8, 8, R.CMD_UPDATE)], ids=["fence", "verbose"]
)
def test_miscounted_commands_deviation(pair: tuple[QemuSvga, ModelSvga], first: tuple[int, ...]) -> None:
    """Deviation 3: QEMU takes a word of `first` for an UPDATE command, which eats the fill after it."""
    qemu, ours = pair
    for side in pair:
        side.start(320, 200)
    paint(pair, 320, 200, seed=5)
    before = qemu.screen()
    run(pair, [first, (R.CMD_RECT_FILL, 0x00FF00FF, 0, 0, 10, 10)], drain=False)
    assert qemu.screen() == before  # the fill never ran
    _, _, nxt, stop = qemu.fifo_registers()
    assert stop != nxt  # and QEMU's STOP ran past NEXT_CMD
    _, _, rgb = ours.screen()
    assert rgb[:3] == b"\xff\x00\xff"
    assert ours.fifo_registers()[2:] == (nxt, nxt) and ours.errors == []


# ----------------------------------------------------------------------------------------- the whole path
@pytest.mark.parametrize("mode", ["mirrored", "backend"])
def test_display_service_against_qemu(services, mode: str) -> None:
    """QEMU's screendump against the display service's Screenshot, after the same guest sequence."""
    require_qemu()
    svc = services("display", "--headless")
    qemu, remote = QemuSvga(), ServiceSvga(svc.address, mode)
    try:
        sides = (qemu, remote)
        for side in sides:
            side.start(800, 600)
        for side in sides:
            side.write_vram(0, random.Random(6).randbytes(800 * 600 * 4))
        rng = random.Random(7)
        commands: list[tuple[int, ...]] = [(R.CMD_UPDATE, 0, 0, 800, 600)]  # what the guest drew by hand
        for i in range(300):
            x, y = rng.randrange(780), rng.randrange(580)
            w, h = rng.randint(1, 800 - x), rng.randint(1, 600 - y)
            if i % 3 == 0:
                commands.append((R.CMD_RECT_COPY, x, y, rng.randrange(800 - w + 1), rng.randrange(600 - h + 1), w, h))
            elif i % 3 == 1:
                commands.append((R.CMD_RECT_FILL, rng.getrandbits(24), x, y, w, h))
            else:
                commands.append(("sync",))  # type: ignore[arg-type]
        run(sides, commands)  # type: ignore[arg-type]
        qw, qh, qrgb = qemu.screen()
        rw, rh, rrgb = remote.screen()
        assert (rw, rh) == (qw, qh) and rrgb == qrgb
        for side in sides:  # a mode change: the service reallocates its copy, the guest redraws with an UPDATE
            side.set_mode(1024, 768)
            side.refresh()
        run(sides, [(R.CMD_UPDATE, 0, 0, 1024, 768), (R.CMD_RECT_FILL, 0x123456, 100, 100, 500, 300)])
        qw, qh, qrgb = qemu.screen()
        rw, rh, rrgb = remote.screen()
        assert (rw, rh) == (qw, qh) == (1024, 768) and rrgb == qrgb
    finally:
        remote.close()
        qemu.close()
