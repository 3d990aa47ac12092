"""The one error type for user mistakes.

The CLI prints a ``UserError`` as a single red line (plus its hint) and exits with code 2. Anything else is a
bug and keeps its traceback.
"""

from __future__ import annotations


class UserError(Exception):
    """A mistake the user can fix: a bad path, a bad input file, a bad spec, a missing weight file."""

    exit_code = 2

    def __init__(self, message: str, hint: str | None = None):
        super().__init__(message)
        self.message = message
        self.hint = hint

    def one_line(self) -> str:
        """Message and hint on one line, with control characters from input (file names, column names, ids)
        shown as escapes; before splitting, since str.split() would take some of them for whitespace."""
        from llavarad_cli.console import visible

        text = " ".join(visible(self.message).split())
        if self.hint:
            text += f" (hint: {' '.join(visible(self.hint).split())})"
        return text

