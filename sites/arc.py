"""The `arc` batch system: pilots as jobs of an ARC Computing Element, over its REST
interface (`/arex/rest/1.0/`), the way aCT reaches grid sites.

The tower speaks HTTPS to the CE with its robot certificate (client certificate
authentication), with `requests`; no ARC client is installed. A pilot is one ARC job:

1. When the CE should act for the tower (`delegate`, the default), the tower asks it
   for a delegation (`POST /delegations?action=new` answers a certificate request),
   signs that request with the robot key into an RFC 3820 proxy (`sites.proxy`) and
   `PUT`s it back. The proxy lives `proxy_lifetime` (never past the robot certificate)
   and is renewed in place (`?action=renew`, same id, so the CE renews it for every
   job that names it) once less than `proxy_renewal` remains.
2. The job description, in xRSL, is posted to `/jobs?action=new`. It names the queue,
   the walltime (in seconds, ARC's "N seconds"), the cores (`count`, on one node), the memory
   per core, the runtime environments, the delegation, and the job's executable:
3. `gridtower-pilot.sh`, an input file like the pilot's credential and the tower's CA,
   uploaded to the job's session directory (`PUT /jobs/ID/session/NAME`); the CE
   starts the job only once they are all there. The pilot's secrets (its credential,
   the broker URL in its environment) are in those files, never in the description's
   text. The script removes itself, exports the pilot's environment (values quoted
   with shlex), runs the admin's setup lines and `exec`s the pilot's argv (quoted),
   which finds its credential beside it (0600, the job's user). Nothing goes in the
   job's arguments: ARC's fork back end writes them into a shell script between
   double quotes, where a `$` would be expanded.

Status is `POST /jobs?action=status` for many jobs at once, and for those that
failed, `action=info` for ARC's error text; cancel is `action=kill`. The CE answers
a job it no longer knows with 404: such a pilot has ended.

| ARC job state (REST)                              | pilot   | outcome of its unfinished attempts |
|---------------------------------------------------|---------|------------------------------------|
| ACCEPTING, ACCEPTED, PREPARING, PREPARED, SUBMITTING, QUEUING, HELD, OTHER | pending | |
| RUNNING, EXITINGLRMS, KILLING                     | running |                                    |
| EXECUTED, FINISHING, FINISHED, WIPED              | ended   | pilot_vanished                     |
| KILLED                                            | ended   | pilot_killed                       |
| FAILED, error names a time limit, or it used its walltime | ended | pilot_killed (its walltime) |
| FAILED, error names memory                        | ended   | out_of_memory                      |
| FAILED, any other error (staging, LRMS submit)    | ended   | node_failure                       |
| unknown to the CE (404)                           | ended   | pilot_vanished                     |

ARC's REST state of a job comes from the CE's information system, which refreshes
about once a minute: a pilot that already runs may show `ACCEPTED`, and one that ended
or was killed its last state, for that long (a pilot registers and says goodbye to the
tower itself meanwhile).

ARC's fork back end (a CE without a batch system) cancels a job by killing the
wrapper it started, not the job's processes (`cancel-fork-job` signals the wrapper's
shell, whose trap SIGKILLs the job script alone): the pilot runs on. The CE then says
KILLED, and the tower writes the pilot and its unfinished attempts off as
`pilot_killed` (the retry policy resubmits them); the pilot's next heartbeat is
refused, and it stops its payloads and leaves. Behind SLURM or HTCondor the CE's
cancel ends the whole job, as `scancel` does.
"""

from __future__ import annotations

import contextlib
import datetime
import json
import math
import re
import shlex
import threading
from collections.abc import Iterable
from pathlib import Path
from typing import Any

import requests
from pydantic import Field, field_validator

from sites.batch import BatchState, BatchStatus, PilotRequest, Probe
from sites.config import SiteConfig
from sites.errors import BackendError
from sites.proxy import not_after, sign_proxy, subject
from sites.runner import Runner
from sites.schema import Seconds, Strict, build, private_problem

PENDING = {"ACCEPTING", "ACCEPTED", "PREPARING", "PREPARED", "SUBMITTING", "QUEUING", "HELD",
           "OTHER"}
RUNNING = {"RUNNING", "EXITINGLRMS", "KILLING"}
#: Ended states whose outcome does not depend on ARC's error text.
OUTCOMES = {"EXECUTED": "pilot_vanished", "FINISHING": "pilot_vanished",
            "FINISHED": "pilot_vanished", "WIPED": "pilot_vanished", "KILLED": "pilot_killed"}
