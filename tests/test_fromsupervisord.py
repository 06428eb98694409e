"""`superd --from-supervisord FILE`: supervisord configs in, superd YAML out.

Each converted config is written beside the folders it needs and must pass
`superd --check`; one is run by a real daemon.
"""

from __future__ import annotations

import os
import platform
import re
import subprocess
import sys
import textwrap
from pathlib import Path
from typing import Any

import pytest
import yaml

from support import Superd, wait_for

# From supervisord's docs/configuration.rst, "[program:x] Section Example"
# (github.com/Supervisor/supervisor), with user=chrism changed to nobody, a
# user this machine has.
DOCS_PROGRAM_EXAMPLE = """\
[program:cat]
command=/bin/cat
process_name=%(program_name)s
numprocs=1
directory=/tmp
umask=022
priority=999
autostart=true
autorestart=unexpected
startsecs=10
startretries=3
exitcodes=0
stopsignal=TERM
stopwaitsecs=10
stopasgroup=false
killasgroup=false
user=nobody
redirect_stderr=false
stdout_logfile=/a/path
stdout_logfile_maxbytes=1MB
stdout_logfile_backups=10
stdout_capture_maxbytes=1MB
stdout_events_enabled=false
stderr_logfile=/a/path
stderr_logfile_maxbytes=1MB
stderr_logfile_backups=10
stderr_capture_maxbytes=1MB
stderr_events_enabled=false
environment=A="1",B="2"
serverurl=AUTO
"""

# supervisord's supervisor/skel/sample.conf, the sections it leaves enabled
# (its comments shortened).
SAMPLE_CONF = """\
; Sample supervisor config file.
[unix_http_server]
file=/tmp/supervisor.sock   ; the path to the socket file
;chmod=0700                 ; socket file mode (default 0700)

[supervisord]
logfile=/tmp/supervisord.log ; main log file; default $CWD/supervisord.log
logfile_maxbytes=50MB        ; max main logfile bytes b4 rotation; default 50MB
logfile_backups=10           ; # of main logfile backups; 0 means none, default 10
loglevel=info                ; log level; default info; others: debug,warn,trace
pidfile=/tmp/supervisord.pid ; supervisord pidfile; default supervisord.pid
nodaemon=false               ; start in foreground if true; default false
silent=false                 ; no logs to stdout if true; default false
minfds=1024                  ; min. avail startup file descriptors; default 1024
minprocs=200                 ; min. avail process descriptors;default 200

[rpcinterface:supervisor]
supervisor.rpcinterface_factory = supervisor.rpcinterface:make_main_rpcinterface

[supervisorctl]
serverurl=unix:///tmp/supervisor.sock ; use a unix:// URL  for a unix socket
"""

# From docs/configuration.rst: the [unix_http_server], [inet_http_server]
# and [eventlistener:x] section examples (user=chrism changed to nobody).
DOCS_SERVER_EXAMPLES = """\
[unix_http_server]
file = /tmp/supervisor.sock
chmod = 0777
chown= nobody:nogroup
username = user
password = 123

[inet_http_server]
port = 127.0.0.1:9001
username = user
password = 123

[eventlistener:theeventlistenername]
command=/bin/eventlistener
process_name=%(program_name)s_%(process_num)02d
numprocs=5
events=PROCESS_STATE
buffer_size=10
user=nobody
"""


class Converted:
    def __init__(self, result: subprocess.CompletedProcess[str], path: Path) -> None:
        self.result = result
        self.text = result.stdout
        self.path = path
        self.document: dict[str, Any] = yaml.safe_load(self.text)

    @property
    def workers(self) -> dict[str, Any]:
        return self.document.get("workers") or {}

    def comments(self) -> str:
        """Every comment of the output, one per line."""
        return "\n".join(match[1] for match in re.finditer(r"#\s*(.*)$", self.text, re.M))

    def check(self, env: dict[str, str] | None = None) -> None:
        checked = run_superd("--check", "-c", str(self.path), env=env)
        assert checked.returncode == 0, checked.stderr + self.text


def run_superd(*args: str, env: dict[str, str] | None = None,
               cwd: Path | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "superd", *args], capture_output=True,
                          text=True, timeout=30, env=env, cwd=cwd,
                          stdin=subprocess.DEVNULL)


