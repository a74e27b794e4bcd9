"""Register-level behaviour of the ES1370 model (as QEMU and the chip documentation describe it)."""

from __future__ import annotations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from services.devices import es1370_regs as R
from services.devices.es1370 import AccessError, Es1370, PcmFormat


def started(fmt_bits: int = R.FMT_BIT_16 | R.FMT_BIT_STEREO, frames_per_period: int = 8, dwords: int = 32) -> Es1370:
    """A DAC2 set up the way the Linux driver does it: buffer at 0x1000 of `dwords`, 8-frame periods."""
    m = Es1370()
    m.write(R.MEMPAGE, 4, R.FRAME_PAGE_DAC)
    m.write(R.DAC2_FRAMEADR & 0xFF, 4, 0x1000)
    m.write(R.DAC2_FRAMECNT & 0xFF, 4, dwords - 1)
    m.write(R.SERIAL_CONTROL, 4, R.SCTRL_P2INTEN | (fmt_bits << R.SCTRL_SH_P2FMT))
    m.write(R.DAC2_SCOUNT, 4, frames_per_period - 1)
    m.write(R.CONTROL, 4, R.CTRL_DAC2_EN | (R.dac2_divider(44100) << R.CTRL_SH_PCLKDIV))
    return m


def test_reset_values() -> None:
    m = Es1370()
    assert m.read(R.CONTROL, 4) == 1
    assert m.read(R.STATUS, 4) == 0x60
    assert not m.irq
    assert m.read(R.UART_DATA, 4) == 0xFFFFFFFF  # no UART: reads as all ones like QEMU's model


def test_paging_selects_frame_registers() -> None:
    m = Es1370()
    m.write(R.MEMPAGE, 4, R.FRAME_PAGE_DAC)
    m.write(0x38, 4, 0xABC000)  # DAC2 frame address on page 0xc
    m.write(R.MEMPAGE, 4, R.FRAME_PAGE_ADC)
    m.write(0x30, 4, 0x5000)  # ADC frame address on page 0xd
    assert m.read(0x38, 4) == 0xFFFFFFFF  # page 0xd at 0x38 is the phantom register
    m.write(R.MEMPAGE, 4, R.FRAME_PAGE_DAC)
    assert m.read(0x38, 4) == 0xABC000
    assert m.state.channels[R.ADC].frame_addr == 0x5000
    assert m.read(R.MEMPAGE, 4) == R.FRAME_PAGE_DAC
    m.write(R.MEMPAGE, 4, 0x1F)
    assert m.read(R.MEMPAGE, 4) == 0xF  # four bits


def test_scount_reads_current_and_total() -> None:
    m = Es1370()
    m.write(R.DAC1_SCOUNT, 4, 0x12340FFF)
    assert m.read(R.DAC1_SCOUNT, 4) == 0x0FFF0FFF


def test_narrow_writes_merge_into_lanes() -> None:
    m = Es1370()
    m.write(R.CONTROL, 4, 0x12345678)
    m.write(R.CONTROL + 1, 1, 0xAB)
    assert m.read(R.CONTROL, 4) == 0x1234AB78
    assert m.read(R.CONTROL + 2, 2) == 0x1234
    m.write(R.CODEC, 2, 0x1603)
    assert m.state.codec_regs[0x16] == 0x03


@pytest.mark.parametrize(("offset", "size"), [(0x100, 4), (0xFE, 4), (0x01, 4), (0x00, 3), (-4, 4), (0x10, 8)])
def test_impossible_accesses_raise(offset: int, size: int) -> None:
    with pytest.raises(AccessError):
        Es1370().read(offset, size)
    with pytest.raises(AccessError):
        Es1370().write(offset, size, 0)


def test_formats_and_rates() -> None:
    m = started()
    assert m.channel_format(R.DAC2) == PcmFormat(44100, 2, 16)
    m.write(R.SERIAL_CONTROL, 4, 0)
    assert m.channel_format(R.DAC2) == PcmFormat(44100, 1, 8)
    for i, rate in enumerate(R.DAC1_RATES):
        m.write(R.CONTROL, 4, i << R.CTRL_SH_WTSRSEL)
        assert m.channel_format(R.DAC1).rate == rate
    assert R.dac2_rate(R.dac2_divider(48000)) == 48662  # what ALSA ends up with on this chip


