"""`superd`: command line, detaching, pidfile, control socket, shutdown.

Start-up order matters: lock the pidfile, bind the control socket, launch
the autostart workers, and only then tell the launching process (through the
readiness pipe) that the daemon is up.
"""

from __future__ import annotations

import fcntl
import gc
import logging
import os
import signal
import socket
import sys
import time
from collections.abc import Callable

from . import __version__
from .commands import Commands
from .config import Config, ConfigError, find_path, load
from .control import ControlServer
from .daemonargs import parse_args
from .daemonlog import DaemonLog, install
from .events import reexec_event, reload_event
from .handover import encode_bytes, kept_fds
from .keeper import become_keeper
from .launcher import Launched
from .listen import ListenError
from .loop import Loop, Timer
from .metricsserver import MetricsEndpoint, MetricsError
from .notify import SystemdNotifier, notify_ready, notify_reloading, notify_stopping
from .reexec import (
    CRASH_WINDOW,
    MAX_CRASHES,
    CrashCount,
    ImageCheck,
    check_now,
    exec_image,
    unblock_signals,
)
from .reload import Plan, ReloadRefused, diff, missing_sockets, summary_lines
from .running import RunningConfig
from .spawn import become_subreaper, raise_nofile_limit
from .supervisor import Supervisor

TYPE_CHECKING = False  # as typing.TYPE_CHECKING: the daemon never imports typing
if TYPE_CHECKING:
    from typing import Any

log = logging.getLogger("superd")

EXIT_CRASHED = 70  # EX_SOFTWARE: an internal error escaped the event loop
# After a crash, the ordered stop gets shutdown_timeout, then this long for
# the SIGKILLed rest to be reaped, before the daemon exits regardless.
CRASH_GRACE = 2.0

class StartupError(Exception):
    """The daemon cannot start; the message is the one line users see."""


