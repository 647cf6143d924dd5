"""What a load run measured (`LoadResult`, the same whichever generator drove it), and the
fallback load generator: HTTP/1.1 keep-alive clients on raw asyncio streams, in this process.

The bench drives load with wrk (`bench/wrk.py`) when it is installed. The Python generator here
tops out near 4k requests/s on two cores, below what the server can answer, so figures measured
with it describe the generator as much as the server: it is only the fallback.

Each simulated client holds one connection and sends its next request as soon as the previous
response arrives (closed loop), like a crowd of impatient buyers, until the duration is over;
then it waits for the answer it is waiting for (none is abandoned, unlike with wrk).
"""

from __future__ import annotations

import asyncio
import time
from collections import Counter
from dataclasses import dataclass, field

# The latency percentiles every result carries (wrk reports exactly these).
PERCENTILES = (50.0, 90.0, 99.0, 99.9)


@dataclass(frozen=True)
class SocketErrors:
    connect: int = 0
    read: int = 0
    write: int = 0
    timeout: int = 0  # responses slower than the generator's timeout (still counted as requests)

    @property
    def total(self) -> int:
        return self.connect + self.read + self.write + self.timeout


@dataclass(frozen=True)
class LoadResult:
    generator: str  # "wrk" or "python"
    connections: int
    duration_s: float
    requests: int  # complete responses
    non_2xx: int  # responses with a status >= 400 (what wrk counts; the service sends no 3xx)
    socket_errors: SocketErrors
    latency_us: dict[float, float]  # percentile -> microseconds, for PERCENTILES
    max_latency_us: float
    statuses: Counter[int] = field(default_factory=Counter)  # per status (python generator only)

    @property
    def ok(self) -> int:
        """Successful (2xx) responses."""
        return self.requests - self.non_2xx

    @property
    def rate(self) -> float:
        return self.requests / self.duration_s if self.duration_s else 0.0

    def percentile_ms(self, p: float) -> float:
        if p not in self.latency_us:
            raise ValueError(f"percentile {p} not measured (only {PERCENTILES})")
        return self.latency_us[p] / 1000

    def summary(self) -> str:
        codes = (
            ", ".join(f"{code}: {n:,}" for code, n in sorted(self.statuses.items()))
            if self.statuses
            else f"2xx: {self.ok:,}, non-2xx: {self.non_2xx:,}"
        )
        errors = self.socket_errors
        socket = (
            f"; socket errors: connect {errors.connect}, read {errors.read}, "
            f"write {errors.write}, timeout {errors.timeout}"
            if errors.total
            else ""
        )
        return (
            f"{self.rate:8,.0f} req/s  p50 {self.percentile_ms(50):7.1f} ms  "
            f"p99 {self.percentile_ms(99):7.1f} ms  p99.9 {self.percentile_ms(99.9):7.1f} ms  "
            f"max {self.max_latency_us / 1000:7.1f} ms  ({self.requests:,} requests in "
            f"{self.duration_s:.1f} s; {codes}{socket})"
        )


def request_bytes(
    method: str, path: str, body: bytes | None = None, host: str = "127.0.0.1"
) -> bytes:
    head = f"{method} {path} HTTP/1.1\r\nHost: {host}\r\n"
    if body is None:
        return f"{head}\r\n".encode()
    return (
        f"{head}Content-Type: application/json\r\nContent-Length: {len(body)}\r\n\r\n".encode()
        + body
    )


async def _exchange(
    reader: asyncio.StreamReader, writer: asyncio.StreamWriter, request: bytes
) -> int:
    writer.write(request)
    head = await reader.readuntil(b"\r\n\r\n")
    status = int(head[9:12])
    length = 0
    for line in head.split(b"\r\n")[1:]:
        if line[:15].lower() == b"content-length:":
            length = int(line[15:])
            break
    if length:
        await reader.readexactly(length)
    return status


def _percentile(ordered: list[float], p: float) -> float:
    if not ordered:
        return float("nan")
    return ordered[min(len(ordered) - 1, int(p / 100 * len(ordered)))]


async def run_load(
    host: str, port: int, *, connections: int, seconds: float, request: bytes
) -> LoadResult:
    """`connections` closed-loop clients send `request` for `seconds`."""
    latencies: list[float] = []
    statuses: Counter[int] = Counter()
    read_errors = 0
    connect_errors = 0

    async def client(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        nonlocal read_errors, connect_errors
        try:
            while time.perf_counter() < deadline:
                started = time.perf_counter()
                try:
                    status = await _exchange(reader, writer, request)
                except (OSError, asyncio.IncompleteReadError, asyncio.LimitOverrunError):
                    read_errors += 1
                    writer.close()
                    try:
                        reader, writer = await asyncio.open_connection(host, port)
                    except OSError:
                        connect_errors += 1
                        return
                    continue
                latencies.append(time.perf_counter() - started)
                statuses[status] += 1
        finally:
            writer.close()

    # Connect everyone first, so the clock measures requests, not connection set-up.
    async with asyncio.timeout(30):
        opened = await asyncio.gather(
            *(asyncio.open_connection(host, port) for _ in range(connections))
        )
    started = time.perf_counter()
    deadline = started + seconds
    await asyncio.gather(*(client(reader, writer) for reader, writer in opened))
    elapsed = time.perf_counter() - started
    ordered = sorted(latencies)
    return LoadResult(
        generator="python",
        connections=connections,
        duration_s=elapsed,
        requests=len(latencies),
        non_2xx=sum(n for code, n in statuses.items() if code >= 400),
        socket_errors=SocketErrors(connect=connect_errors, read=read_errors),
        latency_us={p: _percentile(ordered, p) * 1e6 for p in PERCENTILES},
        max_latency_us=(ordered[-1] * 1e6) if ordered else float("nan"),
        statuses=statuses,
    )