def convert(tmp_path: Path, files: dict[str, str], env: dict[str, str] | None = None,
            main: str = "supervisord.conf", check: bool = True) -> Converted:
    for name, text in files.items():
        (tmp_path / name).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / name).write_text(textwrap.dedent(text))
    full_env = dict(os.environ, **(env or {}))
    result = run_superd("--from-supervisord", str(tmp_path / main), env=full_env)
    assert result.returncode == 0, result.stderr
    assert result.stderr == ""
    out = tmp_path / "out" / "superd.yaml"
    out.parent.mkdir(exist_ok=True)
    out.write_text(result.stdout)
    converted = Converted(result, out)
    if check:
        converted.check(full_env)
    return converted


# ---------------------------------------------------------------- documentation examples


def test_the_documented_program_example_maps_every_key(tmp_path: Path) -> None:
    out = convert(tmp_path, {"supervisord.conf": DOCS_PROGRAM_EXAMPLE})
    assert out.text.startswith("# superd config generated by `superd --from-supervisord` "
                               f"from {tmp_path / 'supervisord.conf'}")
    assert list(out.workers) == ["cat"]
    assert out.workers["cat"] == {
        "command": "/bin/cat",
        "directory": "/tmp",
        "environment": {"A": "1", "B": "2"},
        "user": "nobody",
        "umask": "022",
        "autostart": True,
        "autorestart": "on-failure",
        "exitcodes": [0],
        "startsecs": "10s",
        "startretries": 3,
        "stopsignal": "TERM",
        "stoptimeout": "10s",
        "stdout": {"file": "/a/path", "maxbytes": "1MB", "backups": 10},
        "stderr": {"file": "/a/path", "maxbytes": "1MB", "backups": 10},
    }
    comments = out.comments()
    for setting in ("priority=999", "stopasgroup=false", "killasgroup=false",
                    "stdout_capture_maxbytes=1MB", "stderr_capture_maxbytes=1MB",
                    "stdout_events_enabled=false", "stderr_events_enabled=false",
                    "serverurl=AUTO"):
        assert setting in comments, setting
    assert "whole process group" in comments
    # The default process_name has an exact equivalent: no comment.
    assert "process_name" not in comments


def test_the_sample_conf_maps_the_daemon_settings(tmp_path: Path) -> None:
    out = convert(tmp_path, {"supervisord.conf": SAMPLE_CONF})
    assert out.document["daemon"] == {"socket": "/tmp/supervisor.sock",
                                      "pidfile": "/tmp/supervisord.pid",
                                      "log_file": "/tmp/supervisord.log"}
    assert out.workers == {}
    # superd's order: socket before pidfile before log_file.
    assert out.text.index("socket:") < out.text.index("pidfile:") < out.text.index("log_file:")
    comments = out.comments()
    for setting in ("logfile_maxbytes=50MB", "logfile_backups=10", "loglevel=info",
                    "nodaemon=false", "silent=false", "minfds=1024", "minprocs=200",
                    "[rpcinterface:supervisor]",
                    "[supervisorctl] serverurl=unix:///tmp/supervisor.sock"):
        assert setting in comments, setting
    assert "--foreground" in comments


def test_servers_and_an_event_listener_become_comments(tmp_path: Path) -> None:
    out = convert(tmp_path, {"supervisord.conf": DOCS_SERVER_EXAMPLES})
    daemon = out.document["daemon"]
    assert daemon == {"socket": "/tmp/supervisor.sock", "socket_mode": "0777",
                      "socket_group": "nogroup"}
    assert out.workers == {}
    comments = out.comments()
    assert ("[inet_http_server] port=127.0.0.1:9001 username=user password=...: "
            "superd has no HTTP control interface; dropped") in comments
    assert "123" not in comments  # passwords are not copied
    assert "[eventlistener:theeventlistenername] command=/bin/eventlistener" in comments
    assert "chown=nobody:nogroup" in comments
    assert "[unix_http_server] username=..." in comments
    assert "[unix_http_server] password=..." in comments


# ---------------------------------------------------------------- layouts


