"""`superd --from-supervisord FILE`: a supervisord config turned into superd YAML.

Three steps, each its own part here: read the INI files as supervisord does
(`RawConfigParser`, inline `;`/`#` comments, `[include]` globs relative to
the including file, `%(here)s` per file); map each section and key to
superd's, keeping a note for every setting that has no exact equivalent;
render the result as YAML, each note a comment beside what it concerns.

supervisord expands `%(NAME)s` itself, once, when it reads the file. superd
expands `${VAR}` per instance in command, directory, environment values and
log file paths, so there `%(ENV_X)s` becomes `${X}` and `%(process_num)d`
`${SUPERD_INSTANCE}`; everywhere else the value is resolved now.
"""

from __future__ import annotations

import configparser
import glob
import os
import platform
import re
import shlex
import signal
import sys
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any, TypeVar

import yaml

from .config import DAEMON_KEYS, DEFAULT_LOG, MEBIBYTE, NAME_PATTERN

T = TypeVar("T")

# supervisord's own defaults where they differ from superd's: written out,
# so the converted worker behaves as it did.
SUPERVISORD_AUTORESTART = "unexpected"
SUPERVISORD_STARTRETRIES = 3
SUPERVISORD_LOG_BACKUPS = 10

AUTORESTART = {"true": "always", "false": "never", "unexpected": "on-failure"}
TRUTHY = ("yes", "true", "on", "1")
FALSY = ("no", "false", "off", "0")
LOGFILE_NONE = ("none", "off")
LOGFILE_AUTO = ("auto",)
LOGFILE_SYSLOG = ("syslog",)

# A supervisord format: `%%`, or `%(name)` with printf flags, width and a type.
FORMAT = re.compile(r"%(?:(?P<percent>%)|\((?P<name>[^)]*)\)"
                    r"(?P<spec>[-#0 +]*\d*(?:\.\d+)?[diouxXeEfFgGcrsa]))")

# Section keys dropped, with the reason given in their comment.
DROPPED_PROGRAM_KEYS = {
    "serverurl": "superd sets no SUPERVISOR_SERVER_URL (no XML-RPC interface)",
    "stdout_capture_maxbytes": "superd has no capture mode",
    "stderr_capture_maxbytes": "superd has no capture mode",
    "stdout_events_enabled": "superd emits no output events",
    "stderr_events_enabled": "superd emits no output events",
    "stdout_syslog": "superd writes no syslog (under systemd use stdout: {console: true})",
    "stderr_syslog": "superd writes no syslog (under systemd use stderr: {console: true})",
}
DROPPED_SUPERVISORD_KEYS = {
    "nodaemon": "run `superd --foreground` instead",
    "silent": "superd --foreground logs to stderr; detached, to daemon.log_file",
    "loglevel": "superd has one log level",
    "logfile_maxbytes": "superd does not rotate its own log (use logrotate and SIGUSR1)",
    "logfile_backups": "superd does not rotate its own log (use logrotate and SIGUSR1)",
    "minfds": "superd raises its RLIMIT_NOFILE soft limit to the hard limit itself",
    "minprocs": "superd does not check RLIMIT_NPROC",
    "identifier": "superd has no identifier",
    "nocleanup": "superd keeps no temporary AUTO log files",
    "strip_ansi": "superd writes output as it comes",
    "user": "run superd as that user (systemd User=) instead",
}
SERVER_SECTIONS = {
    "inet_http_server": "superd has no HTTP control interface; dropped",
    "supervisorctl": "superctl finds the daemon from daemon.socket; dropped",
}
PROCESS_SECTIONS = {
    "eventlistener": "superd has no event listener protocol (see `superctl events`); dropped",
    "fcgi-program": "superd has no FastCGI programs (a worker with `sockets:` gets its "
                    "socket as fd 3, not stdin); dropped",
}


class ConversionError(Exception):
    """The file cannot be read, parsed or understood: a one-line reason."""


