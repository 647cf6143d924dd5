"""A small HTTP/1.1 keep-alive load generator on raw asyncio streams.

Each simulated client holds one connection and sends its next request as soon as the previous
response arrives (closed loop), like a crowd of impatient buyers. It costs a few tens of
microseconds of CPU per request, so it leaves the two cores to the server and the database.
"""

from __future__ import annotations

import asyncio
import time
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field


@dataclass
class LoadResult:
    clients: int
    elapsed_s: float
    latencies_s: list[float] = field(default_factory=list)
    statuses: Counter[int] = field(default_factory=Counter)
    errors: int = 0

    @property
    def requests(self) -> int:
        return len(self.latencies_s)

    @property
    def rate(self) -> float:
        return self.requests / self.elapsed_s if self.elapsed_s else 0.0

    def percentile_ms(self, p: float) -> float:
        if not self.latencies_s:
            return float("nan")
        ordered = sorted(self.latencies_s)
        return ordered[min(len(ordered) - 1, int(p / 100 * len(ordered)))] * 1000

    def summary(self) -> str:
        codes = ", ".join(f"{code}: {n:,}" for code, n in sorted(self.statuses.items()))
        return (
            f"{self.rate:8,.0f} req/s  p50 {self.percentile_ms(50):7.1f} ms  "
            f"p99 {self.percentile_ms(99):7.1f} ms  ({self.requests:,} requests; {codes}"
            f"{f'; {self.errors} connection errors' if self.errors else ''})"
        )


def post_json(path: str, body: bytes, host: str = "127.0.0.1") -> bytes:
    return (
        f"POST {path} HTTP/1.1\r\nHost: {host}\r\nContent-Type: application/json\r\n"
        f"Content-Length: {len(body)}\r\n\r\n"
    ).encode() + body


def get(path: str, host: str = "127.0.0.1") -> bytes:
    return f"GET {path} HTTP/1.1\r\nHost: {host}\r\n\r\n".encode()


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


async def run_load(
    host: str,
    port: int,
    *,
    clients: int,
    total: int,
    make_request: Callable[[int], bytes],
) -> LoadResult:
    """Send `total` requests from `clients` concurrent connections; request i is make_request(i)."""
    requests = [make_request(i) for i in range(total)]
    result = LoadResult(clients=clients, elapsed_s=0.0)
    next_index = 0

    async def client(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        nonlocal next_index
        try:
            while next_index < total:
                request = requests[next_index]
                next_index += 1
                started = time.perf_counter()
                try:
                    status = await _exchange(reader, writer, request)
                except (OSError, asyncio.IncompleteReadError):
                    result.errors += 1
                    writer.close()
                    reader, writer = await asyncio.open_connection(host, port)
                    continue
                result.latencies_s.append(time.perf_counter() - started)
                result.statuses[status] += 1
        finally:
            writer.close()

    # Connect everyone first, so the clock measures requests, not connection set-up.
    async with asyncio.timeout(30):
        connections = await asyncio.gather(
            *(asyncio.open_connection(host, port) for _ in range(clients))
        )
    started = time.perf_counter()
    await asyncio.gather(*(client(reader, writer) for reader, writer in connections))
    result.elapsed_s = time.perf_counter() - started
    return result
