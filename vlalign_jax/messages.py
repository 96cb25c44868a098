"""One-line forms of exceptions, for user-facing errors that wrap a library's (often multi-line) one."""

from __future__ import annotations


def first_line(error: BaseException, with_type: bool = False) -> str:
    """The first line of `error`'s message (its type's name if it has none), optionally prefixed by
    the type: "ValueError: OUT_OF_RANGE: ..."."""
    text = str(error).strip()
    if not text:
        return type(error).__name__
    line = text.splitlines()[0]
    return f"{type(error).__name__}: {line}" if with_type else line