def main(path: str) -> int:
    """Print the superd YAML for the supervisord config at path; 0, or 2 with a reason."""
    try:
        text = convert(path, os.environ)
    except ConversionError as exc:
        print(f"superd: {exc}", file=sys.stderr)
        return 2
    sys.stdout.write(text)
    return 0


def convert(path: str, environ: Mapping[str, str]) -> str:
    """The superd YAML equivalent of the supervisord config at path."""
    source = read(path, environ)
    return render(translate(source, environ))


# ---------------------------------------------------------------- reading


@dataclass
class Source:
    """The supervisord files as one parser, as supervisord reads them."""

    path: str  # absolute path of the main file
    parser: configparser.RawConfigParser
    section_files: dict[str, str]  # section -> the file that first defined it
    included: list[str]
    unmatched: list[str]  # [include] patterns that matched no file


def read(path: str, environ: Mapping[str, str]) -> Source:
    main_path = os.path.abspath(path)
    parser = configparser.RawConfigParser(inline_comment_prefixes=(";", "#"), strict=False,
                                          interpolation=None)
    section_files: dict[str, str] = {}
    _read_file(parser, main_path, section_files)
    included: list[str] = []
    unmatched: list[str] = []
    if parser.has_section("include"):
        if not parser.has_option("include", "files"):
            raise ConversionError(f"{path}: [include] has no files= setting")
        here = os.path.dirname(main_path)
        values = _Values({"here": here, "host_node_name": platform.node()}, environ)
        patterns = values.literal(parser.get("include", "files"), "[include] files").split()
        for pattern in patterns:
            filenames = sorted(glob.glob(os.path.join(here, pattern)))
            if not filenames:
                unmatched.append(pattern)
            for filename in filenames:
                _read_file(parser, os.path.abspath(filename), section_files)
                included.append(os.path.abspath(filename))
    return Source(main_path, parser, section_files, included, unmatched)


def _read_file(parser: configparser.RawConfigParser, path: str,
               section_files: dict[str, str]) -> None:
    before = set(parser.sections())
    try:
        with open(path, encoding="utf-8") as stream:
            parser.read_file(stream, path)
    except OSError as exc:
        raise ConversionError(f"cannot read {path}: {exc.strerror or exc}") from None
    except UnicodeDecodeError as exc:
        raise ConversionError(f"cannot read {path}: not UTF-8 text ({exc.reason})") from None
    except configparser.Error as exc:
        raise ConversionError(f"cannot parse {path}: {_parse_problem(exc)}") from None
    for section in set(parser.sections()) - before:
        section_files[section] = path
    # As supervisord's expand_here: %(here)s is this file's folder, for what
    # it brought and for whatever still holds one.
    here = os.path.dirname(path)
    for section in parser.sections():
        for key, value in parser.items(section):
            if value is not None and "%(here)s" in value:
                parser.set(section, key, value.replace("%(here)s", here))


def _parse_problem(exc: configparser.Error) -> str:
    if isinstance(exc, configparser.MissingSectionHeaderError):
        return f"line {exc.lineno}: no [section] header before {exc.line.strip()!r}"
    if isinstance(exc, configparser.ParsingError) and exc.errors:
        lineno, line = exc.errors[0]
        return f"line {lineno}: cannot parse {line.strip()!r}"
    return " ".join(str(exc).split())


# ---------------------------------------------------------------- expansions


@dataclass
class Note:
    """A setting without an exact equivalent: what it was and what was done."""

    setting: str  # as written in supervisord, e.g. "priority=10"
    reason: str

    def __str__(self) -> str:
        return f"{self.setting}: {self.reason}"


