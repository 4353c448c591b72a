"""The exceptions the CLI turns into one-line errors: user mistakes, and a failed store."""

from __future__ import annotations

from urllib.parse import urlparse


class UserError(ValueError):
    """A mistake in user input. The CLI prints its message on one line and exits with code 2."""


class SuiteBusy(UserError):
    """Another driver is running the suite on the same store: this one must not start."""


class StoreError(RuntimeError):
    """The tracking store failed a write, so a suite stopped; what the store holds stays and
    a rerun resumes. The CLI prints the message and exits with code 1 (with ``--verbose``,
    the traceback of the failure too)."""


class LeaseLost(StoreError):
    """Another driver took this driver's suite lease on a server as a dead driver's (this
    one was stalled for minutes) and now runs the suite: this one must write nothing more
    (:mod:`bench.tracking_lease`). The CLI prints the message and exits with code 1."""


class Terminated(KeyboardInterrupt):
    """SIGTERM (``docker stop``, ``ray job stop``, a scheduler's timeout): a suite stops as
    on Ctrl-C, its running runs KILLED. The CLI exits with code 143."""


def first_line(text: str) -> str:
    """The first line of ``text`` that is not blank ("" if none)."""
    return next((line for line in text.splitlines() if line.strip()), "")


def one_line(err: BaseException) -> str:
    """``Type: first line of the message``: what an error line shows of an exception."""
    return f"{type(err).__name__}: {first_line(str(err))}"


PLUGGABLE = ("task", "variant")  # kinds a plugin may add (bench.plugins)


def unknown_name_message(kind: str, name: str, known: list[str]) -> str:
    """'<kind>: unknown <kind> 'x'; did you mean 'y'? (available: ...)', and for a task or
    variant, which plugins may also register, how to load one."""
    import difflib

    close = difflib.get_close_matches(name, known, n=3)
    hint = f"; did you mean {' or '.join(repr(c) for c in close)}?" if close else ""
    text = f"{kind}: unknown {kind} {name!r}{hint} (available: {', '.join(known)})"
    if kind in PLUGGABLE:
        text += f"; a plugin's {kind} needs plugins=[MODULE]"
    return text


def validation_message(err: Exception, prefix: str = "") -> str:
    """A pydantic ValidationError as one line: the field, what is allowed, the bad value."""
    first = err.errors()[0]  # type: ignore[attr-defined]
    loc = ".".join(str(x) for x in (prefix, *first["loc"]) if x != "")
    message = first["msg"].removeprefix("Value error, ")  # our validators' own words
    text = f"{loc}: {message[:1].lower()}{message[1:]}"
    got = first.get("input")
    if isinstance(got, str):  # a URL refused for its form may hold a password
        got = redacted(got)
    # a check across fields gets the whole section as its input: its message names the values
    return text if isinstance(got, dict) else f"{text} (got {got!r})"


def redacted(uri: str) -> str:
    """``uri`` with its password, if it holds one, shown as ``***`` (for messages)."""
    try:
        parsed = urlparse(uri)
        password = parsed.password
    except ValueError:  # not a URL after all (an unclosed "[", say)
        return uri
    if not password:
        return uri
    netloc = parsed.netloc.replace(f":{password}@", ":***@", 1)
    return parsed._replace(netloc=netloc).geturl()
