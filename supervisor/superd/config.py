"""superd's configuration: a YAML file read into frozen dataclasses.

Validation reports every problem at once, each as ``FILE:LINE: key.path:
message``. Line numbers come from walking the composed YAML node tree, because
the plain Python objects that ``yaml.safe_load`` builds have lost them.
"""

from __future__ import annotations

import errno
import grp
import math
import os
import pwd
import re
import shlex
import signal
from collections.abc import Callable, Collection
from dataclasses import dataclass, field
from dataclasses import fields as dataclass_fields

import yaml
from yaml.nodes import MappingNode, Node, ScalarNode, SequenceNode

from .deps import find_cycles
from .expand import names_in, parse_env_file
from .names import instance_name

TYPE_CHECKING = False  # as typing.TYPE_CHECKING: the daemon never imports typing
if TYPE_CHECKING:
    from typing import TypeVar

    T = TypeVar("T")

SYSTEM_CONFIG_PATH = "/etc/superd/superd.yaml"
NAME_PATTERN = re.compile(r"[A-Za-z0-9_.-]+")
# Linux sun_path holds 108 bytes, one of them the terminating NUL.
MAX_UNIX_PATH_BYTES = 107
MEBIBYTE = 1024 * 1024
# Ten thousand instances keep a full `status` reply near 4 MB, far below the
# wire's 64 MiB, and running them all takes some 40,000 pipe descriptors:
# about the most one daemon's RLIMIT_NOFILE and one loop serve well.
MAX_NUMPROCS = 10_000
DEFAULT_MAX_CONNECTIONS = 256

AUTORESTART_CHOICES = ("always", "on-failure", "never")

NULL_TAG = "tag:yaml.org,2002:null"
MERGE_TAG = "tag:yaml.org,2002:merge"
NUMBER_TAGS = ("tag:yaml.org,2002:int", "tag:yaml.org,2002:float")


@dataclass(frozen=True)
class LogConfig:
    file: str | bool | None  # None: LOG_DIR/INSTANCE.out.log or .err.log; False: no file
    maxbytes: int
    backups: int
    timestamps: bool = False  # each line starts with the RFC 3339 time superd read it
    console: bool = False  # each line also to superd's own stdout/stderr (--foreground)
    merge: bool = False

    @property
    def shaped(self) -> bool:
        """Whether superd handles this output line by line (else bytes as they come)."""
        return self.timestamps or self.console


@dataclass(frozen=True)
class ReadyConfig:
    kind: str  # "none" | "notify" | "tcp"
    port: int | None = None


@dataclass(frozen=True)
class HealthConfig:
    kind: str  # "tcp" | "http" | "exec"
    target: str  # tcp: the port; http: the URL (either may hold ${VAR}); exec: ""
    argv: tuple[str, ...] = ()  # exec: the probe's command
    interval: float = 10.0
    timeout: float = 5.0
    retries: int = 3
    start_period: float = 0.0


@dataclass(frozen=True)
class BackoffConfig:
    initial: float
    max: float


DEFAULT_LOG = LogConfig(file=None, maxbytes=50 * MEBIBYTE, backups=5)
DEFAULT_READY = ReadyConfig("none")
DEFAULT_BACKOFF = BackoffConfig(initial=0.1, max=30.0)


@dataclass(frozen=True)
class WorkerConfig:
    name: str
    command: tuple[str, ...]
    numprocs: int
    directory: str
    environment: tuple[tuple[str, str], ...]
    user: str | None
    umask: int
    autostart: bool
    autorestart: str  # "always" | "on-failure" | "never"
    exitcodes: tuple[int, ...]
    startsecs: float
    startretries: float  # retries after the first try; math.inf: `forever`
    backoff: BackoffConfig
    stopsignal: int
    stoptimeout: float
    ready: ReadyConfig
    start_timeout: float  # the longest wait for readiness (with ready:); 0: no limit
    sockets: tuple[str, ...]
    depends_on: tuple[str, ...]
    healthcheck: HealthConfig | None
    max_memory: int | None  # bytes of RSS of the process group
    rolling: bool  # a reload restarts a changed worker's instances one at a time
    stdout: LogConfig
    stderr: LogConfig
    env_file: tuple[str, ...] = ()  # as written: "-PATH" may be missing
    # Not keys: what the env files held when the config was read (so that a
    # changed file makes the worker changed at a reload), and the folder its
    # relative paths are resolved from once expanded.
    env_file_vars: tuple[tuple[str, str], ...] = ()
    base_dir: str = ""
    # Not a key: the depends_on items written {NAME: completed}, one-shots
    # whose exit this worker waits for, instead of their running.
    completed_deps: tuple[str, ...] = ()

    def instance_names(self) -> list[str]:
        return [instance_name(self.name, index, self.numprocs) for index in range(self.numprocs)]


@dataclass(frozen=True)
class SocketConfig:
    name: str
    listen: str  # "tcp://HOST:PORT", "tcp://[V6]:PORT" or "unix:///absolute/path"
    backlog: int
    mode: int | None


@dataclass(frozen=True)
class DaemonConfig:
    socket: str
    socket_mode: int
    socket_group: str | None
    pidfile: str
    log_dir: str
    log_file: str
    shutdown_timeout: float
    max_connections: int
    metrics: str | None = None  # "tcp://HOST:PORT": serve GET /metrics there


@dataclass(frozen=True)
class Config:
    path: str
    daemon: DaemonConfig
    sockets: dict[str, SocketConfig]
    workers: dict[str, WorkerConfig]
    groups: dict[str, tuple[str, ...]] = field(default_factory=dict)  # name -> workers
    include: tuple[str, ...] = ()  # the globs, as written
    # Every file's bytes as read, the main one first, then the included ones
    # and the env files: a re-exec hands them on and the new image parses
    # them, rather than reading files that may have changed since.
    sources: dict[str, bytes] = field(default_factory=dict, compare=False, repr=False)


