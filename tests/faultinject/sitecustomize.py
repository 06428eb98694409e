"""Faults in superd, for tests only (never part of the product).

A test puts this folder on PYTHONPATH and names a file in an environment
variable; each time the file exists at the moment below, it is removed and
superd raises there, as a bug of its own would:

- SUPERD_TEST_FAULT: when the daemon's loop has finished a round, outside
  every callback's fault boundary (an error that escapes the event loop);
- SUPERD_TEST_RESUME_FAULT: when a new image starts to take the state over;
- SUPERD_TEST_EXEC_FAULT: when superd execs itself (os.execv fails, as for a
  missing interpreter).
"""

import os

LOOP_FAULT = os.environ.get("SUPERD_TEST_FAULT")
RESUME_FAULT = os.environ.get("SUPERD_TEST_RESUME_FAULT")
EXEC_FAULT = os.environ.get("SUPERD_TEST_EXEC_FAULT")


def _fire(path: str) -> None:
    if os.path.exists(path):
        os.unlink(path)
        raise RuntimeError("fault injected by the test")


if LOOP_FAULT:
    from superd import loop

    _run_due_timers = loop.Loop._run_due_timers

    def _faulty_round(self: loop.Loop) -> None:
        _run_due_timers(self)
        _fire(LOOP_FAULT)

    loop.Loop._run_due_timers = _faulty_round  # type: ignore[method-assign]

if RESUME_FAULT:
    from superd import daemon

    _resume = daemon.Daemon.resume

    def _faulty_resume(self: daemon.Daemon, state: dict) -> None:  # type: ignore[type-arg]
        _fire(RESUME_FAULT)
        _resume(self, state)

    daemon.Daemon.resume = _faulty_resume  # type: ignore[method-assign]

if EXEC_FAULT:
    _execv = os.execv

    def _faulty_execv(path: str, argv: list[str]) -> None:
        if os.path.exists(EXEC_FAULT):
            os.unlink(EXEC_FAULT)
            raise FileNotFoundError(2, "No such file or directory (injected)", path)
        _execv(path, argv)

    os.execv = _faulty_execv  # type: ignore[assignment]
