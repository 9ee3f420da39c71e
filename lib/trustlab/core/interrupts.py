"""Killed means failed: SIGTERM and SIGINT end a stage with a non-zero exit and one line.

Every entry point runs inside :func:`exit_loudly_on_signals`::

    with exit_loudly_on_signals("base_model"):
        main()

- SIGTERM exits with 143 and SIGINT with 130 (128 + the signal), after one line on stderr
  naming the stage; ``finally`` blocks and context managers run on the way out, so
  temporary folders are removed and a notebook kernel is shut down.
- Lightning turns SIGTERM into a ``SystemExit`` without a code (exit status 0); that is
  caught and reported as the kill it was.
- On Linux the process also asks to receive SIGTERM when its parent dies, so a stage whose
  ``dvc`` process was killed does not go on writing as an orphan.
"""

from __future__ import annotations

import os
import signal
import sys
from collections.abc import Iterator
from contextlib import contextmanager


class StageInterrupted(SystemExit):
    """Raised from the signal handler; ``code`` is 128 + the signal number."""

    def __init__(self, signum: int):
        super().__init__(128 + signum)
        self.signum = signum


def _die_with_parent() -> None:
    if not sys.platform.startswith("linux"):
        return
    try:
        import ctypes

        libc = ctypes.CDLL(None, use_errno=True)
        PR_SET_PDEATHSIG = 1
        libc.prctl(PR_SET_PDEATHSIG, signal.SIGTERM)
        if os.getppid() == 1:  # the parent is already gone
            os.kill(os.getpid(), signal.SIGTERM)
    except (OSError, AttributeError):  # no prctl: a kill of the parent then leaves us running
        pass


def _raise(signum: int, frame) -> None:
    raise StageInterrupted(signum)


@contextmanager
def exit_loudly_on_signals(stage: str) -> Iterator[None]:
    previous = {s: signal.signal(s, _raise) for s in (signal.SIGTERM, signal.SIGINT)}
    _die_with_parent()
    try:
        yield
    except StageInterrupted as exc:
        print(f"{stage}: stopped by {signal.Signals(exc.signum).name}; the stage failed and its outputs are "
              f"incomplete", file=sys.stderr, flush=True)  # fmt: skip
        raise SystemExit(exc.code) from None
    except KeyboardInterrupt:
        print(f"{stage}: stopped by SIGINT; the stage failed and its outputs are incomplete", file=sys.stderr, flush=True)
        raise SystemExit(128 + signal.SIGINT) from None
    except SystemExit as exc:
        # Lightning's SIGTERMException is a SystemExit without a code: a kill, not a success.
        if exc.code in (None, 0) and type(exc).__name__ == "SIGTERMException":
            print(f"{stage}: stopped by SIGTERM; the stage failed and its outputs are incomplete",
                  file=sys.stderr, flush=True)  # fmt: skip
            raise SystemExit(128 + signal.SIGTERM) from None
        raise
    finally:
        for s, h in previous.items():
            signal.signal(s, h)