def keys_of(cls: type, *, without: Collection[str] = ()) -> tuple[str, ...]:
    """The config keys a dataclass reads: its field names, in order."""
    return tuple(f.name for f in dataclass_fields(cls) if f.name not in without)


# The keys each section accepts come from the dataclasses, so a new field
# cannot be forgotten here.  `name` and `path` are not written by users.
TOP_KEYS = keys_of(Config, without=("path", "sources"))
INCLUDED_KEYS = ("sockets", "workers", "groups")  # what an included file may hold
DAEMON_KEYS = keys_of(DaemonConfig)
SOCKET_KEYS = keys_of(SocketConfig, without=("name",))
WORKER_KEYS = keys_of(WorkerConfig,
                      without=("name", "env_file_vars", "base_dir", "completed_deps"))
BACKOFF_KEYS = keys_of(BackoffConfig)
STDERR_KEYS = keys_of(LogConfig)
STDOUT_KEYS = keys_of(LogConfig, without=("merge",))
READY_KEYS = ("tcp",)
HEALTH_PROBES = ("tcp", "http", "exec")
HEALTH_KEYS = (*HEALTH_PROBES, *keys_of(HealthConfig, without=("kind", "target", "argv")))


@dataclass(frozen=True)
class ConfigIssue:
    file: str
    line: int
    key: str
    message: str

    def __str__(self) -> str:
        return f"{self.file}:{self.line}: {self.key}: {self.message}"


class ConfigError(Exception):
    def __init__(self, issues: list[ConfigIssue]) -> None:
        super().__init__("\n".join(str(issue) for issue in issues))
        self.issues = issues


# ---------------------------------------------------------------- public helpers


def find_path(cli_value: str | None) -> str:
    if cli_value:
        return cli_value
    from_env = os.environ.get("SUPERD_CONFIG")
    if from_env:
        return from_env
    if os.geteuid() == 0:
        return SYSTEM_CONFIG_PATH
    config_home = os.environ.get("XDG_CONFIG_HOME") or os.path.expanduser("~/.config")
    return os.path.join(config_home, "superd", "superd.yaml")


_NUMBER = r"([-+]?(?:\d+(?:\.\d*)?|\.\d+))"
_DURATION = re.compile(_NUMBER + r"\s*(ms|s|m|h)?", re.ASCII)
_DURATION_UNITS = {"ms": (1, 1000), "s": (1, 1), "m": (60, 1), "h": (3600, 1)}

_SIZE = re.compile(_NUMBER + r"\s*(?:([kmgt])(?:i?b)?|b)?", re.ASCII | re.IGNORECASE)
_SIZE_UNITS = {"k": 1024, "m": 1024**2, "g": 1024**3, "t": 1024**4}


def _exact(number: str) -> tuple[int, int]:
    """A decimal number as written (see _NUMBER), as numerator and denominator.
    (Not fractions.Fraction: it brings decimal, a megabyte the daemon keeps.)"""
    whole, _, fraction = number.partition(".")
    return int(whole + fraction), 10 ** len(fraction)


def parse_duration(value: object) -> float:
    """Seconds from a number or a string like "500ms", "1.5s", "5m", "1h"."""
    if isinstance(value, str) and (match := _DURATION.fullmatch(value.strip())):
        # Exact arithmetic, so "7ms" is the float nearest 7/1000, not 7 * 0.001.
        numerator, denominator = _exact(match[1])
        times, per = _DURATION_UNITS[match[2] or "s"]
        seconds = numerator * times / (denominator * per)
    elif isinstance(value, (int, float)) and not isinstance(value, bool):
        seconds = float(value)
    else:
        raise ValueError(f"not a duration: {_describe(value)}")
    if not math.isfinite(seconds):
        raise ValueError(f"not a duration: {_describe(value)}")
    if seconds < 0:
        raise ValueError(f"duration must not be negative, got {_describe(value)}")
    return seconds


def parse_size(value: object) -> int:
    """Bytes from a number or a string like "10KB", "50MB", "1GiB" (powers of 1024)."""
    if isinstance(value, str) and (match := _SIZE.fullmatch(value.strip())):
        numerator, denominator = _exact(match[1])
        size = numerator * _SIZE_UNITS.get((match[2] or "").lower(), 1) // denominator
    elif isinstance(value, int) and not isinstance(value, bool):
        size = value
    else:
        raise ValueError(f"not a size: {_describe(value)}")
    if size < 0:
        raise ValueError(f"size must not be negative, got {_describe(value)}")
    return size


def parse_signal(value: object) -> int:
    """A signal number from "TERM", "SIGTERM", "term", "15" or 15."""
    if isinstance(value, str) and not value.strip().isdigit():
        name = value.strip().upper()
        try:
            return int(signal.Signals[name if name.startswith("SIG") else f"SIG{name}"])
        except KeyError:
            raise ValueError(f"unknown signal: {value!r}") from None
    if isinstance(value, str):
        value = int(value)
    if not isinstance(value, int) or isinstance(value, bool):
        raise ValueError(f"expected a signal name or number, got {_describe(value)}")
    if not 1 <= value < signal.NSIG:
        raise ValueError(f"unknown signal: {value}")
    return value


# ---------------------------------------------------------------- loading