class Daemon:
    def __init__(self, config: Config, daemon_log: str | None = None,
                 keeper_pid: int | None = None, worker_nofile: int | None = None,
                 systemd: bool = False) -> None:
        nofile = raise_nofile_limit()  # before superd opens its first fd
        # After a re-exec the limit is raised already: workers get what the
        # first image was started with.
        self.launched = Launched(nofile if worker_nofile is None else worker_nofile, keeper_pid)
        self.daemon_log = daemon_log
        self.systemd = systemd
        self.running = RunningConfig(config)
        self.loop = Loop()
        self.supervisor = Supervisor(self.running, self.loop, daemon_log, self.launched)
        self.commands = Commands(self.supervisor, self)
        self.pidfile_fd: int | None = None
        self.control: ControlServer | None = None
        self.metrics = MetricsEndpoint(self.loop, self.supervisor.metrics.text)
        self.shutdown_callbacks: list[Callable[[], None]] = []
        self.shutdown_timer: Timer | None = None
        self.started_at = time.monotonic()  # of the first image: a re-exec keeps it
        self.reexecs = 0
        self.crashes = CrashCount()
        self.reloading = False
        self.checking = False  # the installed superd is being asked before a re-exec
        self.reexec_reason: str | None = None  # set: the loop ends and superd execs itself

    # -- start-up ---------------------------------------------------------
    def start(self) -> None:
        daemon = self.running.daemon
        self.pidfile_fd = lock_pidfile(daemon.pidfile)
        # The control socket first: a live daemon on it stops us before we
        # touch anything of its (the notify socket beside it, its sockets).
        sock = bind_control_socket(self.running.config)
        self.control = ControlServer(self.loop, sock, daemon.socket, daemon.socket_group,
                                     self.commands.dispatch, daemon.max_connections)
        try:
            self.supervisor.open_sockets()
            # Like node_exporter's: an address taken is a daemon that does not start.
            self.metrics.open(daemon.metrics)
        except (ListenError, MetricsError) as exc:
            raise StartupError(str(exc)) from None
        self._handle_signals()
        become_subreaper()
        self.supervisor.orchestrator.autostart()
        # Modules, config and instances live as long as the daemon: keep them
        # out of the collector's full passes, which a restart storm triggers.
        gc.freeze()
        log.info("superd %s started (pid %d) on %s", __version__, os.getpid(), daemon.socket)

    def _handle_signals(self) -> None:
        self.loop.add_signal(signal.SIGCHLD, self.supervisor.reap)
        self.loop.add_signal(signal.SIGTERM, lambda: self.shutdown(None))
        self.loop.add_signal(signal.SIGINT, lambda: self.shutdown(None))
        self.loop.add_signal(signal.SIGUSR1, self.supervisor.logs.reopen)
        self.loop.add_signal(signal.SIGHUP, self._reload_on_signal)
        self.loop.add_signal(signal.SIGUSR2, self._reexec_on_signal)

    def resume(self, state: dict[str, Any]) -> None:
        """Go on from the state the image before handed over (instead of start())."""
        for fd in kept_fds(state):
            os.set_inheritable(fd, False)  # only this exec was to keep them
        daemon, lineage = self.running.daemon, state["daemon"]
        self.started_at, self.reexecs = float(lineage["started_at"]), int(lineage["reexecs"])
        self.crashes = CrashCount([float(t) for t in lineage["crashes"]])
        self.pidfile_fd = int(state["pidfile"])
        sock = socket.socket(fileno=int(state["control"]))
        self.control = ControlServer(self.loop, sock, daemon.socket, daemon.socket_group,
                                     self.commands.dispatch, daemon.max_connections)
        self.metrics.adopt(state.get("metrics"), daemon.metrics)
        # Handlers first, then the signals kept pending since the exec: they
        # only wake the loop, which runs once everything is taken over; and a
        # worker started below must not inherit a blocked mask.
        self._handle_signals()
        unblock_signals()
        self.supervisor.take_over(state["workers"])
        become_subreaper()
        self.supervisor.reap()  # the children that exited during the switch
        if lineage["shutting_down"]:
            self.shutdown(None)  # a crash cut a shutdown short: it starts over
        gc.freeze()
        log.info("superd %s took over from superd %s (pid %d, re-exec %d): %d instances",
                 __version__, state["superd"], os.getpid(), self.reexecs,
                 len(state["workers"]["instances"]))

    def uptime(self) -> float:
        return time.monotonic() - self.started_at

    @property
    def shutting_down(self) -> bool:
        return self.shutdown_timer is not None

    def run(self) -> None:
        self.loop.run()

    # -- reload -----------------------------------------------------------
    def reload(self, on_done: Callable[[dict[str, Any]], None]) -> None:
        """Re-read the config and apply the difference; raise ReloadRefused,
        having changed nothing, when it is invalid or cannot be applied."""
        if self.shutting_down:
            raise ReloadRefused("shutting_down", "superd is shutting down")
        running = self.running.config
        try:
            new = load(running.path)
        except ConfigError as exc:
            raise ReloadRefused("invalid_config", str(exc)) from None
        plan = diff(running, new)
        missing = missing_sockets(plan)
        if missing:
            raise ReloadRefused("not_live", f"workers need sockets the running daemon does "
                                f"not have ({', '.join(missing)}); restart superd")
        try:
            make_runtime_dirs(plan.config)
            self._apply_daemon_section(plan)
        except StartupError as exc:
            raise ReloadRefused("reload_failed", str(exc)) from None
        notify_reloading()
        result = plan.result()
        log.info("reloading %s: %s", running.path, "; ".join(summary_lines(result)))
        self.supervisor.bus.publish(reload_event(result))
        self.reloading = True

        def applied() -> None:
            self.reloading = False
            notify_ready()
            on_done(result)

        self.supervisor.apply(plan, applied)

    def _apply_daemon_section(self, plan: Plan) -> None:
        try:
            metrics = self.metrics.prepare(plan.config.daemon.metrics)
        except MetricsError as exc:
            raise StartupError(str(exc)) from None
        try:
            self._apply_control_section(plan)
        except BaseException:
            if metrics is not None:
                metrics.discard()
            raise
        self.metrics.commit(metrics)

    def _apply_control_section(self, plan: Plan) -> None:
        old, new = self.running.daemon, plan.config.daemon
        assert self.control is not None
        if plan.rebind:
            sock = bind_control_socket(plan.config)
            server = ControlServer(self.loop, sock, new.socket, new.socket_group,
                                   self.commands.dispatch, new.max_connections)
            server.take_over(self.control)  # closes and unlinks the old socket
            self.control = server
        elif (old.socket_mode, old.socket_group) != (new.socket_mode, new.socket_group):
            set_socket_access(new.socket, plan.config)
            self.control.set_group(new.socket_group)
        self.control.set_max_connections(new.max_connections)

    def _reload_on_signal(self) -> None:
        def report(result: dict[str, Any]) -> None:
            log.info("reload done: %s", "; ".join(summary_lines(result)))

        try:
            self.reload(report)
        except ReloadRefused as exc:
            log.error("SIGHUP: reload refused, nothing changed:\n%s", exc.message)

    # -- re-exec ----------------------------------------------------------
    def reexec(self, reason: str, answer: Callable[[str | None], None]) -> None:
        """Ask the installed superd whether it can take over, then exec it in
        place.  answer(None) comes just before the switch, answer(why) if it
        is refused."""
        busy = self._reexec_refusal()
        if busy is not None:
            answer(busy)
            return
        self.checking = True

        def checked(refused: str | None) -> None:
            self.checking = False
            refused = refused or self._reexec_refusal()  # a shutdown may have begun meanwhile
            if refused is not None:
                log.error("re-exec refused: %s", refused)
                answer(refused)
                return
            answer(None)
            self._switch_soon(reason)

        ImageCheck(self.loop, self.supervisor.registry.watch, self.running.config, checked)

    def _reexec_refusal(self) -> str | None:
        if self.shutting_down:
            return "superd is shutting down"
        if self.reloading:
            return "a reload is being applied; try again once it is done"
        if self.checking or self.reexec_reason is not None:
            return "a re-exec is already under way"
        return None

    def _switch_soon(self, reason: str) -> None:
        """End the loop after this round; serve() then execs the new image."""
        self.reexec_reason = reason
        assert self.control is not None
        self.control.hold_accepting()  # new clients wait in the backlog for the next image
        self.loop.stop()

    def _reexec_on_signal(self) -> None:
        self.reexec("signal", lambda refused: None)  # a refusal is logged by reexec()

    def switch_image(self) -> None:
        """Hand everything over to a fresh exec of the installed superd.
        Returns only if the exec failed; this image then goes on as before."""
        reason = self.reexec_reason or "request"
        self.reexecs += 1
        state = self.handover()
        event = reexec_event(reason, self.reexecs, os.getpid())
        log.info("re-executing (%s, re-exec %d): handing over %d instances", reason,
                 self.reexecs, len(state["workers"]["instances"]))
        self.supervisor.bus.publish(event)
        self.commands.say_farewell(event)
        assert self.control is not None
        self.control.close_connections()  # after the event; clients reconnect
        self.metrics.close_connections()  # its listening socket goes to the new image
        if self.systemd:
            notify_reloading()
        _flush_own_log()
        failure = exec_image(state)
        self.reexecs -= 1
        self.reexec_reason = None
        log.error("re-exec failed; going on as before: %s", failure)
        if self.systemd:
            notify_ready()
        self.control.accept_again()

    def handover(self) -> dict[str, Any]:
        """The state a new image takes over (handover.py names its format)."""
        config = self.running.config
        assert self.control is not None and self.pidfile_fd is not None
        return {
            "superd": __version__,
            "config": {"path": config.path,
                       "sources": {path: encode_bytes(data)
                                   for path, data in config.sources.items()}},
            "daemon": {"started_at": self.started_at, "reexecs": self.reexecs,
                       "crashes": self.crashes.times, "shutting_down": self.shutting_down,
                       "keeper_pid": self.launched.keeper_pid,
                       "worker_nofile": self.launched.nofile, "daemon_log": self.daemon_log,
                       "systemd": self.systemd},
            "pidfile": self.pidfile_fd,
            "control": self.control.fileno(),
            "metrics": self.metrics.handover(),
            "workers": self.supervisor.handover(),
        }

    def recover_from_crash(self, state: dict[str, Any] | None = None) -> int:
        """An error escaped the loop: re-exec with the state, so no worker is
        touched; after too many, stop every worker.  Returns an exit code only
        when superd is to exit."""
        if state is not None:  # the take-over failed, maybe before it took the count
            self.crashes = CrashCount([float(t) for t in state["daemon"]["crashes"]])
        if not self.crashes.allows_another():
            log.error("more than %d crashes within %gs; stopping every worker", MAX_CRASHES,
                      CRASH_WINDOW)
        elif (refused := check_now(self.running.config)) is not None:
            log.error("cannot re-exec after the crash (%s); stopping every worker", refused)
        else:
            self.reexec_reason = "crash"
            if state is None:
                self.switch_image()
            else:
                self._switch_with(state)
            log.error("stopping every worker")
        self.stop_after_crash()
        return EXIT_CRASHED

    def _switch_with(self, state: dict[str, Any]) -> None:
        """Re-exec with a state taken over but not yet set up (the take-over failed)."""
        state["daemon"]["crashes"] = self.crashes.times
        state["daemon"]["reexecs"] = int(state["daemon"]["reexecs"]) + 1
        _flush_own_log()
        log.error("re-exec failed: %s", exec_image(state))

    # -- shutdown ---------------------------------------------------------
    def shutdown(self, on_done: Callable[[], None] | None) -> None:
        if on_done is not None:
            self.shutdown_callbacks.append(on_done)
        if self.shutting_down:
            return
        log.info("shutting down")
        notify_stopping()
        timeout = self.running.daemon.shutdown_timeout
        self.shutdown_timer = self.loop.call_later(timeout, self._shutdown_overdue)
        self.supervisor.rolls.end_all("superd is shutting down")
        everything = self.supervisor.registry.everything()
        self.supervisor.orchestrator.stop_in_order(everything, self._finish_shutdown)

    def report_to_systemd(self) -> None:
        """STATUS= now and whenever the summary changes; WATCHDOG=1 if asked."""
        notifier = SystemdNotifier(self.loop.call_later)
        registry = self.supervisor.registry  # its instances change on reload: ask each time

        def report(event: object = None) -> None:
            notifier.status(instance.state.value for instance in registry.instances())

        report()
        self.supervisor.bus.subscribe(report)

    def _shutdown_overdue(self) -> None:
        log.warning("shutdown_timeout passed; killing what is left")
        self.supervisor.kill_everything()

    def stop_after_crash(self) -> None:
        """The loop died: stop every worker in order with a fresh run of it,
        bounded in time; if the loop fails again, by signals alone."""
        if self.shutdown_timer is not None:
            self.shutdown_timer.cancel()
            self.shutdown_timer = None  # a shutdown under way starts over, freshly timed
        timeout = self.running.daemon.shutdown_timeout
        try:
            self.supervisor.reap()  # a SIGCHLD read just before the crash is not lost
            self.shutdown(None)
            self.loop.call_later(timeout + CRASH_GRACE, self.loop.stop)
            self.loop.run()
        except Exception:
            log.exception("the event loop failed again; signalling every worker")
            self.supervisor.terminate_everything(timeout)

    def _finish_shutdown(self) -> None:
        for callback in self.shutdown_callbacks:
            callback()
        self.loop.stop()

    def close(self) -> None:
        if self.control is not None:
            self.control.close()
        self.metrics.close()
        self.supervisor.close_sockets()
        if self.pidfile_fd is not None:
            _unlink(self.running.daemon.pidfile)
            os.close(self.pidfile_fd)
        self.supervisor.logs.close()
        self.loop.close()
        log.info("superd stopped")