def test_period_interrupt_and_ack() -> None:
    m = started()  # 16-bit stereo: 4 bytes a frame, 8 frames = 32 bytes a period
    addr, length = m.dma_window(R.DAC2, 1000)
    assert (addr, length) == (0x1000, 32)
    assert not m.dma_commit(R.DAC2, 12)
    assert m.read(R.DAC2_SCOUNT, 4) >> 16 == 4  # 5 frames left, minus one
    assert m.dma_window(R.DAC2, 1000) == (0x100C, 20)
    assert m.dma_commit(R.DAC2, 20)
    assert m.irq and m.read(R.STATUS, 4) & (R.STAT_INTR | R.STAT_DAC2) == R.STAT_INTR | R.STAT_DAC2
    assert m.position_bytes(R.DAC2) == 32
    m.write(R.SERIAL_CONTROL, 4, m.state.serial_control & ~R.SCTRL_P2INTEN)  # the driver's ack
    assert not m.irq and not m.read(R.STATUS, 4) & R.STAT_INTR


def test_position_wraps_in_loop_mode() -> None:
    m = started(dwords=16)  # 64-byte buffer, 32-byte periods
    for _ in range(2):
        _, length = m.dma_window(R.DAC2, 1000)
        m.dma_commit(R.DAC2, length)
    assert m.position_bytes(R.DAC2) == 0
    assert m.dma_window(R.DAC2, 1000) == (0x1000, 32)


def test_window_never_crosses_buffer_end() -> None:
    m = started(frames_per_period=64, dwords=16)  # period longer than the buffer
    assert m.dma_window(R.DAC2, 10_000) == (0x1000, 64)


def test_no_dma_when_stopped_or_paused() -> None:
    m = started()
    m.write(R.SERIAL_CONTROL, 4, m.state.serial_control | R.SCTRL_P2PAUSE)
    assert m.dma_window(R.DAC2, 100) == (0, 0)
    m.write(R.SERIAL_CONTROL, 4, m.state.serial_control & ~R.SCTRL_P2PAUSE)
    m.write(R.CONTROL, 4, 0)
    assert m.dma_window(R.DAC2, 100) == (0, 0)
    with pytest.raises(ValueError):
        m.dma_commit(R.DAC2, 4)


def test_mono_8bit_leftover_bytes() -> None:
    m = started(fmt_bits=0, frames_per_period=6, dwords=4)  # 6-byte periods in a 16-byte buffer
    _, n = m.dma_window(R.DAC2, 100)
    assert n == 6 and m.dma_commit(R.DAC2, n)
    assert m.state.channels[R.DAC2].leftover == 2 and m.position_bytes(R.DAC2) == 6
    m.write(R.SERIAL_CONTROL, 4, 0)
    m.write(R.SERIAL_CONTROL, 4, R.SCTRL_P2INTEN)
    assert m.dma_window(R.DAC2, 100) == (0x1006, 6)


def recording(fmt_bits: int = R.FMT_BIT_16 | R.FMT_BIT_STEREO, rate: int = 22050) -> Es1370:
    """The ADC set up as snd-ens1370's capture prepare does: frame on page 0xd, 8-frame periods, 32 dwords."""
    m = Es1370()
    m.write(R.MEMPAGE, 4, R.FRAME_PAGE_ADC)
    m.write(R.ADC_FRAMEADR & 0xFF, 4, 0x2000)
    m.write(R.ADC_FRAMECNT & 0xFF, 4, 31)
    m.write(R.SERIAL_CONTROL, 4, R.SCTRL_R1INTEN | (fmt_bits << R.SCTRL_SH_R1FMT))
    m.write(R.ADC_SCOUNT, 4, 7)
    m.write(R.CONTROL, 4, R.CTRL_ADC_EN | (R.dac2_divider(rate) << R.CTRL_SH_PCLKDIV))
    return m


