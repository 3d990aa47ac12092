"""Printing text that came from input: file names, CSV headers, record ids, report text, error lines.

Such text may hold terminal control sequences (an ESC in a CSV header can clear the screen or retitle the
window; a CR can overwrite what was printed before it; a bidi override can reorder what the user reads).
Everything printed that came from input goes through ``visible`` (plain output) or ``safe`` (inside rich
markup), which show those characters as ``\\x1b``-style escapes instead of sending them to the terminal.
"""

from __future__ import annotations

import re

from rich.markup import escape as _escape_markup

# C0 controls except tab and newline (rich lays those out itself), DEL, C1 controls, and the Unicode
# direction marks/overrides/isolates that change the order in which a line is displayed.
_CONTROL = re.compile("[\x00-\x08\x0b-\x1f\x7f-\x9f\u061c\u200e\u200f\u202a-\u202e\u2066-\u2069]")


def _show(match: re.Match) -> str:
    return match.group().encode("unicode_escape").decode("ascii")


def visible(text: object) -> str:
    """``str(text)`` with control characters written as escapes (``\\x1b``, ``\\r``, ``\\u202e``)."""
    return _CONTROL.sub(_show, str(text))


def safe(text: object) -> str:
    """``visible`` text with rich markup escaped, for f-strings printed with markup on (tables, messages)."""
    return _escape_markup(visible(text))
