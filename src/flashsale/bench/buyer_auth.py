"""`flashsale bench orders --buyer-auth jwt`: what verified buyers (BUYER_AUTH=jwt) cost
`POST /orders`, beside the same orders without auth, on the same box in the same invocation.

Two `flashsale serve` on the same database, both in the default configuration (WEB_CONCURRENCY
servers each, 2 by default): one with BUYER_AUTH=none, one with BUYER_AUTH=jwt whose key file
(a JWKS in a temporary directory) holds one development key per algorithm measured. Only one
of them is loaded at a time. Checked first: the jwt server refuses an order without a token or
with a junk one (401), refuses a body naming another buyer, and stores a token's order under
the token's `sub`. Then, in each of `rounds` rounds (alternating, because this machine is
noisy; the targets are judged on the medians), each run on a fresh hot product (huge stock)
after a warm-up, at `connections` connections, load from wrk (one thread):
  (a) no auth: a new buyer per order (the body's buyer_id numbered by wrk);
  per algorithm (ES256, RS256, EdDSA):
  (b) a distinct token per order (no token repeats: every order pays for a verification, the
      worst case); the body is `{"product_id": P, "quantity": 1}`, the buyer is the token's sub;
  (c) each token 3 times in a row (a buyer sending 3 orders: the server remembers a verified
      token, so the 2nd and 3rd cost a lookup).
The tokens are minted before the runs that use them (a process pool when there are many: RS256
signing is ~0.5 ms a token), enough for the best rate so far x the duration x 1.5, written to a
file that wrk's Lua reads once (`wrk.run_with_tokens`). The HTTP ceiling (an unknown route) is
measured with the same two kinds of script, since a per-request header costs wrk some Lua.

Each run also shows how the load's connections were spread over the server's workers (uvicorn's
workers share one listening socket: the kernel hands each connection to whichever accepts
first, so the split varies from run to run, and the rate with it) and the CPU time the workers
used per order stored, which neither that split nor other load on the machine changes much: the
verification's cost per order is its difference from (a). Checks of every run: no
non-2xx, orders stored == 2xx (+ at most one in flight per connection when wrk stopped), and
for (b)/(c) every stored order's buyer_id is the sub of a token the run sent, each sub with at
most its token's uses (one order per sub in (b)); a few are shown.
`profile`: after the rounds, one more run without auth and one distinct-token run per algorithm
(not in the medians) with py-spy recording every server worker: top frames, and the share of
samples under the verification (flashsale/access/buyers.py), PyJWT, its signature check (where
cryptography's native code runs), base64url decoding and claims. Also measured in this process,
without HTTP: the server's own `BuyerTokens.buyer_id()` per algorithm, for a new token and for a
remembered one.
Targets (printed beside the figures; a miss is reported, never an exit status): (b) >= 0.8x (a),
(c) >= 0.9x (a), medians of the rounds' ratios.
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import json
import logging
import math
import multiprocessing
import os
import re
import secrets
import shutil
import statistics
import subprocess
import tempfile
import threading
import time
from collections.abc import Iterator, Sequence
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import asyncpg
import httpx

from flashsale.access.devtokens import DEV_AUDIENCE, DEV_ISSUER, DevAlgorithm, DevSigner, jwks
from flashsale.bench import wrk
from flashsale.bench.harness import LiveServer, running_server
from flashsale.bench.loadgen import LoadResult
from flashsale.bench.orders import (
    CEILING_PATH,
    HUGE_STOCK,
    WARMUP_S,
    BenchDatabase,
    Load,
    _where,
    print_verdict,
)

ALGORITHMS: tuple[DevAlgorithm, ...] = ("ES256", "RS256", "EdDSA")
SERVER_ALGORITHMS = "RS256,ES256,EdDSA"  # BUYER_JWT_ALGORITHMS (its default)
ROUNDS = 3
ORDERS_PER_BUYER = 3  # run (c)
TOKEN_MARGIN = 1.5  # tokens minted: the unauthenticated rate x the duration x this
TOKEN_TTL_S = 6 * 3600  # valid for the whole bench, however long
# Minting that should take less than this (at about these µs a token) is done in this process:
# the pool's processes take seconds to start (each imports this module).
IN_PROCESS_MINT_S = 3.0
MINT_US = {"RS256": 600.0, "ES256": 120.0, "EdDSA": 120.0}
MINT_CHUNK = 2000
CEILING_TOKENS = 1000  # the ceiling's tokens are never verified: a small file, cycled
MICRO_TOKENS = 500  # tokens verified in this process per algorithm
PROFILE_RATE = 200  # py-spy samples per second
TOP_FRAMES = 8

# Targets (printed beside the figures; a miss is reported, never an exit status).
TARGET_DISTINCT = 0.8  # (b) / (a), median of the rounds
TARGET_REPEATS = 0.9  # (c) / (a), median of the rounds


@dataclass(frozen=True)
class Options:
    connections: int = 64
    seconds: float = 10
    rounds: int = ROUNDS
    algorithms: tuple[DevAlgorithm, ...] = ALGORITHMS
    workers: int = 2  # WEB_CONCURRENCY of each server
    profile: bool = False
    warmup_s: float = WARMUP_S


def parse_algorithms(value: str) -> tuple[DevAlgorithm, ...]:
    """`ES256,RS256` as algorithms to measure; ValueError for an unknown or no name."""
    chosen: list[DevAlgorithm] = []
    for name in (part.strip() for part in value.split(",")):
        algorithm = next((known for known in ALGORITHMS if known == name), None)
        if algorithm is None and name:
            raise ValueError(f"{name!r} is not one of {', '.join(ALGORITHMS)}")
        if algorithm is not None and algorithm not in chosen:
            chosen.append(algorithm)
    if not chosen:
        raise ValueError(f"no algorithm given: choose among {', '.join(ALGORITHMS)}")
    return tuple(chosen)


# --- tokens -------------------------------------------------------------------------------------

_SIGNERS: dict[bytes, DevSigner] = {}  # in a minting process: the signer of each PEM


def _mint(pem: bytes, prefix: str, start: int, count: int, ttl_s: float) -> list[str]:
    """Tokens for subs `prefix + i`, i in [start, start + count) (runs in the process pool)."""
    signer = _SIGNERS.get(pem)
    if signer is None:
        signer = _SIGNERS[pem] = DevSigner.from_pem(pem)
    now = time.time()
    return [signer.token(f"{prefix}{i}", ttl_s=ttl_s, now=now) for i in range(start, start + count)]


@dataclass(frozen=True)
class TokenSlice:
    """Tokens `start` .. `start + count - 1` of a pool, written one a line to `path`."""

    pool: TokenPool
    start: int
    count: int
    path: Path

    def sub(self, offset: int) -> str:
        return self.pool.sub(self.start + offset)


class TokenPool:
    """One algorithm's tokens, each for its own buyer (`sub` = prefix + its index), minted ahead
    of the runs and handed out once each."""

    def __init__(self, signer: DevSigner, prefix: str, directory: Path, minter: Minter) -> None:
        self.signer = signer
        self.algorithm = signer.algorithm
        self.prefix = prefix
        self._pem = signer.private_pem()
        self._directory = directory
        self._minter = minter
        self._tokens: list[str] = []
        self._taken = 0
        self._files = 0

    def sub(self, index: int) -> str:
        return f"{self.prefix}{index}"

    def index_of(self, buyer_id: str) -> int | None:
        """The index of the token whose sub `buyer_id` is; None when no token of ours has it."""
        rest = buyer_id.removeprefix(self.prefix)
        if rest == buyer_id or not rest.isdigit():
            return None
        return int(rest)

    @property
    def available(self) -> int:
        return len(self._tokens) - self._taken

    def ensure(self, count: int) -> None:
        """Mint now, if needed, so that `count` tokens are available (prints what it did)."""
        missing = count - self.available
        if missing <= 0:
            return
        started = time.perf_counter()
        in_process = missing * MINT_US[self.algorithm] / 1e6 < IN_PROCESS_MINT_S
        tokens = self._minter.mint(
            self._pem, self.prefix, len(self._tokens), missing, in_process=in_process
        )
        elapsed = time.perf_counter() - started
        self._tokens += tokens
        print(
            f"    minted {missing:,} {self.algorithm} tokens in {elapsed:.1f} s "
            f"({elapsed / missing * 1e6:,.0f} us each, {self._minter.describe(in_process)})"
        )

    def take(self, count: int) -> TokenSlice:
        """The next `count` unused tokens, in a file."""
        self.ensure(count)
        start, self._taken = self._taken, self._taken + count
        self._files += 1
        path = self._directory / f"tokens-{self.algorithm}-{self._files}.txt"
        path.write_text("\n".join(self._tokens[start : start + count]) + "\n")
        return TokenSlice(self, start, count, path)

    def take_strings(self, count: int) -> list[str]:
        self.ensure(count)
        start, self._taken = self._taken, self._taken + count
        return self._tokens[start : start + count]


class Minter:
    """Signs tokens: in this process, or in a pool of processes (one per core) for many."""

    def __init__(self) -> None:
        self._executor: ProcessPoolExecutor | None = None
        self.processes = os.cpu_count() or 1

    def describe(self, in_process: bool) -> str:
        if in_process or self.processes == 1:
            return "in this process"
        return f"{self.processes} processes"

    def mint(
        self, pem: bytes, prefix: str, start: int, count: int, *, in_process: bool
    ) -> list[str]:
        if in_process or self.processes == 1:
            return _mint(pem, prefix, start, count, TOKEN_TTL_S)
        if self._executor is None:
            self._executor = ProcessPoolExecutor(
                self.processes, mp_context=multiprocessing.get_context("spawn")
            )
        starts = range(start, start + count, MINT_CHUNK)
        sizes = [min(MINT_CHUNK, start + count - s) for s in starts]
        tokens: list[str] = []
        chunks = self._executor.map(
            _mint, [pem] * len(sizes), [prefix] * len(sizes), starts, sizes,
            [TOKEN_TTL_S] * len(sizes),
        )  # fmt: skip
        for chunk in chunks:
            tokens += chunk
        return tokens

    def close(self) -> None:
        if self._executor is not None:
            self._executor.shutdown()


def _tokens_needed(rate: float, seconds: float, connections: int, per_token: int) -> int:
    """Tokens for a run of `seconds` at up to `rate` x TOKEN_MARGIN requests/s."""
    requests = math.ceil(rate * seconds * TOKEN_MARGIN) + connections
    return -(-requests // per_token)


# --- verification alone, in this process --------------------------------------------------------


def _verification_alone(
    runner: asyncio.Runner, key_file: Path, pools: dict[DevAlgorithm, TokenPool]
) -> dict[DevAlgorithm, tuple[float, float]]:
    """µs per `BuyerTokens.buyer_id()` (the server's own code) for a new token and for a
    remembered one, per algorithm."""
    from flashsale.access.buyers import BuyerKeys, BuyerTokens
    from flashsale.config import Settings

    settings = Settings.model_construct(
        buyer_auth="jwt", buyer_jwt_public_key_file=key_file, buyer_jwt_issuer=DEV_ISSUER,
        buyer_jwt_audience=DEV_AUDIENCE, buyer_jwt_algorithms=tuple(SERVER_ALGORITHMS.split(",")),
    )  # fmt: skip

    async def measure(tokens: list[str]) -> tuple[float, float]:
        keys = BuyerKeys(settings)
        await keys.refresh()
        verifier = BuyerTokens(settings, keys)
        await verifier.buyer_id(tokens[0])  # the key's verifier object, made once
        timings = []
        for _ in range(2):  # new tokens, then the same ones remembered
            started = time.perf_counter()
            for token in tokens[1:]:
                await verifier.buyer_id(token)
            timings.append((time.perf_counter() - started) / (len(tokens) - 1) * 1e6)
        return timings[0], timings[1]

    return {
        algorithm: runner.run(measure(pool.take_strings(MICRO_TOKENS)))
        for algorithm, pool in pools.items()
    }


# --- profiles -----------------------------------------------------------------------------------


def worker_pids(server_pid: int) -> list[int]:
    """The processes of a `flashsale serve` that serve HTTP: uvicorn's workers (multiprocessing
    children), or the process itself when it has none."""
    found, pending = [], [server_pid]
    while pending:
        pid = pending.pop()
        with contextlib.suppress(OSError):
            for task in Path(f"/proc/{pid}/task").iterdir():
                children = (task / "children").read_text().split()
                pending += [int(child) for child in children]
        if pid != server_pid:
            with contextlib.suppress(OSError):
                if b"spawn_main" in Path(f"/proc/{pid}/cmdline").read_bytes():
                    found.append(pid)
    return sorted(found) or [server_pid]  # WEB_CONCURRENCY=1: uvicorn serves in the process


@contextlib.contextmanager
def _py_spy(pid: int | None) -> Iterator[Path | None]:
    """py-spy recording process `pid` for the block (raw collapsed stacks); None: nothing."""
    executable = shutil.which("py-spy")
    if pid is None or executable is None:
        yield None
        return
    descriptor, name = tempfile.mkstemp(prefix="flashsale-buyer-auth-", suffix=".txt")
    os.close(descriptor)
    output = Path(name)
    recorder = subprocess.Popen(  # noqa: S603 - py-spy from PyPI, our arguments
        [executable, "record", "--pid", str(pid), "--format", "raw", "--rate",
         str(PROFILE_RATE), "--output", str(output), "--nonblocking"],
        stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
    )  # fmt: skip
    try:
        yield output
    finally:
        recorder.send_signal(2)  # SIGINT: py-spy writes what it recorded and exits
        try:
            _, errors = recorder.communicate(timeout=60)
        except subprocess.TimeoutExpired:
            recorder.kill()
            _, errors = recorder.communicate()
        if not output.stat().st_size and errors:
            print(f"      (py-spy: {errors.decode(errors='replace').strip()[-300:]})")


def established(pid: int, port: int) -> int:
    """TCP connections to local `port` that process `pid` holds, established now (Linux)."""
    inodes = set()
    with contextlib.suppress(OSError):
        for fd in Path(f"/proc/{pid}/fd").iterdir():
            with contextlib.suppress(OSError):
                target = os.readlink(fd)
                if target.startswith("socket:["):
                    inodes.add(target[8:-1])
    count = 0
    for table in ("tcp", "tcp6"):
        with contextlib.suppress(OSError):
            for line in Path(f"/proc/{pid}/net/{table}").read_text().splitlines()[1:]:
                fields = line.split()
                local_port = int(fields[1].rsplit(":", 1)[1], 16)
                count += local_port == port and fields[3] == "01" and fields[9] in inodes
    return count


def cpu_seconds(pid: int) -> float:
    """CPU time (user + system) process `pid` has used so far (Linux); 0 when it is gone."""
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rpartition(")")[2].split()
    except OSError:
        return 0.0
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")  # utime, stime


@dataclass
class Observation:
    """What was seen of a server's workers during a run."""

    workers: list[int]
    connections: list[int] | None = None  # per worker, counted once during the run
    cpu_s: list[float] = field(default_factory=list)  # per worker, used during the run
    recordings: dict[int, Path] = field(default_factory=dict)  # py-spy's, per worker


