"""The Prometheus text exposition of superd and its instances: what
`superctl metrics` prints and GET /metrics serves (metricsserver.py).

The text format, version 0.0.4: each family's `# HELP` and `# TYPE` once,
before its samples, which come together; label values escaped (backslash,
double quote, line feed); counters named `_total`; a line feed at the end.

A scrape of every instance renders one line per family and instance (seven
for the state), so what changes only when the instance does (its labels,
its block of state lines) is kept as text per instance (InstanceText), and
the figures come from the sampler that `status` uses, read at most every
FRESH_FOR seconds.  No timer: the text is made when it is asked for.
"""

from __future__ import annotations

import time
from dataclasses import dataclass

from . import __version__
from .logs import Logs
from .registry import Registry
from .resources import NO_FIGURES, ResourceSampler
from .states import State
from .worker import Instance

CONTENT_TYPE = "text/plain; version=0.0.4; charset=utf-8"


@dataclass(frozen=True)
class Family:
    name: str
    kind: str  # "gauge" or "counter"
    help: str

    def header(self) -> str:
        return f"# HELP {self.name} {escape_help(self.help)}\n# TYPE {self.name} {self.kind}\n"


UP = Family("superd_up", "gauge", "1: superd answered this scrape.")
INFO = Family("superd_info", "gauge", "Always 1; the version of superd is in the label.")
INSTANCE_UP = Family("superd_instance_up", "gauge", "1 when the instance is RUNNING, else 0.")
INSTANCE_STATE = Family("superd_instance_state", "gauge",
                        "1 for the state the instance is in, 0 for the other states.")
RESTARTS = Family("superd_instance_restarts_total", "counter",
                  "Restarts of the instance since superd started it first.")
CPU = Family("superd_instance_cpu_seconds_total", "counter",
             "CPU seconds used by the process group of the instance's current process.")
RSS = Family("superd_instance_rss_bytes", "gauge",
             "Resident memory of the process group of the instance's current process.")
START_TIME = Family("superd_instance_start_time_seconds", "gauge",
                    "When the instance's current process was started, in seconds since the "
                    "epoch.")
DROPPED = Family("superd_instance_log_dropped_bytes_total", "counter",
                 "Output bytes of the instance that superd could not write to its log files.")
HEALTHY = Family("superd_instance_healthy", "gauge",
                 "1 when the instance's healthcheck passes, else 0 (only instances with a "
                 "healthcheck).")

# In the order they are written; the instance families after the daemon's.
INSTANCE_FAMILIES = (INSTANCE_UP, INSTANCE_STATE, RESTARTS, CPU, RSS, START_TIME, DROPPED,
                     HEALTHY)
FAMILIES = (UP, INFO, *INSTANCE_FAMILIES)
STATES = tuple(State)


def escape_label(value: str) -> str:
    """A label value as it goes between the double quotes."""
    return value.replace("\\", "\\\\").replace('"', '\\"').replace("\n", "\\n")


def escape_help(text: str) -> str:
    """A HELP text: backslash and line feed escaped (a double quote is not)."""
    return text.replace("\\", "\\\\").replace("\n", "\\n")


def number(value: float) -> str:
    """A sample value: integers without a fraction, others as Python writes them."""
    return str(int(value)) if float(value).is_integer() else repr(float(value))


class InstanceText:
    """What an instance's samples are made of that changes only with it: its
    labels, and its block of state lines while it stays in one state."""

    __slots__ = ("instance", "labels", "state", "state_block")

    def __init__(self, instance: Instance) -> None:
        self.instance = instance
        self.labels = (f'{{name="{escape_label(instance.name)}",'
                       f'worker="{escape_label(instance.config.name)}"')  # no closing brace
        self.state: State | None = None
        self.state_block = ""

    def state_lines(self, state: State) -> str:
        if state is not self.state:
            self.state, name = state, INSTANCE_STATE.name
            self.state_block = "".join(
                f'{name}{self.labels},state="{one.value}"}} {int(one is state)}\n'
                for one in STATES)
        return self.state_block


class MetricsReport:
    """Renders the exposition from the registry, the sampler and the logs."""

    def __init__(self, registry: Registry, logs: Logs, resources: ResourceSampler) -> None:
        self.registry = registry
        self.logs = logs
        self.resources = resources
        self._texts: dict[str, InstanceText] = {}

    def text(self) -> str:
        instances = self.registry.instances()
        samples = self._instance_samples(instances)
        parts = [UP.header(), "superd_up 1\n", INFO.header(),
                 f'superd_info{{version="{escape_label(__version__)}"}} 1\n']
        for family, lines in zip(INSTANCE_FAMILIES, samples, strict=True):
            parts.append(family.header())  # also with no samples: the family is there
            parts += lines
        return "".join(parts)

    def _instance_samples(self, instances: list[Instance]) -> list[list[str]]:
        """Per instance family, its sample lines, in the instances' order."""
        figures = self.resources.measure({i.name: i.pid for i in instances if i.pid is not None})
        dropped = self.logs.dropped_by_instance().get
        cpu_seconds = self.resources.cpu_seconds
        epoch = time.time() - time.monotonic()  # a monotonic time + epoch = seconds since 1970
        families: list[list[str]] = [[] for _ in INSTANCE_FAMILIES]
        up, states, restarts, cpu, rss, start, lost, healthy = families
        for instance in instances:
            text = self._text_of(instance)
            labels, name, pid = text.labels, instance.name, instance.pid
            up.append(f"superd_instance_up{labels}}} {int(instance.state is State.RUNNING)}\n")
            states.append(text.state_lines(instance.state))
            restarts.append(f"superd_instance_restarts_total{labels}}} {instance.restarts}\n")
            lost.append(f"superd_instance_log_dropped_bytes_total{labels}}} {dropped(name, 0)}\n")
            if instance.health is not None:
                healthy.append(f"superd_instance_healthy{labels}}} "
                               f"{int(instance.health == 'healthy')}\n")
            if pid is None or instance.started_at is None:
                continue  # no process: nothing to measure
            start.append(f"superd_instance_start_time_seconds{labels}}} "
                         f"{instance.started_at + epoch:.3f}\n")
            used, resident = cpu_seconds(name, pid), figures.get(name, NO_FIGURES)[1]
            if used is not None:
                cpu.append(f"superd_instance_cpu_seconds_total{labels}}} {number(used)}\n")
            if resident is not None:
                rss.append(f"superd_instance_rss_bytes{labels}}} {resident}\n")
        self._forget_removed(instances)
        return families

    def _text_of(self, instance: Instance) -> InstanceText:
        text = self._texts.get(instance.name)
        if text is None or text.instance is not instance:
            text = self._texts[instance.name] = InstanceText(instance)
        return text

    def _forget_removed(self, instances: list[Instance]) -> None:
        if len(self._texts) > len(instances):  # a reload removed some
            names = {instance.name for instance in instances}
            for name in self._texts.keys() - names:
                del self._texts[name]
