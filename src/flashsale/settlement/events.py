"""Live job events: `GET /jobs/{job_id}/events`, from any server, wherever the job runs.

Every change of a job row sends a NOTIFY with the job's id (a trigger, migration 0006), whichever
process wrote it. Each server process LISTENs on one connection of its own and fans the changes
out to its open streams:

- **One listener connection per process**, whatever the number of streams. A notification for
  a watched job makes the process read that job's row once (one short query on the pool, shared
  by every stream of that job) and hand the new state to each of its streams. Streams of jobs
  nobody changes cost no query at all, only a heartbeat comment every HEARTBEAT_S.
- **Never backwards, never stale for long.** A stream sends a state only if the row's
  `updated_at` is newer than the last one it sent, so reads that overtake each other cannot make
  `processed` go down. A lost notification (the listener reconnecting) is made good by reading
  every watched job again when the listener connects and once every HEARTBEAT_S.
- **A slow client holds no backlog**: a stream keeps only the latest state not yet sent.
- **Bounded**: at most JOB_EVENT_STREAMS_MAX streams per process; beyond, 503 TOO_MANY_STREAMS.
- A stream ends after it sends a terminal status, and when its client goes away
  (`EventStreamResponse` watches for the disconnect instead of waiting for a failed write).
"""

from __future__ import annotations

import asyncio
import contextlib
import os
from collections.abc import AsyncGenerator, AsyncIterator, Iterable
from uuid import UUID

import structlog
from starlette.responses import StreamingResponse
from starlette.types import Receive, Scope, Send

from flashsale.background import running
from flashsale.db import Database, listen_forever
from flashsale.errors import AppError
from flashsale.observability import metrics
from flashsale.settlement import service
from flashsale.settlement.schemas import SettlementJob

log = structlog.get_logger()

JOB_CHANGED_CHANNEL = "flashsale_job_changed"  # the trigger's channel (migration 0006)
HEARTBEAT_S = 15.0
TERMINAL = frozenset({"COMPLETED", "FAILED", "CANCELLED"})


class TooManyStreams(AppError):
    status_code = 503
    code = "TOO_MANY_STREAMS"
    message = (
        "Too many job event streams are open on this server (JOB_EVENT_STREAMS_MAX); "
        "retry later or poll GET /jobs/{job_id}"
    )


def listener_name() -> str:
    """This process's listener connection's application_name (in pg_stat_activity)."""
    return f"flashsale:{os.getpid()}:job-events-listener"


def sse_event(job: SettlementJob) -> bytes:
    """One event: `data:` and the same JSON as GET /jobs/{job_id} (one line: JSON has no raw
    newlines)."""
    return b"data: " + job.model_dump_json(by_alias=True).encode() + b"\n\n"


class Watch:
    """One stream's view of its job: the latest state it has not sent yet."""

    def __init__(self, job_id: UUID) -> None:
        self.job_id = job_id
        self.latest: SettlementJob | None = None
        self.changed = asyncio.Event()

    def offer(self, job: SettlementJob) -> None:
        if self.latest is None or job.updated_at > self.latest.updated_at:
            self.latest = job
            self.changed.set()