class _Values:
    """supervisord's %(NAME)s expansions of one section, into superd's syntax."""

    def __init__(self, names: dict[str, object], environ: Mapping[str, str],
                 numprocs: int = 1, notes: list[str] | None = None) -> None:
        self.names = names
        self.environ = environ
        self.numprocs = numprocs
        self.notes: list[str] = notes if notes is not None else []

    def literal(self, text: str, where: str) -> str:
        """The value as supervisord reads it, for a key superd does not expand."""
        return self._expand(text, where, expanding=False)

    def expanding(self, text: str, where: str) -> str:
        """The value in superd's ${VAR} syntax (its literal `$` doubled)."""
        return self._expand(text, where, expanding=True)

    def _expand(self, text: str, where: str, expanding: bool) -> str:
        out: list[str] = []
        position = 0
        for match in FORMAT.finditer(text):
            out.append(self._plain(text[position:match.start()], where, expanding))
            position = match.end()
            if match["percent"]:
                out.append("%")
            else:
                out.append(self._name(match["name"], match["spec"], where, expanding))
        out.append(self._plain(text[position:], where, expanding))
        return "".join(out)

    @staticmethod
    def _plain(text: str, where: str, expanding: bool) -> str:
        if "%" in text:
            raise ConversionError(f"{where}: badly formatted: {text!r} (write %% for a %)")
        return text.replace("$", "$$") if expanding else text

    def _name(self, name: str, spec: str, where: str, expanding: bool) -> str:
        if name.startswith("ENV_"):
            return self._env(name[len("ENV_"):], spec, where, expanding)
        if name == "process_num" and self.numprocs > 1:
            if not expanding:
                raise ConversionError(f"{where}: %(process_num) differs per instance and "
                                      "superd does not expand this key")
            if spec not in ("d", "i", "s"):
                self.notes.append(f"%(process_num){spec} in {where}: its format is lost, "
                                  "${SUPERD_INSTANCE} is the plain index")
            return "${SUPERD_INSTANCE}"
        if name == "host_node_name":
            node = str(self.names[name])
            if expanding:
                self.notes.append(f"%(host_node_name)s in {where}: superd's ${{HOSTNAME}}, "
                                  f"else this machine's name ({node})")
                return "${HOSTNAME:-" + node.replace("$", "$$").replace("}", "") + "}"
            self.notes.append(f"%(host_node_name)s in {where}: this machine's name, now")
            return node
        if name not in self.names:
            available = ", ".join(sorted([*self.names, "ENV_*"]))
            raise ConversionError(f"{where}: %({name}) cannot be expanded here "
                                  f"(available: {available})")
        value = _format(spec, self.names[name], where)
        return value.replace("$", "$$") if expanding else value

    def _env(self, variable: str, spec: str, where: str, expanding: bool) -> str:
        if expanding and spec in ("s", "r", "a"):
            return "${" + variable + "}"
        if variable not in self.environ:
            raise ConversionError(f"{where}: %(ENV_{variable}){spec}: {variable} is not set "
                                  "(superd cannot expand it in this key)")
        self.notes.append(f"%(ENV_{variable}){spec} in {where}: expanded now, from this "
                          "environment")
        value = _format(spec, self.environ[variable], where)
        return value.replace("$", "$$") if expanding else value


def _format(spec: str, value: object, where: str) -> str:
    try:
        return ("%" + spec) % (value,)
    except (TypeError, ValueError) as exc:
        raise ConversionError(f"{where}: cannot format {value!r} as %{spec}: {exc}") from None


# ---------------------------------------------------------------- the result


@dataclass
class Item:
    """One key of the output, with the comment written beside it."""

    key: str
    value: object  # a scalar, a list of scalars, or a list of Items (a mapping)
    comment: str = ""


@dataclass
class Result:
    source: str
    header: list[str] = field(default_factory=list)  # comment lines at the top
    daemon: list[Item] = field(default_factory=list)
    daemon_notes: list[str] = field(default_factory=list)
    groups: list[Item] = field(default_factory=list)
    workers: list[Item] = field(default_factory=list)


# ---------------------------------------------------------------- mapping