# -- start-up helpers -------------------------------------------------------
def make_runtime_dirs(config: Config) -> None:
    daemon = config.daemon
    paths = [daemon.socket, daemon.pidfile, daemon.log_file]
    supervisor_dirs = {daemon.log_dir}
    for worker in config.workers.values():
        for log_file in (worker.stdout.file, worker.stderr.file):
            if isinstance(log_file, str) and "$" not in log_file:  # per instance: at spawn
                paths.append(log_file)
    for folder in supervisor_dirs | {os.path.dirname(p) for p in paths}:
        try:
            os.makedirs(folder, exist_ok=True)
        except OSError as exc:
            raise StartupError(f"cannot create {folder}: {exc.strerror}") from None

def lock_pidfile(path: str) -> int:
    try:
        fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o644)
    except OSError as exc:
        raise StartupError(f"cannot open pidfile {path}: {exc.strerror}") from None
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        owner = os.read(fd, 32).decode(errors="replace").strip() or "unknown"
        os.close(fd)
        raise StartupError(f"superd is already running (pid {owner}, pidfile {path})") from None
    os.ftruncate(fd, 0)
    os.write(fd, f"{os.getpid()}\n".encode())
    return fd

def bind_control_socket(config: Config) -> socket.socket:
    path = config.daemon.socket
    if os.path.exists(path):
        if socket_is_live(path):
            raise StartupError(f"a live daemon already listens on {path}")
        _unlink(path)  # left behind by a daemon that died
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    # Bind under a tight umask so the socket is never, even briefly, wider
    # than socket_mode.
    old_umask = os.umask(0o177)
    try:
        sock.bind(path)
    except OSError as exc:
        sock.close()
        raise StartupError(f"cannot bind control socket {path}: {exc.strerror}") from None
    finally:
        os.umask(old_umask)
    set_socket_access(path, config)
    sock.listen(128)
    return sock