def test_adc_records_at_the_dac2_clock_in_its_own_format() -> None:
    m = recording(fmt_bits=R.FMT_BIT_16, rate=11025)
    assert m.channel_format(R.ADC) == PcmFormat(11025, 1, 16)
    assert m.channel_format(R.DAC2).rate == 11025  # one clock (PCLKDIV) for DAC2 and the ADC
    m.write(R.SERIAL_CONTROL, 4, R.SCTRL_R1INTEN | (R.FMT_BIT_STEREO << R.SCTRL_SH_R1FMT))
    assert m.channel_format(R.ADC) == PcmFormat(11025, 2, 8)
    assert m.channel_format(R.DAC2).channels == 1  # formats are per channel


def test_adc_period_interrupt_ack_and_wrap() -> None:
    m = recording()  # 32-byte periods into a 128-byte ring at 0x2000
    for period in range(4):
        assert m.dma_window(R.ADC, 1000) == (0x2000 + 32 * period, 32)
        assert m.dma_commit(R.ADC, 32)
        assert m.read(R.STATUS, 4) == R.STAT_INTR | R.STAT_ADC | R.RESET_STATUS
        m.write(R.MEMPAGE, 4, R.FRAME_PAGE_ADC)
        assert m.read(R.ADC_FRAMECNT & 0xFF, 4) == (((32 * (period + 1) // 4) % 32) << 16) | 31
        m.write(R.SERIAL_CONTROL, 4, m.state.serial_control & ~R.SCTRL_R1INTEN)  # the driver's ack
        assert not m.irq
        m.write(R.SERIAL_CONTROL, 4, m.state.serial_control | R.SCTRL_R1INTEN)
    assert m.position_bytes(R.ADC) == 0


def test_adc_has_no_pause_bit_and_stops_with_adc_en() -> None:
    m = recording()
    m.write(R.SERIAL_CONTROL, 4, m.state.serial_control | R.SCTRL_P1PAUSE | R.SCTRL_P2PAUSE)
    assert m.channel_running(R.ADC)  # the DACs' pause bits leave the ADC alone
    m.write(R.CONTROL, 4, m.state.control & ~R.CTRL_ADC_EN)
    assert not m.channel_running(R.ADC) and m.dma_window(R.ADC, 100) == (0, 0)


def test_codec_input_registers_are_write_only() -> None:
    """Record source and mic gain live in the AK4531 behind CODEC, which has no read path: reads give 0 (as QEMU
    and the real driver's traces show); the values are kept for the state snapshot."""
    m = Es1370()
    m.write(R.CODEC, 2, (R.AK4531_MIC_GAIN << 8) | 1)
    m.write(R.CODEC, 2, (R.AK4531_IN_MIX_L1 << 8) | 0x01)  # record the mic on the left input
    assert m.read(R.CODEC, 4) == 0
    assert m.state.codec_regs[R.AK4531_MIC_GAIN] == 1 and m.state.codec_regs[R.AK4531_IN_MIX_L1] == 0x01


@settings(max_examples=300, deadline=None)
@given(
    st.lists(
        st.tuples(
            st.sampled_from([0x00, 0x04, 0x08, 0x0C, 0x10, 0x20, 0x24, 0x28, 0x2C, 0x30, 0x34, 0x38, 0x3C]),
            st.sampled_from([1, 2, 4]),
            st.integers(0, 0xFFFFFFFF),
            st.integers(0, 3),
        ),
        max_size=40,
    )
)
def test_write_reports_exactly_whether_the_state_changed(writes: list[tuple[int, int, int, int]]) -> None:
    """Mirrored mode leaves out writes that change nothing; that is only coherent if `changed` is exact."""
    m = started()
    for offset, size, value, lane in writes:
        offset += lane % size if size < 4 else 0
        offset &= ~(size - 1)
        before = m.state.copy()
        changed = m.write(offset, size, value & ((1 << (8 * size)) - 1))
        assert changed == (m.state != before)
        if m.dma_window(R.DAC2, 64)[1]:
            m.dma_commit(R.DAC2, m.dma_window(R.DAC2, 64)[1])  # interleave DMA so leftover/positions vary
