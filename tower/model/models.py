"""The tower's tables: productions, jobs, attempts, pilots, job events, outputs and the queue.

The catalog's tables live in `catalog.models`; both share SQLModel's metadata.
"""

from __future__ import annotations

from datetime import datetime
from typing import Any

from sqlalchemy import BigInteger, Column, Index, LargeBinary, Text, UniqueConstraint, text
from sqlmodel import Field, SQLModel, col

from catalog.columns import JSONType, json_column, state_column
from catalog.timeutil import utcnow
from tower.model.states import JobState, PilotState, ProductionState


class Production(SQLModel, table=True):
    id: int | None = Field(default=None, primary_key=True)
    name: str = Field(index=True, unique=True, max_length=200)
    parent: str | None = Field(default=None, max_length=200)
    state: ProductionState = state_column(ProductionState, ProductionState.ACTIVE)
    priority: int = 0
    #: The fair-share group the production's jobs count against (config `shares`).
    group: str = Field(default="default", max_length=100)
    #: Jobs made for its trial (0: no trial); the rest are made when it is approved.
    trial_jobs: int = 0
    #: Whether the jobs of all its events exist (False during a request or trial).
    full_run: bool = True
    #: Who filed it (a request), and who approved or rejected it, when, and why.
    requested_by: str | None = Field(default=None, max_length=300)
    decided_by: str | None = Field(default=None, max_length=300)
    decided_at: datetime | None = None
    decision_note: str | None = Field(default=None, max_length=1000)
    #: What the trial measured and proposes for the full run (walltime, memory, events
    #: per job), once it ended.
    trial_report: dict[str, Any] | None = Field(default=None, sa_column=Column(JSONType))
    queue: str = Field(default="default", max_length=100)
    events_total: int = Field(sa_type=BigInteger)
    events_per_job: int
    dataset: str = Field(max_length=300)
    template_hash: str = Field(max_length=64)
    #: The resolved request, every inherited value filled in.
    spec: dict[str, Any] = json_column()
    #: For each resolved key, the production it was inherited from.
    origins: dict[str, Any] = json_column()
    #: The catalog files (LFNs) every job reads, resolved from the request's `inputs`.
    inputs: list[str] | None = Field(default=None, sa_column=Column(JSONType))
    created_at: datetime = Field(default_factory=utcnow)
    updated_at: datetime = Field(default_factory=utcnow)
    # columns added by a migration come last, where ALTER TABLE puts them
    #: When `tune: auto` last looked at its successful attempts (tower.loops.tune).
    tuned_at: datetime | None = None


class Job(SQLModel, table=True):
    __table_args__ = (
        UniqueConstraint("production_id", "index"),
        Index("ix_job_production_state", "production_id", "state"),
        Index("ix_job_site_state", "site", "state"),
        # the few jobs a retry gave more walltime or memory: the factory leaves out of a
        # site's demand those its pilots cannot take
        Index("ix_job_grown_walltime", "walltime", postgresql_where=text("walltime IS NOT NULL"),
              sqlite_where=text("walltime IS NOT NULL")),
        Index("ix_job_grown_memory", "memory", postgresql_where=text("memory IS NOT NULL"),
              sqlite_where=text("memory IS NOT NULL")),
    )

    id: int | None = Field(default=None, primary_key=True)
    production_id: int = Field(foreign_key="production.id")
    index: int
    seed: int = Field(sa_type=BigInteger)
    first_event: int = Field(sa_type=BigInteger)
    events: int
    state: JobState = state_column(JobState, JobState.DEFINED)
    priority: int = 0
    site: str | None = Field(default=None, max_length=100)
    queue: str = Field(default="default", max_length=100)
    #: Number of the attempt the job is on; messages carry it, stale ones are refused.
    attempt: int = 0
    #: Backoff: not matched to a site before this time.
    not_before: datetime | None = None
    message: str | None = Field(default=None, max_length=500)
    #: Set by the retry policy: the job's own walltime (s) and memory (MB), when grown
    #: beyond its production's; where the next attempt must run, or must not.
    walltime: int | None = None
    memory: int | None = None
    only_site: str | None = Field(default=None, max_length=100)
    avoid_sites: list[str] | None = Field(default=None, sa_column=Column(JSONType))
    #: Attempts up to this number do not count against the policy's limits any more
    #: (a manager retried or released the job).
    budget_from: int = 0
    created_at: datetime = Field(default_factory=utcnow)
    updated_at: datetime = Field(default_factory=utcnow)