#: A FAILED job's error text -> outcome, first match wins; else node_failure.
FAILURES = ((re.compile(r"wall|cpu.?time|time.?limit|timeout", re.IGNORECASE), "pilot_killed"),
            (re.compile(r"memory", re.IGNORECASE), "out_of_memory"))
#: The job's executable, an input file: the pilot's environment (secrets among it), the
#: admin's setup lines, the pilot's argv.
SCRIPT = "gridtower-pilot.sh"
#: Where the job's output goes, in its session directory (kept as an output file).
LOG_FILE = "pilot.log"

_CONTROL = re.compile(r"[\x00-\x1f\x7f]")
_ENV_NAME = re.compile(r"[A-Za-z_][A-Za-z0-9_]*")
_INPUT_NAME = re.compile(r"[A-Za-z0-9_.-]+")
#: A reason ends up in the pilot's message: keep it short.
_REASON_LENGTH = 300


def _plain(value: str) -> str:
    # one xRSL string: a control character has no business there
    if _CONTROL.search(value):
        raise ValueError("must not contain newlines or other control characters")
    return value


class ArcOptions(Strict):
    """`batch_options` of an ARC CE site."""

    #: The CE's A-REX endpoint, e.g. https://ce.example.org:443/arex (REST is below it).
    url: str
    #: The CA certificates (a PEM file or a hashed directory) the CE's host certificate
    #: must be signed by.
    ca_file: str
    #: The robot certificate the tower authenticates with, and its key (mode 0600).
    certificate: str
    key: str
    #: The CE's queue the pilots go to (default: the CE's own default).
    queue: str | None = None
    #: The batch system behind the CE (fork, slurm, condor, ...): shown, and checked
    #: against what the CE says of itself in `tower sites check`.
    lrms: str = Field(default="fork", pattern=r"^[A-Za-z0-9_.-]+$")
    #: Runtime environments the pilot's job asks the CE for.
    runtime_environments: list[str] = Field(default_factory=list)
    #: Whether to delegate a proxy the CE acts with (data staging, renewals).
    delegate: bool = True
    #: How long a delegated proxy lives, and how much must remain before it is renewed.
    proxy_lifetime: Seconds = Field(default=12 * 3600, gt=0)
    proxy_renewal: Seconds = Field(default=3600, gt=0)
    #: Seconds for connecting and for each request.
    timeout: Seconds = Field(default=30, gt=0)

    @field_validator("url")
    @classmethod
    def _https(cls, value: str) -> str:
        if not re.fullmatch(r"https://[^\s/]+(/[^\s?#]*)?", value):
            raise ValueError(f"{value!r}: expected the CE's https:// URL, e.g. "
                             "https://ce.example.org:443/arex")
        return value.rstrip("/")

    @field_validator("ca_file", "certificate")
    @classmethod
    def _exists(cls, value: str) -> str:
        path = Path(value).expanduser()
        if not path.exists():
            raise ValueError(f"{path}: no such file or directory")
        return str(path)

    @field_validator("key")
    @classmethod
    def _private(cls, value: str) -> str:
        path = Path(value).expanduser()
        problem = private_problem(path, "the robot key")
        if problem is not None:
            raise ValueError(problem)
        return str(path)

    @field_validator("queue")
    @classmethod
    def _queue(cls, value: str | None) -> str | None:
        return None if value is None else _plain(value)

    @field_validator("runtime_environments")
    @classmethod
    def _environments(cls, value: list[str]) -> list[str]:
        return [_plain(item) for item in value]