def load(path: str, sources: dict[str, bytes] | None = None) -> Config:
    """Read and check the config file at path and the files it includes (or
    `sources`, their bytes as read before, by absolute path); raise
    ConfigError listing every problem."""
    context = _Context(path, os.path.dirname(os.path.abspath(path)), sources)
    root = _compose(context, context.read(os.path.abspath(path)))
    config = _config(context, root)
    if context.issues:
        # A node shared through a YAML alias is checked once per use: report it once.
        unique = dict.fromkeys(context.issues)
        raise ConfigError(sorted(unique, key=lambda issue: issue.line))
    return config


class _Entry:
    """A key and its value, as YAML nodes (they carry the line numbers)."""

    __slots__ = ("key", "value")

    def __init__(self, key: Node, value: Node) -> None:
        self.key, self.value = key, value


class _Context:
    """What every check needs: where to report problems and what relative paths mean."""

    def __init__(self, file: str, base_dir: str,
                 carried: dict[str, bytes] | None = None) -> None:
        self.file = file
        self.base_dir = base_dir
        self.issues: list[ConfigIssue] = []
        self._loader = yaml.SafeLoader("")
        self._merged_counts: dict[int, int] = {}
        self.carried = carried  # the files' bytes handed over by a re-exec, if any
        self.sources: dict[str, bytes] = {}  # every file read, in order

    def included(self, file: str) -> _Context:
        """The context of an included file: its own name and folder, the same issues."""
        child = _Context(file, os.path.dirname(file), self.carried)
        child.issues, child.sources = self.issues, self.sources
        return child

    def read(self, path: str) -> bytes:
        """A config file's bytes; ConfigError if it cannot be read."""
        try:
            return self.read_file(path)
        except OSError as exc:
            self.report(None, "-", f"cannot read: {exc.strerror or exc}")
            raise ConfigError(self.issues) from None

    def read_file(self, path: str) -> bytes:
        """A file the config reads (itself, an include, an env file), carried
        over a re-exec, else from disk; OSError if there is none."""
        if self.carried is not None:
            if path not in self.carried:
                raise FileNotFoundError(errno.ENOENT, "not there when superd read its config")
            data = self.carried[path]
        else:
            with open(path, "rb") as stream:
                data = stream.read()
        self.sources[path] = data
        return data

    def glob(self, pattern: str) -> list[str]:
        """The files a pattern names, sorted (after a re-exec: those carried over)."""
        if self.carried is not None:
            import fnmatch

            # The files read already (the main one) are skipped by the caller.
            return sorted(p for p in self.carried if fnmatch.fnmatch(p, pattern))
        import glob

        return sorted(glob.glob(pattern))

    def report(self, node: Node | None, key: str, message: str) -> None:
        line = node.start_mark.line + 1 if node is not None else 0
        self.issues.append(ConfigIssue(self.file, line, key or "-", message))

    def value(self, node: Node) -> object:
        """The plain Python value of node; ValueError when YAML cannot build it."""
        try:
            return self._loader.construct_object(node, deep=True)
        except (yaml.YAMLError, TypeError, ValueError) as exc:
            raise ValueError(f"bad value: {getattr(exc, 'problem', None) or exc}") from None

    def flatten(self, node: MappingNode) -> int:
        """Apply YAML merge keys ("<<: *defaults") in place; return how many entries came
        from merges (they now lead node.value). An alias may bring a node back: once is enough.
        """
        if id(node) not in self._merged_counts:
            written = sum(1 for key, _ in node.value if key.tag != MERGE_TAG)
            self._loader.flatten_mapping(node)
            self._merged_counts[id(node)] = len(node.value) - written
        return self._merged_counts[id(node)]

    def path(self, value: object) -> str:
        if not isinstance(value, str) or not value:
            raise ValueError(f"expected a path, got {_describe(value)}")
        if "\0" in value:
            raise ValueError("path contains a NUL byte")
        return os.path.normpath(os.path.join(self.base_dir, os.path.expanduser(value)))

    def socket_path(self, value: object) -> str:
        path = self.path(value)
        if len(os.fsencode(path)) > MAX_UNIX_PATH_BYTES:
            raise ValueError(
                f"socket path too long ({len(os.fsencode(path))} bytes, "
                f"at most {MAX_UNIX_PATH_BYTES}): {path}"
            )
        return path

    def listen_address(self, value: object) -> str:
        if isinstance(value, str) and value.startswith("unix://"):
            return "unix://" + self.socket_path(value[len("unix://"):])
        if isinstance(value, str) and value.startswith("tcp://"):
            return _tcp_address(value)
        raise ValueError(f"expected tcp://HOST:PORT or unix:///PATH, got {_describe(value)}")


class _Fields:
    """One mapping's entries, read key by key, with a default for each absent key."""

    def __init__(self, context: _Context, entries: dict[str, _Entry], path: str) -> None:
        self.context = context
        self.entries = entries
        self.path = path

    def value(self, key: str, convert: Callable[[object], T], default: T) -> T:
        entry = self.entries.get(key)
        if entry is None:
            return default
        return _convert(self.context, entry.value, _join(self.path, key), convert, default)

    def node(self, key: str, parse: Callable[[_Context, Node, str], T], default: T) -> T:
        entry = self.entries.get(key)
        if entry is None:
            return default
        return parse(self.context, entry.value, _join(self.path, key))

    def report(self, key: str, message: str) -> None:
        entry = self.entries.get(key)
        self.context.report(entry.value if entry else None, _join(self.path, key), message)

    def report_at(self, key: str, where: str, message: str) -> None:
        """Report at key's line, naming `where` (a path below key)."""
        entry = self.entries.get(key)
        self.context.report(entry.value if entry else None, _join(self.path, where), message)


