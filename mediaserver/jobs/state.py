"""A post-call job's state as the manifest keeps it: kind, status, attempts, parameters, error."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field, replace
from enum import Enum
from typing import Any


class JobKind(Enum):
    """What a job produces."""

    ANALYSIS = "analysis"
    TRANSCRIPT = "transcript"


class JobStatus(Enum):
    """Where a job is in its life."""

    QUEUED = "queued"
    PROCESSING = "processing"
    COMPLETED = "completed"
    FAILED = "failed"

    @property
    def is_pending(self) -> bool:
        """True while the job has yet to finish."""
        return self in (JobStatus.QUEUED, JobStatus.PROCESSING)


@dataclass(frozen=True, slots=True)
class JobError:
    """Why a job failed, as the API shows it."""

    code: str
    message: str
    details: dict[str, Any] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready form (details only when there are some)."""
        body: dict[str, Any] = {"code": self.code, "message": self.message}
        if self.details:
            body["details"] = self.details
        return body


@dataclass(frozen=True, slots=True)
class JobState:
    """One job of one recording."""

    kind: JobKind
    status: JobStatus
    job_id: str
    updated_at: str
    attempts: int = 0
    params: dict[str, str] = field(default_factory=dict)
    error: JobError | None = None

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready form, as stored under the manifest's "jobs"."""
        body: dict[str, Any] = {
            "status": self.status.value,
            "job_id": self.job_id,
            "updated_at": self.updated_at,
            "attempts": self.attempts,
            "params": dict(self.params),
        }
        if self.error is not None:
            body["error"] = self.error.to_dict()
        return body


def parse_job_state(kind: JobKind, data: Mapping[str, Any]) -> JobState:
    """A job state read back from its JSON form; ValueError/KeyError if it is not one."""
    error = data.get("error")
    return JobState(
        kind=kind,
        status=JobStatus(data["status"]),
        job_id=str(data["job_id"]),
        updated_at=str(data["updated_at"]),
        attempts=int(data.get("attempts", 0)),
        params={str(k): str(v) for k, v in data.get("params", {}).items()},
        error=None
        if error is None
        else JobError(str(error["code"]), str(error["message"]), dict(error.get("details", {}))),
    )


def parse_job_states(jobs: Mapping[str, Any]) -> dict[JobKind, JobState]:
    """Every job state in a manifest's "jobs" (unknown kinds are ignored)."""
    states = {}
    for kind in JobKind:
        if kind.value in jobs:
            states[kind] = parse_job_state(kind, jobs[kind.value])
    return states


def build_queued(
    kind: JobKind, job_id: str, now: str, params: Mapping[str, str] | None = None
) -> JobState:
    """A job that was just queued."""
    return JobState(kind, JobStatus.QUEUED, job_id, now, 0, dict(params or {}))


def advance(
    state: JobState, status: JobStatus, now: str, error: JobError | None = None
) -> JobState:
    """The state after a transition (processing counts an attempt)."""
    attempts = state.attempts + 1 if status is JobStatus.PROCESSING else state.attempts
    return replace(
        state,
        status=status,
        updated_at=now,
        attempts=attempts,
        error=error if status is JobStatus.FAILED else None,
    )


def summarize_jobs(jobs: Mapping[str, Any]) -> dict[str, str]:
    """Each job's status by kind: the short form recording listings show."""
    return {kind: str(state.get("status")) for kind, state in jobs.items()}
