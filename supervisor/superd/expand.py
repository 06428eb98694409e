"""`${VAR}`, `${VAR:-default}` and `$$` in a worker's command, directory,
environment values and log file paths, and `env_file` contents.

The config checks at load time that every variable without a default is
defined (names_in), so the expansion at spawn time, per instance, cannot
fail.  Any other `$` is left as written.
"""

from __future__ import annotations

import os
import re
import shlex
from dataclasses import replace

TYPE_CHECKING = False  # as typing.TYPE_CHECKING: the daemon never imports typing
if TYPE_CHECKING:
    from collections.abc import Mapping

    from .config import LogConfig, WorkerConfig

REFERENCE = re.compile(r"\$\$|\$\{([A-Za-z_][A-Za-z0-9_]*)(?::-([^}]*))?\}")


def names_in(text: str) -> list[tuple[str, bool]]:
    """The variables text refers to, each with whether it has a default."""
    return [(match[1], match[2] is not None) for match in REFERENCE.finditer(text)
            if match[1] is not None]


def expand(text: str, values: Mapping[str, str]) -> str:
    """text with its references replaced (an undefined one without a default: "")."""
    if "$" not in text:
        return text

    def value(match: re.Match[str]) -> str:
        if match[1] is None:
            return "$"
        found = values.get(match[1])
        if found is None or (found == "" and match[2] is not None):
            return match[2] or ""
        return found

    return REFERENCE.sub(value, text)


def instance_environment(worker: WorkerConfig, name: str, index: int,
                         base: Mapping[str, str]) -> dict[str, str]:
    """superd's environment, then the env files, then `environment` (each
    value expanded with what comes before it), with the instance's names."""
    env = dict(base)
    env.update(worker.env_file_vars)
    env["SUPERD_NAME"], env["SUPERD_WORKER"] = name, worker.name
    env["SUPERD_INSTANCE"] = str(index)
    for key, value in worker.environment:
        env[key] = expand(value, env)
    env["SUPERD_NAME"], env["SUPERD_WORKER"] = name, worker.name  # never overridden
    env["SUPERD_INSTANCE"] = str(index)
    return env


def expanded_path(template: str, base_dir: str, values: Mapping[str, str]) -> str:
    """A path written with references: expanded, then resolved as any config path."""
    path = os.path.expanduser(expand(template, values))
    return os.path.normpath(os.path.join(base_dir, path))


def expanded_command(worker: WorkerConfig, values: Mapping[str, str]) -> tuple[str, ...]:
    return tuple(expand(argument, values) for argument in worker.command)


def expanded_directory(worker: WorkerConfig, values: Mapping[str, str]) -> str:
    if "$" not in worker.directory:
        return worker.directory  # resolved when the config was read
    return expanded_path(worker.directory, worker.base_dir, values)


def expanded_logs(worker: WorkerConfig, values: Mapping[str, str]) -> tuple[LogConfig, LogConfig]:
    """The worker's stdout and stderr settings with this instance's file paths."""
    settings = []
    for log in (worker.stdout, worker.stderr):
        if isinstance(log.file, str) and "$" in log.file:
            log = replace(log, file=expanded_path(log.file, worker.base_dir, values))
        settings.append(log)
    return settings[0], settings[1]


def parse_env_file(text: str) -> list[tuple[str, str]]:
    """`KEY=VALUE` lines, with optional `export `, `#` comments and quotes.
    Raises ValueError naming the first bad line."""
    pairs = []
    for number, raw in enumerate(text.splitlines(), 1):
        line = raw.strip()
        if not line or line.startswith("#"):
            continue
        if line.startswith("export "):
            line = line[len("export "):].lstrip()
        key, sep, value = line.partition("=")
        key = key.strip()
        if not sep or not re.fullmatch(r"[A-Za-z_][A-Za-z0-9_]*", key):
            raise ValueError(f"line {number}: expected KEY=VALUE, got {raw.strip()[:60]!r}")
        pairs.append((key, _unquoted(value.strip(), number)))
    return pairs


def _unquoted(value: str, number: int) -> str:
    if value[:1] in ("'", '"'):
        try:
            words = shlex.split(value)
        except ValueError:
            raise ValueError(f"line {number}: unbalanced quotes") from None
        return " ".join(words)
    comment = value.find(" #")
    return value if comment < 0 else value[:comment].rstrip()
