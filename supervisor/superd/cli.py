"""superctl: talk to a running superd over its control socket.

Exit codes: 0 ok, 1 a command failed, 2 usage or config error,
3 `status` found an instance not RUNNING, 4 daemon unreachable.

A run of superctl is mostly Python starting and importing, so what only some
commands need is imported where they need it: argparse (cliargs.py), the
config with its YAML library, signal names (superd.exits), json (with the re
and enum it imports) for JSON output, typing never.
"""

from __future__ import annotations

import os
import sys
import time

from superd.cliargs import Args, parse_args
from superd.client import Client, CommandFailed, DaemonUnreachable
from superd.display import format_bytes, format_cpu, format_duration, paint_state, wants_colour

TYPE_CHECKING = False  # as typing.TYPE_CHECKING, without importing typing
if TYPE_CHECKING:
    from collections.abc import Callable
    from typing import Any, TypeAlias

    from superd.logview import LogView

    Row: TypeAlias = dict[str, Any]
    Handler: TypeAlias = Callable[[Client, Args], int]

EXIT_OK = 0
EXIT_FAILED = 1
EXIT_USAGE = 2
EXIT_NOT_RUNNING = 3
EXIT_UNREACHABLE = 4
EXIT_INTERRUPTED = 130
REEXEC_TIMEOUT = 60.0  # seconds for a new image to answer after `reexec` was accepted
COMPLETION_TIMEOUT = 2.0  # seconds a shell's completion waits for the daemon's names


class ConfigUnavailable(Exception):
    """The socket path could not be read from the config."""


class UnexpectedReply(Exception):
    """superd's result does not have the shape this command expects."""


# --- human formatting -------------------------------------------------------


def describe_exit(exit_status: int) -> str:
    """superd.exits.describe_exit, imported only for the rows that need it:
    its signal names cost an import of signal, which builds three enums."""
    from superd import exits

    return exits.describe_exit(exit_status)


def exit_note(row: Row) -> str:
    """Why it is not running: the daemon's description (a resource superd lacks,
    the last exit), else the last exit in words."""
    if row.get("state") == "RUNNING":
        return ""
    if row.get("description"):
        return str(row["description"])
    return "" if row.get("exit_status") is None else describe_exit(int(row["exit_status"]))


def render_table(table: list[list[str]]) -> list[str]:
    """Left-align every column of plain cells."""
    widths = [max(map(len, column)) for column in zip(*table, strict=True)]
    # One format for every row: a thousand rows are formatted in a millisecond.
    line = "  ".join(f"{{:<{width}}}" for width in widths)
    return [line.format(*row).rstrip() for row in table]


def status_table(rows: list[Row], colour: bool) -> list[str]:
    """NAME STATE PID UPTIME RESTARTS, then each optional column that some row fills."""
    extras = [(header, cells) for header, shown, cells in OPTIONAL_COLUMNS
              if any(shown(row) for row in rows)]
    table = [["NAME", "STATE", "PID", "UPTIME", "RESTARTS",
              *(name for header, _ in extras for name in header)]]
    for row in rows:
        table.append([*status_cells(row), *(cell for _, cells in extras for cell in cells(row))])
    lines = render_table(table)
    return paint_states(lines, [cells[1] for cells in table[1:]]) if colour else lines


def usage_cells(row: Row) -> list[str]:
    return [format_cpu(row.get("cpu_percent")), format_bytes(row.get("rss_bytes"))]


# (headers, does a row fill them, its cells): shown when any row fills them.
OPTIONAL_COLUMNS: tuple[tuple[tuple[str, ...], Callable[[Row], bool],
                              Callable[[Row], list[str]]], ...] = (
    (("CPU%", "RSS"),
     lambda row: row.get("cpu_percent") is not None or row.get("rss_bytes") is not None,
     usage_cells),
    (("HEALTH",), lambda row: row.get("health") is not None,
     lambda row: [str(row.get("health") or "-")]),
    (("LAST EXIT",), lambda row: bool(exit_note(row)), lambda row: [exit_note(row)]),
    (("STATUS",), lambda row: bool(row.get("status_text")),
     lambda row: [str(row.get("status_text") or "")]),
)


def status_cells(row: Row) -> list[str]:
    return [
        str(row["name"]),
        str(row["state"]),
        "-" if row.get("pid") is None else str(row["pid"]),
        format_duration(row.get("uptime")),
        str(row.get("restarts", 0)),
    ]


def paint_states(lines: list[str], states: list[str]) -> list[str]:
    """Colour the STATE cell of each row below the header once the table is
    aligned, so that the escapes take no width."""
    start = lines[0].index("STATE")
    return lines[:1] + [
        line[:start] + paint_state(state, True) + line[start + len(state):]
        for line, state in zip(lines[1:], states, strict=True)
    ]