class ArcBatch:
    """Implements `BatchSystem` with the ARC CE's REST interface; the batch id is the
    ARC job id."""

    options_model = ArcOptions
    #: The pilot's files travel with its job, not through the site's runner.
    carries_inputs = True

    def __init__(self, site: SiteConfig, runner: Runner) -> None:
        self.site = site
        options: Any = build(ArcOptions, site.batch_options, "sites.yaml",
                             prefix=f"sites.{site.name}.batch_options")
        self.options: ArcOptions = options
        self.rest = f"{options.url}/rest/1.0"
        self._session = requests.Session()
        self._session.headers["Accept"] = "application/json"
        self._lock = threading.Lock()
        #: This process's delegation at the CE: its id and when its proxy ends.
        self._delegation: tuple[str, datetime.datetime] | None = None

    # -- the seam --

    def log_path(self, pilot_id: str) -> str:
        return f"{self.options.url} job session/{LOG_FILE} (pilot {pilot_id})"

    def probes(self) -> list[Probe]:
        return [Probe("CE info", step=self._check_info),
                Probe("CE credential", step=self.credential),
                Probe("CE job submit, status, clean", step=self._check_job)]

    def submit(self, request: PilotRequest) -> str:
        delegation = self._delegated()[0] if self.options.delegate else None
        answer = self._jobs("new", self.description(request, delegation),
                            content_type="application/rsl")
        job = _one(answer, "submission")
        if job.get("status-code") != "201" or not job.get("id"):
            raise self._refused("submission", job)
        job_id = str(job["id"])
        try:
            for name, text in self.inputs(request).items():
                self._call("PUT", f"jobs/{job_id}/session/{name}", data=text.encode())
        except BackendError:
            self._forget([job_id])  # a job without its inputs would wait for them forever
            raise
        return job_id

    def statuses(self, batch_ids: list[str]) -> dict[str, BatchStatus]:
        if not batch_ids:
            return {}
        found: dict[str, BatchStatus] = {}
        failed = []
        for job in _all(self._jobs("status", _ids(batch_ids))):
            job_id = str(job.get("id"))
            if job.get("status-code") != "200":
                found[job_id] = BatchStatus(BatchState.ENDED, reason="unknown to the CE",
                                            outcome="pilot_vanished")
            elif job.get("state") == "FAILED":
                failed.append(job_id)
            else:
                found[job_id] = status(str(job.get("state")))
        if failed:
            found.update({job_id: status("FAILED", error)
                          for job_id, error in self._errors(failed).items()})
        return {batch_id: found.get(batch_id) or BatchStatus(
                    BatchState.ENDED, reason="unknown to the CE", outcome="pilot_vanished")
                for batch_id in batch_ids}

    def cancel(self, batch_ids: list[str]) -> None:
        if batch_ids:
            # A-REX sends SIGTERM to the job, then SIGKILL
            self._jobs("kill", _ids(batch_ids))

    # -- what a pilot's job is --

    def description(self, request: PilotRequest, delegation: str | None) -> str:
        """The xRSL of one pilot (no secret in it: those travel as input files)."""
        shape = self.site.pilot
        attributes: list[tuple[str, list[str] | list[list[str]]]] = [
            ("executable", [SCRIPT]),
            ("jobname", [f"gridtower-{self.site.name}-{request.pilot_id[:12]}"]),
            # in seconds: the CE's limit is then the pilot's own, not rounded up to minutes
            ("walltime", [f"{shape.walltime} seconds"]),
            ("count", [str(shape.cores)]), ("countpernode", [str(shape.cores)]),
            *([("memory", [str(math.ceil(shape.memory / shape.cores))])]
              if shape.memory else []),
            *([("queue", [self.options.queue])] if self.options.queue else []),
            *(("runtimeenvironment", [name]) for name in self.options.runtime_environments),
            ("inputfiles", [[name, ""] for name in self.inputs(request)]),
            ("stdout", [LOG_FILE]), ("join", ["yes"]),
            ("outputfiles", [[LOG_FILE, ""]]),
            *([("delegationid", [delegation])] if delegation else []),
        ]
        return "&" + "\n ".join(f"({name}={_values(values)})" for name, values in attributes)

    def inputs(self, request: PilotRequest) -> dict[str, str]:
        """The job's input files by name: its script, then the pilot's own files."""
        files = {SCRIPT: self.script(request)}
        for name, text in request.inputs.items():
            if not _INPUT_NAME.fullmatch(name) or name == SCRIPT:
                raise BackendError(f"input file name {name!r}: expected a plain file name")
            files[name] = text
        return files

    def script(self, request: PilotRequest) -> str:
        """The job's executable: it holds the pilot's secrets, so it removes itself first."""
        lines = ["#!/bin/sh", 'rm -f -- "$0"']
        for name, value in request.environment.items():
            if not _ENV_NAME.fullmatch(name):
                raise BackendError(f"environment variable name {name!r} is not a shell name")
            lines.append(f"export {name}={shlex.quote(value)}")
        # the admin's setup lines are shell by intent (module load, a container wrapper)
        lines += self.site.setup
        lines.append(f"exec {shlex.join(request.argv)}")
        return "\n".join(lines) + "\n"

    # -- credentials --

    def credential(self) -> str:
        """The robot certificate and the proxy this process delegated, as `tower sites`
        shows them; raises BackendError when the CE refuses the robot."""
        robot = Path(self.options.certificate).read_bytes()
        text = f"robot {subject(robot)} until {_when(not_after(robot))}"
        if not self.options.delegate:
            return f"{text}; no delegation"
        _, ends = self._delegated()
        return f"{text}; proxy delegated until {_when(ends)}"

    def _delegated(self) -> tuple[str, datetime.datetime]:
        """This process's delegation, made or renewed when less than proxy_renewal
        remains of it."""
        with self._lock:
            now = datetime.datetime.now(datetime.UTC)
            held = self._delegation
            margin = datetime.timedelta(seconds=self.options.proxy_renewal)
            if held is None or held[1] - now < margin:
                if held is None:
                    answer = self._call("POST", "delegations", params={"action": "new"})
                    location = answer.headers.get("Location", "")
                    delegation = location.rstrip("/").rsplit("/", 1)[-1]
                    if not delegation:
                        raise BackendError(f"site={self.site.name}: the CE answered a "
                                           "delegation without its id (no Location)")
                else:
                    delegation = held[0]
                    answer = self._call("POST", f"delegations/{delegation}",
                                        params={"action": "renew"})
                proxy = sign_proxy(answer.content,
                                   Path(self.options.certificate).read_bytes(),
                                   Path(self.options.key).read_bytes(),
                                   self.options.proxy_lifetime)
                self._call("PUT", f"delegations/{delegation}", data=proxy)
                self._delegation = held = (delegation, not_after(proxy))
            return held

    # -- `tower sites check` --

    def _check_info(self) -> str:
        info = self._call("GET", "info").json()
        service = (info.get("Domains", {}).get("AdminDomain", {}).get("Services", {})
                   .get("ComputingService", {}))
        managers = [str(manager.get("ProductName", "?")) for manager in
                    _all({"m": service.get("ComputingManager", [])}, "m")]
        shares = [str(share.get("Name")) for share in
                  _all({"s": service.get("ComputingShare", [])}, "s")]
        if self.options.queue and shares and self.options.queue not in shares:
            raise BackendError(f"the CE has no queue {self.options.queue!r} "
                               f"(it has: {', '.join(shares)})")
        if managers and not any(self.options.lrms.lower() in m.lower() for m in managers):
            raise BackendError(f"the CE runs {', '.join(managers)}, not {self.options.lrms} "
                               "(batch_options.lrms)")
        return (f"{service.get('Name', '?')}: {', '.join(managers) or 'batch system unsaid'}"
                f", queues {', '.join(shares) or 'unsaid'}")

    def _check_job(self) -> str:
        """Submit a no-op job, read its status, clean it away."""
        request = PilotRequest("sites-check", ["true"])
        job_id = self.submit(request)
        try:
            state = self.statuses([job_id])[job_id]
        finally:
            self._forget([job_id])
        return f"job {job_id[:16]}... {state.state.value}, cleaned"

    # -- the REST interface --

    def _jobs(self, action: str, body: str | dict[str, Any],
              content_type: str = "application/json") -> Any:
        data = body if isinstance(body, str) else json.dumps(body)
        return self._call("POST", "jobs", params={"action": action}, data=data.encode(),
                          headers={"Content-Type": content_type}).json()

    def _errors(self, job_ids: list[str]) -> dict[str, str]:
        """ARC's error text of each job (its GLUE2 activity's Error lines)."""
        errors = {}
        for job in _all(self._jobs("info", _ids(job_ids))):
            errors[str(job.get("id"))] = failure(
                job.get("info_document", {}).get("ComputingActivity", {}))
        return {job_id: errors.get(job_id, "") for job_id in job_ids}

    def _forget(self, job_ids: list[str]) -> None:
        """Kill and clean jobs, as far as the CE lets us (best effort)."""
        for action in ("kill", "clean"):
            # what the CE keeps, its own lifetime for jobs removes
            with contextlib.suppress(BackendError):
                self._jobs(action, _ids(job_ids))

    def _call(self, method: str, path: str, **kwargs: Any) -> requests.Response:
        url = f"{self.rest}/{path}"
        try:
            # verify and cert on each request: REQUESTS_CA_BUNDLE would override a session's
            answer = self._session.request(method, url, timeout=self.options.timeout,
                                           verify=self.options.ca_file,
                                           cert=(self.options.certificate, self.options.key),
                                           **kwargs)
        except requests.exceptions.SSLError as exc:
            raise BackendError(f"site={self.site.name}: TLS with the CE {self.options.url} "
                               f"failed (is the robot certificate accepted, and the CE's "
                               f"host certificate signed by ca_file?): {_short(exc)}") from None
        except requests.RequestException as exc:
            raise BackendError(f"site={self.site.name}: the CE {self.options.url} is "
                               f"unreachable: {_short(exc)}") from None
        if answer.status_code in (401, 403):
            raise BackendError(f"site={self.site.name}: the CE refused the robot "
                               f"certificate ({answer.status_code} {answer.reason}): its "
                               "subject is not allowed there")
        if answer.status_code >= 300:
            raise BackendError(f"site={self.site.name}: {method} {path} answered "
                               f"{answer.status_code} {answer.reason}: "
                               f"{answer.text.strip()[:_REASON_LENGTH]}")
        return answer

    def _refused(self, what: str, job: dict[str, Any]) -> BackendError:
        return BackendError(f"site={self.site.name}: the CE refused the {what}: "
                            f"{job.get('status-code')} {job.get('reason')}")