def test_a_conf_d_include_layout_is_merged_into_one_file(tmp_path: Path) -> None:
    out = convert(tmp_path, {
        "etc/supervisord.conf": """\
            [supervisord]
            childlogdir=%(here)s/logs

            [include]
            files = conf.d/*.conf
            """,
        "etc/conf.d/web.conf": """\
            [program:web]
            command=%(here)s/web.sh --port 8000
            directory=%(here)s
            """,
        "etc/conf.d/worker.conf": """\
            [program:worker]
            command=/usr/bin/env python3 -m worker
            autorestart=true
            """,
        "etc/conf.d/ignored.ini": "[program:ignored]\ncommand=/bin/true\n",
    }, main="etc/supervisord.conf")
    conf_d = tmp_path / "etc" / "conf.d"
    assert list(out.workers) == ["web", "worker"]
    assert out.workers["web"]["command"] == f"{conf_d}/web.sh --port 8000"
    assert out.workers["web"]["directory"] == str(conf_d)
    assert out.workers["worker"]["autorestart"] == "always"
    assert out.document["daemon"]["log_dir"] == f"{tmp_path / 'etc'}/logs"
    assert "[include] files=conf.d/*.conf: merged into this file" in out.comments()
    assert "conf.d/web.conf, conf.d/worker.conf" in out.comments()


def test_groups_become_groups(tmp_path: Path) -> None:
    out = convert(tmp_path, {"supervisord.conf": """\
        [group:app]
        programs=web,api
        priority=100

        [program:web]
        command=/bin/sleep 1000
        priority=20
        stdout_logfile=/tmp/%(group_name)s-%(program_name)s.log

        [program:api]
        command=/bin/sleep 1000
        priority=10

        [program:cron]
        command=/usr/sbin/cron -f
        """})
    assert out.document["groups"] == {"app": ["web", "api"]}
    # Written in supervisord's start order: by priority, then name.
    assert list(out.workers) == ["api", "web", "cron"]
    assert out.workers["web"]["stdout"]["file"] == "/tmp/app-web.log"
    comments = out.comments()
    assert "priority=100" in comments and "priority=20" in comments
    assert "depends_on" in comments


def test_numprocs_and_process_name(tmp_path: Path) -> None:
    out = convert(tmp_path, {"supervisord.conf": """\
        [program:queue]
        command=/usr/bin/worker --id %(process_num)d --slot %(process_num)02d
        process_name=%(program_name)s_%(process_num)02d
        numprocs=4
        stdout_logfile=/tmp/queue-%(process_num)d.log

        [program:named]
        command=/bin/sleep %(numprocs)d
        process_name=job%(process_num)d
        numprocs=2
        numprocs_start=5

        [program:single]
        command=/bin/echo %(process_num)02d
        """})
    queue = out.workers["queue"]
    assert queue["numprocs"] == 4
    assert queue["command"] == "/usr/bin/worker --id ${SUPERD_INSTANCE} --slot ${SUPERD_INSTANCE}"
    assert queue["stdout"]["file"] == "/tmp/queue-${SUPERD_INSTANCE}.log"
    assert out.workers["named"]["command"] == "/bin/sleep 2"
    # With one instance the number is known: exact, padding and all.
    assert out.workers["single"]["command"] == "/bin/echo 00"
    comments = out.comments()
    assert "%(process_num)02d in [program:queue] command: its format is lost" in comments
    # The conventional process_name for numprocs > 1 has its equivalent: no comment.
    assert "process_name=%(program_name)s_%(process_num)02d" not in comments
    assert "process_name=job%(process_num)d: superd names the instances named:0..1" in comments
    assert "numprocs_start=5" in comments


# ---------------------------------------------------------------- values


