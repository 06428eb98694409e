"""README.md and docs/*.md, checked against the installed superd.

The reference is meant to be precise enough to write a client from, so these
tests hold it to the code: its links, the superctl commands, every config key
and its default, the wire commands, error codes, event kinds, status fields,
and the worked example of a frame and of a client.
"""

from __future__ import annotations

import ast
import dataclasses
import json
import re
import socket
import subprocess
import sys
import threading
from pathlib import Path
from typing import Any

import pytest
import yaml

import superd
from superd import cli, config
from superd.commands import Commands
from superd.protocol import MAX_REQUEST, Decoder, Kind, encode
from superd.status import FIGURES, UPTIME

REPO = Path(__file__).resolve().parent.parent
README = REPO / "README.md"
REFERENCE = REPO / "docs" / "reference.md"
DOCS = [README, *sorted((REPO / "docs").glob("*.md"))]
SOURCE_FILES = sorted(Path(superd.__file__).resolve().parent.glob("*.py"))

FENCE = re.compile(r"^```.*?^```[ \t]*$", re.M | re.S)
INLINE_CODE = re.compile(r"`[^`]*`")
INLINE_LINK = re.compile(r"!?\[[^\]]*\]\(\s*<?([^)\s>]*)>?(?:\s+\"[^\"]*\")?\s*\)")
REFERENCE_LINK = re.compile(r"^ {0,3}\[[^\]]+\]:\s*<?(\S+?)>?(?:\s|$)", re.M)
AUTOLINK = re.compile(r"<([a-zA-Z][a-zA-Z0-9+.-]*:[^>\s]*)>")
SCHEME = re.compile(r"^[a-zA-Z][a-zA-Z0-9+.-]*:")
HEADING = re.compile(r"^(#{1,6})[ \t]+(.+?)[ \t]*#*[ \t]*$", re.M)
TABLE_KEY = re.compile(r"^`([^`]+)`$")


# --- reading markdown ---------------------------------------------------------


def prose(text: str) -> str:
    """text without fenced code blocks and inline code spans."""
    return INLINE_CODE.sub("", FENCE.sub("", text))


def slug(heading: str) -> str:
    """The anchor GitHub gives a heading (before de-duplication)."""
    text = heading.strip().lower()
    text = re.sub(r"[^\w\- ]", "", text)
    return text.replace(" ", "-")


def anchors(path: Path) -> set[str]:
    seen: dict[str, int] = {}
    found = set()
    for _, title in HEADING.findall(FENCE.sub("", path.read_text())):
        base = slug(title)
        count = seen.get(base, 0)
        seen[base] = count + 1
        found.add(base if count == 0 else f"{base}-{count}")
    return found


def links(text: str) -> list[str]:
    body = prose(text)
    return [
        *INLINE_LINK.findall(body),
        *REFERENCE_LINK.findall(body),
        *AUTOLINK.findall(body),
    ]


def section(text: str, title: str, nested: bool = True) -> str:
    """The text under the heading `title`: up to the next heading of the same
    or a higher level (nested), or up to the next heading of any level."""
    code_free = FENCE.sub(lambda match: " " * len(match[0]), text)  # keep offsets
    headings = list(HEADING.finditer(code_free))
    for index, match in enumerate(headings):
        if match[2] != title:
            continue
        level = len(match[1])
        end = len(text)
        for later in headings[index + 1:]:
            if not nested or len(later[1]) <= level:
                end = later.start()
                break
        return text[match.end():end]
    raise AssertionError(f"no heading {title!r}")


def table(text: str) -> list[list[str]]:
    """The body rows of the markdown tables in text (header rows left out), as cells."""
    rows: list[list[str]] = []
    block: list[list[str]] = []
    for line in [*text.splitlines(), ""]:
        line = line.strip()
        if line.startswith("|"):
            block.append([cell.strip() for cell in re.split(r"(?<!\\)\|", line.strip("|"))])
            continue
        # A block is a header, a separator row of dashes, then the body.
        if len(block) >= 2 and all(re.fullmatch(r":?-+:?", cell) for cell in block[1]):
            rows.extend(block[2:])
        block = []
    return rows


def table_keys(text: str) -> list[str]:
    """The `key` in the first cell of each table row."""
    keys = []
    for row in table(text):
        match = TABLE_KEY.match(row[0])
        assert match, f"first cell is not one `key`: {row[0]!r}"
        keys.append(match[1])
    return keys


def reference() -> str:
    return REFERENCE.read_text()


def source_strings(pattern: str) -> set[str]:
    found: set[str] = set()
    for path in SOURCE_FILES:
        found.update(re.findall(pattern, path.read_text()))
    return found


# --- links and the contract file ----------------------------------------------