# the matchmaker's scan: defined jobs by priority, highest first, then by id, in the
# index's own order (an ascending priority cannot serve it: every defined job was read
# and sorted each cycle)
Index("ix_job_match_order", col(Job.state), col(Job.priority).desc(), col(Job.id))


class JobInput(SQLModel, table=True):
    """A catalog file one job of a production split by input reads (tower.management.chains):
    each file is consumed once per production, which the unique constraint holds."""

    __tablename__ = "job_input"
    __table_args__ = (UniqueConstraint("production_id", "file_id"),)

    id: int | None = Field(default=None, primary_key=True)
    production_id: int = Field(foreign_key="production.id")
    job_id: int = Field(foreign_key="job.id", index=True)
    file_id: int = Field(foreign_key="catalog_file.id", index=True)
    lfn: str = Field(max_length=1000)
    #: The file as the job was made from it: a newer attempt's output differs.
    adler32: str = Field(max_length=8)
    attempt: int


class Attempt(SQLModel, table=True):
    __table_args__ = (
        UniqueConstraint("job_id", "number"),
        Index("ix_attempt_running_heartbeat", "ended_at", "heartbeat_at"),
    )

    id: int | None = Field(default=None, primary_key=True)
    job_id: int = Field(foreign_key="job.id", index=True)
    number: int
    #: None for an attempt no pilot claimed (claim_timeout).
    pilot_id: str | None = Field(default=None, max_length=64, index=True)
    site: str = Field(max_length=100)
    #: Outcome class once ended (tower.retries.outcomes.Outcome).
    outcome: str | None = Field(default=None, max_length=40)
    exit_code: int | None = None
    signal: int | None = None
    reason: str | None = Field(default=None, max_length=500)
    started_at: datetime = Field(default_factory=utcnow)
    heartbeat_at: datetime = Field(default_factory=utcnow)
    ended_at: datetime | None = None
    log_tail: str | None = Field(default=None, sa_column=Column(Text))
    #: The payload's peak resident memory (MB), as its pilot measured it.
    max_rss_mb: int | None = None
    cpu_seconds: float | None = None
    wall_seconds: float | None = None


class Pilot(SQLModel, table=True):
    __table_args__ = (Index("ix_pilot_site_state", "site", "state"),)

    id: str = Field(primary_key=True, max_length=64)
    site: str = Field(max_length=100)
    queue: str = Field(default="default", max_length=100)
    state: PilotState = state_column(PilotState, PilotState.SUBMITTED)
    batch_id: str | None = Field(default=None, max_length=100)
    slots: int = 1
    walltime: int = 0
    host: str | None = Field(default=None, max_length=255)
    log_path: str | None = Field(default=None, max_length=1000)
    message: str | None = Field(default=None, max_length=500)
    submitted_at: datetime = Field(default_factory=utcnow)
    registered_at: datetime | None = None
    heartbeat_at: datetime | None = None
    ended_at: datetime | None = None
    updated_at: datetime = Field(default_factory=utcnow)
    #: Its shape as submitted, which a claim checks jobs against: cores, memory (MB; None:
    #: not declared, any job's memory fits) and `walltime` (s). Cores None: recorded before
    #: pilots had a shape: its site's present one applies.
    cores: int | None = None
    memory: int | None = None


class SiteQueue(SQLModel, table=True):
    """One site queue as the factory sees it. Its row is the factory's lock, so two
    tower processes never decide for the same site queue at once."""

    site: str = Field(primary_key=True, max_length=100)
    queue: str = Field(primary_key=True, max_length=100)
    last_error: str | None = Field(default=None, max_length=1000)
    last_error_at: datetime | None = None


