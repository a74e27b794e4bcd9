"""vfio-user trap source: QEMU's vfio-user-pci client connects to the shim, which serves the device.

protocol.py (wire format), pci.py (config space, regions), memory.py (GuestMemory over DMA maps), irq.py
(InterruptLine over eventfds), server.py (socket server and dispatch), devices.py (the PCI functions we serve),
trace.py (access log).
"""