@pytest.mark.parametrize("doc", DOCS, ids=lambda path: str(path.relative_to(REPO)))
def test_links_stay_inside_the_repository(doc: Path) -> None:
    text = doc.read_text()
    problems = []
    for target in links(text):
        if SCHEME.match(target):
            problems.append(f"{target}: points outside the repository")
            continue
        path_part, _, anchor = target.partition("#")
        resolved = (doc.parent / path_part).resolve() if path_part else doc
        if not resolved.is_relative_to(REPO):
            problems.append(f"{target}: escapes the repository")
        elif not resolved.exists():
            problems.append(f"{target}: no such file")
        elif anchor and resolved.suffix == ".md" and anchor not in anchors(resolved):
            problems.append(f"{target}: no heading #{anchor} in {resolved.name}")
    bare = re.findall(r"https?://\S+", prose(text))
    problems.extend(f"{url}: a bare web address in the prose" for url in bare)
    assert not problems, problems


def test_links_are_found() -> None:
    # Guards the test above against a pattern that finds nothing.
    assert "docs/reference.md" in links(README.read_text())
    assert "#control-protocol-version-1" in links(reference())


@pytest.mark.parametrize("doc", DOCS, ids=lambda path: str(path.relative_to(REPO)))
def test_the_contract_file_is_never_mentioned(doc: Path) -> None:
    text = doc.read_text().lower()
    assert "spec.md" not in text
    assert "shared/" not in text


# --- superctl -----------------------------------------------------------------


def test_every_superctl_command_has_a_section() -> None:
    cli_section = section(reference(), "`superctl`, the control command")
    documented = set(re.findall(r"^### `superctl (\w+)`$", cli_section, re.M))
    assert documented == set(cli.COMMANDS)


def test_readme_table_lists_every_superctl_command() -> None:
    superctl = section(README.read_text(), "superctl")
    listed = {re.findall(r"`(\w+)", row[0])[0] for row in table(superctl)}
    assert listed == set(cli.COMMANDS)


# --- configuration ------------------------------------------------------------

CONFIG_TABLES: dict[str, tuple[str, ...]] = {
    "Top level": config.TOP_KEYS,
    "`daemon`": config.DAEMON_KEYS,
    "`sockets.NAME`": config.SOCKET_KEYS,
    "`workers.NAME`": config.WORKER_KEYS,
    "`backoff`": config.BACKOFF_KEYS,
    "`stdout` and `stderr`": config.STDERR_KEYS,
}


@pytest.mark.parametrize("title", CONFIG_TABLES)
def test_config_tables_list_exactly_the_keys(title: str) -> None:
    configuration = section(reference(), "Configuration")
    keys = table_keys(section(configuration, title, nested=False))
    assert sorted(keys) == sorted(CONFIG_TABLES[title])
    assert len(keys) == len(set(keys))


def _placed(title: str, key: str, value: object) -> list[tuple[dict[str, Any], dict[str, Any]]]:
    """(without, with) config documents for `key: value` in the table `title`."""
    listen = {"listen": "tcp://127.0.0.1:0"}

    def worker(**settings: object) -> dict[str, Any]:
        return {"workers": {"w": {"command": "true", **settings}}}

    if title == "Top level":
        return [({}, {key: value})]
    if title == "`daemon`":
        return [({}, {"daemon": {key: value}})]
    if title == "`sockets.NAME`":
        return [({"sockets": {"s": listen}}, {"sockets": {"s": {**listen, key: value}}})]
    if title == "`workers.NAME`":
        return [(worker(), worker(**{key: value}))]
    if title == "`backoff`":
        return [(worker(), worker(backoff={key: value}))]
    streams = ["stderr"] if key not in config.STDOUT_KEYS else ["stdout", "stderr"]
    return [(worker(), worker(**{stream: {key: value}})) for stream in streams]


def _load(path: Path, document: dict[str, Any]) -> config.Config:
    path.write_text(yaml.safe_dump(document))
    return dataclasses.replace(config.load(str(path)), path="")


def test_documented_defaults_are_the_defaults(tmp_path: Path) -> None:
    """A default written as one `literal` must load the same as leaving the key out."""
    configuration = section(reference(), "Configuration")
    checked, problems = 0, []
    for title in CONFIG_TABLES:
        section_text = section(configuration, title, nested=False)
        rows = table(section_text)
        for key, row in zip(table_keys(section_text), rows, strict=True):
            default = row[2]
            literal = TABLE_KEY.match(default)
            if literal is None:  # "required", "the configuration file's folder"
                continue
            value = yaml.safe_load(literal[1])
            for without, with_default in _placed(title, key, value):
                checked += 1
                try:
                    same = _load(tmp_path / "a.yaml", without) == _load(
                        tmp_path / "b.yaml", with_default)
                except config.ConfigError as exc:
                    problems.append(f"{title} {key}: {default} is invalid: {exc}")
                    continue
                if not same:
                    problems.append(f"{title} {key}: the default is not {default}")
    assert not problems, problems
    assert checked >= 30


# --- the wire protocol --------------------------------------------------------


def protocol_section(title: str, nested: bool = True) -> str:
    return section(section(reference(), "Control protocol, version 1"), title, nested)


def test_every_wire_command_has_a_section() -> None:
    commands = {name[len("cmd_"):] for name in dir(Commands) if name.startswith("cmd_")}
    documented = set(re.findall(r"^#### `(\w+)`$", protocol_section("Commands"), re.M))
    assert documented == commands