def test_expansions_become_superd_syntax(tmp_path: Path) -> None:
    out = convert(tmp_path, {"supervisord.conf": """\
        [program:app]
        command=/bin/sh -c "echo $HOME costs 5%% on %(host_node_name)s" %(ENV_APP_ARG)s
        directory=%(ENV_APP_HOME)s/%(program_name)s
        user=%(ENV_APP_USER)s
        environment=GREETING="hello, world",PATH="/opt/bin:%(ENV_PATH)s",GROUP=%(group_name)s
        """}, env={"APP_ARG": "x", "APP_HOME": "/srv", "APP_USER": "nobody"})
    app = out.workers["app"]
    node = platform.node()
    assert app["command"] == (f'/bin/sh -c "echo $$HOME costs 5% on ${{HOSTNAME:-{node}}}" '
                              "${APP_ARG}")
    assert app["directory"] == "${APP_HOME}/app"
    assert app["user"] == "nobody"  # superd does not expand user: resolved now
    assert app["environment"] == {"GREETING": "hello, world", "PATH": "/opt/bin:${PATH}",
                                  "GROUP": "app"}
    comments = out.comments()
    assert "%(host_node_name)s in [program:app] command" in comments
    assert "%(ENV_APP_USER)s in [program:app] user: expanded now" in comments


def test_supervisord_defaults_and_environment_reach_every_worker(tmp_path: Path) -> None:
    out = convert(tmp_path, {"supervisord.conf": """\
        [supervisord]
        environment=SHARED=1,OVER=daemon
        directory=/tmp
        umask=027

        [program:a]
        command=/bin/true
        environment=OVER=program

        [program:b]
        command=/bin/true
        directory=/
        umask=002
        startretries=0
        """})
    a, b = out.workers["a"], out.workers["b"]
    assert a["environment"] == {"SHARED": "1", "OVER": "program"}
    assert (a["directory"], a["umask"]) == ("/tmp", "027")
    assert (b["directory"], b["umask"]) == ("/", "002")
    # supervisord's own defaults, where superd's differ, are written out.
    assert (a["autorestart"], a["startretries"]) == ("on-failure", 3)
    assert b["startretries"] == 0
    assert a["stdout"] == {"backups": 10} and a["stderr"] == {"backups": 10}


@pytest.mark.parametrize(("written", "mapped"), [
    ("true", "always"), ("false", "never"), ("unexpected", "on-failure"),
    ("Yes", "always"), ("off", "never")])
def test_autorestart(tmp_path: Path, written: str, mapped: str) -> None:
    out = convert(tmp_path, {"supervisord.conf":
                             f"[program:x]\ncommand=/bin/true\nautorestart={written}\n"},
                  check=False)
    assert out.workers["x"]["autorestart"] == mapped


def test_redirect_stderr_and_log_keys(tmp_path: Path) -> None:
    out = convert(tmp_path, {"supervisord.conf": """\
        [program:merged]
        command=/bin/true
        redirect_stderr=true
        stdout_logfile=/var/log/%(program_name)s.log
        stdout_logfile_maxbytes=10MB
        stdout_logfile_backups=0
        stderr_logfile=/var/log/ignored.log

        [program:quiet]
        command=/bin/true
        stdout_logfile=NONE
        stderr_logfile=AUTO
        stderr_logfile_maxbytes=512KB
        stderr_logfile_backups=3
        stderr_syslog=true

        [program:syslogged]
        command=/bin/true
        stdout_logfile=syslog
        stopsignal=quit
        stopwaitsecs=30
        exitcodes=0,2
        startsecs=0
        autostart=false
        """})
    merged, quiet, syslogged = (out.workers[name] for name in ("merged", "quiet", "syslogged"))
    assert merged["stdout"] == {"file": "/var/log/merged.log", "maxbytes": "10MB", "backups": 0}
    assert merged["stderr"] == {"merge": True}
    assert quiet["stdout"] == {"file": False}
    assert quiet["stderr"] == {"maxbytes": "512KB", "backups": 3}
    assert syslogged["stdout"] == {"file": False}
    assert (syslogged["stopsignal"], syslogged["stoptimeout"]) == ("QUIT", "30s")
    assert (syslogged["exitcodes"], syslogged["startsecs"]) == ([0, 2], "0s")
    assert syslogged["autostart"] is False
    comments = out.comments()
    assert "stderr_logfile ignored, as supervisord does" in comments
    assert "stderr_syslog=true" in comments
    assert "stdout_logfile=syslog" in comments


