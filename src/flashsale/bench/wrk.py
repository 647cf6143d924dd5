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

`token_script()`/`run_with_tokens()` send a different `Authorization: Bearer <token>` per request,
taken in order from a file of tokens (one a line) that each wrk thread reads once in `init()`;
each token is used `per_token` times in a row, then the next; past the last the file starts over
(`TokenRun.cycled` tells). The request is formatted once around the token: per request, the Lua
is a table lookup, a counter and one concatenation.
"""

from __future__ import annotations

import json
import os
import secrets
import shutil
import subprocess
import tempfile
from dataclasses import dataclass
from pathlib import Path

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
   if report_tokens then report_tokens() end
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
    return "\n".join(lines) + "\n" + _result_lua()


def _result_lua() -> str:
    """`done()` and what it needs: the result as one `MARKER` JSON line."""
    percentiles = ", ".join(
        f'string.format("\\"p{p:g}\\": %d", latency:percentile({p:g}))' for p in PERCENTILES
    )
    return (
        f"local marker = {lua_string(MARKER)}\n"
        f'local function percentiles(latency)\n   return table.concat({{{percentiles}}}, ", ")\nend'
        f"\n{_DONE}"
    )


TOKENS_MARKER = "FLASHSALE_WRK_TOKENS "
_PLACEHOLDER = "@TOKEN@"  # where the token goes in the request formatted once


def token_script(
    method: str, body: str | None, tokens_file: str | Path, *, per_token: int = 1,
    header: str = "Authorization", prefix: str = "Bearer ",
) -> str:  # fmt: skip
    """The Lua script for a request with a different `<header>: <prefix><token>` each, the body
    static: the tokens come from `tokens_file` (one a line, read once per wrk thread in
    `init()`), each used `per_token` times in a row, cycling past the last. `done()` also prints
    `TOKENS_MARKER {"sent": n}`: the requests made, so the caller can tell whether the file
    lasted. As with `script()`'s numbered bodies, measure the ceiling with the same script."""
    if per_token < 1:
        raise ValueError("per_token must be at least 1")
    if body is not None and COUNTER in body:
        raise ValueError("a token script's body is static (no COUNTER)")
    lines = [f"wrk.method = {lua_string(method)}"]
    if body is not None:
        lines.append(f"wrk.body = {lua_string(body)}")
        lines.append('wrk.headers["Content-Type"] = "application/json"')
    advance = (
        "   index = index + 1\n"
        "   if index > count then index = 1 end\n"
    )  # fmt: skip
    if per_token > 1:
        advance = (
            "   used = used + 1\n"
            "   if used == per_token then\n"
            "      used = 0\n"
            "      index = index + 1\n"
            "      if index > count then index = 1 end\n"
            "   end\n"
        )  # fmt: skip
    lines.append(
        f"local tokens_file, per_token = {lua_string(str(tokens_file))}, {per_token}\n"
        f"local name, prefix, placeholder = {lua_string(header)}, {lua_string(prefix)}, "
        f"{lua_string(_PLACEHOLDER)}\n"
        "local tokens, count, index, used, head, tail = {}, 0, 1, 0, nil, nil\n"
        "sent = 0  -- global: done() reads it from the thread\n"
        "function init(args)\n"
        "   for line in io.lines(tokens_file) do\n"
        '      if line ~= "" then\n'
        "         count = count + 1\n"
        "         tokens[count] = line\n"
        "      end\n"
        "   end\n"
        '   if count == 0 then error("no tokens in " .. tokens_file) end\n'
        "   wrk.headers[name] = prefix .. placeholder\n"
        "   local formatted = wrk.format()\n"
        "   wrk.headers[name] = nil\n"
        "   local at = string.find(formatted, placeholder, 1, true)\n"
        "   head = string.sub(formatted, 1, at - 1)\n"
        "   tail = string.sub(formatted, at + #placeholder)\n"
        "end\n"
        "function request()\n"
        "   local token = tokens[index]\n"
        "   sent = sent + 1\n"
        f"{advance}"
        "   return head .. token .. tail\n"
        "end\n"
        "local threads = {}\n"
        "function setup(thread) threads[#threads + 1] = thread end\n"
        "function report_tokens()\n"
        "   local total = 0\n"
        '   for _, thread in ipairs(threads) do total = total + thread:get("sent") end\n'
        f"   io.write(string.format({lua_string(chr(10) + TOKENS_MARKER)} .. "
        "'{\"sent\": %d}', total))\n"
        "end"
    )
    return "\n".join(lines) + "\n" + _result_lua()


@dataclass(frozen=True)
class TokenRun:
    """A token script's run: wrk's result, and how the tokens file was used."""

    result: LoadResult
    sent: int  # requests the script made (completed, in flight at the end, retried)
    tokens: int  # tokens in the file
    per_token: int

    @property
    def tokens_used(self) -> int:
        """Tokens (from the file's start) that went into a request."""
        return min(self.tokens, -(-self.sent // self.per_token))

    @property
    def cycled(self) -> bool:
        """The file ran out and started over: some tokens were used more than `per_token` times."""
        return self.sent > self.tokens * self.per_token


def parse_tokens(output: str) -> int:
    """The requests a token script made (the `TOKENS_MARKER` line its `done()` printed)."""
    for line in output.splitlines():
        if line.startswith(TOKENS_MARKER):
            return int(json.loads(line[len(TOKENS_MARKER) :])["sent"])
    raise RuntimeError(f"no {TOKENS_MARKER.strip()} line in wrk's output:\n{output}")


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
    output = _execute(script(method, body), url, connections, seconds, executable)
    return parse(output, connections)


def run_with_tokens(
    url: str, tokens_file: str | Path, *, connections: int, seconds: float, method: str = "POST",
    body: str | None = None, per_token: int = 1, executable: str | None = None,
) -> TokenRun:  # fmt: skip
    """`run()` with `token_script()`: a bearer token per request from `tokens_file`, each used
    `per_token` times in a row."""
    with open(tokens_file, "rb") as f:
        tokens = sum(1 for line in f if line.strip())
    text = token_script(method, body, tokens_file, per_token=per_token)
    output = _execute(text, url, connections, seconds, executable)
    return TokenRun(parse(output, connections), parse_tokens(output), tokens, per_token)


def _execute(lua: str, url: str, connections: int, seconds: float, executable: str | None) -> str:
    """wrk's output for the script `lua` (one thread); raises if wrk failed."""
    wrk = executable or binary()
    if wrk is None:
        raise RuntimeError("wrk is not installed (Debian package: wrk)")
    with tempfile.NamedTemporaryFile(
        "w", prefix="flashsale-wrk-", suffix=".lua", delete=False
    ) as f:
        f.write(lua)
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
    return completed.stdout
