"""What the batch systems driven by commands at the site (slurm, condor) share: their
checked options, where pilot logs go, and commands whose failure is an error."""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

from sites.config import SiteConfig
from sites.errors import BackendError
from sites.runner import Completed, Runner
from sites.schema import Strict, build


class CommandedBatch:
    """Base of a `BatchSystem` that runs commands through the site's runner.

    Subclasses name their `batch_options` model, which must have a `log_dir`.
    """

    options_model: type[Strict]
    carries_inputs = False

    def __init__(self, site: SiteConfig, runner: Runner) -> None:
        self.site = site
        self.runner = runner
        options: Any = build(self.options_model, site.batch_options, "sites.yaml",
                             prefix=f"sites.{site.name}.batch_options")
        self.options = options
        self.log_dir: str = options.log_dir or f"{site.scratch}/pilot-logs"
        self._made_log_dir = False

    def credential(self) -> None:
        return None  # the runner's: local, or the site's SSH key

    def log_path(self, pilot_id: str) -> str:
        return f"{self.log_dir}/{pilot_id}.log"

    def _prepare(self) -> None:
        """Make the log directory at the site, once: the batch system will not."""
        if not self._made_log_dir:
            self._checked(["mkdir", "-p", "--", self.log_dir])
            self._made_log_dir = True

    def _checked(self, argv: list[str], input: str | None = None) -> Completed:
        done = self.runner.run(argv, input=input)
        if done.code != 0:
            raise self._error(argv[0], done)
        return done

    def _error(self, command: str, done: Completed, secrets: Iterable[str] = ()) -> BackendError:
        """The failure of `command`, its message without any of `secrets`."""
        detail = "; ".join(line.strip() for line in (done.stderr or done.stdout).splitlines()
                           if line.strip())
        for secret in filter(None, secrets):
            detail = detail.replace(secret, "***")
        return BackendError(f"site={self.site.name} ({self.runner.where}): {command} exited "
                            f"{done.code}: {detail[:500] or 'no message'}")