def status(state: str, error: str = "") -> BatchStatus:
    """Our view of an ARC REST job state (for FAILED, with ARC's error text)."""
    if state in PENDING:
        return BatchStatus(BatchState.PENDING, reason=state)
    if state in RUNNING:
        return BatchStatus(BatchState.RUNNING)
    if state == "FAILED":
        outcome = next((outcome for pattern, outcome in FAILURES if pattern.search(error)),
                       "node_failure")
        return BatchStatus(BatchState.ENDED, reason=f"FAILED: {error[:_REASON_LENGTH]}"
                           if error else "FAILED", outcome=outcome)
    return BatchStatus(BatchState.ENDED, reason=state,
                       outcome=OUTCOMES.get(state, "pilot_vanished"))


def failure(activity: dict[str, Any]) -> str:
    """ARC's error text of a failed job (its GLUE2 activity), and whether it used up its
    walltime: the fork back end enforces that as a CPU-time limit (`ulimit -t`), whose
    kill the CE reports only as an exit code ("137 != 0")."""
    lines = activity.get("Error", [])
    text = "; ".join([lines] if isinstance(lines, str) else [str(line) for line in lines])
    used, asked = (_number(activity.get(key)) for key in ("UsedTotalWallTime",
                                                          "RequestedTotalWallTime"))
    if used is not None and asked and used >= asked:
        text += f"{'; ' if text else ''}ran {used}s of its {asked}s walltime"
    return text