def test_odd_names_and_unknown_keys_are_commented(tmp_path: Path) -> None:
    out = convert(tmp_path, {"supervisord.conf": """\
        [program:web@1]
        command=/bin/true
        stdin=/dev/null

        [fcgi-program:php]
        command=/usr/bin/php-cgi
        socket=tcp://127.0.0.1:9000

        [unknown_section]
        a=b
        """})
    assert list(out.workers) == ["web_1"]
    comments = out.comments()
    assert "renamed web_1" in comments
    assert "stdin=/dev/null: not a program setting; dropped" in comments
    assert "[fcgi-program:php] command=/usr/bin/php-cgi" in comments
    assert "[unknown_section]" in comments


def test_a_value_on_several_lines_stays_one_yaml_value(tmp_path: Path) -> None:
    out = convert(tmp_path, {"supervisord.conf": (
        "[program:long]\n"
        "command=/bin/sleep\n"
        "    1000\n"
        "[include]\n"
        "files=nothing/*.conf\n")})
    assert out.workers["long"]["command"] == "/bin/sleep\n1000"
    assert "[include] files: no file matches nothing/*.conf" in out.comments()


# ---------------------------------------------------------------- bad files


@pytest.mark.parametrize(("text", "reason"), [
    (None, "cannot read"),
    ("command=/bin/true\n", "no [section] header"),
    ("[program:x]\ncommand=/bin/true\n  \x01 garbage line\n[\n", "cannot parse"),
    ("[program:x]\ncommand=/bin/true\nnumprocs=many\n", "numprocs: not an integer"),
    ("[program:x]\ncommand=%(nonsense)s\n", "%(nonsense) cannot be expanded"),
    ("[program:x]\ncommand=/bin/true\nenvironment=A=1,B\n", "not KEY=value"),
    ("[program:x]\nnumprocs=1\n", "has no command"),
    ("[group:g]\nprograms=missing\n", "unknown program missing"),
    (b"\xff\xfe", "not UTF-8"),
])
def test_a_bad_file_exits_2_with_one_line(tmp_path: Path, text: str | bytes | None,
                                          reason: str) -> None:
    path = tmp_path / "supervisord.conf"
    if isinstance(text, bytes):
        path.write_bytes(text)
    elif text is not None:
        path.write_text(text)
    result = run_superd("--from-supervisord", str(path))
    assert result.returncode == 2
    assert result.stdout == ""
    assert result.stderr.count("\n") == 1 and reason in result.stderr, result.stderr
    assert "Traceback" not in result.stderr


def test_the_option_is_in_superds_help() -> None:
    result = run_superd("--help")
    assert "--from-supervisord" in result.stdout


# ---------------------------------------------------------------- a converted config runs


def test_a_converted_config_runs(superd: Superd, tmp_path: Path) -> None:
    conf = tmp_path / "supervisord.conf"
    conf.write_text(textwrap.dedent("""\
        [program:echo]
        command=/bin/sh -c "echo foo=$FOO tag=$TAG; exec sleep 1000"
        environment=FOO="hello, world",TAG="%(ENV_SUPERD_TEST_TAG)s"
        startsecs=0

        [program:pool]
        command=/bin/sh -c "echo instance=%(process_num)d name=%(program_name)s; exec sleep 1000"
        process_name=%(program_name)s_%(process_num)02d
        numprocs=2
        redirect_stderr=true
        startsecs=0
        """))
    converted = run_superd("--from-supervisord", str(conf), env=superd.env)
    assert converted.returncode == 0, converted.stderr
    superd.config_path.write_text(converted.stdout)
    started = superd.run("-c", str(superd.config_path))
    assert started.returncode == 0, started.stderr
    for name in ("echo", "pool:0", "pool:1"):
        superd.wait_state(name, "RUNNING")
    wait_for(lambda: superd.log_file("echo").exists()
             and superd.log_file("echo").read_text().strip(), what="echo's output")
    assert superd.log_file("echo").read_text() == f"foo=hello, world tag={superd.tag}\n"
    for index in (0, 1):
        log = superd.log_file(f"pool:{index}")
        wait_for(lambda log=log: log.exists() and log.read_text().strip(),  # type: ignore[misc]
                 what=f"pool:{index}'s output")
        assert log.read_text() == f"instance={index} name=pool\n"