def translate(source: Source, environ: Mapping[str, str]) -> Result:
    result = Result(source.path)
    parser = source.parser
    if source.included:
        files = ", ".join(os.path.relpath(name, os.path.dirname(source.path))
                          for name in source.included)
        result.header.append(f"[include] files={parser.get('include', 'files')}: "
                             f"merged into this file ({files})")
    for pattern in source.unmatched:
        result.header.append(f"[include] files: no file matches {pattern}")
    base = _Values({"here": os.path.dirname(source.path), "host_node_name": platform.node()},
                   environ)
    defaults = _supervisord(parser, base, result)
    _servers(parser, base, result)
    programs = _program_sections(parser)
    group_of = _groups(parser, programs, result)
    ordered = sorted(programs.items(), key=lambda item: (_priority(parser, item[1]), item[0]))
    for name, section in ordered:
        result.workers.append(_worker(parser, section, name, group_of.get(name, name),
                                      defaults, source, environ))
    for section in parser.sections():
        kind, _, name = section.partition(":")
        if kind in PROCESS_SECTIONS:
            command = parser.get(section, "command", fallback="")
            result.header.append(f"[{section}] command={command}: {PROCESS_SECTIONS[kind]}")
        elif kind.startswith("rpcinterface"):
            result.header.append(f"[{section}]: superd has no XML-RPC interface; dropped")
        elif kind == "ctlplugin":
            result.header.append(f"[{section}]: superctl has no plugins; dropped")
        elif kind not in ("program", "group", "include", "supervisord", "unix_http_server",
                          *SERVER_SECTIONS):
            result.header.append(f"[{section}]: not a supervisord section; dropped")
    return result


@dataclass
class _Defaults:
    """What [supervisord] gives every program."""

    environment: list[tuple[str, str]]
    directory: str | None
    umask: str | None


def _supervisord(parser: configparser.RawConfigParser, values: _Values,
                 result: Result) -> _Defaults:
    section = "supervisord"
    defaults = _Defaults([], None, None)
    if not parser.has_section(section):
        return defaults
    notes = result.daemon_notes
    values.notes = notes
    for key, raw in parser.items(section):
        where = f"[{section}] {key}"
        raw = raw or ""
        if key == "logfile":
            result.daemon.append(_daemon_path("log_file", raw, values, where, notes))
        elif key == "pidfile":
            result.daemon.append(_daemon_path("pidfile", raw, values, where, notes))
        elif key == "childlogdir":
            result.daemon.append(Item("log_dir", values.literal(raw, where),
                                      "childlogdir: superd names AUTO logs "
                                      "INSTANCE.out.log / INSTANCE.err.log there"))
        elif key == "environment":
            defaults.environment = _environment(raw, values, where)
            notes.append(f"{where}=...: added to every worker's environment")
        elif key == "directory":
            defaults.directory = values.expanding(raw, where)
            notes.append(f"{where}={raw}: written as every worker's directory")
        elif key == "umask":
            defaults.umask = values.literal(raw, where)
            notes.append(f"{where}={raw}: written as every worker's umask")
        elif key in DROPPED_SUPERVISORD_KEYS:
            notes.append(f"{where}={raw}: {DROPPED_SUPERVISORD_KEYS[key]}; dropped")
        else:
            notes.append(f"{where}={raw}: not a supervisord setting; dropped")
    return defaults


def _daemon_path(key: str, raw: str, values: _Values, where: str, notes: list[str]) -> Item:
    path = values.literal(raw, where)
    comment = ""
    if not os.path.isabs(os.path.expanduser(path)):
        comment = "relative to this file's folder (supervisord: to its working folder)"
    return Item(key, path, comment)


