"""The pilot's side of the tower's HTTP API, patient with a tower that restarts."""

from __future__ import annotations

import logging
import threading
from pathlib import Path
from typing import Any

import requests

from pilots.backoff import Backoff

log = logging.getLogger(__name__)


class TowerUnreachable(RuntimeError):
    """The tower did not answer for longer than the pilot's patience."""


class TowerRefused(RuntimeError):
    """The tower answered with an error about this request (its HTTP `status`)."""

    def __init__(self, message: str, status: int = 400) -> None:
        super().__init__(message)
        self.status = status


class TowerClient:
    def __init__(self, url: str, pilot_id: str, patience: float = 300.0,
                 timeout: float = 30.0, credential: Path | None = None,
                 tower_ca: Path | None = None) -> None:
        self.base = f"{url.rstrip('/')}/api/v1/pilots/{pilot_id}"
        self.patience = patience
        self.timeout = timeout
        self.session = requests.Session()
        if credential is not None:
            self.session.cert = str(credential)
        # given with each request: REQUESTS_CA_BUNDLE in the site's environment would
        # otherwise win over a session-wide setting
        self.verify: str | bool = str(tower_ca) if tower_ca is not None else True
        self._hurried = threading.Event()

    def call(self, action: str, body: dict[str, Any]) -> dict[str, Any]:
        """POST `body` to the pilot endpoint `action`; retry while the tower is unreachable."""
        return self._post(action, {"json": body})

    def send(self, action: str, data: bytes, params: dict[str, Any]) -> dict[str, Any]:
        """POST gzip-compressed `data` to the pilot endpoint `action`, as `call` does."""
        return self._post(action, {"data": data, "params": params,
                                   "headers": {"Content-Type": "application/gzip"}})

    def _post(self, action: str, request: dict[str, Any]) -> dict[str, Any]:
        backoff = Backoff()
        while True:
            try:
                response = self.session.post(f"{self.base}/{action}", **request,
                                             timeout=self.timeout, verify=self.verify)
            except requests.RequestException as exc:
                problem = f"{type(exc).__name__}: {exc}"
            else:
                if response.status_code < 500:
                    return self._answer(action, response)
                problem = f"HTTP {response.status_code}"
            delay = backoff.failed()
            if backoff.outage() + delay > self.patience:
                raise TowerUnreachable(f"{action}: no answer for {self.patience:.0f}s "
                                       f"({problem})")
            log.warning("%s: tower unavailable (%s); retrying in %.1fs", action, problem, delay)
            if self._hurried.wait(delay):
                self._hurried.clear()  # woken once by hurry(): the patience is shorter now

    @staticmethod
    def _answer(action: str, response: requests.Response) -> dict[str, Any]:
        try:
            data = response.json()
        except ValueError:
            data = {"message": response.text[:200]}
        if response.status_code >= 400:
            raise TowerRefused(f"{action}: HTTP {response.status_code}: "
                               f"{data.get('message', data)}", response.status_code)
        return data  # type: ignore[no-any-return]

    def hurry(self, patience: float = 10.0) -> None:
        """Wait at most `patience` from now on: the pilot is being terminated."""
        self.patience = min(self.patience, patience)
        self._hurried.set()

    def close(self) -> None:
        self.session.close()