def test_every_error_code_is_documented() -> None:
    codes = source_strings(r"(?:\.error|ReloadRefused)\(\s*\"([a-z_]+)\"") | \
        source_strings(r"error_message\([^,()]+,\s*\"([a-z_]+)\"")
    assert {"bad_frame", "no_such_worker", "invalid_config"} <= codes  # the regex works
    assert set(table_keys(protocol_section("Error codes"))) == codes


def test_every_event_kind_is_documented() -> None:
    kinds = source_strings(r"\"event\":\s*\"([a-z_]+)\"")
    assert {"state", "reload", "log", "log_cut"} <= kinds  # the regex works
    assert set(table_keys(protocol_section("Events"))) == kinds


def _functions(name: str, in_class: str | None = None) -> list[tuple[Path, ast.FunctionDef]]:
    """Every function called name in the package (only methods of in_class, if given)."""
    found = []
    for path in SOURCE_FILES:
        tree = ast.parse(path.read_text())
        scopes: list[ast.AST] = [tree] if in_class is None else [
            node for node in ast.walk(tree)
            if isinstance(node, ast.ClassDef) and node.name == in_class]
        for scope in scopes:
            for node in ast.walk(scope):
                if isinstance(node, ast.FunctionDef) and node.name == name:
                    found.append((path, node))
    return found


def _returned_keys(function: ast.FunctionDef) -> set[str]:
    """The string keys of the dict literals that function returns."""
    return {key.value for node in ast.walk(function)
            if isinstance(node, ast.Return) and isinstance(node.value, ast.Dict)
            for key in node.value.keys
            if isinstance(key, ast.Constant) and isinstance(key.value, str)}


def test_status_row_fields_are_documented() -> None:
    """The fixed fields of a status row, plus the changing ones of UPTIME and FIGURES."""
    [(_, function)] = _functions("fixed_fields")
    fields = _returned_keys(function) | set(re.findall(r'"(\w+)":', UPTIME + FIGURES))
    assert {"name", "state", "log_dropped_bytes", "status_text"} <= fields  # parsing works
    assert set(table_keys(protocol_section("`status`"))) == fields


def test_reload_result_fields_are_documented() -> None:
    [(_, function)] = _functions("result", in_class="Plan")
    fields = _returned_keys(function)
    assert {"added", "not_applied"} <= fields  # parsing works
    assert set(table_keys(protocol_section("`reload`"))) == fields


def test_ping_frame_example_is_exact() -> None:
    text = reference()
    hex_block = re.search(r"^```hex\n(.*?)^```", text, re.M | re.S)
    assert hex_block, "no ```hex block in the reference"
    request = json.loads(re.findall(r"^```json\n(.*?)^```", text[:hex_block.start()],
                                    re.M | re.S)[-1])
    assert request["cmd"] == "ping"
    frame = encode(Kind.REQUEST, request)
    assert bytes.fromhex(hex_block[1]) == frame
    header = re.search(r"the header `([0-9a-f\s]+)`", text[:hex_block.start()])
    assert header and bytes.fromhex(header[1]) == frame[:8]


def test_python_client_example_talks_to_a_daemon(tmp_path: Path) -> None:
    """The example client, run against a stand-in daemon that also sends events."""
    code = re.search(r"^```python\n(.*?)^```", reference(), re.M | re.S)
    assert code, "no ```python block in the reference"
    ast.parse(code[1])
    address = str(tmp_path / "superd.sock")
    server = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    server.bind(address)
    server.listen(1)
    server.settimeout(10)

    def serve() -> None:
        connection, _ = server.accept()
        decoder = Decoder(MAX_REQUEST)
        with connection:
            while data := connection.recv(65536):
                for _, request in decoder.feed(data):
                    event = {"event": "state", "name": "w", "from": "STOPPED",
                             "to": "STARTING", "pid": 1, "time": 0.0}
                    reply = {"id": request["id"], "ok": True,
                             "result": {"cmd": request["cmd"], "args": request["args"]}}
                    connection.sendall(encode(Kind.EVENT, event) + encode(Kind.REPLY, reply))

    thread = threading.Thread(target=serve, daemon=True)
    thread.start()
    try:
        done = subprocess.run([sys.executable, "-c", code[1], address], capture_output=True,
                              text=True, timeout=20, check=False)
    finally:
        thread.join(10)
        server.close()
    assert done.returncode == 0, done.stderr
    printed = [ast.literal_eval(line) for line in done.stdout.splitlines()]
    assert [reply["id"] for reply in printed] == [1, 2]
    assert all(reply["ok"] for reply in printed)
    assert printed[0]["result"]["cmd"] == "ping"


def test_layout_names_every_module_of_the_package() -> None:
    rows = table(section(README.read_text(), "Layout"))
    listed = {name.strip("` ") for row in rows for name in row[0].split(",")}
    modules = {path.name for path in SOURCE_FILES} - {"__init__.py", "__main__.py"}
    assert listed == modules