def _compose(context: _Context, data: bytes) -> Node | None:
    try:
        return yaml.compose(data, Loader=yaml.SafeLoader)
    except yaml.MarkedYAMLError as exc:
        mark = exc.problem_mark or exc.context_mark
        line = mark.line + 1 if mark else 1
        what = ", ".join(part for part in (exc.context, exc.problem) if part)
        issue = ConfigIssue(context.file, line, "-", f"invalid YAML: {what}")
    except yaml.YAMLError as exc:
        issue = ConfigIssue(context.file, 1, "-", f"invalid YAML: {exc}")
    raise ConfigError([issue]) from None


# A section's entries from every file: name -> (the file's context, the entry).
Placed = dict[str, tuple["_Context", "_Entry"]]


def _config(context: _Context, root: Node | None) -> Config:
    top = {} if root is None or _is_null(root) else _mapping(context, root, "", TOP_KEYS)
    daemon = _daemon(context, _section(context, top, "daemon", DAEMON_KEYS))
    no_patterns: tuple[tuple[str, str], ...] = ()
    patterns = _Fields(context, top, "").node("include", _include_patterns, no_patterns)
    files = [(context, top), *_included(context, patterns)]
    sockets = _sockets(_placed(files, "sockets"))
    workers = _workers(_placed(files, "workers"), set(sockets))
    groups = _groups(_placed(files, "groups"), workers)
    return Config(os.path.abspath(context.file), daemon, sockets, workers, groups,
                  tuple(pattern for pattern, _ in patterns), context.sources)


def _include_patterns(context: _Context, node: Node, path: str) -> tuple[tuple[str, str], ...]:
    """(as written, absolute pattern) of each include glob."""
    def pattern(value: object) -> tuple[str, str]:
        return str(value), context.path(value)

    found: tuple[tuple[str, str], ...] = _items(context, node, path, pattern)
    return found


def _included(context: _Context,
              patterns: tuple[tuple[str, str], ...]) -> list[tuple[_Context, dict[str, _Entry]]]:
    """Each included file's context and top-level entries, in glob order."""
    files = []
    seen = {os.path.abspath(context.file)}
    for _, pattern in patterns:
        for path in context.glob(pattern):
            if path in seen:
                continue
            seen.add(path)
            child = context.included(path)
            root = _compose(child, child.read(path))
            if root is not None and not _is_null(root):
                files.append((child, _mapping(child, root, "", INCLUDED_KEYS)))
    return files


def _placed(files: list[tuple[_Context, dict[str, _Entry]]], key: str) -> Placed:
    """One section's entries from every file; a name defined twice is an error
    naming the first place."""
    placed: Placed = {}
    for context, top in files:
        for name, entry in _section(context, top, key, None).items():
            if name in placed:
                first, earlier = placed[name]
                context.report(entry.key, _join(key, name), f"defined twice (first at "
                               f"{first.file}:{_line(earlier.key)})")
                continue
            placed[name] = (context, entry)
    return placed


def _section(
    context: _Context, top: dict[str, _Entry], key: str, allowed: Collection[str] | None
) -> dict[str, _Entry]:
    entry = top.get(key)
    # A section whose entries are all commented out is null: read it as empty.
    if entry is None or _is_null(entry.value):
        return {}
    return _mapping(context, entry.value, key, allowed)


def _mapping(
    context: _Context,
    node: Node,
    path: str,
    allowed: Collection[str] | None,
    required: Collection[str] = (),
) -> dict[str, _Entry]:
    """node's entries by key; reports a non-mapping, odd, duplicate, unknown or missing key."""
    if not isinstance(node, MappingNode):
        context.report(node, path, f"expected a mapping, got {_describe_node(context, node)}")
        return {}
    try:
        merged = context.flatten(node)
    except yaml.YAMLError as exc:
        context.report(node, path, f"bad merge key: {getattr(exc, 'problem', exc)}")
        return {}
    entries: dict[str, _Entry] = {}
    for key_node, value_node in node.value[:merged]:
        _add_entry(context, entries, _Entry(key_node, value_node), path, allowed)
    written: set[str] = set()
    for key_node, value_node in node.value[merged:]:
        _add_entry(context, entries, _Entry(key_node, value_node), path, allowed, written)
    for key in required:
        if key not in entries:
            context.report(node, _join(path, key), "required key is missing")
    return entries


def _add_entry(
    context: _Context,
    entries: dict[str, _Entry],
    entry: _Entry,
    path: str,
    allowed: Collection[str] | None,
    written: set[str] | None = None,
) -> None:
    """Adds entry; a key written twice is an error, one written over a merged one is not."""
    if not isinstance(entry.key, ScalarNode):
        context.report(entry.key, path, "keys must be plain names, not lists or mappings")
        return
    key = str(entry.key.value)
    if written is not None and key in written:
        first_line = _line(entries[key].key)
        context.report(entry.key, _join(path, key), f"duplicate key (first at line {first_line})")
    elif allowed is not None and key not in allowed:
        context.report(entry.key, _join(path, key), _unknown_key_message(key, allowed))
    else:
        entries[key] = entry
        if written is not None:
            written.add(key)


def _unknown_key_message(key: str, allowed: Collection[str]) -> str:
    import difflib  # only for a config with a typo

    close = difflib.get_close_matches(key, list(allowed), n=1)
    hint = f"did you mean '{close[0]}'?" if close else "expected one of " + ", ".join(allowed)
    return f"unknown key ({hint})"


def _convert(
    context: _Context, node: Node, path: str, convert: Callable[[object], T], default: T
) -> T:
    try:
        return convert(context.value(node))
    except ValueError as exc:
        context.report(node, path, str(exc))
        return default