def _servers(parser: configparser.RawConfigParser, values: _Values, result: Result) -> None:
    notes = result.daemon_notes
    values.notes = notes
    if parser.has_section("unix_http_server"):
        where = "[unix_http_server]"
        for key, raw in parser.items("unix_http_server"):
            raw = raw or ""
            if key == "file":
                result.daemon.append(Item("socket", values.literal(raw, f"{where} file")))
            elif key == "chmod":
                result.daemon.append(Item("socket_mode", raw.strip(), "superd still admits only "
                                          "root, its own user and socket_group's members"))
            elif key == "chown":
                owner, _, group = raw.strip().partition(":")
                comment = (f"chown={raw.strip()}: the socket belongs to superd's user, "
                           f"not {owner}")
                if group:
                    result.daemon.append(Item("socket_group", group, comment))
                else:
                    notes.append(comment + "; dropped")
            elif key in ("username", "password"):
                notes.append(f"{where} {key}=...: superd checks the peer's uid/gid "
                             "(SO_PEERCRED) instead; dropped")
            else:
                notes.append(f"{where} {key}={raw}: not a supervisord setting; dropped")
    for section, reason in SERVER_SECTIONS.items():
        if parser.has_section(section):
            settings = " ".join(f"{key}={'...' if key == 'password' else value}"
                                for key, value in parser.items(section))
            result.header.append(f"[{section}] {settings}: {reason}".replace("  ", " "))


def _program_sections(parser: configparser.RawConfigParser) -> dict[str, str]:
    programs: dict[str, str] = {}
    for section in parser.sections():
        kind, _, name = section.partition(":")
        if kind == "program":
            programs[name.strip()] = section
    return programs


def _groups(parser: configparser.RawConfigParser, programs: dict[str, str],
            result: Result) -> dict[str, str]:
    group_of: dict[str, str] = {}
    for section in parser.sections():
        kind, _, name = section.partition(":")
        if kind != "group":
            continue
        members: list[str] = []
        comments: list[str] = []
        for program in _list(parser.get(section, "programs", fallback="")):
            if program in programs:
                members.append(_worker_name(program))
                group_of.setdefault(program, name)
            elif parser.has_section(f"fcgi-program:{program}"):
                comments.append(f"{program} (an fcgi-program) left out")
            else:
                raise ConversionError(f"[{section}] names unknown program {program}")
        priority = parser.get(section, "priority", fallback=None)
        if priority is not None:
            comments.append(f"priority={priority}: superd starts in file order; ignored")
        for key, _ in parser.items(section):
            if key not in ("programs", "priority"):
                comments.append(f"{key}: not a group setting; dropped")
        comments.append("superd names the members' instances PROGRAM, not GROUP:PROGRAM")
        result.groups.append(Item(_worker_name(name), members, "; ".join(comments)))
    return group_of


def _priority(parser: configparser.RawConfigParser, section: str) -> int:
    raw = parser.get(section, "priority", fallback="999") or "999"
    try:
        return int(raw)
    except ValueError:
        raise ConversionError(f"[{section}] priority: not an integer: {raw!r}") from None


def _worker_name(name: str) -> str:
    return "".join(char if NAME_PATTERN.fullmatch(char) else "_" for char in name) or "_"


class _Program:
    """One [program:x] section read key by key, its notes gathered."""

    def __init__(self, parser: configparser.RawConfigParser, section: str) -> None:
        self.section = section
        self.raw = {key: (value or "") for key, value in parser.items(section)}
        self.used: set[str] = set()
        self.notes: list[str] = []

    def get(self, key: str) -> str | None:
        self.used.add(key)
        return self.raw.get(key)

    def where(self, key: str) -> str:
        return f"[{self.section}] {key}"

    def convert(self, key: str, parse: Callable[[str], T]) -> T | None:
        raw = self.get(key)
        if raw is None:
            return None
        try:
            return parse(raw.strip())
        except ValueError as exc:
            raise ConversionError(f"{self.where(key)}: {exc}") from None


