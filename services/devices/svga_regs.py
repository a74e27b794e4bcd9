"""VMware SVGA II facts: PCI identity, I/O ports, registers, FIFO layout, capability bits and commands.

Values come from the device's public headers (svga_reg.h as shipped with Linux vmwgfx) and from QEMU's
vmware_vga.c. Every other module takes its numbers from here. Names drop the SVGA_ prefix.
"""

PCI_VENDOR_ID = 0x15AD
PCI_DEVICE_ID = 0x0405
PCI_CLASS = 0x0300  # display controller, VGA compatible

# BAR0 is a 16-byte I/O region; BAR1 is VRAM (the guest framebuffer); BAR2 is FIFO memory.
IO_BAR_SIZE = 16
INDEX_PORT = 0x0  # 32-bit: selects the register that VALUE_PORT reads/writes
VALUE_PORT = 0x1  # 32-bit and unaligned: the selected register
BIOS_PORT = 0x2  # unused by drivers
IRQSTATUS_PORT = 0x8  # 32-bit: pending interrupt flags, write 1 to clear
VALUE_PORT_END = VALUE_PORT + 4  # one past the last byte of the VALUE port

# Version negotiation: the guest writes the ID it wants and reads back what the device agreed to.
MAGIC = 0x900000


def make_id(version: int) -> int:
    return (MAGIC << 8) | version


ID_0 = make_id(0)
ID_1 = make_id(1)
ID_2 = make_id(2)
ID_INVALID = 0xFFFFFFFF
SUPPORTED_IDS = (ID_0, ID_1, ID_2)

# Register indexes.
REG_ID = 0
REG_ENABLE = 1
REG_WIDTH = 2
REG_HEIGHT = 3
REG_MAX_WIDTH = 4
REG_MAX_HEIGHT = 5
REG_DEPTH = 6
REG_BITS_PER_PIXEL = 7
REG_PSEUDOCOLOR = 8
REG_RED_MASK = 9
REG_GREEN_MASK = 10
REG_BLUE_MASK = 11
REG_BYTES_PER_LINE = 12
REG_FB_START = 13
REG_FB_OFFSET = 14
REG_VRAM_SIZE = 15
REG_FB_SIZE = 16
REG_CAPABILITIES = 17  # registers from here on exist from SVGA_ID_1
REG_MEM_START = 18
REG_MEM_SIZE = 19
REG_CONFIG_DONE = 20
REG_SYNC = 21
REG_BUSY = 22
REG_GUEST_ID = 23
REG_CURSOR_ID = 24
REG_CURSOR_X = 25
REG_CURSOR_Y = 26
REG_CURSOR_ON = 27
REG_HOST_BITS_PER_PIXEL = 28
REG_SCRATCH_SIZE = 29
REG_MEM_REGS = 30
REG_NUM_DISPLAYS = 31
REG_PITCHLOCK = 32
REG_IRQMASK = 33
REG_TRACES = 45  # not implemented, but Linux writes it on every load and unload
REG_TOP_IMPLEMENTED = 34  # one past the last register this device models

# Palette: 256 entries of (red, green, blue), 8 bits each; scratch registers follow it.
NUM_PALETTE_REGS = 3 * 256
PALETTE_BASE = 1024
PALETTE_END = PALETTE_BASE + NUM_PALETTE_REGS  # exclusive
SCRATCH_BASE = PALETTE_END

# REG_ENABLE bits.
ENABLE_ENABLE = 0x1
ENABLE_HIDE = 0x2
ENABLE_MASK = ENABLE_ENABLE | ENABLE_HIDE

# REG_CURSOR_ON values (cursor bypass).
CURSOR_ON_HIDE = 0
CURSOR_ON_SHOW = 1
CURSOR_ON_REMOVE_FROM_FB = 2
CURSOR_ON_RESTORE_TO_FB = 3

# Device capabilities (REG_CAPABILITIES).
CAP_NONE = 0x00000000
CAP_RECT_FILL = 0x00000001  # dropped from newer headers but still how QEMU and old guests spell it
CAP_RECT_COPY = 0x00000002
CAP_RECT_PAT_FILL = 0x00000004
CAP_LEGACY_OFFSCREEN = 0x00000008
CAP_RASTER_OP = 0x00000010
CAP_CURSOR = 0x00000020
CAP_CURSOR_BYPASS = 0x00000040
CAP_CURSOR_BYPASS_2 = 0x00000080
CAP_8BIT_EMULATION = 0x00000100
CAP_ALPHA_CURSOR = 0x00000200
CAP_GLYPH = 0x00000400
CAP_GLYPH_CLIPPING = 0x00000800
CAP_OFFSCREEN_1 = 0x00001000
CAP_ALPHA_BLEND = 0x00002000
CAP_3D = 0x00004000
CAP_EXTENDED_FIFO = 0x00008000
CAP_MULTIMON = 0x00010000
CAP_PITCHLOCK = 0x00020000
CAP_IRQMASK = 0x00040000
CAP_DISPLAY_TOPOLOGY = 0x00080000
CAP_GMR = 0x00100000
CAP_TRACES = 0x00200000
CAP_GMR2 = 0x00400000
CAP_SCREEN_OBJECT_2 = 0x00800000
CAP_COMMAND_BUFFERS = 0x01000000
CAP_CMD_BUFFERS_2 = 0x04000000
CAP_GBOBJECTS = 0x08000000
CAP_DX = 0x10000000
CAP_HP_CMD_QUEUE = 0x20000000
CAP_NO_BB_RESTRICTION = 0x40000000
CAP_CAP2_REGISTER = 0x80000000

