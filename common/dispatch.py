"""Which agent dispatches of a room can still bring it a transcriber.

LiveKit offers a dispatch's job to workers once; when every worker is full (at its load threshold) or the
job fails, the dispatch stays but nobody serves the room. The API re-dispatches such a room when someone
joins it, and the agent, when two live dispatches race, serves only the oldest.
"""

from __future__ import annotations

import time
from collections.abc import Iterable

from livekit import api

_LIVE_JOB = (api.JobStatus.JS_PENDING, api.JobStatus.JS_RUNNING)
#: A new dispatch lists no job until LiveKit has offered it to a worker; until then it counts as live.
UNASSIGNED_GRACE_S = 15.0


def is_live(dispatch: api.AgentDispatch, now: float | None = None) -> bool:
    """The dispatch has a job that is starting or running, or is too young to have one yet."""
    if any(job.state.status in _LIVE_JOB for job in dispatch.state.jobs):
        return True
    age = (now if now is not None else time.time()) - dispatch.state.created_at / 1e9  # created_at: ns
    return not dispatch.state.jobs and age < UNASSIGNED_GRACE_S


def live_dispatches(dispatches: Iterable[api.AgentDispatch], agent_name: str) -> list[api.AgentDispatch]:
    """This agent's live dispatches, oldest first."""
    now = time.time()
    return sorted(
        (d for d in dispatches if d.agent_name == agent_name and is_live(d, now)),
        key=lambda d: (d.state.created_at, d.id),
    )