def _items(
    context: _Context, node: Node, path: str, convert: Callable[[object], T]
) -> tuple[T, ...]:
    """A list's converted items, each bad one reported at its own line.

    A lone value stands for a list of one.
    """
    if isinstance(node, SequenceNode):
        nodes = [(item, f"{path}[{index}]") for index, item in enumerate(node.value)]
    elif isinstance(node, ScalarNode):
        nodes = [(node, path)]
    else:
        context.report(node, path, "expected a list, got a mapping")
        return ()
    converted = []
    for item, item_path in nodes:
        try:
            converted.append(convert(context.value(item)))
        except ValueError as exc:
            context.report(item, item_path, str(exc))
    return tuple(converted)


# ---------------------------------------------------------------- sections


def _daemon(context: _Context, entries: dict[str, _Entry]) -> DaemonConfig:
    fields = _Fields(context, entries, "daemon")
    run_dir = context.path(_systemd_directory("RUNTIME_DIRECTORY") or "run")
    logs_dir = context.path(_systemd_directory("LOGS_DIRECTORY") or "log")
    return DaemonConfig(
        socket=fields.value("socket", context.socket_path,
                            os.path.join(run_dir, "superd.sock")),
        socket_mode=fields.value("socket_mode", _mode, 0o600),
        socket_group=fields.value("socket_group", _optional(_group_name), None),
        pidfile=fields.value("pidfile", context.path, os.path.join(run_dir, "superd.pid")),
        log_dir=fields.value("log_dir", context.path, logs_dir),
        log_file=fields.value("log_file", context.path, os.path.join(logs_dir, "superd.log")),
        shutdown_timeout=fields.value("shutdown_timeout", parse_duration, 30.0),
        max_connections=fields.value("max_connections", _integer(minimum=1),
                                     DEFAULT_MAX_CONNECTIONS),
        metrics=fields.value("metrics", _optional(_metrics_address), None),
    )


def _systemd_directory(variable: str) -> str:
    """The folder systemd made for this service ($RUNTIME_DIRECTORY from RuntimeDirectory=,
    $LOGS_DIRECTORY from LogsDirectory=), or "" outside systemd. Several folders come
    colon-separated: the first is ours."""
    return os.environ.get(variable, "").split(":")[0]


def _groups(entries: Placed, workers: dict[str, WorkerConfig]) -> dict[str, tuple[str, ...]]:
    """Names for several workers at once; a group may not take a worker's name."""
    taken = set(workers) | {"all"} | {n for w in workers.values() for n in w.instance_names()}
    groups = {}
    for name, (context, entry) in entries.items():
        path = _join("groups", name)
        _check_name(context, entry.key, path, "group")
        if name in taken:
            context.report(entry.key, path, f"{name!r} already names a worker or instance")
        groups[name] = _names_in(set(workers), "worker")(context, entry.value, path)
    return groups


def _sockets(entries: Placed) -> dict[str, SocketConfig]:
    sockets = {}
    for name, (context, entry) in entries.items():
        path = _join("sockets", name)
        _check_name(context, entry.key, path, "socket")
        sockets[name] = _socket(context, name, entry.value, path)
    return sockets


def _socket(context: _Context, name: str, node: Node, path: str) -> SocketConfig:
    fields = _Fields(context, _mapping(context, node, path, SOCKET_KEYS, ("listen",)), path)
    listen = fields.value("listen", context.listen_address, "")
    mode = fields.value("mode", _optional(_mode), None)
    if mode is not None and listen.startswith("tcp://"):
        fields.report("mode", "mode applies only to unix:// sockets")
    backlog = fields.value("backlog", _integer(minimum=1), 128)
    return SocketConfig(name=name, listen=listen, backlog=backlog, mode=mode)


def _metrics_address(value: object) -> str:
    if not isinstance(value, str) or not value.startswith("tcp://"):
        raise ValueError(f"expected tcp://HOST:PORT, got {_describe(value)}")
    return _tcp_address(value)


def _tcp_address(value: str) -> str:
    match = re.fullmatch(r"tcp://(\[[^\]]*\]|[^\s:/\[\]]+):(\d+)", value)
    if not match:
        raise ValueError(f"expected tcp://HOST:PORT or tcp://[IPV6]:PORT, got {value!r}")
    host, port = match[1], int(match[2])
    if host.startswith("["):
        try:
            import ipaddress  # only for an IPv6 address

            ipaddress.IPv6Address(host[1:-1])
        except ValueError:
            raise ValueError(f"not an IPv6 address: {host}") from None
    if port > 65535:
        raise ValueError(f"port out of range 0..65535: {port}")
    return f"tcp://{host}:{port}"


def _workers(entries: Placed, socket_names: set[str]) -> dict[str, WorkerConfig]:
    workers = {}
    for name, (context, entry) in entries.items():
        path = _join("workers", name)
        _check_name(context, entry.key, path, "worker")
        workers[name] = _worker(context, name, entry.value, path, socket_names, set(entries))
    _report_cycles(workers, entries)
    _report_long_running_one_shots(workers, entries)
    return workers


def _report_long_running_one_shots(workers: dict[str, WorkerConfig], entries: Placed) -> None:
    """A {NAME: completed} dependency must be a one-shot: one that is not restarted."""
    for name, worker in workers.items():
        for target in worker.completed_deps:
            one_shot = workers[target]
            if one_shot.autorestart != "never" or one_shot.startsecs > 0:
                # With startsecs, a one-shot that is done early would count
                # as a failed start, and be started again.
                context, entry = entries[name]
                context.report(_key_node(entry.value, "depends_on"),
                               _join(_join("workers", name), "depends_on"),
                               f"{target} is waited for as completed, so it must be a "
                               "one-shot: give it autorestart: never and startsecs: 0")