class SiteRead(SQLModel, table=True):
    """What the monitor last read of a site's batch system for `tower sites`, so a listing
    asks no site (arc: the robot and the proxy delegated to the CE, with their ends)."""

    site: str = Field(primary_key=True, max_length=100)
    #: The credential as last read, and when.
    credential: str | None = Field(default=None, max_length=1000)
    read_at: datetime | None = None
    #: Why the last read failed, and when (cleared by a read that succeeds).
    error: str | None = Field(default=None, max_length=1000)
    error_at: datetime | None = None


class Presence(SQLModel, table=True):
    """When the tower's API has been serving without a break (tower.loops.presence): one row,
    refreshed by every serving tower process."""

    name: str = Field(primary_key=True, max_length=20)
    #: The start of the present unbroken stretch of serving.
    since: datetime
    #: The last refresh.
    seen: datetime


class FactoryDecision(SQLModel, table=True):
    """What one factory cycle decided for one site queue, and the numbers behind it."""

    __table_args__ = (Index("ix_factorydecision_site_queue_id", "site", "queue", "id"),)

    id: int | None = Field(default=None, primary_key=True)
    site: str = Field(max_length=100)
    queue: str = Field(max_length=100)
    at: datetime = Field(default_factory=utcnow)
    demand: int
    pending: int
    running: int
    draining: int
    submit: int
    cancel: int
    note: str = Field(max_length=1000)


class SiteHealth(SQLModel, table=True):
    """A site taken out of brokering for failing too many attempts itself, until a time."""

    site: str = Field(primary_key=True, max_length=100)
    cooldown_until: datetime
    reason: str = Field(max_length=1000)
    since: datetime = Field(default_factory=utcnow)


class RetryDecision(SQLModel, table=True):
    """What was decided about a job after one of its attempts ended badly, and why: by
    the retry policy (passive rules included), or by a person (retry, release, hold)."""

    __table_args__ = (Index("ix_retrydecision_production_id", "production_id", "id"),)

    id: int | None = Field(default=None, primary_key=True)
    job_id: int = Field(index=True)
    production_id: int
    #: The attempt whose end was decided on (the job's current one for a person's action).
    attempt: int
    #: "policy", or who acted.
    actor: str = Field(default="policy", max_length=200)
    policy: str | None = Field(default=None, max_length=100)
    rule: str | None = Field(default=None, max_length=100)
    outcome: str | None = Field(default=None, max_length=40)
    action: str = Field(max_length=40)
    #: A passive rule's decision: recorded, not acted on.
    passive: bool = False
    delay: int = 0
    reason: str = Field(default="", max_length=500)
    at: datetime = Field(default_factory=utcnow)


class Usage(SQLModel, table=True):
    """What one successful attempt used, as its pilot measured it, with the job's events
    and the production's cores then: the record `tower show`, the production page, the
    trial and `tune: auto` read (tower.model.usage). Kept per production and in order, so
    the latest few thousand of a production are one index range, whatever its size."""

    __table_args__ = (Index("ix_usage_production_id", "production_id", "id"),)

    id: int | None = Field(default=None, primary_key=True)
    production_id: int
    job_id: int
    attempt: int
    site: str = Field(max_length=100)
    events: int
    cores: int
    #: Peak resident memory of the payload's process tree (MB); None when not measured.
    max_rss_mb: int | None = None
    cpu_seconds: float | None = None
    wall_seconds: float
    at: datetime = Field(default_factory=utcnow)


class TuneDecision(SQLModel, table=True):
    """A change `tune: auto` made to a production's memory or walltime, and the evidence."""

    __table_args__ = (Index("ix_tunedecision_production_id", "production_id", "id"),)

    id: int | None = Field(default=None, primary_key=True)
    production_id: int
    #: `memory` (MB) or `walltime` (s).
    setting: str = Field(max_length=20)
    old: int | None = None
    new: int
    #: Successful attempts measured, and the p95 they gave (MB, or seconds per event).
    samples: int
    p95: float
    factor: float
    #: The largest value an allowed site's pilots offer (None: no site declares one).
    bound: int | None = None
    reason: str = Field(max_length=500)
    at: datetime = Field(default_factory=utcnow)


