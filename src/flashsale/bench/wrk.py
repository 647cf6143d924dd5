"""Drive load with wrk (`wrk -t1 -c<N> -d<S>s --latency -s script.lua URL`) and parse its result.

The Lua script makes the request static: `wrk.method`, `wrk.body` and the Content-Type header are
set once when the script loads and there is no `request()` or `response()` callback, so wrk
formats the request once and spends no Lua time per request. Its `done()` callback prints one
line, `FLASHSALE_WRK {json}`, that `parse()` reads into a `LoadResult`.

What wrk counts: `requests` are complete responses; `errors.status` the responses with a status
above 399; `errors.timeout` the responses slower than `--timeout` (still in `requests`, but not
in the latency histogram, hence a generous timeout); connect/read/write are socket errors. When
the duration is over wrk stops at once: requests in flight then are never counted, although the
server may still complete them (at most one per connection).
"""

from __future__ import annotations

import json
import os
import secrets
import shutil
import subprocess
import tempfile

from flashsale.bench.loadgen import PERCENTILES, LoadResult, SocketErrors

MARKER = "FLASHSALE_WRK "
TIMEOUT_S = 30


def binary() -> str | None:
    """wrk's path, or None when it is not installed (Debian package: wrk)."""
    return shutil.which("wrk")


def lua_string(text: str) -> str:
    """`text` as a Lua 5.1 string literal (any byte outside printable ASCII as a \\ddd escape)."""
    out = []
    for byte in text.encode():
        char = chr(byte)
        if 32 <= byte < 127 and char not in '\\"':
            out.append(char)
        else:
            out.append(f"\\{byte:03d}")
    return '"' + "".join(out) + '"'


_DONE = """
function done(summary, latency, requests)
   local e = summary.errors
   io.write(string.format(
      "\\n%s{\\"requests\\": %d, \\"duration_us\\": %d, \\"bytes\\": %d, "
      .. "\\"errors\\": {\\"connect\\": %d, \\"read\\": %d, \\"write\\": %d, "
      .. "\\"status\\": %d, \\"timeout\\": %d}, "
      .. "\\"latency_us\\": {%s, \\"max\\": %d, \\"mean\\": %.1f}}\\n",
      marker, summary.requests, summary.duration, summary.bytes,
      e.connect, e.read, e.write, e.status, e.timeout,
      percentiles(latency), latency.max, latency.mean))
end
"""


# In a body, replaced in each request by a number no other request of any run has: see `script`.
COUNTER = "@COUNTER@"


def script(method: str, body: str | None = None) -> str:
    """The Lua script: a static request, and `done()` printing the result as one JSON line.

    A body containing `COUNTER` gets a `request()` callback instead, which puts there this
    script's random prefix and the request's number (e.g. a new buyer id per order): a little
    Lua per request, so measure the ceiling with the same kind of script."""
    lines = [f"wrk.method = {lua_string(method)}"]
    if body is not None:
        lines.append(f"wrk.body = {lua_string(body)}")
        lines.append('wrk.headers["Content-Type"] = "application/json"')
    if body is not None and COUNTER in body:
        head, tail = body.split(COUNTER, 1)
        head += f"{secrets.token_hex(4)}-"
        lines.append(
            f"local head, tail, n = {lua_string(head)}, {lua_string(tail)}, 0\n"
            "function request()\n   n = n + 1\n"
            "   return wrk.format(nil, nil, nil, head .. n .. tail)\nend"
        )
    lines.append(f"local marker = {lua_string(MARKER)}")
    percentiles = ", ".join(
        f'string.format("\\"p{p:g}\\": %d", latency:percentile({p:g}))' for p in PERCENTILES
    )
    lines.append(
        f'local function percentiles(latency)\n   return table.concat({{{percentiles}}}, ", ")\nend'
    )
    return "\n".join(lines) + "\n" + _DONE


def parse(output: str, connections: int) -> LoadResult:
    """The `LoadResult` in wrk's output (the line our `done()` printed)."""
    for line in output.splitlines():
        if line.startswith(MARKER):
            data = json.loads(line[len(MARKER) :])
            break
    else:
        raise RuntimeError(f"no {MARKER.strip()} line in wrk's output:\n{output}")
    errors = data["errors"]
    latency = data["latency_us"]
    return LoadResult(
        generator="wrk",
        connections=connections,
        duration_s=data["duration_us"] / 1e6,
        requests=data["requests"],
        non_2xx=errors["status"],
        socket_errors=SocketErrors(
            connect=errors["connect"],
            read=errors["read"],
            write=errors["write"],
            timeout=errors["timeout"],
        ),
        latency_us={p: float(latency[f"p{p:g}"]) for p in PERCENTILES},
        max_latency_us=float(latency["max"]),
    )


def run(
    url: str,
    *,
    connections: int,
    seconds: float,
    method: str = "GET",
    body: str | None = None,
    executable: str | None = None,
) -> LoadResult:
    """One thread of wrk, `connections` connections, `seconds` long, sending one static request."""
    wrk = executable or binary()
    if wrk is None:
        raise RuntimeError("wrk is not installed (Debian package: wrk)")
    with tempfile.NamedTemporaryFile(
        "w", prefix="flashsale-wrk-", suffix=".lua", delete=False
    ) as f:
        f.write(script(method, body))
    try:
        completed = subprocess.run(  # noqa: S603 - our own binary and arguments
            [wrk, "-t1", f"-c{connections}", f"-d{max(1, round(seconds))}s", "--latency",
             f"--timeout={TIMEOUT_S}s", "-s", f.name, url],
            capture_output=True, text=True, check=False, timeout=seconds + TIMEOUT_S + 30,
        )  # fmt: skip
    finally:
        os.unlink(f.name)
    if completed.returncode != 0:
        raise RuntimeError(
            f"wrk exited with {completed.returncode}:\n{completed.stdout}\n{completed.stderr}"
        )
    return parse(completed.stdout, connections)