@contextlib.contextmanager
def _observe(server: LiveServer, *, seconds: float, profile: bool) -> Iterator[Observation]:
    """For the block (a run): which worker holds how many of the load's connections (counted
    `min(1 s, half the run)` in), the CPU time each used, and with `profile` py-spy recording
    every worker."""
    observation = Observation(worker_pids(server.process.pid))
    cpu_before = [cpu_seconds(pid) for pid in observation.workers]
    stop = threading.Event()

    def count() -> None:
        if not stop.wait(min(1.0, seconds / 2)):
            observation.connections = [established(pid, server.port) for pid in observation.workers]

    counter = threading.Thread(target=count, name="connections-per-worker", daemon=True)
    with contextlib.ExitStack() as stack:
        if profile and shutil.which("py-spy") is None:
            print("    (no profile: py-spy is not installed; it is a dev dependency: uv sync)")
        elif profile:
            for pid in observation.workers:
                recording = stack.enter_context(_py_spy(pid))
                if recording is not None:
                    observation.recordings[pid] = recording
        counter.start()
        try:
            yield observation
        finally:
            stop.set()
            counter.join()
            observation.cpu_s = [
                cpu_seconds(pid) - before
                for pid, before in zip(observation.workers, cpu_before, strict=True)
            ]


_FRAME = re.compile(r"^(?P<function>.*) \((?P<file>[^()]*?)(?::\d+)?\)$")
# Where a profile's samples were, inclusive, matched on `function (file)`. py-spy sees Python
# frames only: the signature arithmetic (cryptography's Rust and OpenSSL) is counted in the
# PyJWT frame that calls it, `<Algorithm>.verify (jwt/algorithms.py)`.
CATEGORIES = {  # short name: (what, pattern)
    "verification": (
        "the verification (flashsale/access/buyers.py)",
        re.compile(r"\(flashsale/access/buyers\.py\)$"),
    ),
    "PyJWT": ("PyJWT (jwt/)", re.compile(r"\(jwt/")),
    "signature": (
        "  the signature check (<Algorithm>.verify: cryptography's native code)",
        re.compile(r"Algorithm\.verify \(jwt/algorithms\.py\)$|\(cryptography/"),
    ),
    "base64url": (
        "  base64url decoding (PyJWS._decode_base64url_segment)",
        re.compile(r"_decode_base64url_segment"),
    ),
    "claims": (
        "  the claims' checks (PyJWT._validate_claims)",
        re.compile(r"_validate_claims \(jwt/"),
    ),
    "unverified header": (
        "  jwt.get_unverified_header (the token's first decode)",
        re.compile(r"get_unverified_header \(jwt/"),
    ),
}
_AUTH_FILES = re.compile(r"(^|[/(])(jwt/|cryptography/|flashsale/access/)")
_PREFIX = re.compile(r"^.*/(site-packages|src|lib/python3\.\d+)/")