class JobEvents:
    """One per process: the listener, the watched jobs and their streams."""

    def __init__(self, database: Database, *, max_streams: int, heartbeat_s: float = HEARTBEAT_S):
        self._database = database
        self._max_streams = max_streams
        self._heartbeat_s = heartbeat_s
        self._watches: dict[UUID, set[Watch]] = {}
        self._streams = 0
        self._due: set[UUID] = set()  # watched jobs to read again
        self._wake = asyncio.Event()

    @property
    def streams(self) -> int:
        return self._streams

    def open(self, job_id: UUID) -> Watch:
        """Register a stream (TooManyStreams beyond the bound); `close` it when it ends."""
        if self._streams >= self._max_streams:
            raise TooManyStreams()
        watch = Watch(job_id)
        self._watches.setdefault(job_id, set()).add(watch)
        self._streams += 1
        metrics.JOB_EVENT_STREAMS.inc()
        return watch

    def close(self, watch: Watch) -> None:
        watches = self._watches.get(watch.job_id)
        if watches is None or watch not in watches:
            return
        watches.discard(watch)
        if not watches:
            del self._watches[watch.job_id]
        self._streams -= 1
        metrics.JOB_EVENT_STREAMS.dec()

    async def stream(self, watch: Watch, first: SettlementJob) -> AsyncGenerator[bytes]:
        """The stream's bytes: `first`, then every newer state, heartbeats in between; ends
        after a terminal status. Closes the watch however it ends."""
        try:
            watch.offer(first)
            sent: SettlementJob | None = None
            while sent is None or sent.status not in TERMINAL:
                try:
                    async with asyncio.timeout(self._heartbeat_s):
                        await watch.changed.wait()
                except TimeoutError:
                    yield b": heartbeat\n\n"
                    continue
                watch.changed.clear()
                sent = watch.latest
                assert sent is not None
                yield sse_event(sent)
        finally:
            self.close(watch)

    # --- Reading the rows ------------------------------------------------------------------------

    def _read_again(self, job_ids: Iterable[UUID]) -> None:
        self._due.update(job_ids)
        self._wake.set()

    async def _reader(self) -> None:
        """Read the due jobs (one query for all of them) and offer them to their streams."""
        while True:
            await self._wake.wait()
            self._wake.clear()
            due = [job_id for job_id in self._due if job_id in self._watches]
            self._due.clear()
            if not due:
                continue
            try:
                async with self._database.connection(operation="job_events") as conn:
                    jobs = await service.get_jobs(conn, job_ids=due)
            except Exception as exc:  # the periodic pass reads them again
                log.warning("settlement.job_events_read_failed", error=repr(exc))
                continue
            for job in jobs:
                for watch in self._watches.get(_job_uuid(job), ()):
                    watch.offer(job)

    async def _periodically(self) -> None:
        while True:
            await asyncio.sleep(self._heartbeat_s)
            self._read_again(self._watches)

    @contextlib.asynccontextmanager
    async def listening(self, url: str) -> AsyncIterator[None]:
        async with (
            running(self._reader()),
            running(self._periodically()),
            running(
                listen_forever(
                    url,
                    JOB_CHANGED_CHANNEL,
                    name=listener_name(),
                    on_payload=self._on_notification,
                    # What changed while nobody listened: read every watched job again.
                    on_listening=lambda: self._read_again(self._watches),
                    down_event="settlement.job_events_listener_down",
                )
            ),
        ):
            yield

    def _on_notification(self, payload: str) -> None:
        try:
            job_id = UUID(payload)
        except ValueError:
            return
        if job_id in self._watches:
            self._read_again((job_id,))


def _job_uuid(job: SettlementJob) -> UUID:
    return UUID(job.job_id.removeprefix("job_"))


class EventStreamResponse(StreamingResponse):
    """`text/event-stream` from an async iterator of bytes, ended when the client disconnects:
    the disconnect is watched on `receive`, so an idle stream of a client that went away ends at
    once, not at the next write that fails."""

    def __init__(self, events: AsyncGenerator[bytes]) -> None:
        super().__init__(
            events,
            headers={"Cache-Control": "no-store", "X-Accel-Buffering": "no"},
            media_type="text/event-stream",  # per instance: OpenAPI documents errors as JSON
        )
        self._events = events

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        async def until_disconnected() -> None:
            while (await receive())["type"] != "http.disconnect":
                pass

        async def stream() -> None:
            await send({"type": "http.response.start", "status": 200, "headers": self.raw_headers})
            async for chunk in self._events:
                await send({"type": "http.response.body", "body": chunk, "more_body": True})
            await send({"type": "http.response.body", "body": b"", "more_body": False})

        streaming = asyncio.ensure_future(stream())
        disconnect = asyncio.ensure_future(until_disconnected())
        try:
            await asyncio.wait({streaming, disconnect}, return_when=asyncio.FIRST_COMPLETED)
        finally:
            for task in (streaming, disconnect):
                task.cancel()
            await asyncio.gather(streaming, disconnect, return_exceptions=True)
            await self._events.aclose()  # the stream's `finally` closes its watch
        if not streaming.cancelled() and (error := streaming.exception()) is not None:
            raise error
