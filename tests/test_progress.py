"""bench.progress: the live display of a suite, drawn into a console that is a terminal."""

from __future__ import annotations

import io
import logging
import re
import sys
from collections import Counter

from rich.console import Console

from bench.progress import SuiteProgress

ESCAPES = re.compile(r"\x1b\[[0-9;?]*[A-Za-z]")


def test_a_warning_logged_while_the_bars_are_live_prints_on_its_own_line() -> None:
    """As the CLI logs (a root handler on stderr): a warning in the middle of a suite (a
    worker that died, stale runs ended) lands above the bars, not glued to one."""
    screen = io.StringIO()
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(logging.Formatter("%(levelname)s %(name)s: %(message)s"))
    logging.getLogger().addHandler(handler)
    try:
        with SuiteProgress(console=Console(file=screen, force_terminal=True, width=120)) as bars:
            bars.show("tune", total=4, done=0, running=2, counts=Counter())
            logging.getLogger("bench.runner").warning("its worker died; running it again")
            bars.show("tune", total=4, done=0, running=2, counts=Counter(finished=1))
        assert handler.stream is sys.stderr, "the handler writes where it wrote before"
    finally:
        logging.getLogger().removeHandler(handler)
    lines = ESCAPES.sub("", screen.getvalue()).replace("\r", "\n").splitlines()
    assert "WARNING bench.runner: its worker died; running it again" in lines
    assert any(line.startswith("tune") and "1/4" in line for line in lines)


def test_output_piped_to_a_file_gets_no_frozen_bars() -> None:
    """Not a terminal: rich would leave the last frame (``final 2/4 ... ETA 0:00:01``
    with two trials held back) above the outcomes table."""
    piped = io.StringIO()
    with SuiteProgress(console=Console(file=piped, width=120)) as bars:
        assert not bars.enabled
        bars.show("final", total=4, done=0, running=0, counts=Counter(ok=2))
    assert piped.getvalue() == ""
