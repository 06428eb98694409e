"""Worker states, the events that move them, and the table that maps each
(state, event) pair to the name of the handler that owns that transition.

The table is data so that tests can check it is total and so that every
transition a worker can make is listed in one place.
"""

from __future__ import annotations

from enum import Enum


class State(str, Enum):
    STOPPED = "STOPPED"
    STARTING = "STARTING"
    RUNNING = "RUNNING"
    BACKOFF = "BACKOFF"
    STOPPING = "STOPPING"
    EXITED = "EXITED"
    FATAL = "FATAL"


class Event(str, Enum):
    START = "start"  # a user (or autostart) asks for the worker to run
    STOP = "stop"  # a user (or shutdown) asks for the worker to stop
    UP = "up"  # startsecs elapsed, or the worker reported ready
    DIED = "died"  # the worker's main process was reaped
    RETRY = "retry"  # the backoff delay elapsed
    KILL = "kill"  # stoptimeout elapsed while stopping
    TIMEOUT = "timeout"  # start_timeout elapsed without a readiness report
    # superd could not spawn for lack of its own resources (fds, processes,
    # memory): not the worker's failure, so it is not counted as one.
    NO_RESOURCES = "no_resources"
    # A failing healthcheck or memory over max_memory: stop, then start again.
    RESTART = "restart"


# (state, event) -> handler name on Instance.  Every pair is present: a pair
# that needs no work maps to "ignore", so a forgotten case is a test failure
# rather than a silent no-op.
TRANSITIONS: dict[tuple[State, Event], str] = {
    (State.STOPPED, Event.START): "spawn",
    (State.STOPPED, Event.STOP): "ignore",
    (State.STOPPED, Event.UP): "ignore",
    (State.STOPPED, Event.DIED): "ignore",
    (State.STOPPED, Event.RETRY): "ignore",
    (State.STOPPED, Event.KILL): "ignore",
    (State.STOPPED, Event.TIMEOUT): "ignore",
    (State.STOPPED, Event.RESTART): "ignore",
    (State.STOPPED, Event.NO_RESOURCES): "wait_for_resources",
    (State.STARTING, Event.START): "ignore",
    (State.STARTING, Event.STOP): "begin_stop",
    (State.STARTING, Event.UP): "mark_running",
    (State.STARTING, Event.DIED): "start_failed",
    (State.STARTING, Event.RETRY): "ignore",
    (State.STARTING, Event.KILL): "ignore",
    (State.STARTING, Event.TIMEOUT): "start_timed_out",
    (State.STARTING, Event.RESTART): "ignore",
    (State.STARTING, Event.NO_RESOURCES): "ignore",
    (State.RUNNING, Event.START): "ignore",
    (State.RUNNING, Event.STOP): "begin_stop",
    (State.RUNNING, Event.UP): "ignore",
    (State.RUNNING, Event.DIED): "exited",
    (State.RUNNING, Event.RETRY): "ignore",
    (State.RUNNING, Event.KILL): "ignore",
    (State.RUNNING, Event.TIMEOUT): "ignore",
    (State.RUNNING, Event.RESTART): "restart",
    (State.RUNNING, Event.NO_RESOURCES): "ignore",
    (State.BACKOFF, Event.START): "ignore",
    (State.BACKOFF, Event.STOP): "cancel_retry",
    (State.BACKOFF, Event.UP): "ignore",
    (State.BACKOFF, Event.DIED): "ignore",
    (State.BACKOFF, Event.RETRY): "respawn",
    (State.BACKOFF, Event.KILL): "ignore",
    (State.BACKOFF, Event.TIMEOUT): "ignore",
    (State.BACKOFF, Event.RESTART): "ignore",
    (State.BACKOFF, Event.NO_RESOURCES): "wait_for_resources",
    (State.STOPPING, Event.START): "start_after_stop",
    (State.STOPPING, Event.STOP): "ignore",
    (State.STOPPING, Event.UP): "ignore",
    (State.STOPPING, Event.DIED): "stopped",
    (State.STOPPING, Event.RETRY): "ignore",
    (State.STOPPING, Event.KILL): "kill_group",
    (State.STOPPING, Event.TIMEOUT): "ignore",
    (State.STOPPING, Event.RESTART): "ignore",
    (State.STOPPING, Event.NO_RESOURCES): "ignore",
    (State.EXITED, Event.START): "spawn",
    (State.EXITED, Event.STOP): "forget_exit",
    (State.EXITED, Event.UP): "ignore",
    (State.EXITED, Event.DIED): "ignore",
    (State.EXITED, Event.RETRY): "ignore",
    (State.EXITED, Event.KILL): "ignore",
    (State.EXITED, Event.TIMEOUT): "ignore",
    (State.EXITED, Event.RESTART): "ignore",
    (State.EXITED, Event.NO_RESOURCES): "wait_for_resources",
    (State.FATAL, Event.START): "spawn",
    (State.FATAL, Event.STOP): "forget_exit",
    (State.FATAL, Event.UP): "ignore",
    (State.FATAL, Event.DIED): "ignore",
    (State.FATAL, Event.RETRY): "ignore",
    (State.FATAL, Event.KILL): "ignore",
    (State.FATAL, Event.TIMEOUT): "ignore",
    (State.FATAL, Event.RESTART): "ignore",
    (State.FATAL, Event.NO_RESOURCES): "wait_for_resources",
}

# Which states a handler may move a worker into; Instance checks every move.
ALLOWED: dict[State, frozenset[State]] = {
    State.STOPPED: frozenset({State.STARTING, State.BACKOFF}),
    State.STARTING: frozenset({State.RUNNING, State.BACKOFF, State.FATAL, State.STOPPING}),
    State.RUNNING: frozenset({State.EXITED, State.STOPPING}),
    State.BACKOFF: frozenset({State.STARTING, State.STOPPED}),
    State.STOPPING: frozenset({State.STOPPED}),
    State.EXITED: frozenset({State.STARTING, State.STOPPED, State.BACKOFF}),
    State.FATAL: frozenset({State.STARTING, State.STOPPED, State.BACKOFF}),
}

PROCESS_ALIVE = frozenset({State.STARTING, State.RUNNING, State.STOPPING})
# Headed for RUNNING on its own: a start is under way or will be retried.
ACTIVE = frozenset({State.STARTING, State.RUNNING, State.BACKOFF})