def set_socket_access(path: str, config: Config) -> None:
    os.chmod(path, config.daemon.socket_mode)
    if config.daemon.socket_group:
        os.chown(path, -1, group_id(config.daemon.socket_group))

def group_id(name: str) -> int:
    import grp

    return grp.getgrnam(name).gr_gid

def socket_is_live(path: str) -> bool:
    probe = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    probe.settimeout(1.0)
    try:
        probe.connect(path)
    except OSError:
        return False
    finally:
        probe.close()
    return True

def _unlink(path: str) -> None:
    try:
        os.unlink(path)
    except FileNotFoundError:
        pass

def _flush_own_log() -> None:
    for handler in log.handlers:
        handler.flush()

# -- running ----------------------------------------------------------------
def run_daemon(config: Config, ready: Callable[[str | None], None],
               systemd: bool = False, daemon_log: str | None = None,
               own_log: DaemonLog | None = None, keeper_pid: int | None = None) -> int:
    """Start, report readiness (None) or the reason for failing, then serve."""
    daemon = Daemon(config, daemon_log, keeper_pid, systemd=systemd)
    if own_log is not None:
        own_log.attach(daemon.loop.call_later, daemon.supervisor.bus.publish)
    try:
        return _start_and_serve(daemon, ready, systemd)
    finally:
        if own_log is not None:
            own_log.detach()
        daemon.close()

