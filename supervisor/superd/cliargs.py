"""superctl's command line: a quick parser for the common forms, argparse for
the rest.

argparse costs a run of superctl more than all its other work together (the
import, then a parser of eleven subcommands whose every argument is checked
with a help formatter, which pulls in gettext, locale and shutil). The quick
parser reads the forms people and scripts type, `-s SOCKET status web` and the
like, and gives up on anything else (`--help`, a usage error, an abbreviated
option, `--socket=PATH`, `logs`), which argparse then parses, so that every
answer, help text and error message stays argparse's own. A test checks that
the two agree wherever the quick parser answers.
"""

from __future__ import annotations

TYPE_CHECKING = False  # as typing.TYPE_CHECKING, without importing typing
if TYPE_CHECKING:
    import argparse
    from collections.abc import Mapping
    from typing import TypeAlias

    # The names of a command's single positionals, the least number of NAMEs
    # it takes (None: it takes none) and its flags besides --json.
    Grammar: TypeAlias = tuple[tuple[str, ...], int | None, tuple[str, ...]]

# The options before COMMAND that take a value, and where it goes.
VALUE_OPTIONS = {"-s": "socket", "--socket": "socket", "-c": "config", "--config": "config"}

# What the quick parser knows of each command, as a Grammar. `logs`, whose
# options take values, is left to argparse.
QUICK_GRAMMAR: dict[str, Grammar] = {
    "ping": ((), None, ()),
    "status": ((), 0, ()),
    "start": ((), 1, ("--no-wait",)),
    "stop": ((), 1, ()),
    "restart": ((), 1, ("--no-wait", "--rolling")),
    "signal": (("sig",), 1, ()),
    "shutdown": ((), None, ()),
    "reopen": ((), None, ()),
    "reload": ((), None, ()),
    "events": ((), None, ()),
    "reexec": ((), None, ()),
    "metrics": ((), None, ()),
    "top": ((), None, ()),  # -d SECONDS takes a value: that form is argparse's
}


class Args:
    """The parsed command line, as argparse's Namespace holds it, typed.

    The class attributes are the defaults, for what a command does not take.
    """

    command: str = ""
    socket: str | None = None
    config: str | None = None
    json: bool = False
    names: list[str] = []  # shared, so never appended to: assigned whole
    no_wait: bool = False
    rolling: bool = False
    sig: str = ""
    lines: int = 50
    follow: bool = False
    stderr: bool = False
    delay: float = 1.0
    shell: str = ""
    list_names: bool = False

    def __init__(self, **values: object) -> None:
        for key, value in values.items():
            setattr(self, key, value)

    def values(self) -> dict[str, object]:
        return {key: getattr(self, key) for key in Args.__annotations__}

    def __eq__(self, other: object) -> bool:
        return isinstance(other, Args) and self.values() == other.values()

    def __repr__(self) -> str:
        return f"Args({self.values()})"


def parse_args(argv: list[str], commands: Mapping[str, object]) -> Args:
    """The command line; argparse's SystemExit on --help or a usage error.

    commands: every command, whose docstring is its help.
    """
    quick = quick_parse(argv)
    if quick is not None:
        return quick
    return Args(**vars(build_parser(commands).parse_args(argv)))


def quick_parse(argv: list[str]) -> Args | None:
    """argv parsed as argparse would, if it is a common form; else None."""
    args = Args()
    index = 0
    while index < len(argv) and argv[index].startswith("-"):
        if argv[index] == "--json":
            args.json = True
            index += 1
            continue
        dest = VALUE_OPTIONS.get(argv[index])
        value = argv[index + 1] if index + 1 < len(argv) else "-"
        if dest is None or value.startswith("-") or getattr(args, dest) is not None:
            return None  # unknown, abbreviated, missing its value or repeated
        setattr(args, dest, value)
        index += 2
    if args.socket is not None and args.config is not None:
        return None  # argparse says that these two cannot go together
    if index == len(argv) or argv[index] not in QUICK_GRAMMAR:
        return None
    args.command = argv[index]
    return args if quick_command(argv[index + 1:], args) else None


