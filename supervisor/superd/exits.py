"""How a process ended, in words: one description for logs, replies and superctl.

An exit status is the exit code, or -SIGNUM for a death by signal (what
`os.waitstatus_to_exitcode` returns and what the wire carries).
"""

from __future__ import annotations

import os
import signal


def describe_exit(exit_status: int | None) -> str:
    """`exit 1`, `killed by SIGKILL`, `killed by signal 200`; "" for none."""
    if exit_status is None:
        return ""
    if exit_status >= 0:
        return f"exit {exit_status}"
    try:
        return f"killed by {signal.Signals(-exit_status).name}"
    except ValueError:
        return f"killed by signal {-exit_status}"


def describe_wait_status(wait_status: int) -> str:
    """A raw waitpid() status as a past-tense phrase: `exited 0`, `killed by SIGTERM`."""
    text = describe_exit(os.waitstatus_to_exitcode(wait_status))
    return text.replace("exit", "exited", 1)
