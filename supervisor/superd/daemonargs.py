"""`superd`'s command line: a quick parser for the forms it is run with, and
argparse, imported only for the rest (help, version, mistakes): it would
stay in the daemon's memory for good."""

from __future__ import annotations

import sys
from dataclasses import dataclass

from . import __version__


@dataclass(frozen=True)
class DaemonArgs:
    config: str | None = None
    foreground: bool = False
    check: bool = False
    resume: int | None = None  # a re-exec's new image: the fd of the state
    can_resume: int | None = None  # the check before a re-exec: a state format
    from_supervisord: str | None = None  # a supervisord config to print as superd YAML


def parse_args(argv: list[str] | None) -> DaemonArgs:
    """The command line.  `-c FILE`, `--config FILE`, `--foreground` and
    `--check` are read here; anything else (help, version, a mistake) goes to
    argparse, which is imported only then: it would stay in the daemon's
    memory for good."""
    words = sys.argv[1:] if argv is None else argv
    return _quick_parse(words) or _argparse(words)


def _quick_parse(words: list[str]) -> DaemonArgs | None:
    if len(words) == 2 and words[0] == "--resume" and words[1].isdigit():
        return DaemonArgs(resume=int(words[1]))
    if len(words) == 2 and words[0] == "--from-supervisord" and not words[1].startswith("-"):
        return DaemonArgs(from_supervisord=words[1])
    if len(words) in (2, 3) and words[0] == "--can-resume" and words[1].isdigit():
        return DaemonArgs(config=words[2] if len(words) == 3 else None,
                          can_resume=int(words[1]))
    config, flags = None, set()
    rest = iter(words)
    for word in rest:
        if word in ("-c", "--config"):
            config = next(rest, None)
            if config is None or config.startswith("-"):
                return None
        elif word in ("--foreground", "--check"):
            flags.add(word)
        else:
            return None
    return DaemonArgs(config, "--foreground" in flags, "--check" in flags)


def _argparse(words: list[str]) -> DaemonArgs:
    import argparse

    parser = argparse.ArgumentParser(prog="superd", description="superd process supervisor")
    parser.add_argument("-c", "--config", help="config file (default: $SUPERD_CONFIG or "
                        "the system/user default)")
    parser.add_argument("--foreground", action="store_true",
                        help="do not detach; log to stderr (for systemd and containers)")
    parser.add_argument("--check", action="store_true", help="validate the config and exit")
    parser.add_argument("--from-supervisord", metavar="FILE",
                        help="print the superd config equivalent to a supervisord config")
    parser.add_argument("--version", action="version", version=f"superd {__version__}")
    # Internal, for a re-exec (see handover.py): not for users.
    parser.add_argument("--resume", type=int, metavar="FD", help=argparse.SUPPRESS)
    parser.add_argument("--can-resume", type=int, metavar="FORMAT", help=argparse.SUPPRESS)
    parser.add_argument("running_config", nargs="?", help=argparse.SUPPRESS)
    args = parser.parse_args(words)
    if args.running_config is not None and args.can_resume is None:
        parser.error(f"unrecognized arguments: {args.running_config}")
    return DaemonArgs(args.running_config if args.can_resume is not None else args.config,
                      args.foreground, args.check, args.resume, args.can_resume,
                      args.from_supervisord)