def _function(frame: str) -> tuple[str, str]:
    """(`function (file)` without the line number, the file) of a py-spy frame."""
    match = _FRAME.match(frame)
    if match is None:
        return frame, ""
    file = _PREFIX.sub("", match["file"])
    return f"{match['function']} ({file})", file


@dataclass
class Profile:
    samples: int = 0
    leaves: collections.Counter[str] = field(default_factory=collections.Counter)
    inclusive: collections.Counter[str] = field(default_factory=collections.Counter)
    categories: collections.Counter[str] = field(default_factory=collections.Counter)

    @classmethod
    def parse(cls, collapsed: str) -> Profile:
        """From py-spy's raw output (`frame;frame;... count` a line, the leaf last)."""
        profile = cls()
        for line in collapsed.splitlines():
            stack, _, count = line.rpartition(" ")
            if not stack or not count.isdigit():
                continue
            samples = int(count)
            frames = [_function(frame) for frame in stack.split(";")]
            profile.samples += samples
            profile.leaves[frames[-1][0]] += samples
            for function in {function for function, _ in frames}:
                profile.inclusive[function] += samples
            for category, (_, pattern) in CATEGORIES.items():
                if any(pattern.search(function) for function, _ in frames):
                    profile.categories[category] += samples
        return profile

    def share(self, samples: int) -> float:
        return samples / self.samples if self.samples else 0.0

    def auth_functions(self, count: int = TOP_FRAMES) -> list[tuple[str, float]]:
        """The verification's functions (buyers.py, PyJWT, cryptography) by inclusive share."""
        functions = [
            (function, self.share(samples))
            for function, samples in self.inclusive.most_common()
            if _AUTH_FILES.search(function)
        ]
        return functions[:count]