def _number(value: Any) -> int | None:
    return int(value) if isinstance(value, str | int) and str(value).isdigit() else None


def _values(values: Iterable[str] | Iterable[list[str]]) -> str:
    """An xRSL value list: each string quoted (a literal " doubled), each list in ()."""
    return " ".join(f"({_values(value)})" if isinstance(value, list) else _quote(value)
                    for value in values)


def _quote(value: str) -> str:
    if _CONTROL.search(value):
        raise BackendError(f"{value[:40]!r}: an xRSL value must not contain newlines or other "
                           "control characters")
    return '"' + value.replace('"', '""') + '"'


def _ids(job_ids: list[str]) -> dict[str, Any]:
    return {"job": [{"id": job_id} for job_id in job_ids]}


def _all(answer: Any, key: str = "job") -> list[dict[str, Any]]:
    """The entries under `key`: ARC answers one entry as an object, several as a list."""
    entries = answer.get(key, []) if isinstance(answer, dict) else []
    entries = [entries] if isinstance(entries, dict) else entries
    return [entry for entry in entries if isinstance(entry, dict)]


def _one(answer: Any, what: str) -> dict[str, Any]:
    entries = _all(answer)
    if len(entries) != 1:
        raise BackendError(f"the CE answered the {what} with {len(entries)} jobs, not one")
    return entries[0]


def _short(exc: BaseException) -> str:
    return str(exc)[:_REASON_LENGTH]


def _when(moment: datetime.datetime) -> str:
    return moment.strftime("%Y-%m-%d %H:%M UTC")

