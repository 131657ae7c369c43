"""Make model and tool text inert before a terminal sees it: nothing in it may retitle the window,
plant a hyperlink, move the cursor or restyle what follows. The CLIs print through this, and the
chat app's widgets show their text through it too."""

from __future__ import annotations

import re

# C0 controls except tab and newline, DEL, and C1 controls (0x80-0x9f: CSI is 0x9b, OSC 0x9d).
_CONTROL = re.compile(r"[\x00-\x08\x0b-\x1f\x7f-\x9f]")


def inert(text: str) -> str:
    """Replace control characters (the ESC and BEL of escape sequences included) with visible symbols.

    C0 controls become their Unicode "control picture" (ESC -> ␛, BEL -> ␇); DEL and C1 controls
    become U+FFFD. Tabs and newlines stay. Rich/Textual markup needs no escaping here: widgets
    show this text with markup off.
    """
    return _CONTROL.sub(_picture, text)


def _picture(match: re.Match) -> str:
    code = ord(match.group())
    return chr(0x2400 + code) if code < 0x20 else "\ufffd"
