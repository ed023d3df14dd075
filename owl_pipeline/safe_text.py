"""Text from data files made safe to print: control characters (terminal escapes, NUL, bidirectional overrides)
shown as escapes, so a caption or a member name can never rewrite a console, a log or a report. Data is stored
as given; only what is shown goes through here."""

from __future__ import annotations

import unicodedata

_BIDI_CONTROLS = {chr(c) for c in (*range(0x202A, 0x202F), *range(0x2066, 0x206A), 0x200E, 0x200F, 0x061C)}


def _shown(char: str) -> str:
    if char in _BIDI_CONTROLS or unicodedata.category(char) in ("Cc", "Cf", "Cs", "Co", "Cn"):
        code = ord(char)
        return f"\\x{code:02x}" if code < 0x100 else f"\\u{code:04x}" if code < 0x10000 else f"\\U{code:08x}"
    return char


def printable(text: object, limit: int = 200) -> str:
    """``text`` with every control or invisible formatting character escaped, cut to ``limit`` characters."""
    text = str(text)
    cut = len(text) > limit
    return "".join(_shown(c) for c in text[:limit]) + (f"... ({len(text)} characters)" if cut else "")