def _worker(
    context: _Context,
    name: str,
    node: Node,
    path: str,
    socket_names: set[str],
    worker_names: set[str],
) -> WorkerConfig:
    fields = _Fields(context, _mapping(context, node, path, WORKER_KEYS, ("command",)), path)
    no_files: tuple[tuple[str, str], ...] = ()
    env_files = fields.node("env_file", _env_file_paths, no_files)
    dependencies = fields.node("depends_on", _dependencies(worker_names), no_files)
    worker = WorkerConfig(
        name=name,
        command=fields.node("command", _command, ()),
        numprocs=fields.value("numprocs", _integer(minimum=1, maximum=MAX_NUMPROCS), 1),
        directory=fields.value("directory", _template_or(context.path), context.base_dir),
        environment=fields.node("environment", _environment, ()),
        user=fields.value("user", _optional(_user_name), None),
        umask=fields.value("umask", _mode, 0o022),
        autostart=fields.value("autostart", _boolean, True),
        autorestart=fields.value("autorestart", _choice(AUTORESTART_CHOICES), "always"),
        exitcodes=fields.node("exitcodes", _exit_codes, (0,)),
        startsecs=fields.value("startsecs", parse_duration, 1.0),
        startretries=fields.value("startretries", _retries, 5.0),
        backoff=fields.node("backoff", _backoff, DEFAULT_BACKOFF),
        stopsignal=fields.value("stopsignal", parse_signal, int(signal.SIGTERM)),
        stoptimeout=fields.value("stoptimeout", parse_duration, 10.0),
        ready=fields.node("ready", _ready, DEFAULT_READY),
        start_timeout=fields.value("start_timeout", parse_duration, 90.0),
        sockets=fields.node("sockets", _names_in(socket_names, "socket"), ()),
        depends_on=tuple(name for name, _ in dependencies),
        healthcheck=fields.node("healthcheck", _healthcheck, None),
        max_memory=fields.value("max_memory", _optional(_positive_size), None),
        rolling=fields.value("rolling", _boolean, False),
        stdout=fields.node("stdout", _log(STDOUT_KEYS), DEFAULT_LOG),
        stderr=fields.node("stderr", _log(STDERR_KEYS), DEFAULT_LOG),
        env_file=tuple(written for written, _ in env_files),
        env_file_vars=_read_env_files(context, fields, env_files),
        base_dir=context.base_dir,
        completed_deps=tuple(name for name, kind in dependencies if kind == "completed"),
    )
    _check_references(context, fields, worker)
    return worker


def _dependencies(worker_names: set[str]) -> Callable[[_Context, Node, str],
                                                      tuple[tuple[str, str], ...]]:
    """depends_on items: NAME (to be RUNNING) or {NAME: completed} (to have exited well)."""
    def dependency(value: object) -> tuple[str, str]:
        if isinstance(value, dict) and len(value) == 1:
            [(name, kind)] = value.items()
            if kind != "completed":
                raise ValueError(f"expected {{{name}: completed}}, got {kind!r}")
        else:
            name, kind = value, "running"
        if not isinstance(name, str):
            raise ValueError(f"expected a worker name or {{NAME: completed}}, "
                             f"got {_describe(value)}")
        if name not in worker_names:
            raise ValueError(f"unknown worker {name!r}")
        return name, kind

    def dependencies(context: _Context, node: Node, path: str) -> tuple[tuple[str, str], ...]:
        items: tuple[tuple[str, str], ...] = _items(context, node, path, dependency)
        return items

    return dependencies


def _template_or(convert: Callable[[object], str]) -> Callable[[object], str]:
    """A value with a ${...} reference is kept as written (expanded per instance,
    then converted, at spawn time); any other is converted now."""
    def value(raw: object) -> str:
        if isinstance(raw, str) and "$" in raw:
            return raw
        return convert(raw)

    return value


def _env_file_paths(context: _Context, node: Node, path: str) -> tuple[tuple[str, str], ...]:
    """(as written, resolved path) of each env file; "-PATH" may be missing."""
    def one(value: object) -> tuple[str, str]:
        if not isinstance(value, str) or not value.lstrip("-"):
            raise ValueError(f"expected a path, got {_describe(value)}")
        return value, context.path(value.removeprefix("-"))

    return _items(context, node, path, one)


def _read_env_files(context: _Context, fields: _Fields,
                    env_files: tuple[tuple[str, str], ...]) -> tuple[tuple[str, str], ...]:
    pairs: list[tuple[str, str]] = []
    for written, resolved in env_files:
        try:
            pairs.extend(parse_env_file(context.read_file(resolved).decode()))
        except FileNotFoundError:
            if not written.startswith("-"):
                fields.report("env_file", f"{resolved}: no such file (write -{written} "
                                          "if it may be missing)")
        except (OSError, UnicodeDecodeError, ValueError) as exc:
            fields.report("env_file", f"{resolved}: {getattr(exc, 'strerror', None) or exc}")
    return tuple(pairs)


def _check_references(context: _Context, fields: _Fields, worker: WorkerConfig) -> None:
    """Every ${VAR} without a default must be defined, so no spawn can miss one."""
    defined = {*os.environ, *(key for key, _ in worker.env_file_vars),
               "SUPERD_NAME", "SUPERD_WORKER", "SUPERD_INSTANCE"}
    for key, value in worker.environment:
        _check_text(fields, f"environment.{key}", "environment", value, defined)
        defined.add(key)
    for index, argument in enumerate(worker.command):
        _check_text(fields, f"command[{index}]", "command", argument, defined)
    _check_text(fields, "directory", "directory", worker.directory, defined)
    for stream, log in (("stdout", worker.stdout), ("stderr", worker.stderr)):
        if isinstance(log.file, str):
            _check_text(fields, f"{stream}.file", stream, log.file, defined)
    health = worker.healthcheck
    if health is not None:
        _check_text(fields, f"healthcheck.{health.kind}", "healthcheck", health.target, defined)
        for index, argument in enumerate(health.argv):
            _check_text(fields, f"healthcheck.exec[{index}]", "healthcheck", argument, defined)


