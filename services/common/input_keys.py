"""The one key table: QEMU QKeyCode names (what rdv events carry) and the codes sources report.

Events name keys by QEMU's layout-independent qcodes, exactly the set QEMU 7.2's `input-send-event` accepts, so
the shim never translates. Sources translate once, here: Linux evdev KEY_* numbers (the evdev source) and USB
HID keyboard usages (equal to SDL scancodes below 256, for the display window). The code pairs follow the
public keycodemapdb table that QEMU itself is generated from.
"""

from __future__ import annotations

import difflib

# qcode -> Linux evdev KEY_* code (include/uapi/linux/input-event-codes.h). QEMU 7.2's whole QKeyCode enum
# except "unmapped".
QCODE_TO_EVDEV: dict[str, int] = {
    "esc": 1, "1": 2, "2": 3, "3": 4, "4": 5, "5": 6, "6": 7, "7": 8, "8": 9, "9": 10, "0": 11,
    "minus": 12, "equal": 13, "backspace": 14, "tab": 15,
    "q": 16, "w": 17, "e": 18, "r": 19, "t": 20, "y": 21, "u": 22, "i": 23, "o": 24, "p": 25,
    "bracket_left": 26, "bracket_right": 27, "ret": 28, "ctrl": 29,
    "a": 30, "s": 31, "d": 32, "f": 33, "g": 34, "h": 35, "j": 36, "k": 37, "l": 38,
    "semicolon": 39, "apostrophe": 40, "grave_accent": 41, "shift": 42, "backslash": 43,
    "z": 44, "x": 45, "c": 46, "v": 47, "b": 48, "n": 49, "m": 50,
    "comma": 51, "dot": 52, "slash": 53, "shift_r": 54, "kp_multiply": 55, "asterisk": 55, "alt": 56,
    "spc": 57, "caps_lock": 58,
    "f1": 59, "f2": 60, "f3": 61, "f4": 62, "f5": 63, "f6": 64, "f7": 65, "f8": 66, "f9": 67, "f10": 68,
    "num_lock": 69, "scroll_lock": 70,
    "kp_7": 71, "kp_8": 72, "kp_9": 73, "kp_subtract": 74, "kp_4": 75, "kp_5": 76, "kp_6": 77, "kp_add": 78,
    "kp_1": 79, "kp_2": 80, "kp_3": 81, "kp_0": 82, "kp_decimal": 83,
    "less": 86, "f11": 87, "f12": 88, "ro": 89, "hiragana": 91, "henkan": 92, "katakanahiragana": 93,
    "muhenkan": 94, "kp_enter": 96, "ctrl_r": 97, "kp_divide": 98, "print": 99, "sysrq": 99, "alt_r": 100,
    "lf": 101, "home": 102, "up": 103, "pgup": 104, "left": 105, "right": 106, "end": 107, "down": 108,
    "pgdn": 109, "insert": 110, "delete": 111, "audiomute": 113, "volumedown": 114, "volumeup": 115,
    "power": 116, "kp_equals": 117, "pause": 119, "kp_comma": 121, "lang1": 122, "lang2": 123, "yen": 124,
    "meta_l": 125, "meta_r": 126, "compose": 127, "stop": 128, "again": 129, "props": 130, "undo": 131,
    "front": 132, "copy": 133, "open": 134, "paste": 135, "find": 136, "cut": 137, "help": 138, "menu": 139,
    "calculator": 140, "sleep": 142, "wake": 143, "mail": 155, "ac_bookmarks": 156, "computer": 157,
    "ac_back": 158, "ac_forward": 159, "audionext": 163, "audioplay": 164, "audioprev": 165, "audiostop": 166,
    "ac_home": 172, "ac_refresh": 173, "mediaselect": 226,
}  # fmt: skip

QCODES: frozenset[str] = frozenset(QCODE_TO_EVDEV)

# Where two qcodes share an evdev code, the source side picks the one a guest expects from that key: the
# PrintScreen key reports KEY_SYSRQ, and KEY_KPASTERISK is the keypad's multiply key.
_PREFERRED = {55: "kp_multiply", 99: "print"}
EVDEV_TO_QCODE: dict[int, str] = {code: _PREFERRED.get(code, q) for q, code in reversed(QCODE_TO_EVDEV.items())}

# USB HID keyboard page (0x07) usage -> qcode. SDL_Scancode values below 256 are these usages.
HID_TO_QCODE: dict[int, str] = {
    **{4 + i: chr(ord("a") + i) for i in range(26)},
    **{30 + i: str((i + 1) % 10) for i in range(10)},
    40: "ret", 41: "esc", 42: "backspace", 43: "tab", 44: "spc", 45: "minus", 46: "equal",
    47: "bracket_left", 48: "bracket_right", 49: "backslash", 50: "backslash", 51: "semicolon",
    52: "apostrophe", 53: "grave_accent", 54: "comma", 55: "dot", 56: "slash", 57: "caps_lock",
    **{58 + i: f"f{i + 1}" for i in range(12)},
    70: "print", 71: "scroll_lock", 72: "pause", 73: "insert", 74: "home", 75: "pgup", 76: "delete", 77: "end",
    78: "pgdn", 79: "right", 80: "left", 81: "down", 82: "up", 83: "num_lock", 84: "kp_divide",
    85: "kp_multiply", 86: "kp_subtract", 87: "kp_add", 88: "kp_enter",
    **{89 + i: f"kp_{i + 1}" for i in range(9)},
    98: "kp_0", 99: "kp_decimal", 100: "less", 101: "compose", 102: "power", 103: "kp_equals", 116: "open",
    117: "help", 119: "front", 120: "stop", 121: "again", 122: "undo", 123: "cut", 124: "copy", 125: "paste",
    126: "find", 127: "audiomute", 128: "volumeup", 129: "volumedown", 133: "kp_comma", 135: "ro",
    136: "katakanahiragana", 137: "yen", 138: "henkan", 139: "muhenkan", 144: "lang1", 145: "lang2",
    147: "hiragana",
    224: "ctrl", 225: "shift", 226: "alt", 227: "meta_l", 228: "ctrl_r", 229: "shift_r", 230: "alt_r",
    231: "meta_r",
}  # fmt: skip


# Names people try first, for the error message only (events must carry the qcode).
_COMMON_NAMES = {
    "enter": "ret", "return": "ret", "space": "spc", "escape": "esc", "control": "ctrl", "lctrl": "ctrl",
    "rctrl": "ctrl_r", "lshift": "shift", "rshift": "shift_r", "period": "dot", "super": "meta_l",
    "win": "meta_l", "pageup": "pgup", "pagedown": "pgdn", "del": "delete", "ins": "insert",
    "capslock": "caps_lock", "grave": "grave_accent", "printscreen": "print",
}  # fmt: skip


def check_qcode(name: str) -> str:
    """Return `name` if it is a qcode QEMU accepts, else raise ValueError with the closest names."""
    if name in QCODES:
        return name
    lowered = name.lower()
    near = [_COMMON_NAMES[lowered]] if lowered in _COMMON_NAMES else []
    near += [n for n in difflib.get_close_matches(lowered, QCODES, n=3, cutoff=0.6) if n not in near]
    hint = f"; did you mean {', '.join(repr(n) for n in near)}?" if near else ""
    raise ValueError(
        f"unknown key {name!r}: keys are QEMU qcode names such as 'a', 'shift', 'ret', 'spc', 'kp_1'{hint}"
    )