class JobEvent(SQLModel, table=True):
    """One row per job state change: the job's history."""

    # a job's latest events by id: without it PostgreSQL may walk the whole table
    # backwards by id looking for one job's rows
    __table_args__ = (Index("ix_jobevent_job_id_id", "job_id", "id"),)

    id: int | None = Field(default=None, primary_key=True)
    job_id: int
    production_id: int
    from_state: JobState = state_column(JobState)
    to_state: JobState = state_column(JobState)
    at: datetime = Field(default_factory=utcnow)
    reason: str = Field(default="", max_length=500)


class Output(SQLModel, table=True):
    """A declared output of a successful attempt, waiting at the site to be staged out."""

    __table_args__ = (UniqueConstraint("job_id", "attempt", "name"),)

    id: int | None = Field(default=None, primary_key=True)
    job_id: int = Field(foreign_key="job.id", index=True)
    attempt: int
    name: str = Field(max_length=255)
    #: Where the pilot left it, in the site's storage.
    source: str = Field(max_length=2000)
    size: int = Field(sa_type=BigInteger)
    adler32: str = Field(max_length=8)
    staged: bool = Field(default=False, index=True)
    #: Destinations that hold a verified copy already (a restart copies only the rest).
    copied: list[str] | None = Field(default=None, sa_column=Column(JSONType))
    tries: int = 0
    next_try_at: datetime | None = None
    lease_until: datetime | None = None
    lease_owner: str | None = Field(default=None, max_length=64)
    last_error: str | None = Field(default=None, max_length=500)


class StageIn(SQLModel, table=True):
    """An input file to copy to a destination (a site's storage element) before the jobs
    that read it are brokered there."""

    lfn: str = Field(primary_key=True, max_length=1000)
    destination: str = Field(primary_key=True, max_length=100)
    done: bool = False
    tries: int = 0
    next_try_at: datetime | None = None
    last_error: str | None = Field(default=None, max_length=500)
    requested_at: datetime = Field(default_factory=utcnow)


class JobTally(SQLModel, table=True):
    """Jobs and their events per production and state, kept as deltas: each state change
    adds a row, and `tower.model.tally.compact` folds them, so counting a production's jobs reads
    a handful of rows, never the jobs table."""

    __table_args__ = (Index("ix_jobtally_production_state", "production_id", "state"),)

    id: int | None = Field(default=None, primary_key=True)
    production_id: int
    state: JobState = state_column(JobState)
    jobs: int = Field(sa_type=BigInteger)
    events: int = Field(sa_type=BigInteger)
    # columns added by a migration come last, where ALTER TABLE puts them
    #: Where the jobs are, for states that place them at a site (JOB_PLACED); "" else.
    site: str = Field(default="", max_length=100, sa_column_kwargs={"server_default": ""})
    queue: str = Field(default="", max_length=100, sa_column_kwargs={"server_default": ""})


class Activity(SQLModel, table=True):
    """What happened per production, site and five minutes: jobs done (kind `done`) and
    attempts ended (kind: the outcome class, with the exit code or signal), as deltas
    folded by `tower.model.tally.compact`.
    The pages' plots and per-site breakdowns read it."""

    __table_args__ = (Index("ix_activity_production_bucket", "production_id", "bucket"),
                      Index("ix_activity_site_bucket", "site", "bucket"))

    id: int | None = Field(default=None, primary_key=True)
    production_id: int
    site: str = Field(max_length=100)
    #: Start of the five minutes, in seconds since the epoch (UTC).
    bucket: int = Field(sa_type=BigInteger)
    kind: str = Field(max_length=40)
    #: The exit code or signal number of `exit_code` and `signal` attempts, else 0.
    code: int = 0
    count: int = Field(sa_type=BigInteger)
    events: int = Field(sa_type=BigInteger)


class QueueMessage(SQLModel, table=True):
    """A message of the database-queue broker (the embedded default)."""

    __table_args__ = (Index("ix_queuemessage_queue_lease", "queue", "leased_until", "id"),)

    id: int | None = Field(default=None, primary_key=True)
    queue: str = Field(max_length=200)
    body: dict[str, Any] = json_column()
    leased_until: datetime | None = None
    lease_owner: str | None = Field(default=None, max_length=64)
    created_at: datetime = Field(default_factory=utcnow)