# Interrupt flags (IRQSTATUS port and REG_IRQMASK).
IRQFLAG_ANY_FENCE = 0x1
IRQFLAG_FIFO_PROGRESS = 0x2
IRQFLAG_FENCE_GOAL = 0x4
IRQFLAG_COMMAND_BUFFER = 0x8
IRQFLAG_ERROR = 0x10
IRQFLAG_MASK = 0x1F

# FIFO registers: 32-bit word indexes at the start of FIFO memory. The guest picks MIN (the byte offset
# where command data starts); every register below MIN/4 exists, the rest of the words form the ring.
FIFO_MIN = 0
FIFO_MAX = 1
FIFO_NEXT_CMD = 2
FIFO_STOP = 3
FIFO_NUM_BASIC_REGS = 4  # always present, so MIN is at least 16 bytes
FIFO_CAPABILITIES = 4  # extended registers (SVGA_CAP_EXTENDED_FIFO) from here on
FIFO_FLAGS = 5
FIFO_FENCE = 6
FIFO_3D_HWVERSION = 7
FIFO_PITCHLOCK = 8
FIFO_CURSOR_ON = 9
FIFO_CURSOR_X = 10
FIFO_CURSOR_Y = 11
FIFO_CURSOR_COUNT = 12
FIFO_CURSOR_LAST_UPDATED = 13
FIFO_RESERVED = 14
FIFO_CURSOR_SCREEN_ID = 15
FIFO_DEAD = 16
FIFO_3D_HWVERSION_REVISED = 17
FIFO_3D_CAPS = 32
FIFO_3D_CAPS_LAST = 32 + 255
FIFO_GUEST_3D_HWVERSION = 288
FIFO_FENCE_GOAL = 289
FIFO_BUSY = 290  # Linux does cmpxchg(FIFO[290], 0, 1) before writing SYNC; the device clears it
FIFO_NUM_REGS = 291  # reported in REG_MEM_REGS
FIFO_MIN_DATA_BYTES = 10 * 1024  # the headers ask MAX - MIN >= 10 KiB (advice: not enforced here)

# FIFO capabilities (FIFO_CAPABILITIES, only with SVGA_CAP_EXTENDED_FIFO).
FIFO_CAP_NONE = 0
FIFO_CAP_FENCE = 1 << 0
FIFO_CAP_ACCELFRONT = 1 << 1
FIFO_CAP_PITCHLOCK = 1 << 2
FIFO_CAP_VIDEO = 1 << 3
FIFO_CAP_CURSOR_BYPASS_3 = 1 << 4
FIFO_CAP_ESCAPE = 1 << 5
FIFO_CAP_RESERVE = 1 << 6
FIFO_CAP_SCREEN_OBJECT = 1 << 7
FIFO_CAP_GMR2 = 1 << 8
FIFO_CAP_SCREEN_OBJECT_2 = 1 << 9
FIFO_CAP_DEAD = 1 << 10

FIFO_FLAG_NONE = 0
FIFO_FLAG_ACCELFRONT = 1 << 0

# FIFO command ids.
CMD_INVALID_CMD = 0
CMD_UPDATE = 1
CMD_RECT_FILL = 2
CMD_RECT_COPY = 3
CMD_DEFINE_BITMAP = 4
CMD_DEFINE_BITMAP_SCANLINE = 5
CMD_DEFINE_PIXMAP = 6
CMD_DEFINE_PIXMAP_SCANLINE = 7
CMD_RECT_BITMAP_FILL = 8
CMD_RECT_PIXMAP_FILL = 9
CMD_RECT_BITMAP_COPY = 10
CMD_RECT_PIXMAP_COPY = 11
CMD_FREE_OBJECT = 12
CMD_RECT_ROP_FILL = 13
CMD_RECT_ROP_COPY = 14
CMD_RECT_ROP_BITMAP_FILL = 15
CMD_RECT_ROP_PIXMAP_FILL = 16
CMD_RECT_ROP_BITMAP_COPY = 17
CMD_RECT_ROP_PIXMAP_COPY = 18
CMD_DEFINE_CURSOR = 19
CMD_DISPLAY_CURSOR = 20
CMD_MOVE_CURSOR = 21
CMD_DEFINE_ALPHA_CURSOR = 22
CMD_DRAW_GLYPH = 23
CMD_DRAW_GLYPH_CLIPPED = 24
CMD_UPDATE_VERBOSE = 25
CMD_SURFACE_FILL = 26
CMD_SURFACE_COPY = 27
CMD_SURFACE_ALPHA_BLEND = 28
CMD_FRONT_ROP_FILL = 29
CMD_FENCE = 30
CMD_ESCAPE = 33
CMD_DEFINE_SCREEN = 34
CMD_DESTROY_SCREEN = 35
CMD_DEFINE_GMRFB = 36
CMD_BLIT_GMRFB_TO_SCREEN = 37
CMD_BLIT_SCREEN_TO_GMRFB = 38
CMD_ANNOTATION_FILL = 39
CMD_ANNOTATION_COPY = 40
CMD_DEFINE_GMR2 = 41
CMD_REMAP_GMR2 = 42
CMD_NOP = 45
CMD_NOP_ERROR = 46
CMD_3D_FIRST = 1000  # SVGA3D commands: id, body size in bytes, body
CMD_3D_LAST = 2999