def quick_command(tokens: list[str], args: Args) -> bool:
    """Fill args from what follows COMMAND; False if that is not a common form."""
    singles, least_names, flags = QUICK_GRAMMAR[args.command]
    at = [i for i, token in enumerate(tokens) if not token.startswith("-")]
    if at and at[-1] - at[0] + 1 != len(at):
        return False  # options between positionals: argparse's rules are subtle there
    for token in tokens:
        if token == "--json" or token in flags:
            setattr(args, token[2:].replace("-", "_"), True)
        elif token.startswith("-"):
            return False
    words = [tokens[i] for i in at]
    fixed = len(singles)
    if len(words) < fixed + (least_names or 0) or (least_names is None and len(words) > fixed):
        return False
    for dest, word in zip(singles, words, strict=False):
        setattr(args, dest, word)
    if least_names is not None:
        args.names = words[fixed:]
    return True


def build_parser(commands: Mapping[str, object]) -> argparse.ArgumentParser:
    import argparse

    parser = argparse.ArgumentParser(prog="superctl", description="Control a running superd.")
    where = parser.add_mutually_exclusive_group()
    where.add_argument("-c", "--config", help="config file naming the daemon's socket")
    where.add_argument("-s", "--socket", help="control socket path")
    parser.add_argument("--json", action="store_true", help="machine-readable output")
    # Also accept --json after the command; SUPPRESS keeps a global one.
    json_after = argparse.ArgumentParser(add_help=False)
    json_after.add_argument("--json", action="store_true", default=argparse.SUPPRESS)
    subparsers = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    def command(name: str) -> argparse.ArgumentParser:
        doc = commands[name].__doc__
        return subparsers.add_parser(name, parents=[json_after], help=doc, description=doc)

    command("ping")
    command("status").add_argument("names", nargs="*", metavar="NAME")
    start, restart = command("start"), command("restart")
    for sub in (start, restart):
        sub.add_argument("names", nargs="+", metavar="NAME", help="worker, instance or 'all'")
        sub.add_argument(
            "--no-wait", action="store_true", help="return without waiting for RUNNING"
        )
    restart.add_argument(
        "--rolling", action="store_true",
        help="one instance at a time, each RUNNING (and healthy) before the next is stopped")
    command("stop").add_argument(
        "names", nargs="+", metavar="NAME", help="worker, instance or 'all'"
    )
    sub = command("signal")
    sub.add_argument("sig", metavar="SIG", help="signal name (HUP, SIGHUP) or number")
    sub.add_argument("names", nargs="+", metavar="NAME")
    command("shutdown")
    sub = command("logs")
    sub.add_argument("names", nargs="*", metavar="NAME",
                     help="instances, workers or 'all' (default: every instance)")
    sub.add_argument("-n", "--lines", type=int, default=50, help="how many lines (default 50)")
    sub.add_argument("-f", "--follow", action="store_true", help="keep printing new output")
    sub.add_argument("--stderr", action="store_true", help="stderr instead of stdout")
    command("reopen")
    command("reload")
    command("events")
    command("reexec")
    command("metrics")
    command("top").add_argument(
        "-d", "--delay", type=positive_seconds, default=1.0, metavar="SECONDS",
        help="seconds between refreshes (default 1)")
    sub = command("completion")
    sub.add_argument("shell", choices=("bash", "zsh"), help="the shell to complete for")
    # What the script runs at completion time for NAMEs: not for people.
    sub.add_argument("--names", dest="list_names", action="store_true", help=argparse.SUPPRESS)
    return parser


def positive_seconds(text: str) -> float:
    """argparse type of `top -d`: a finite number above 0."""
    import argparse
    import math

    try:
        seconds = float(text)
    except ValueError:
        seconds = math.nan
    if not (math.isfinite(seconds) and seconds > 0):
        raise argparse.ArgumentTypeError(f"expected a positive number of seconds, got {text!r}")
    return seconds
