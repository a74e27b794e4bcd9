"""The PCI functions rdv serves over vfio-user, described by their IDs and BARs.

Adding a device means writing its `PciSpec` and giving the function a `Device` for the trapped BARs; the server
itself does not change.
"""

from __future__ import annotations

from frontend_shim.guests.guest import Device
from frontend_shim.links.audio import AudioLink
from frontend_shim.vfio_user.irq import IrqController
from frontend_shim.vfio_user.pci import (
    STATUS_DEVSEL_MEDIUM,
    STATUS_DEVSEL_SLOW,
    BarSpec,
    FdBacking,
    PciFunction,
    PciSpec,
)
from frontend_shim.vfio_user.svga import SvgaLink, reset_svga
from services.devices import es1370_regs as R


def es1370_spec() -> PciSpec:
    """Ensoniq AudioPCI: 256-byte I/O BAR0, INTA, the subsystem IDs and latency values QEMU's model uses."""
    return PciSpec(
        vendor_id=R.PCI_VENDOR_ID,
        device_id=R.PCI_DEVICE_ID,
        class_code=R.PCI_CLASS << 8,
        subsystem_vendor_id=R.PCI_SUBSYSTEM_VENDOR_ID,
        subsystem_id=R.PCI_SUBSYSTEM_ID,
        bars=(BarSpec(0, "io", R.IO_BAR_SIZE),),
        interrupt_pin=1,
        min_gnt=0x0C,
        max_lat=0x80,
        status=STATUS_DEVSEL_SLOW,
        interrupt_status=(0, R.STATUS, R.STAT_INTR),
    )


# Power-on values through ordinary register writes, so that in both coherence modes the reset reaches whichever
# copy of the card is authoritative (and the mirror) in stream order. Clearing SERIAL_CONTROL also clears every
# pending channel interrupt. The AK4531 mixer registers are left alone: the driver rewrites them at probe.
_ES1370_RESET = (
    (R.CONTROL, R.RESET_CONTROL),
    (R.SERIAL_CONTROL, 0),
    (R.DAC1_SCOUNT, 0),
    (R.DAC2_SCOUNT, 0),
    (R.ADC_SCOUNT, 0),
    (R.MEMPAGE, R.FRAME_PAGE_DAC),
    (R.DAC1_FRAMEADR & 0xFF, 0),
    (R.DAC1_FRAMECNT & 0xFF, 0),
    (R.DAC2_FRAMEADR & 0xFF, 0),
    (R.DAC2_FRAMECNT & 0xFF, 0),
    (R.MEMPAGE, R.FRAME_PAGE_ADC),
    (R.ADC_FRAMEADR & 0xFF, 0),
    (R.ADC_FRAMECNT & 0xFF, 0),
    (R.MEMPAGE, 0),
)


def reset_es1370(device: Device) -> None:
    for offset, value in _ES1370_RESET:
        device.io_write(0, offset, 4, value)


def es1370_function(device: Device) -> PciFunction:
    return PciFunction(es1370_spec(), device, reset=lambda: reset_es1370(device))


def es1370_over_link(link: AudioLink, irq: IrqController) -> PciFunction:
    """The ES1370 served by an AudioLink whose interrupt line is `irq`. In backend mode the card's level lives in
    the audio service and follows a write one round trip later: a barrier makes it current before a deferred
    INTx re-check (see irq.py)."""
    if link.mode == "backend":
        irq.settle = lambda: link.barrier(timeout=1.0)
        irq.cause_ns = lambda: link.last_interrupt_sent_ns  # the service's stamp on its interrupt message
    return es1370_function(link)


SVGA_VENDOR_ID = 0x15AD
SVGA_DEVICE_ID = 0x0405
SVGA_CLASS_VGA = 0x030000


def svga_spec(vram: FdBacking, fifo: FdBacking, vram_size: int = 16 << 20, fifo_size: int = 256 << 10) -> PciSpec:
    """VMware SVGA II's PCI face: I/O BAR0 (INDEX +0, VALUE +1 with unaligned 32-bit accesses: they reach the
    model as they arrive, one 4-byte access at offset 1 or QEMU's 1+2+1 pieces, which the model reassembles),
    VRAM and FIFO as memfd-backed BARs QEMU maps into the guest. No capability list, INTA (never raised: the
    model offers no IRQMASK capability)."""
    return PciSpec(
        vendor_id=SVGA_VENDOR_ID,
        device_id=SVGA_DEVICE_ID,
        class_code=SVGA_CLASS_VGA,
        subsystem_vendor_id=SVGA_VENDOR_ID,
        subsystem_id=SVGA_DEVICE_ID,
        bars=(
            BarSpec(0, "io", 16, split_unaligned=False),
            BarSpec(1, "mem32", vram_size, prefetchable=True, backing=vram),
            BarSpec(2, "mem32", fifo_size, backing=fifo),
        ),
        interrupt_pin=1,
        status=STATUS_DEVSEL_MEDIUM,
    )


def svga_over_link(link: SvgaLink) -> PciFunction:
    """The SVGA II whose BAR0 is `link` and whose VRAM/FIFO BARs are the link's memfds."""
    mem = link.memory
    spec = svga_spec(mem.vram_backing, mem.fifo_backing, len(mem.vram), len(mem.fifo))
    return PciFunction(spec, link, reset=lambda: reset_svga(link))