def _worker(parser: configparser.RawConfigParser, section: str, program_name: str,
            group_name: str, defaults: _Defaults, source: Source,
            environ: Mapping[str, str]) -> Item:
    program = _Program(parser, section)
    numprocs = program.convert("numprocs", _integer) or 1
    start = program.convert("numprocs_start", _integer) or 0
    names: dict[str, object] = {
        "here": os.path.dirname(source.section_files.get(section, source.path)),
        "program_name": program_name, "group_name": group_name,
        "host_node_name": platform.node(), "numprocs": numprocs, "process_num": start,
    }
    values = _Values(names, environ, numprocs, program.notes)
    items: list[Item] = []

    def add(key: str, value: object, comment: str = "") -> None:
        items.append(Item(key, value, comment))

    command = program.get("command")
    if command is None:
        raise ConversionError(f"[{section}] has no command=")
    add("command", values.expanding(command.strip(), program.where("command")))
    if numprocs != 1:
        add("numprocs", numprocs)
    if start:
        program.notes.append(f"numprocs_start={start}: superd numbers instances from 0 "
                             "(${SUPERD_INSTANCE}); the offset is lost")
    _process_name(program, program_name, numprocs, program.notes)
    directory = program.get("directory")
    if directory is not None:
        add("directory", values.expanding(directory.strip(), program.where("directory")))
    elif defaults.directory is not None:
        add("directory", defaults.directory, "[supervisord] directory")
    environment = list(defaults.environment)
    raw_env = program.get("environment")
    if raw_env is not None:
        own = _environment(raw_env, values, program.where("environment"))
        environment = [pair for pair in environment if pair[0] not in dict(own)] + own
    if environment:
        add("environment", [Item(key, value) for key, value in environment],
            "with [supervisord] environment" if defaults.environment else "")
    user = program.get("user")
    if user is not None:
        add("user", values.literal(user.strip(), program.where("user")))
    umask = program.get("umask")
    if umask is not None:
        add("umask", values.literal(umask.strip(), program.where("umask")))
    elif defaults.umask is not None:
        add("umask", defaults.umask, "[supervisord] umask")
    for key, parse, target, written, absent in CONVERTED_KEYS:
        value = program.convert(key, parse)
        if value is not None:
            add(target, written(value))
        elif absent is not None:
            add(target, *absent)
    for key in ("stopasgroup", "killasgroup"):
        raw = program.get(key)
        if raw is not None:
            program.notes.append(f"{key}={raw.strip()}: superd always signals the "
                                 "whole process group")
    _priority_note(program)
    merge = bool(program.convert("redirect_stderr", _boolean))
    for stream in ("stdout", "stderr"):
        log = _log(program, stream, values, merge and stream == "stderr")
        if log:
            add(stream, log)
    for key in DROPPED_PROGRAM_KEYS:
        raw = program.get(key)
        if raw is not None:
            program.notes.append(f"{key}={raw.strip()}: {DROPPED_PROGRAM_KEYS[key]}; dropped")
    for key, raw in program.raw.items():
        if key not in program.used:
            program.notes.append(f"{key}={raw.strip()}: not a program setting; dropped")
    name = _worker_name(program_name)
    if name != program_name:
        program.notes.insert(0, f"[{section}]: superd worker names use only letters, "
                                f"digits, _ . -: renamed {name}")
    items.extend(Item("", None, note) for note in program.notes)
    return Item(name, items)


def _process_name(program: _Program, program_name: str, numprocs: int,
                  notes: list[str]) -> None:
    raw = program.get("process_name")
    if raw is None:
        return
    default = "%(program_name)s" if numprocs == 1 else "%(program_name)s_%(process_num)02d"
    if raw.strip() != default:
        names = program_name if numprocs == 1 else f"{program_name}:0..{numprocs - 1}"
        notes.append(f"process_name={raw.strip()}: superd names the instances {names} "
                     "itself; ignored")


def _priority_note(program: _Program) -> None:
    raw = program.get("priority")
    if raw is not None:
        program.notes.append(f"priority={raw.strip()}: workers are written in priority "
                             "order and superd starts them in file order (without waiting: "
                             "use depends_on for that)")