class Notification(SQLModel, table=True):
    """A production event to tell one target (a webhook, the mail server). Its key is
    unique, so two tower processes record an event once; a lease lets one deliver it."""

    __table_args__ = (UniqueConstraint("production_id", "event", "occurrence", "target"),
                      Index("ix_notification_state_next_try", "state", "next_try_at"))

    id: int | None = Field(default=None, primary_key=True)
    production_id: int
    #: tower.management.notification_settings.Event: completed, failing, awaiting_approval.
    event: str = Field(max_length=40)
    #: Which time the event happens: the events total for `completed` (an extended
    #: production completes anew), the state for `awaiting_approval`, `once` for `failing`.
    occurrence: str = Field(max_length=100)
    #: `webhook <digest of its URL>` or `smtp`: no secret.
    target: str = Field(max_length=100)
    #: What is told, as of when the event was seen.
    payload: dict[str, Any] = json_column()
    #: pending, sent, or failed (given up after the last try).
    state: str = Field(default="pending", max_length=20)
    tries: int = 0
    next_try_at: datetime | None = None
    lease_until: datetime | None = None
    lease_owner: str | None = Field(default=None, max_length=64)
    last_error: str | None = Field(default=None, max_length=500)
    created_at: datetime = Field(default_factory=utcnow)
    sent_at: datetime | None = None


class AttemptLog(SQLModel, table=True):
    """An attempt's full stdout and stderr as its pilot shipped them, gzip-compressed: in
    `data` when small, else in the tower's log store under `stored` (a name the tower made
    from the attempt's id, never one a pilot gave). One per attempt: a second is refused."""

    __table_args__ = (UniqueConstraint("job_id", "attempt"),
                      Index("ix_attemptlog_created_at", "created_at"))

    id: int | None = Field(default=None, primary_key=True)
    job_id: int
    attempt: int
    #: Bytes of the log once uncompressed, and as shipped (gzip).
    size: int = Field(sa_type=BigInteger)
    compressed: int = Field(sa_type=BigInteger)
    #: Whether the pilot cut the log to its site's bound before shipping it.
    truncated: bool = False
    data: bytes | None = Field(default=None, sa_column=Column(LargeBinary))
    stored: str | None = Field(default=None, max_length=200)
    created_at: datetime = Field(default_factory=utcnow)


class SiteSample(SQLModel, table=True):
    """A site queue as the factory saw it, one row per minute (`span` 60), folded into one
    per hour (`span` 3600) beyond a week: pilots pending, running and draining, payload
    slots busy, and the pilots the factory submitted and cancelled in that span."""

    __table_args__ = (UniqueConstraint("site", "queue", "at", "span"),
                      Index("ix_sitesample_site_at", "site", "at"))

    id: int | None = Field(default=None, primary_key=True)
    site: str = Field(max_length=100)
    queue: str = Field(max_length=100)
    #: Start of the span, in seconds since the epoch (UTC).
    at: int = Field(sa_type=BigInteger)
    span: int = 60
    pending: float = 0
    running: float = 0
    draining: float = 0
    busy: float = 0
    submitted: int = 0
    cancelled: int = 0


class Provenance(SQLModel, table=True):
    """How one attempt ran, as `tower rerun` needs it to run it again: the rendered command,
    steering files (text and sha256) and environment, the software, the container image and
    its digest, the input files with their adler32, the site, host and pilot, the seed,
    stream and first event (tower.model.provenance). A cataloged file points to it by its
    job and attempt."""

    __table_args__ = (UniqueConstraint("job_id", "attempt"),)

    id: int | None = Field(default=None, primary_key=True)
    job_id: int = Field(foreign_key="job.id")
    attempt: int
    production_id: int = Field(foreign_key="production.id", index=True)
    record: dict[str, Any] = json_column()
    created_at: datetime = Field(default_factory=utcnow)
