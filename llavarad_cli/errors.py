"""The one error type for user mistakes, and the one for a worker process that crashed or was killed.

The CLI prints a ``UserError`` as a single red line (plus its hint) and exits with code 2. Anything else is a
bug and keeps its traceback; a bug inside a training worker has already printed its traceback in that worker
(and saved it beside the run), so the parent reports it as a :class:`WorkerFailed` line and exits with code 1;
a killed `prepare` image worker is reported the same way.
"""

from __future__ import annotations


class _OneLineError(Exception):
    """An error the CLI shows as one line (message and hint) with its own exit code, without a traceback."""

    exit_code = 1

    def __init__(self, message: str, hint: str | None = None):
        super().__init__(message)
        self.message = message
        self.hint = hint

    def one_line(self) -> str:
        return one_line(self.message, self.hint)


class UserError(_OneLineError):
    """A mistake the user can fix: a bad path, a bad input file, a bad spec, a missing weight file."""

    exit_code = 2


class WorkerFailed(_OneLineError):
    """A worker process (a training rank, a `prepare` image worker) crashed or was killed: not the user's
    mistake, and not a bug of the parent process.

    Deliberately not a ``UserError``: code that catches user mistakes must not swallow a crash. The message
    names the rank and the error and says where the worker's traceback is.
    """

    exit_code = 1


def one_line(message: str, hint: str | None = None) -> str:
    """Message and hint on one line, with control characters from input (file names, column names, ids)
    shown as escapes; before splitting, since str.split() would take some of them for whitespace."""
    from llavarad_cli.console import visible

    text = " ".join(visible(message).split())
    if hint:
        text += f" (hint: {' '.join(visible(hint).split())})"
    return text



class Interrupted(UserError):
    """Ctrl-C during a command that runs child processes (the training launcher): one line, exit 130 like
    any command stopped by SIGINT."""

    exit_code = 130


#: Why an output could not be written, and what to do about it, by errno name.
_WRITE_HINTS = {
    "ENOSPC": "free some space and rerun the same command: finished work is kept",
    "EDQUOT": "free some quota and rerun the same command: finished work is kept",
    "EROFS": "write to a folder on a writable file system",
    "EACCES": "write to a folder you may write to",
    "EPERM": "write to a folder you may write to",
    "ENOTDIR": "a file is in the way where a folder is needed; choose another output path",
    "EISDIR": "a folder is in the way where a file is needed; choose another output path",
    "EEXIST": "a file is in the way where a folder is needed; choose another output path",
}


def os_error_line(exc: OSError) -> str:
    """One line for an OSError that stopped a command: where (the path, when known), why, and what to do.

    A failure to write an output is a property of the machine (full disk, read-only folder, a file where a
    folder should be), never of the input, so it stops the run instead of being counted as a bad record.
    """
    import errno as errno_names

    name = errno_names.errorcode.get(exc.errno or 0, "")
    why = exc.strerror or str(exc) or type(exc).__name__
    where = str(exc.filename) if exc.filename else ""
    if getattr(exc, "filename2", None):
        where = f"{exc.filename} -> {exc.filename2}"
    if name in _WRITE_HINTS:
        text = f"could not write {where}: {why}" if where else f"could not write an output: {why}"
    else:
        text = f"{where}: {why}" if where else why
    err = UserError(text, hint=_WRITE_HINTS.get(name))
    return err.one_line()