def _log(program: _Program, stream: str, values: _Values, merged: bool) -> list[Item]:
    """stdout: / stderr: of a worker from supervisord's STREAM_logfile* keys."""
    items: list[Item] = []
    logfile = program.get(f"{stream}_logfile")
    maxbytes = program.convert(f"{stream}_logfile_maxbytes", _byte_size)
    backups = program.convert(f"{stream}_logfile_backups", _integer)
    if merged:
        ignored = [key for key in (f"{stream}_logfile", f"{stream}_logfile_maxbytes",
                                   f"{stream}_logfile_backups") if program.raw.get(key)]
        comment = "redirect_stderr=true"
        if ignored:
            comment += f" ({', '.join(ignored)} ignored, as supervisord does)"
        return [Item("merge", True, comment)]
    no_file = False
    if logfile is not None:
        word = logfile.strip().lower()
        if word in LOGFILE_NONE:
            items.append(Item("file", False))
            no_file = True
        elif word in LOGFILE_SYSLOG:
            items.append(Item("file", False, f"{stream}_logfile=syslog: superd writes no "
                                             "syslog; no file"))
            no_file = True
        elif word not in LOGFILE_AUTO:
            path = values.expanding(logfile.strip(), program.where(f"{stream}_logfile"))
            items.append(Item("file", path))
    if no_file:
        return items
    if maxbytes is not None:
        items.append(Item("maxbytes", _size_text(maxbytes)))
    if backups is None:
        if DEFAULT_LOG.backups != SUPERVISORD_LOG_BACKUPS:
            items.append(Item("backups", SUPERVISORD_LOG_BACKUPS, "supervisord's default"))
    else:
        items.append(Item("backups", backups))
    return items


def _environment(raw: str, values: _Values, where: str) -> list[tuple[str, str]]:
    """supervisord's KEY="val",KEY2=val2, each value in superd's ${VAR} syntax.

    Split as supervisord's dict_of_key_value_pairs does (shlex, posix), but
    before expanding, so an expansion is one word."""
    lexer = shlex.shlex(raw, posix=True)
    lexer.wordchars += "/.+-():%${}"
    try:
        tokens = list(lexer)
    except ValueError as exc:
        raise ConversionError(f"{where}: {exc}") from None
    pairs: list[tuple[str, str]] = []
    for index in range(0, len(tokens), 4):
        key_eq_value = tokens[index:index + 3]
        if len(key_eq_value) != 3 or key_eq_value[1] != "=" or (
                index + 3 < len(tokens) and tokens[index + 3] != ","):
            raise ConversionError(f"{where}: not KEY=value,KEY2=value2: {raw.strip()!r}")
        key, _, value = key_eq_value
        pairs.append((key, values.expanding(value, f"{where} {key}")))
    return pairs


# ---------------------------------------------------------------- supervisord's value types


def _integer(raw: str) -> int:
    try:
        return int(raw)
    except ValueError:
        raise ValueError(f"not an integer: {raw!r}") from None


def _boolean(raw: str) -> bool:
    if raw.lower() in TRUTHY:
        return True
    if raw.lower() in FALSY:
        return False
    raise ValueError(f"not a boolean: {raw!r}")


def _autorestart(raw: str) -> str:
    word = raw.lower()
    word = "true" if word in TRUTHY else "false" if word in FALSY else word
    if word not in AUTORESTART:
        raise ValueError(f"not true, false or unexpected: {raw!r}")
    return AUTORESTART[word]


def _exitcodes(raw: str) -> list[int]:
    codes = [_integer(part.strip()) for part in raw.split(",") if part.strip()]
    for code in codes:
        if not 0 <= code <= 255:
            raise ValueError(f"not an exit code: {code}")
    return codes


def _signal(raw: str) -> str:
    if raw.isdigit():
        number = int(raw)
        if not 1 <= number < signal.NSIG:
            raise ValueError(f"not a signal: {raw!r}")
        return raw
    name = raw.upper().removeprefix("SIG")
    if not hasattr(signal, f"SIG{name}"):
        raise ValueError(f"not a signal: {raw!r}")
    return name