def outcome_line(row: Row, verb: str) -> str:
    if row.get("ok"):
        return f"{row['name']}: {verb}"
    state = row.get("state") or "failed"
    error = row.get("error")
    return f"{row['name']}: {state} ({error})" if error else f"{row['name']}: {state}"


def json_text(value: object, indent: int | None = None) -> str:
    """json.dumps, imported only for output in JSON."""
    import json

    return json.dumps(value, indent=indent)


def print_json(value: object) -> None:
    print(json_text(value, indent=2))


# --- result shapes ----------------------------------------------------------


def as_object(result: object) -> Row:
    if not isinstance(result, dict):
        raise UnexpectedReply("expected an object")
    return result


def as_rows(result: object) -> list[Row]:
    if not isinstance(result, list) or not all(isinstance(row, dict) for row in result):
        raise UnexpectedReply("expected a list of objects")
    return result


# --- commands ---------------------------------------------------------------


def cmd_ping(client: Client, args: Args) -> int:
    """Show the daemon's version, pid and uptime."""
    info = as_object(client.request("ping", {}))
    if args.json:
        print_json(info)
    else:
        line = f"superd {info['version']} pid {info['pid']} uptime " \
            f"{format_duration(info['uptime'])}"
        if info.get("reexecs"):
            line += f" re-execs {info['reexecs']}"
        print(line)
    return EXIT_OK


def cmd_reexec(client: Client, args: Args) -> int:
    """Re-exec superd in place (after an upgrade): every worker keeps running."""
    expected = int(as_object(client.request("reexec", {}))["reexecs"])
    client.close()  # the old image closes it anyway
    after = wait_for_new_image(client.path)
    if after is None:
        fail("superd accepted the re-exec but the new image did not answer; see its log")
        return EXIT_FAILED
    if int(after.get("reexecs") or 0) < expected:
        fail("superd could not exec the new image and goes on as before; see its log")
        return EXIT_FAILED
    if args.json:
        print_json(after)
    else:
        print(f"superd re-executed in place: superd {after['version']} pid {after['pid']}, "
              f"re-execs {after['reexecs']}")
    return EXIT_OK


def wait_for_new_image(path: str, timeout: float = REEXEC_TIMEOUT) -> Row | None:
    """The first ping answered after the switch: by the new image, or by the
    old one if its exec failed (it accepts no client in between)."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            with Client(path) as client:
                return as_object(client.request("ping", {}))
        except DaemonUnreachable:
            time.sleep(0.05)  # closed by the old image at its exec: ask the new one
    return None


def cmd_status(client: Client, args: Args) -> int:
    """Show instances; exit 3 unless every listed one is RUNNING."""
    rows = as_rows(client.request("status", {"names": args.names}))
    if args.json:
        print_json(rows)
    else:
        print("\n".join(status_table(rows, wants_colour())))
    all_running = all(row["state"] == "RUNNING" for row in rows)
    return EXIT_OK if all_running else EXIT_NOT_RUNNING


def cmd_start(client: Client, args: Args) -> int:
    """Start instances, by default waiting until RUNNING or FATAL."""
    wire_args = {"names": args.names, "wait": not args.no_wait}
    return run_action(client, args, "start", wire_args, "starting" if args.no_wait else "started")


def cmd_stop(client: Client, args: Args) -> int:
    """Stop instances, waiting until STOPPED."""
    return run_action(client, args, "stop", {"names": args.names}, "stopped")


def cmd_restart(client: Client, args: Args) -> int:
    """Stop then start instances; --rolling: one at a time, each RUNNING (and
    healthy) before the next is stopped."""
    wire_args: Row = {"names": args.names, "wait": not args.no_wait}
    if args.rolling:
        wire_args["rolling"] = True
    return run_action(
        client, args, "restart", wire_args, "restarting" if args.no_wait else "restarted"
    )


def cmd_signal(client: Client, args: Args) -> int:
    """Send a signal to each instance's process group."""
    sig: str | int = int(args.sig) if args.sig.isdigit() else args.sig
    return run_action(
        client, args, "signal", {"signal": sig, "names": args.names}, f"sent {args.sig}"
    )


def cmd_shutdown(client: Client, args: Args) -> int:
    """Stop every worker, then the daemon."""
    result = client.request("shutdown", {})
    if args.json:
        print_json(result)
    else:
        print("superd stopped")
    return EXIT_OK


def cmd_reopen(client: Client, args: Args) -> int:
    """Reopen every log file superd writes (after an external logrotate)."""
    result = client.request("reopen", {})
    if args.json:
        print_json(result)
    else:
        print("log files reopened")
    return EXIT_OK


