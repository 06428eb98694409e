"""Applying a reload: run the new config with as little disturbance as possible.

reload.py decides what changed; this carries it out: removed instances are
stopped (and reaped, as retiring, until gone), changed ones are stopped with
the settings they were started with and started with the new ones (one at a
time, each serving before the next is stopped, for a worker with `rolling:
true`), added ones start if `autostart`, and unchanged ones are not touched
at all.
"""

from __future__ import annotations

from collections.abc import Callable

from .config import WorkerConfig
from .names import instance_index
from .orchestrator import Orchestrator, stop_settled
from .registry import Registry
from .reload import Plan, instance_configs
from .rolling import Rolls
from .running import RunningConfig
from .states import Event
from .waiters import Settled
from .worker import Instance

NewInstance = Callable[[WorkerConfig, int], Instance]


class Reconfigurer:
    def __init__(self, running: RunningConfig, registry: Registry,
                 orchestrator: Orchestrator, rolls: Rolls, new_instance: NewInstance) -> None:
        self.running = running
        self.registry = registry
        self.orchestrator = orchestrator
        self.rolls = rolls
        self.new_instance = new_instance

    def apply(self, plan: Plan, callback: Callable[[], None]) -> None:
        """Run plan.config; call back once every touched instance has settled
        and every rolling restart it began has ended."""
        self._end_rolls(plan)
        self.running.replace(plan.config)
        removed = [self.registry.get(name) for name in plan.removed]
        changed = set(plan.changed)
        instances, touched = [], []
        for name, worker in instance_configs(plan.config).items():
            instance = self.registry.get(name) or self.new_instance(worker,
                                                                     instance_index(name))
            instances.append(instance)
            if name in changed or name in plan.added:
                touched.append((instance, worker))
            else:
                instance.reconfigure(worker)  # equal but for numprocs
        self.registry.replace(instances)
        targets: dict[Instance, Settled] = {}
        starting = []
        rolled: dict[str, list[Instance]] = {}
        for instance, worker in touched:
            if instance.name in changed and worker.rolling and instance.wants_to_run:
                rolled.setdefault(worker.name, []).append(instance)
            elif self._stop_and_reconfigure(instance, worker):
                starting.append(instance)
                targets[instance] = self.orchestrator.start_settled
            else:
                targets[instance] = stop_settled
        for gone in removed:
            assert gone is not None
            gone.handle(Event.STOP)
            self.registry.retire(gone)
            targets[gone] = stop_settled
        # Dependencies first, as any start: a changed worker whose dependency is
        # restarting too waits until that dependency is RUNNING again.
        self.orchestrator.start_all(starting)
        one_done = _join(len(rolled) + 1, callback)
        for group in rolled.values():
            # One roll per worker: its instances one at a time, workers side by side.
            self.rolls.begin(group, lambda outcome: one_done())
        self.orchestrator.when(list(targets), lambda instance: targets[instance](instance),
                               one_done)

    def _end_rolls(self, plan: Plan) -> None:
        """Rolls of instances this reload changes or removes go no further
        (their untouched instances take the running settings first)."""
        for names, what in ((plan.changed, "was changed by a reload"),
                            (plan.removed, "was removed by a reload")):
            instances = [i for name in names if (i := self.registry.get(name)) is not None]
            self.rolls.end_rolls_of(instances, what)

    def _stop_and_reconfigure(self, instance: Instance, worker: WorkerConfig) -> bool:
        """Stop with the settings it was started with, take the new ones; whether
        it should start again."""
        was_active = instance.wants_to_run
        instance.handle(Event.STOP)
        instance.reconfigure(worker)
        return was_active or worker.autostart


def _join(parts: int, callback: Callable[[], None]) -> Callable[[], None]:
    """A function to call once per part; the last call calls back."""
    left = [parts]

    def one_done() -> None:
        left[0] -= 1
        if left[0] == 0:
            callback()

    return one_done