def _byte_size(raw: str) -> int:
    """supervisord's byte_size: a whole number with an optional KB, MB or GB (of 1024)."""
    word = raw.lower()
    for suffix, times in (("kb", 1024), ("mb", MEBIBYTE), ("gb", 1024 * MEBIBYTE)):
        if word.endswith(suffix):
            return _integer(word[:-len(suffix)]) * times
    return _integer(word)


def _size_text(size: int) -> str | int:
    for unit, times in (("GB", 1024 * MEBIBYTE), ("MB", MEBIBYTE), ("KB", 1024)):
        if size and size % times == 0:
            return f"{size // times}{unit}"
    return size


def _list(raw: str) -> list[str]:
    return [part.strip() for part in raw.split(",") if part.strip()]


# ---------------------------------------------------------------- rendering


def render(result: Result) -> str:
    lines = [f"# superd config generated by `superd --from-supervisord` from {result.source}",
             "# Comments mark every supervisord setting without an exact equivalent."]
    lines += [_comment(line) for line in result.header]
    if result.daemon or result.daemon_notes:
        lines.append("daemon:")
        lines += _mapping(sorted(result.daemon, key=lambda item: DAEMON_KEYS.index(item.key)), 1)
        lines += ["  " + _comment(note) for note in result.daemon_notes]
    if result.groups:
        lines.append("groups:")
        lines += _mapping(result.groups, 1)
    lines.append("workers:" if result.workers else "workers: {}")
    lines += _mapping(result.workers, 1)
    return "\n".join(lines) + "\n"


def _mapping(items: list[Item], depth: int) -> list[str]:
    indent = "  " * depth
    lines: list[str] = []
    for item in items:
        if not item.key:
            lines.append(indent + _comment(item.comment))
            continue
        key = _scalar(item.key)
        comment = f"  {_comment(item.comment)}" if item.comment else ""
        if isinstance(item.value, list) and item.value and isinstance(item.value[0], Item):
            lines.append(f"{indent}{key}:{comment}")
            lines += _mapping(item.value, depth + 1)
        else:
            lines.append(f"{indent}{key}: {_scalar(item.value)}{comment}")
    return lines


def _scalar(value: object) -> str:
    """value in YAML flow style, on one line (quoted where YAML needs it)."""
    # A configparser value may span lines: double quotes keep it on one.
    style = '"' if isinstance(value, str) and not value.isprintable() else None
    text = yaml.safe_dump(value, default_flow_style=True, width=1_000_000_000,
                          allow_unicode=True, default_style=style)
    return text.removesuffix("\n...\n").rstrip("\n")


def _comment(text: str) -> str:
    return "# " + " ".join(text.split())


def _as_is(value: Any) -> object:
    return value


def _seconds(value: Any) -> object:
    return f"{value}s"


# The keys converted one for one, in the order they are written: supervisord's
# key, how its value is read, superd's key, how superd writes it, and what is
# written when the key is absent (supervisord's default where superd's
# differs, with its comment), else nothing.
CONVERTED_KEYS: tuple[tuple[str, Callable[[str], Any], str, Callable[[Any], object],
                            tuple[object, str] | None], ...] = (
    ("autostart", _boolean, "autostart", _as_is, None),
    ("autorestart", _autorestart, "autorestart", _as_is,
     (AUTORESTART[SUPERVISORD_AUTORESTART], "supervisord's default (unexpected)")),
    ("exitcodes", _exitcodes, "exitcodes", _as_is, None),
    ("startsecs", _integer, "startsecs", _seconds, None),
    ("startretries", _integer, "startretries", _as_is,
     (SUPERVISORD_STARTRETRIES, "supervisord's default")),
    ("stopsignal", _signal, "stopsignal", _as_is, None),
    ("stopwaitsecs", _integer, "stoptimeout", _seconds, None),
)
