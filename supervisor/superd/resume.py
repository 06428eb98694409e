"""The new image of a re-exec (`superd --resume FD`) and the check the old
image runs first (`superd --can-resume FORMAT CONFIG`)."""

from __future__ import annotations

import logging
import os
import sys

from . import __version__, jsoncodec
from .config import ConfigError, load
from .daemon import Daemon, serve, setup_logging
from .handover import HandoverError, decode_bytes, read_state, refusal
from .notify import notify_ready

TYPE_CHECKING = False  # as typing.TYPE_CHECKING: the daemon never imports typing
if TYPE_CHECKING:
    from typing import Any

log = logging.getLogger("superd")


def resume_daemon(state_fd: int) -> int:
    """The new image of a re-exec: take the state over and serve."""
    try:
        state = read_state(state_fd)
    except HandoverError as exc:
        print(f"superd: {exc}", file=sys.stderr)
        return 2
    lineage = state["daemon"]
    daemon_log = lineage["daemon_log"]
    own_log = setup_logging(timestamps=daemon_log is not None or "JOURNAL_STREAM" not in
                            os.environ, path=daemon_log or "stderr")
    saved = state["config"]
    try:
        config = load(saved["path"], carried_sources(saved["sources"]))
    except ConfigError as exc:
        log.error("the new image cannot read the running config:\n%s", exc)
        return 1  # the keeper or PR_SET_PDEATHSIG takes the workers down
    daemon = Daemon(config, daemon_log, lineage["keeper_pid"], lineage["worker_nofile"],
                    bool(lineage["systemd"]))
    own_log.attach(daemon.loop.call_later, daemon.supervisor.bus.publish)
    try:
        return _resume_and_serve(daemon, state)
    finally:
        own_log.detach()
        daemon.close()


def _resume_and_serve(daemon: Daemon, state: dict[str, Any]) -> int:
    try:
        daemon.resume(state)
    except Exception:
        log.exception("internal error while taking over the state; re-executing with it")
        return daemon.recover_from_crash(state)
    if daemon.systemd:
        notify_ready()
        daemon.report_to_systemd()
    return serve(daemon)


def carried_sources(encoded: dict[str, str]) -> dict[str, bytes]:
    """The config files' bytes as a state or a check carries them."""
    return {path: decode_bytes(text) for path, text in encoded.items()}


def can_resume(fmt: int, config_path: str | None) -> int:
    """`--can-resume FORMAT [CONFIG]`: whether this installed superd takes a
    state of that format over, and the config whose files come on stdin (a
    JSON object of absolute path to their bytes as latin-1 text)."""
    refused = refusal(fmt)
    if refused is not None:
        print(refused)
        return 1
    if config_path is not None:
        try:
            sources = carried_sources(jsoncodec.loads(sys.stdin.read()))
        except (ValueError, AttributeError, UnicodeError) as exc:
            print(f"cannot read the config files given on stdin: {exc}")
            return 1
        try:
            load(config_path, sources)
        except ConfigError as exc:
            print(f"this superd does not accept the running config: {exc.issues[0]}")
            return 1
    print(f"superd {__version__} reads state format {fmt}")
    return 0
