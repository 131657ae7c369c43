"""Make model and tool text inert: nothing in it may style, move the cursor or crash the UI."""

from __future__ import annotations

import re

# C0 controls except tab and newline, DEL, and C1 controls (which include CSI, 0x9b).
_CONTROL = re.compile(r"[\x00-\x08\x0b-\x1f\x7f-\x9f]")


def inert(text: str) -> str:
    """Replace control characters (ESC of ANSI sequences included) with visible symbols.

    C0 controls become their Unicode "control picture" (ESC -> ␛); DEL and C1 controls become
    U+FFFD. Rich/Textual markup needs no escaping here: widgets show this text with markup off.
    """
    return _CONTROL.sub(_picture, text)


def _picture(match: re.Match) -> str:
    code = ord(match.group())
    return chr(0x2400 + code) if code < 0x20 else "\ufffd"