def _start_and_serve(daemon: Daemon, ready: Callable[[str | None], None],
                     systemd: bool) -> int:
    try:
        daemon.start()
    except StartupError as exc:
        ready(str(exc))
        return 1
    ready(None)
    if systemd:
        daemon.report_to_systemd()
    return serve(daemon)

def serve(daemon: Daemon) -> int:
    """Run the loop until shutdown (0), re-exec'ing when asked; an error that
    escapes the loop is answered by a re-exec, or by stopping every worker."""
    while True:
        try:
            daemon.run()
        except Exception:
            log.exception("internal error escaped the event loop; re-executing with the state")
            return daemon.recover_from_crash()
        if daemon.reexec_reason is None:
            return 0
        daemon.switch_image()  # back here only if the exec failed

def detach(config: Config) -> int:
    """Double fork; the launcher exits only once the daemon is ready (or not)."""
    read_end, write_end = os.pipe()
    if os.fork() > 0:
        os.close(write_end)
        return _await_readiness(read_end, config)
    os.close(read_end)
    os.setsid()
    become_subreaper()  # before the fork: from then on, orphans come to us
    daemon_pid = os.fork()
    if daemon_pid > 0:
        os.close(write_end)
        become_keeper(daemon_pid)
    keeper_pid = os.getppid()
    os.chdir("/")
    _redirect_stdio(config.daemon.log_file)
    own_log = setup_logging(timestamps=True, path=config.daemon.log_file)

    def ready(error: str | None) -> None:
        os.write(write_end, b"ok\n" if error is None else f"error {error}\n".encode())
        os.close(write_end)

    code = 1
    try:
        code = run_daemon(config, ready, daemon_log=config.daemon.log_file, own_log=own_log,
                          keeper_pid=keeper_pid)
    except BaseException:
        log.exception("superd crashed")
    finally:
        os._exit(code)