def cmd_logs(client: Client, args: Args) -> int:
    """Print the last lines of instances' stdout (or stderr), merged in time
    order with INSTANCE | prefixes when there are several; -f follows."""
    from superd.logview import LogView

    wire_args = {"names": args.names, "lines": args.lines, "follow": args.follow,
                 "stream": "stderr" if args.stderr else "stdout"}
    try:
        result = as_object(client.request("logs", wire_args))
        view = LogView([str(name) for name in result["names"]], wants_colour())
        if args.json:
            print_json_line(result)
        else:
            view.show_lines(result["lines"])
        if args.follow:
            return follow_logs(client, print_json_line if args.json else
                               lambda event: view.show_chunk(str(event["name"]),
                                                             str(event.get("data", ""))),
                               view)
    except KeyboardInterrupt:
        return EXIT_OK
    return EXIT_OK


def follow_logs(client: Client, show: Callable[[Row], None], view: LogView) -> int:
    """Print pushed output until interrupted, until superd re-execs or goes
    (all exit 0), or until it cuts this reader off (exit 1)."""
    try:
        for event in client.events():
            if event.get("event") == "reexec":
                print("superctl: superd re-executed itself; following ends", file=sys.stderr)
                return EXIT_OK
            if event.get("event") == "log_cut":
                fail(str(event.get("message", "cut off by superd")))
                return EXIT_FAILED
            show(event)
    except DaemonUnreachable:
        print("superctl: superd went away; no more output", file=sys.stderr)
    finally:
        view.finish()
    return EXIT_OK


def print_json_line(message: Row) -> None:
    print(json_text(message), flush=True)


def cmd_reload(client: Client, args: Args) -> int:
    """Re-read the config and apply what changed; print the diff applied."""
    from superd.reload import summary_lines

    try:
        result = as_object(client.request("reload", {}))
    except CommandFailed as exc:
        if exc.code != "invalid_config":
            raise
        print("superctl: invalid config; nothing changed:", file=sys.stderr)
        for line in exc.message.splitlines():
            print(line, file=sys.stderr)
        return EXIT_FAILED
    if args.json:
        print_json(result)
    else:
        print("\n".join(summary_lines(result)))
    return EXIT_OK


def cmd_events(client: Client, args: Args) -> int:
    """Print events as they happen, one line each, until interrupted."""
    client.request("subscribe", {})
    try:
        for event in client.events():
            print(json_text(event) if args.json else event_line(event), flush=True)
            if event.get("event") == "reexec":
                return EXIT_OK  # the daemon closes this connection now
    except KeyboardInterrupt:
        return EXIT_OK
    except DaemonUnreachable:
        print("superctl: superd went away; no more events", file=sys.stderr)
    return EXIT_OK


def event_line(event: Row) -> str:
    """TIME NAME FROM -> TO pid N (exit ...) for state changes; a summary otherwise."""
    stamp = time.strftime("%H:%M:%S", time.localtime(float(event.get("time") or 0)))
    kind = event.get("event")
    if kind == "state":
        line = f"{stamp} {event.get('name')} {event.get('from')} -> {event.get('to')}"
        if event.get("pid") is not None:
            line += f" pid {event['pid']}"
        if event.get("exit_status") is not None:
            line += f" ({describe_exit(int(event['exit_status']))})"
        return line
    if kind == "reload":
        from superd.reload import summary_lines

        return f"{stamp} reload: {'; '.join(summary_lines(event))}"
    if kind == "log_error":
        return f"{stamp} log_error {event.get('name') or 'superd'}: {event.get('path')}: " \
               f"{event.get('message')}"
    if kind == "health":
        return f"{stamp} {event.get('name')} health {event.get('from')} -> " \
               f"{event.get('to')} pid {event.get('pid')} ({event.get('message')})"
    if kind == "memory":
        return f"{stamp} {event.get('name')} memory {format_bytes(event.get('rss_bytes'))} " \
               f"above max_memory {format_bytes(event.get('max_memory'))} pid " \
               f"{event.get('pid')}; restarting"
    if kind == "reexec":
        return f"{stamp} reexec ({event.get('reason')}): superd pid {event.get('pid')} " \
               f"re-executes itself, re-exec {event.get('reexecs')}"
    return f"{stamp} {json_text(event)}"


def cmd_top(client: Client, args: Args) -> int:
    """Show every instance live, full screen, refreshed every -d seconds; q quits."""
    from superd import top  # and curses, which no other command needs

    try:
        top.run(client, args.delay)
    except top.NoTerminal as exc:
        fail(str(exc))
        return EXIT_FAILED
    except KeyboardInterrupt:
        pass  # Ctrl-C is how top is left, as q is
    return EXIT_OK


def cmd_metrics(client: Client, args: Args) -> int:
    """Print the Prometheus text exposition of superd and every instance."""
    result = as_object(client.request("metrics", {}))
    if args.json:
        print_json(result)
    else:
        sys.stdout.write(str(result["text"]))
    return EXIT_OK