def _check_text(fields: _Fields, where: str, key: str, text: str, defined: set[str]) -> None:
    for name, has_default in names_in(text):
        if name not in defined and not has_default:
            fields.report_at(key, where, f"undefined variable ${{{name}}}: set it in "
                             f"environment, env_file or superd's environment, or give a "
                             f"default, ${{{name}:-VALUE}}")


def _command(context: _Context, node: Node, path: str) -> tuple[str, ...]:
    if not isinstance(node, SequenceNode):
        return _convert(context, node, path, _split_command, ())
    if not node.value:
        context.report(node, path, "command is empty")
    arguments = []
    for index, item in enumerate(node.value):
        arguments.append(_text(context, item, f"{path}[{index}]"))
    if arguments and not arguments[0]:
        context.report(node.value[0], f"{path}[0]", "program name is empty")
    return tuple(arguments)


def _split_command(value: object) -> tuple[str, ...]:
    if not isinstance(value, str):
        raise ValueError(f"expected a list of strings or a string, got {_describe(value)}")
    try:
        words = shlex.split(value)
    except ValueError as exc:
        raise ValueError(f"cannot split command: {exc}") from None
    if not words:
        raise ValueError("command is empty")
    return tuple(words)


def _text(context: _Context, node: Node, path: str) -> str:
    """A string, or a number as written: "0755" stays "0755", not YAML's 493."""
    if isinstance(node, ScalarNode) and node.tag in NUMBER_TAGS:
        return str(node.value)
    return _convert(context, node, path, _string, "")


def _environment(context: _Context, node: Node, path: str) -> tuple[tuple[str, str], ...]:
    pairs = []
    for name, entry in _mapping(context, node, path, None).items():
        if not name or "=" in name or "\0" in name:
            context.report(entry.key, _join(path, name), "not a valid environment variable name")
        value = _text(context, entry.value, _join(path, name))
        if "\0" in value:
            context.report(entry.value, _join(path, name), "value contains a NUL byte")
        pairs.append((name, value))
    return tuple(pairs)


def _exit_codes(context: _Context, node: Node, path: str) -> tuple[int, ...]:
    return _items(context, node, path, _integer(minimum=0, maximum=255, what="an exit code"))


def _backoff(context: _Context, node: Node, path: str) -> BackoffConfig:
    fields = _Fields(context, _mapping(context, node, path, BACKOFF_KEYS), path)
    initial = fields.value("initial", parse_duration, DEFAULT_BACKOFF.initial)
    longest = fields.value("max", parse_duration, DEFAULT_BACKOFF.max)
    if longest < initial:
        where = "max" if "max" in fields.entries else "initial"
        fields.report(where, f"backoff max ({longest:g}s) is less than initial ({initial:g}s)")
    return BackoffConfig(initial=initial, max=longest)


def _ready(context: _Context, node: Node, path: str) -> ReadyConfig:
    if not isinstance(node, MappingNode):
        return _convert(context, node, path, _ready_kind, DEFAULT_READY)
    fields = _Fields(context, _mapping(context, node, path, READY_KEYS, READY_KEYS), path)
    port = fields.value("tcp", _integer(minimum=1, maximum=65535, what="a TCP port"), None)
    return ReadyConfig("tcp", port)


def _healthcheck(context: _Context, node: Node, path: str) -> HealthConfig | None:
    if _is_null(node):
        return None
    entries = _mapping(context, node, path, HEALTH_KEYS)
    fields = _Fields(context, entries, path)
    probes = [key for key in HEALTH_PROBES if key in entries]
    if len(probes) != 1:
        context.report(node, path, "name one probe: tcp: PORT, http: URL or exec: [ARGV]"
                       if not probes else f"name one probe, not {' and '.join(probes)}")
        return None
    kind = probes[0]
    target = ""
    argv: tuple[str, ...] = ()
    if kind == "tcp":
        target = fields.value("tcp", _template_or(_port_text), "")
    elif kind == "http":
        target = fields.value("http", _template_or(_http_url), "")
    else:
        argv = fields.node("exec", _command, ())
    return HealthConfig(
        kind=kind, target=target, argv=argv,
        interval=fields.value("interval", _positive_duration, 10.0),
        timeout=fields.value("timeout", _positive_duration, 5.0),
        retries=fields.value("retries", _integer(minimum=1), 3),
        start_period=fields.value("start_period", parse_duration, 0.0),
    )


def _port_text(value: object) -> str:
    if isinstance(value, str) and value.strip().isdigit():
        value = int(value)
    return str(_integer(minimum=1, maximum=65535, what="a TCP port")(value))


def _http_url(value: object) -> str:
    if not isinstance(value, str):
        raise ValueError(f"expected an http:// URL, got {_describe(value)}")
    from .probes import split_url  # the probe's own rules for what it can fetch

    split_url(value)
    return value


def _positive_duration(value: object) -> float:
    seconds = parse_duration(value)
    if seconds <= 0:
        raise ValueError(f"must be more than 0, got {_describe(value)}")
    return seconds


def _positive_size(value: object) -> int:
    size = parse_size(value)
    if size <= 0:
        raise ValueError(f"must be more than 0, got {_describe(value)}")
    return size


def _ready_kind(value: object) -> ReadyConfig:
    if value in ("none", "notify"):
        return ReadyConfig(str(value))
    raise ValueError(f"expected none, notify or {{tcp: PORT}}, got {_describe(value)}")


