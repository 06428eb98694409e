"""A fault in superd's event loop, for tests only (never part of the product).

A test puts this folder on PYTHONPATH and names a file in SUPERD_TEST_FAULT.
Each time that file exists when the daemon's loop has finished a round, the
file is removed and the round raises, outside every callback's fault
boundary: an error that escapes the event loop, as a bug in it would.
"""

import os

FAULT_FILE = os.environ.get("SUPERD_TEST_FAULT")

if FAULT_FILE:
    from superd import loop

    _run_due_timers = loop.Loop._run_due_timers

    def _faulty_round(self: loop.Loop) -> None:
        _run_due_timers(self)
        if os.path.exists(FAULT_FILE):
            os.unlink(FAULT_FILE)
            raise RuntimeError("fault injected by the test")

    loop.Loop._run_due_timers = _faulty_round  # type: ignore[method-assign]
