"""The one holder of the config the daemon runs with.

Everything that needs a setting asks this holder when it needs it, so a
reload replaces the config in one place and nobody keeps a stale copy.
"""

from __future__ import annotations

from .config import Config, DaemonConfig, WorkerConfig


class RunningConfig:
    def __init__(self, config: Config) -> None:
        self._config = config

    @property
    def config(self) -> Config:
        return self._config

    @property
    def daemon(self) -> DaemonConfig:
        return self._config.daemon

    @property
    def workers(self) -> dict[str, WorkerConfig]:
        return self._config.workers

    def depends_on(self) -> dict[str, tuple[str, ...]]:
        """Each worker's direct dependencies, in config order."""
        return {name: worker.depends_on for name, worker in self._config.workers.items()}

    def replace(self, config: Config) -> None:
        """A reload was accepted: from now on every reader sees `config`."""
        self._config = config