def _names_in(known: set[str], kind: str) -> Callable[[_Context, Node, str], tuple[str, ...]]:
    def member(value: object) -> str:
        if not isinstance(value, str):
            raise ValueError(f"expected a {kind} name, got {_describe(value)}")
        if value not in known:
            raise ValueError(f"unknown {kind} {value!r}")
        return value

    def names(context: _Context, node: Node, path: str) -> tuple[str, ...]:
        return _items(context, node, path, member)

    return names


def _log(keys: tuple[str, ...]) -> Callable[[_Context, Node, str], LogConfig]:
    def log(context: _Context, node: Node, path: str) -> LogConfig:
        fields = _Fields(context, _mapping(context, node, path, keys), path)
        return LogConfig(
            file=fields.value("file", _log_file(context), DEFAULT_LOG.file),
            maxbytes=fields.value("maxbytes", parse_size, DEFAULT_LOG.maxbytes),
            backups=fields.value("backups", _integer(minimum=0), DEFAULT_LOG.backups),
            timestamps=fields.value("timestamps", _boolean, DEFAULT_LOG.timestamps),
            console=fields.value("console", _boolean, DEFAULT_LOG.console),
            merge=fields.value("merge", _boolean, DEFAULT_LOG.merge),
        )

    return log


def _log_file(context: _Context) -> Callable[[object], str | bool | None]:
    def log_file(value: object) -> str | bool | None:
        if value is None or value is False:
            return value
        if value is True:
            raise ValueError("expected a path, null (the default file) or false (no file)")
        return _template_or(context.path)(value)

    return log_file


def _report_cycles(workers: dict[str, WorkerConfig], entries: Placed) -> None:
    graph = {name: worker.depends_on for name, worker in workers.items()}
    for cycle in find_cycles(graph):
        context, entry = entries[cycle[0]]
        key_node = _key_node(entry.value, "depends_on")
        message = "dependency cycle: " + " -> ".join(cycle)
        context.report(key_node, _join(_join("workers", cycle[0]), "depends_on"), message)


# ---------------------------------------------------------------- value converters


def _integer(
    minimum: int | None = None, maximum: int | None = None, what: str = "an integer"
) -> Callable[[object], int]:
    def integer(value: object) -> int:
        if not isinstance(value, int) or isinstance(value, bool):
            raise ValueError(f"expected {what}, got {_describe(value)}")
        if minimum is not None and value < minimum:
            raise ValueError(f"must be at least {minimum}, got {value}")
        if maximum is not None and value > maximum:
            raise ValueError(f"must be at most {maximum}, got {value}")
        return value

    return integer


def _retries(value: object) -> float:
    """A number of retries, or `forever` (math.inf: never give up)."""
    if value == "forever":
        return math.inf
    if not isinstance(value, int) or isinstance(value, bool):
        raise ValueError(f"expected a number of retries or forever, got {_describe(value)}")
    if value < 0:
        raise ValueError(f"must be at least 0, got {value}")
    return value


def _boolean(value: object) -> bool:
    if not isinstance(value, bool):
        raise ValueError(f"expected true or false, got {_describe(value)}")
    return value


def _string(value: object) -> str:
    if not isinstance(value, str):
        raise ValueError(f"expected a string, got {_describe(value)}")
    return value


def _choice(choices: tuple[str, ...]) -> Callable[[object], str]:
    def choice(value: object) -> str:
        if not isinstance(value, str) or value not in choices:
            raise ValueError(f"expected one of {', '.join(choices)}, got {_describe(value)}")
        return value

    return choice


def _optional(convert: Callable[[object], T]) -> Callable[[object], T | None]:
    def optional(value: object) -> T | None:
        return None if value is None else convert(value)

    return optional


def _mode(value: object) -> int:
    """A permission mask: an octal string ("0600", "600", "0o600") or a YAML integer."""
    if isinstance(value, str):
        try:
            value = int(value.strip(), 8)
        except ValueError:
            raise ValueError(f"expected an octal mode like '0644', got {value!r}") from None
    if not isinstance(value, int) or isinstance(value, bool):
        raise ValueError(f"expected an octal mode like '0644', got {_describe(value)}")
    if not 0 <= value <= 0o777:
        raise ValueError(f"mode out of range 0000..0777: {value:#o}")
    return value


def _user_name(value: object) -> str:
    name = _string(value)
    try:
        pwd.getpwnam(name)
    except KeyError:
        raise ValueError(f"no such user: {name!r}") from None
    return name


def _group_name(value: object) -> str:
    name = _string(value)
    try:
        grp.getgrnam(name)
    except KeyError:
        raise ValueError(f"no such group: {name!r}") from None
    return name


# ---------------------------------------------------------------- small helpers


def _check_name(context: _Context, key_node: Node, path: str, kind: str) -> None:
    if not NAME_PATTERN.fullmatch(str(key_node.value)):
        context.report(
            key_node, path, f"bad {kind} name: use only letters, digits, '_', '.' and '-'"
        )


def _key_node(mapping: Node, key: str) -> Node | None:
    if isinstance(mapping, MappingNode):
        for key_node, _ in mapping.value:
            if isinstance(key_node, ScalarNode) and key_node.value == key:
                return key_node
    return None


def _is_null(node: Node) -> bool:
    return isinstance(node, ScalarNode) and node.tag == NULL_TAG


def _line(node: Node) -> int:
    return node.start_mark.line + 1


def _join(path: str, key: str) -> str:
    return f"{path}.{key}" if path else key


def _describe(value: object) -> str:
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, (list, tuple)):
        return "a list"
    if isinstance(value, dict):
        return "a mapping"
    return repr(value)


def _describe_node(context: _Context, node: Node) -> str:
    if isinstance(node, SequenceNode):
        return "a list"
    try:
        return _describe(context.value(node))
    except ValueError:
        return "an unreadable value"