# --- the runs -----------------------------------------------------------------------------------


@dataclass
class Run:
    kind: str  # "none", "distinct", "repeats"
    algorithm: str  # "" for "none"
    round: int
    result: LoadResult
    rows: int
    problems: list[str] = field(default_factory=list)
    connections: list[int] | None = None  # the load's, per server worker
    cpu_s: float = math.nan  # the server workers' CPU time during the run

    @property
    def cpu_us_per_order(self) -> float:
        """The server's CPU per order stored (its workers; not PostgreSQL's, not wrk's)."""
        return self.cpu_s / self.rows * 1e6 if self.rows else math.nan

    @property
    def label(self) -> str:
        return _LABELS[self.kind].format(algorithm=self.algorithm)


_LABELS = {
    "none": "(a) no auth, a new buyer per order",
    "distinct": "(b) {algorithm}, a distinct token per order",
    "repeats": f"(c) {{algorithm}}, each token {ORDERS_PER_BUYER}x",
}


@dataclass
class BuyerAuthBench:
    db: BenchDatabase
    load: Load
    options: Options
    plain: LiveServer
    jwt: LiveServer
    pools: dict[DevAlgorithm, TokenPool]
    runs: list[Run] = field(default_factory=list)
    problems: list[str] = field(default_factory=list)
    ceilings: dict[str, LoadResult] = field(default_factory=dict)
    profiles: dict[str, Profile] = field(default_factory=dict)
    best_rate: float = 0.0  # orders/s, the best measured run so far

    @property
    def wrk_path(self) -> str | None:
        return self.load.wrk_path

    def expected_rate(self, algorithm: DevAlgorithm) -> float:
        """The requests/s a token run is given tokens for (x TOKEN_MARGIN): the best orders/s
        measured so far, or half the HTTP ceiling with the same script if that is more (should
        the first runs have been slow)."""
        ceiling = self.ceilings.get(algorithm)
        return max(self.best_rate, 0.5 * ceiling.rate if ceiling is not None else 0.0)

    # --- checks before the runs

    def check_jwt_server(self) -> list[DevAlgorithm]:
        """The jwt server's contract on a few orders; the algorithms whose tokens it accepts."""
        product_id = self.db.create_product("buyer-auth checks", HUGE_STOCK)
        body = {"product_id": product_id, "quantity": 1}
        print("\nthe jwt server, order by order:")
        accepted, created = [], 0
        with httpx.Client(base_url=self.jwt.url, timeout=30) as client:

            def post(payload: dict[str, Any], token: str | None) -> httpx.Response:
                nonlocal created
                headers = {} if token is None else {"Authorization": f"Bearer {token}"}
                response = client.post("/orders", json=payload, headers=headers)
                created += response.status_code == 201
                return response

            self._expect(post(body, None), "no Authorization header", 401)
            self._expect(post(body, "not.a.token"), "a junk token", 401)
            for algorithm, pool in self.pools.items():
                token, other = pool.take_strings(2)
                sub = _sub_of(token)
                mismatch = {**body, "buyer_id": f"not-{sub}"}
                self._expect(
                    post(mismatch, token), f"{algorithm} token, a body naming another buyer",
                    400, 499,
                )  # fmt: skip
                checks: list[tuple[dict[str, Any], str, str, str]] = [
                    (body, token, sub, "no buyer_id in the body"),
                    ({**body, "buyer_id": sub}, token, sub, "the body naming its sub"),
                    (body, token, sub, "the same token again"),
                    (body, other, _sub_of(other), "another token"),
                ]
                results = [
                    self._expect_order(post(payload, bearer), buyer, f"{algorithm} token, {what}")
                    for payload, bearer, buyer, what in checks
                ]
                if all(results):
                    accepted.append(algorithm)
        stored = self.db.count_orders(product_id)
        ok = stored == created
        print(f"  orders stored for these checks: {stored} vs {created} 201s: "
              f"{'ok' if ok else 'MISMATCH'}")  # fmt: skip
        if not ok:
            self.problems.append(f"the jwt server's checks: {stored} orders stored, {created} 201s")
        return accepted

    def _expect(self, response: httpx.Response, what: str, low: int, high: int = 0) -> bool:
        code = _error_code(response)
        ok = low <= response.status_code <= (high or low)
        wanted = f"{low}-{high}" if high else str(low)
        verdict = "ok" if ok else f"MISMATCH ({wanted} expected)"
        print(f"  {what}: {response.status_code} {code}: {verdict}")
        if not ok:
            self.problems.append(
                f"jwt server, {what}: {response.status_code} {response.text[:200]} "
                f"({wanted} expected)"
            )
        return ok

    def _expect_order(self, response: httpx.Response, sub: str, what: str) -> bool:
        buyer = response.json().get("buyer_id") if response.status_code == 201 else None
        ok = response.status_code == 201 and buyer == sub
        detail = f"buyer_id {buyer!r}" if response.status_code == 201 else _error_code(response)
        verdict = "ok" if ok else f"MISMATCH (201, buyer_id {sub!r} expected)"
        print(f"  {what}: {response.status_code} {detail}: {verdict}")
        if not ok:
            self.problems.append(
                f"jwt server, {what}: {response.status_code} {response.text[:200]} "
                f"(201 with buyer_id {sub!r} expected)"
            )
        return ok

    # --- ceilings

    def measure_ceilings(self, algorithms: Sequence[DevAlgorithm]) -> None:
        connections, seconds = self.options.connections, self.options.seconds
        print(f"\nHTTP ceiling: POST {CEILING_PATH} (the 404 envelope, no database, no "
              "verification), with the runs' kinds of script")  # fmt: skip
        body = {"buyer_id": f"b{wrk.COUNTER}"}
        options: dict[str, Any] = {
            "connections": connections, "method": "POST", "path": CEILING_PATH, "body": body,
        }  # fmt: skip
        self.load.run(self.plain, seconds=self.options.warmup_s, **options)
        result = self.load.run(self.plain, seconds=seconds, **options)
        self._ceiling("numbered body (as (a))", "none", result)
        for algorithm in algorithms:
            tokens = self.pools[algorithm].take(CEILING_TOKENS)
            url = self.jwt.url + CEILING_PATH
            for duration in (self.options.warmup_s, seconds):
                ceiling = wrk.run_with_tokens(
                    url, tokens.path, connections=connections, seconds=duration,
                    body='{"product_id": 1, "quantity": 1}', executable=self.wrk_path,
                )  # fmt: skip
            self._ceiling(f"a {algorithm} token per request", algorithm, ceiling.result)
            tokens.path.unlink(missing_ok=True)
            self.jwt.check_alive()

    def _ceiling(self, what: str, key: str, result: LoadResult) -> None:
        ok = result.non_2xx == result.requests
        print(f"  {what:<28} {result.summary()}  ({'all 404: ok' if ok else 'MISMATCH'})")
        if not ok:
            self.problems.append(f"HTTP ceiling, {what}: {result.ok} 2xx answers")
        self.ceilings[key] = result

    # --- (a): no auth

    def run_plain(self, round_: int, *, profile: bool = False) -> Run:
        db, connections = self.db, self.options.connections
        product_id = db.create_product("buyer-auth, no auth", HUGE_STOCK)
        body = {"product_id": product_id, "quantity": 1, "buyer_id": f"b{wrk.COUNTER}"}
        options: dict[str, Any] = {
            "connections": connections, "method": "POST", "path": "/orders", "body": body,
        }  # fmt: skip
        self.load.run(self.plain, seconds=self.options.warmup_s, **options)
        db.quiesce(product_id)
        before = db.count_orders(product_id)
        with _observe(self.plain, seconds=self.options.seconds, profile=profile) as seen:
            result = self.load.run(self.plain, seconds=self.options.seconds, **options)
        db.quiesce(product_id)
        run = Run("none", "", round_, result, db.count_orders(product_id) - before)
        buyers = self._fetch(
            "SELECT count(DISTINCT buyer_id) FROM orders WHERE product_id = $1", product_id
        )
        total = before + run.rows
        checks = [self._count_check(run)]
        if buyers != total:
            run.problems.append(f"{buyers:,} distinct buyers for {total:,} orders")
        checks.append(f"{buyers:,} distinct buyers for {total:,} orders (warm-up included)")
        self._report(run, checks, seen, "none")
        if not profile:
            self.best_rate = max(self.best_rate, result.rate)
        return run

    # --- (b), (c): a token per request

    def run_tokens(
        self, algorithm: DevAlgorithm, round_: int, per_token: int, *, profile: bool = False
    ) -> Run:
        db, options, pool = self.db, self.options, self.pools[algorithm]
        rate, connections = self.expected_rate(algorithm), options.connections
        product_id = db.create_product(f"buyer-auth, {algorithm} x{per_token}", HUGE_STOCK)
        body = json.dumps({"product_id": product_id, "quantity": 1})
        url = self.jwt.url + "/orders"
        warm = pool.take(_tokens_needed(rate, options.warmup_s, connections, per_token))
        wrk.run_with_tokens(
            url, warm.path, connections=connections, seconds=options.warmup_s, body=body,
            per_token=per_token, executable=self.wrk_path,
        )  # fmt: skip
        db.quiesce(product_id)
        before = db.count_orders(product_id)
        measured = pool.take(_tokens_needed(rate, options.seconds, connections, per_token))
        with _observe(self.jwt, seconds=options.seconds, profile=profile) as seen:
            tokens = wrk.run_with_tokens(
                url, measured.path, connections=connections, seconds=options.seconds, body=body,
                per_token=per_token, executable=self.wrk_path,
            )  # fmt: skip
        self.jwt.check_alive()
        db.quiesce(product_id)
        kind = "distinct" if per_token == 1 else "repeats"
        run = Run(kind, algorithm, round_, tokens.result, db.count_orders(product_id) - before)
        if not profile:
            self.best_rate = max(self.best_rate, run.result.rate)
        checks = [
            self._count_check(run),
            self._buyers_check(run, product_id, warm, measured, tokens),
        ]
        if tokens.cycled:
            run.problems.append(
                f"the run's {tokens.tokens:,} tokens ran out (sent {tokens.sent:,})"
            )
        for path in (warm.path, measured.path):
            path.unlink(missing_ok=True)
        self._report(run, checks, seen, algorithm)
        return run

    def _buyers_check(
        self, run: Run, product_id: int, warm: TokenSlice, measured: TokenSlice,
        tokens: wrk.TokenRun,
    ) -> str:  # fmt: skip
        """Every order stored during the run is for the sub of a token the run sent, each sub
        with at most its token's uses; a few shown."""
        pool, per_token = measured.pool, tokens.per_token
        used = range(measured.start, measured.start + tokens.tokens_used)
        orders: dict[int, int] = {}
        strangers = 0
        for record in self._fetch_all(
            "SELECT buyer_id, count(*) AS n FROM orders WHERE product_id = $1 GROUP BY buyer_id",
            product_id,
        ):
            index = pool.index_of(record["buyer_id"])
            if index is not None and index in used:
                orders[index] = int(record["n"])
            elif index is None or index not in range(warm.start, warm.start + warm.count):
                strangers += int(record["n"])  # not the warm-up's either
        stored = sum(orders.values())
        over = sum(1 for n in orders.values() if n > per_token)
        if strangers:
            run.problems.append(f"{strangers:,} orders whose buyer is no token's sub")
        if stored != run.rows:
            run.problems.append(
                f"{stored:,} orders by the run's tokens' subs vs {run.rows:,} stored in the run"
            )
        if over and not tokens.cycled:
            run.problems.append(f"{over:,} subs with more than {per_token} orders")
        samples = ", ".join(
            f"#{offset} {measured.sub(offset)!r}: {orders.get(measured.start + offset, 0)}"
            for offset in sorted({0, tokens.tokens_used // 2, tokens.tokens_used - 1})
            if offset >= 0
        )
        ok = not strangers and stored == run.rows and not (over and not tokens.cycled)
        return (
            f"{len(orders):,} buyers = the subs of {len(orders):,} of the {tokens.tokens_used:,} "
            f"tokens sent ({tokens.sent:,} requests), at most {per_token} order(s) each, no other "
            f"buyer: {'ok' if ok else 'MISMATCH'}; orders per sub, e.g. {samples}"
        )

    # --- shared

    def _count_check(self, run: Run) -> str:
        result, connections = run.result, self.options.connections
        in_flight = run.rows - result.ok
        text = f"orders stored {run.rows:,} vs 2xx {result.ok:,}"
        if result.non_2xx:
            run.problems.append(f"{result.non_2xx:,} non-2xx answers")
        if result.socket_errors.total:
            run.problems.append(f"socket errors: {result.socket_errors}")
        if not 0 <= in_flight <= connections:
            run.problems.append(f"{text}: MISMATCH")
            return f"{text}: MISMATCH"
        return f"{text}: ok" + (f" (+{in_flight} in flight when wrk stopped)" if in_flight else "")

    def _report(self, run: Run, checks: list[str], seen: Observation, key: str) -> None:
        result = run.result
        ceiling = self.ceilings.get(key)
        print(f"    {run.label}: {result.summary()}")
        plain = next((r for r in self.runs if r.kind == "none" and r.round == run.round), None)
        ratios = []
        if plain is not None and run.kind != "none":
            ratios.append(f"{result.rate / plain.result.rate:.2f}x (a)")
        if ceiling is not None:
            ratios.append(f"{result.rate / ceiling.rate:.2f}x its HTTP ceiling")
        if ratios:
            print(f"        {', '.join(ratios)}")
        for check in checks:
            print(f"        {check}")
        if seen.cpu_s:
            run.cpu_s = sum(seen.cpu_s)
            print(f"        server workers' CPU: {run.cpu_us_per_order:,.0f} us per order "
                  f"({' + '.join(f'{cpu:.1f}' for cpu in seen.cpu_s)} s)")  # fmt: skip
        if seen.connections is not None:
            run.connections = seen.connections
            print(f"        the load's connections per server worker (1 s in): "
                  f"{', '.join(map(str, seen.connections))}")  # fmt: skip
        for problem in run.problems:
            self.problems.append(f"{run.label}, round {run.round}: {problem}")
        if seen.recordings:
            self._print_profile(run, seen.recordings)

    def _print_profile(self, run: Run, recordings: dict[int, Path]) -> None:
        texts = {pid: path.read_text() for pid, path in recordings.items()}
        for path in recordings.values():
            path.unlink(missing_ok=True)
        per_worker = ", ".join(
            f"pid {pid}: {Profile.parse(text).samples:,}" for pid, text in texts.items()
        )
        profile = Profile.parse("\n".join(texts.values()))
        self.profiles[run.label] = profile
        print(f"        py-spy, every server worker, {profile.samples:,} samples at "
              f"{PROFILE_RATE}/s ({per_worker}; busy threads only); own samples (where they "
              "were taken; Runner.run: uvloop's C code, I/O and HTTP parsing):")  # fmt: skip
        for function, samples in profile.leaves.most_common(TOP_FRAMES):
            print(f"          {profile.share(samples):6.1%}  {function}")
        print("        under (inclusive):")
        for category, (what, _) in CATEGORIES.items():
            print(f"          {profile.share(profile.categories[category]):6.1%}  {what}")
        functions = profile.auth_functions()
        if functions:
            print("        the verification's functions (inclusive):")
            for function, share in functions:
                print(f"          {share:6.1%}  {function}")

    def _fetch(self, sql: str, *args: Any) -> Any:
        async def fetch() -> Any:
            conn = await asyncpg.connect(self.db.url)
            try:
                return await conn.fetchval(sql, *args)
            finally:
                await conn.close()

        return self.db.runner.run(fetch())

    def _fetch_all(self, sql: str, *args: Any) -> list[asyncpg.Record]:
        async def fetch() -> list[asyncpg.Record]:
            conn = await asyncpg.connect(self.db.url)
            try:
                return list(await conn.fetch(sql, *args))
            finally:
                await conn.close()

        return self.db.runner.run(fetch())


def _sub_of(token: str) -> str:
    """A token's `sub`, unverified (to say which buyer a check expects)."""
    import jwt

    return str(jwt.decode(token, options={"verify_signature": False})["sub"])


def _error_code(response: httpx.Response) -> str:
    with contextlib.suppress(ValueError, AttributeError):
        return str(response.json()["error"]["code"])
    return ""


# --- the bench ----------------------------------------------------------------------------------


def run(url: str, options: Options) -> None:
    logging.getLogger("httpx").setLevel(logging.WARNING)
    wrk_path = wrk.binary()
    if wrk_path is None:
        raise RuntimeError(
            "flashsale bench orders --buyer-auth jwt needs wrk (Debian package: wrk)"
        )
    minter = Minter()
    with asyncio.Runner() as runner, tempfile.TemporaryDirectory(
        prefix="flashsale-bench-buyer-auth-"
    ) as tmp:  # fmt: skip
        directory = Path(tmp)
        load = Load(runner, wrk_path)
        db = BenchDatabase(runner, url)
        try:
            _run(db, load, options, directory=directory, minter=minter, url=url)
        finally:
            db.close()
            minter.close()


def _servers_env(options: Options, key_file: Path) -> tuple[dict[str, str], dict[str, str]]:
    common = {"WEB_CONCURRENCY": str(options.workers), "BUYER_JWKS_URL": ""}
    plain = {**common, "BUYER_AUTH": "none", "BUYER_JWT_PUBLIC_KEY_FILE": ""}
    verified = {
        **common, "BUYER_AUTH": "jwt", "BUYER_JWT_PUBLIC_KEY_FILE": str(key_file),
        "BUYER_JWT_ISSUER": DEV_ISSUER, "BUYER_JWT_AUDIENCE": DEV_AUDIENCE,
        "BUYER_JWT_ALGORITHMS": SERVER_ALGORITHMS,
    }  # fmt: skip
    return plain, verified


def _run(
    db: BenchDatabase, load: Load, options: Options, *, directory: Path, minter: Minter, url: str
) -> None:
    print(
        f"flashsale bench orders --buyer-auth jwt: load from {load.name}, "
        f"{options.connections} connections, {options.seconds:g} s per run after a "
        f"{options.warmup_s:g} s warm-up, {options.rounds} round(s)\n"
        f"database: PostgreSQL {db.fetchval('SHOW server_version')} at {_where(url)}\n"
        f"this machine: {os.cpu_count()} cores, {_load_average()}"
    )
    run_id = secrets.token_hex(3)
    signers = {algorithm: DevSigner.generate(algorithm) for algorithm in options.algorithms}
    key_file = directory / "buyer-jwks.json"
    key_file.write_text(json.dumps(jwks(*signers.values())))
    pools = {
        algorithm: TokenPool(signer, f"ba{run_id}-{algorithm}-", directory, minter)
        for algorithm, signer in signers.items()
    }
    print("\nverification alone, in this process: the server's BuyerTokens.buyer_id(), "
          f"{MICRO_TOKENS} tokens each")  # fmt: skip
    alone = _verification_alone(db.runner, key_file, pools)
    for algorithm, (new, remembered) in alone.items():
        print(f"  {algorithm:<6} {new:7.1f} us per new token, {remembered:5.2f} us per "
              "remembered one")  # fmt: skip
    plain_env, jwt_env = _servers_env(options, key_file)
    with running_server(url, plain_env) as plain, running_server(url, jwt_env) as verified:
        print(
            f"\nservers (WEB_CONCURRENCY={options.workers} each): BUYER_AUTH=none pid "
            f"{plain.process.pid} on {plain.url}; BUYER_AUTH=jwt pid {verified.process.pid} on "
            f"{verified.url} (its JWKS: {', '.join(options.algorithms)} keys)"
        )
        bench = BuyerAuthBench(db, load, options, plain, verified, pools)
        accepted = bench.check_jwt_server()
        skipped = [algorithm for algorithm in options.algorithms if algorithm not in accepted]
        if skipped:
            print(f"  not measured (the server refused their tokens): {', '.join(skipped)}")
        bench.measure_ceilings(accepted)
        for round_ in range(1, options.rounds + 1):
            print(f"\nround {round_} of {options.rounds}")
            bench.runs.append(bench.run_plain(round_))
            _mint_round(bench, accepted)
            for algorithm in accepted:
                bench.runs.append(bench.run_tokens(algorithm, round_, 1))
                bench.runs.append(bench.run_tokens(algorithm, round_, ORDERS_PER_BUYER))
        if options.profile:
            _profile_runs(bench, accepted)
    _summary(bench, alone)


def _mint_round(bench: BuyerAuthBench, algorithms: Sequence[DevAlgorithm]) -> None:
    """Mint, before the round's token runs, all the tokens they need."""
    options = bench.options
    for algorithm in algorithms:
        rate = bench.expected_rate(algorithm)
        needed = sum(
            _tokens_needed(rate, seconds, options.connections, per_token)
            for per_token in (1, ORDERS_PER_BUYER)
            for seconds in (options.warmup_s, options.seconds)
        )
        bench.pools[algorithm].ensure(needed)


def _profile_runs(bench: BuyerAuthBench, algorithms: Sequence[DevAlgorithm]) -> None:
    print(
        "\nprofiles: one more run each, py-spy recording the server's workers (not in the medians)"
    )
    bench.run_plain(0, profile=True)
    options = bench.options
    for algorithm in algorithms:
        rate = bench.expected_rate(algorithm)
        bench.pools[algorithm].ensure(
            sum(_tokens_needed(rate, s, options.connections, 1)
                for s in (options.warmup_s, options.seconds))
        )  # fmt: skip
        bench.run_tokens(algorithm, 0, 1, profile=True)


def _load_average() -> str:
    one, five, fifteen = os.getloadavg()
    return f"load average {one:.2f}, {five:.2f}, {fifteen:.2f} (1, 5, 15 min)"


def _mark(ok: bool) -> str:
    return "ok" if ok else "MISSED"


def _summary(bench: BuyerAuthBench, alone: dict[DevAlgorithm, tuple[float, float]]) -> None:
    options = bench.options
    print(
        f"\nsummary  ({options.connections} connections, {options.seconds:g} s per run, "
        f"medians of {options.rounds} round(s); x (a): the median of each round's ratio; "
        f"this machine now: {_load_average()})"
    )
    print(
        f"  {'run':<40} {'orders/s':>8} {'p50 ms':>7} {'p99 ms':>7} {'x (a)':>6} "
        f"{'target':>10}  {'CPU us/o':>8} {'+ vs (a)':>8}  {'checks':<8} "
        "rounds' x (a) (connections per server worker)"
    )
    plain = {run.round: run for run in bench.runs if run.kind == "none"}
    misses = []
    groups: dict[str, list[Run]] = {}
    for run_ in bench.runs:
        groups.setdefault(run_.label, []).append(run_)
    for label, runs in groups.items():
        kind = runs[0].kind
        ratios = [r.result.rate / plain[r.round].result.rate for r in runs]
        target = {"distinct": TARGET_DISTINCT, "repeats": TARGET_REPEATS}.get(kind)
        median = statistics.median(ratios)
        verdict = f">={target:g} {_mark(median >= target)}" if target else ""
        if target is not None and median < target:
            misses.append(f"{label}: {median:.2f}x (a) < {target:g}")
        extra = statistics.median(
            r.cpu_us_per_order - plain[r.round].cpu_us_per_order for r in runs
        )
        checks = "MISMATCH" if any(r.problems for r in runs) else "ok"
        print(
            f"  {label:<40} {statistics.median(r.result.rate for r in runs):8,.0f} "
            f"{statistics.median(r.result.percentile_ms(50) for r in runs):7.1f} "
            f"{statistics.median(r.result.percentile_ms(99) for r in runs):7.1f} "
            f"{median:6.2f} {verdict:>10}  "
            f"{statistics.median(r.cpu_us_per_order for r in runs):8,.0f} "
            f"{'' if kind == 'none' else f'{extra:+,.0f}':>8}  {checks:<8} "
            + ", ".join(
                f"{ratio:.2f}"
                + (f" ({'/'.join(map(str, r.connections))})" if r.connections else "")
                for ratio, r in zip(ratios, runs, strict=True)
            )
        )
    print(f"  targets: (b) distinct tokens >= {TARGET_DISTINCT}x (a), (c) each token "
          f"{ORDERS_PER_BUYER}x >= {TARGET_REPEATS}x (a)\n"
          "  CPU us/o: the server workers' CPU time per order stored (not PostgreSQL's or wrk's); "
          "+ vs (a): the median of each round's difference")  # fmt: skip
    print("  verification alone (this process): " + "; ".join(
        f"{algorithm} {new:.0f} us new, {remembered:.2f} us remembered"
        for algorithm, (new, remembered) in alone.items()
    ))  # fmt: skip
    for label, profile in bench.profiles.items():
        shares = ", ".join(
            f"{name} {profile.share(profile.categories[name]):.1%}" for name in CATEGORIES
        )
        print(f"  profile, {label}: {shares} of {profile.samples:,} samples")
    print_verdict(misses, bench.problems, all_ok="every count and buyer ok")