# Total length in 32-bit words (id word included) of every command whose length does not depend on its
# contents. Anything listed here can be skipped exactly even when the device does not implement it.
CMD_WORDS: dict[int, int] = {
    CMD_INVALID_CMD: 1,
    CMD_UPDATE: 5,  # x, y, width, height
    CMD_RECT_FILL: 6,  # color, x, y, width, height
    CMD_RECT_COPY: 7,  # src x, src y, dst x, dst y, width, height
    CMD_RECT_ROP_FILL: 7,  # color, x, y, width, height, rop
    CMD_RECT_ROP_COPY: 8,  # src x, src y, dst x, dst y, width, height, rop
    CMD_UPDATE_VERBOSE: 6,  # x, y, width, height, reason
    CMD_FRONT_ROP_FILL: 7,  # color, x, y, width, height, rop
    CMD_FENCE: 2,  # fence id
    CMD_DESTROY_SCREEN: 2,  # screen id
    CMD_DEFINE_GMRFB: 5,  # gmr id, offset, bytes per line, format
    CMD_BLIT_GMRFB_TO_SCREEN: 8,  # src point, dst rect (l, t, r, b), screen id
    CMD_BLIT_SCREEN_TO_GMRFB: 8,  # dst point, src rect (l, t, r, b), screen id
    CMD_ANNOTATION_FILL: 2,  # color
    CMD_ANNOTATION_COPY: 4,  # src point, screen id
    CMD_DEFINE_GMR2: 3,  # gmr id, number of pages
    CMD_NOP: 1,
    CMD_NOP_ERROR: 1,
}

# Header lengths (id word included) of the variable-length commands this device can measure.
DEFINE_CURSOR_HEADER_WORDS = 8  # id, hotspot x, hotspot y, width, height, AND depth, XOR depth
DEFINE_ALPHA_CURSOR_HEADER_WORDS = 6  # id, hotspot x, hotspot y, width, height; then width*height BGRA
ESCAPE_HEADER_WORDS = 3  # namespace id, size in bytes; then the bytes, padded to a word
DEFINE_SCREEN_HEADER_WORDS = 2  # the screen object's first word is its own size in bytes
CMD_3D_HEADER_WORDS = 2  # id, body size in bytes

ROP_COPY = 0x03  # the only raster op RECT_ROP_COPY / FRONT_ROP_FILL may carry

# Limits of our own (not from the spec): the headers call MAX_WIDTH/HEIGHT arbitrary; 2560x1600x32 fits
# the default 16 MiB of VRAM. Cursors beyond 256x256 are refused (Linux uses 64x64).
MAX_WIDTH = 2560
MAX_HEIGHT = 1600
DEFAULT_WIDTH = 1024
DEFAULT_HEIGHT = 768
DEFAULT_BPP = 32
MAX_CURSOR_SIZE = 256
DEFAULT_SCRATCH_SIZE = 64
DEFAULT_VRAM_SIZE = 16 * 1024 * 1024  # QEMU's default; what Linux vmwgfx was tested with
DEFAULT_FIFO_SIZE = 256 * 1024  # QEMU uses 64 KiB; Linux mapped 256 KiB fine
HOST_BITS_PER_PIXEL = 32
NUM_DISPLAYS = 1  # Linux 6.1 creates no fbdev when this reads 0 (as QEMU's model returns)

# Pixel formats by guest bits per pixel: colour depth and the (red, green, blue) masks.
DEPTH_FOR_BPP = {8: 8, 16: 16, 32: 24}
MASKS_FOR_BPP = {
    8: (0, 0, 0),  # pseudocolor: pixels index the palette
    16: (0xF800, 0x07E0, 0x001F),
    32: (0xFF0000, 0x00FF00, 0x0000FF),
}
SUPPORTED_BPP = tuple(DEPTH_FOR_BPP)