def cmd_completion(client: Client | None, args: Args) -> int:
    """Print a bash or zsh completion script: commands, options, and the
    running daemon's worker and instance names."""
    if args.list_names:
        return print_names_quietly(args)
    from superd import completion  # and argparse: only this command needs them
    from superd.cliargs import build_parser

    print(completion.script(args.shell, build_parser(COMMANDS)), end="")
    return EXIT_OK


def print_names_quietly(args: Args) -> int:
    """The completion script's NAMEs, one a line; nothing at all (exit 4) when
    the daemon cannot answer within COMPLETION_TIMEOUT: a shell waits on it."""
    import signal

    from superd import completion

    def give_up(signum: int, frame: object) -> None:
        raise TimeoutError

    signal.signal(signal.SIGALRM, give_up)
    signal.setitimer(signal.ITIMER_REAL, COMPLETION_TIMEOUT)
    try:
        with Client(socket_path(args)) as client:
            groups = as_object(client.request("ping", {})).get("groups", [])
            rows = as_rows(client.request("status", {"names": []}))
    except Exception:  # noqa: BLE001 - unreachable, no config, too slow: no names
        return EXIT_UNREACHABLE
    finally:
        signal.setitimer(signal.ITIMER_REAL, 0)
    for name in completion.names(rows, groups if isinstance(groups, list) else []):
        print(name)
    return EXIT_OK


def run_action(
    client: Client, args: Args, cmd: str, wire_args: Row, verb: str
) -> int:
    rows = as_rows(client.request(cmd, wire_args))
    if args.json:
        print_json(rows)
    else:
        for row in rows:
            print(outcome_line(row, verb))
    return EXIT_OK if all(row.get("ok") for row in rows) else EXIT_FAILED


COMMANDS: dict[str, Handler] = {
    "ping": cmd_ping,
    "status": cmd_status,
    "start": cmd_start,
    "stop": cmd_stop,
    "restart": cmd_restart,
    "signal": cmd_signal,
    "shutdown": cmd_shutdown,
    "logs": cmd_logs,
    "reopen": cmd_reopen,
    "reload": cmd_reload,
    "events": cmd_events,
    "reexec": cmd_reexec,
    "top": cmd_top,
    "metrics": cmd_metrics,
    "completion": cmd_completion,
}


# --- socket lookup ----------------------------------------------------------


def socket_path(args: Args) -> str:
    """-s, else $SUPERD_SOCKET, else daemon.socket of the config (SPEC.md order)."""
    if args.socket:
        return str(args.socket)
    env_socket = os.environ.get("SUPERD_SOCKET")
    if env_socket:
        return env_socket
    return config_socket(args.config)


def config_socket(config_arg: str | None) -> str:
    # Imported here so that `superctl -s` never pays for loading yaml.
    from superd import config

    try:
        return str(config.load(config.find_path(config_arg)).daemon.socket)
    except Exception as exc:  # whatever config raises, there is no usable socket path
        raise ConfigUnavailable(str(exc)) from exc


# --- entry point ------------------------------------------------------------


def main(argv: list[str] | None = None) -> int:
    try:
        args = parse_args(sys.argv[1:] if argv is None else argv, COMMANDS)
        return run(args)
    except SystemExit as exc:  # argparse: usage errors and --help
        return exc.code if isinstance(exc.code, int) else EXIT_USAGE
    except KeyboardInterrupt:
        return EXIT_INTERRUPTED
    except BrokenPipeError:
        silence_stdout()
        return EXIT_FAILED
    except Exception as exc:  # noqa: BLE001 - superctl never shows a traceback
        fail(str(exc) or type(exc).__name__)
        return EXIT_FAILED


def run(args: Args) -> int:
    if args.command == "completion":
        return cmd_completion(None, args)  # the script needs no daemon; its NAMEs do
    try:
        path = socket_path(args)
    except ConfigUnavailable as exc:
        fail(str(exc))
        return EXIT_USAGE
    try:
        with Client(path) as client:
            return COMMANDS[args.command](client, args)
    except DaemonUnreachable as exc:
        fail(str(exc))
        return EXIT_UNREACHABLE
    except CommandFailed as exc:
        fail(exc.message)
        return EXIT_FAILED
    except (UnexpectedReply, KeyError, TypeError, ValueError) as exc:
        fail(f"unexpected reply from superd: {exc}")
        return EXIT_FAILED


def fail(message: str) -> None:
    print(f"superctl: {message}", file=sys.stderr)


def silence_stdout() -> None:
    # The reader went away (`superctl status | head`); point stdout at
    # /dev/null so the flush at interpreter exit does not complain again.
    try:
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())
    except (OSError, ValueError):
        pass


if __name__ == "__main__":
    raise SystemExit(main())