def _await_readiness(read_end: int, config: Config) -> int:
    data = b""
    while not data.endswith(b"\n"):
        chunk = os.read(read_end, 4096)
        if not chunk:
            break
        data += chunk
    os.close(read_end)
    # The intermediate process stays, as the daemon's keeper (keeper.py).
    message = data.decode(errors="replace").strip()
    if message == "ok":
        return 0
    if message.startswith("error "):
        print(f"superd: {message[6:]}", file=sys.stderr)
    else:
        print(f"superd: daemon died during start-up; see {config.daemon.log_file}",
              file=sys.stderr)
    return 1

def _redirect_stdio(log_file: str) -> None:
    null = os.open(os.devnull, os.O_RDONLY)
    os.dup2(null, 0)
    os.close(null)
    try:
        out = os.open(log_file, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o644)
    except OSError:
        out = os.open(os.devnull, os.O_WRONLY)
    os.dup2(out, 1)
    os.dup2(out, 2)
    os.close(out)

def setup_logging(timestamps: bool, path: str = "stderr") -> DaemonLog:
    """The daemon's own log on fd 2 (path: what that is, for log_error events)."""
    fmt = "%(asctime)s %(levelname)s %(message)s" if timestamps else "%(levelname)s %(message)s"
    own_log = install(log, 2, path, fmt)
    log.setLevel(logging.INFO)
    log.propagate = False
    return own_log

def run_foreground(config: Config) -> int:
    own_log = setup_logging(timestamps="JOURNAL_STREAM" not in os.environ)

    def ready(error: str | None) -> None:
        if error is None:
            notify_ready()
        else:
            print(f"superd: {error}", file=sys.stderr)

    return run_daemon(config, ready, systemd="NOTIFY_SOCKET" in os.environ, own_log=own_log)

def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    if args.can_resume is not None or args.resume is not None:
        from . import resume  # it builds on this module

        if args.resume is not None:
            return resume.resume_daemon(args.resume)
        return resume.can_resume(args.can_resume or 0, args.config)
    if args.from_supervisord is not None:
        from . import fromsupervisord  # configparser and all: never in the daemon

        return fromsupervisord.main(args.from_supervisord)
    path = find_path(args.config)
    try:
        config = load(path)
    except ConfigError as exc:
        for issue in exc.issues:
            print(issue, file=sys.stderr)
        return 2
    if args.check:
        print(f"{path}: ok ({len(config.workers)} workers)")
        return 0
    try:
        make_runtime_dirs(config)
        if args.foreground:
            return run_foreground(config)
        return detach(config)
    except StartupError as exc:
        print(f"superd: {exc}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        return 130
