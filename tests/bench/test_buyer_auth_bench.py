"""`flashsale bench orders --buyer-auth jwt` on a small scale: wrk's token script, the profile
reading, and one tiny run end to end (one algorithm, a few connections, 1 s runs) whose figures
come out and whose own checks (orders stored vs 2xx, buyers = the tokens' subs) pass."""

from __future__ import annotations

import re

import pytest

from flashsale.bench import buyer_auth, wrk
from flashsale.bench.loadgen import LoadResult, SocketErrors
from tests.support import require_tool


def test_token_script_reads_the_file_once_and_sends_a_token_per_request() -> None:
    script = wrk.token_script("POST", '{"product_id": 1, "quantity": 1}', "/tmp/tokens.txt")
    assert "function init(args)" in script
    assert "io.lines(tokens_file)" in script
    assert 'local tokens_file, per_token = "/tmp/tokens.txt", 1' in script
    assert "function request()" in script
    assert "return head .. token .. tail" in script
    assert "used = used + 1" not in script  # one use per token: no counter
    assert "function done(summary, latency, requests)" in script
    assert "wrk.format(" in script.split("function request()")[0]  # formatted once, in init()
    assert "wrk.format(" not in script.split("function request()")[1].split("end")[0]

    repeated = wrk.token_script("POST", "{}", "/tmp/tokens.txt", per_token=3)
    assert "local tokens_file, per_token = " in repeated
    assert "if used == per_token then" in repeated
    with pytest.raises(ValueError, match="static"):
        wrk.token_script("POST", f'{{"buyer_id": "{wrk.COUNTER}"}}', "/tmp/tokens.txt")


def test_token_run_says_how_the_file_was_used() -> None:
    assert wrk.parse_tokens('x\nFLASHSALE_WRK_TOKENS {"sent": 7}\nFLASHSALE_WRK {}') == 7
    result = LoadResult("wrk", 1, 1.0, 7, 0, SocketErrors(), {}, 0.0)
    run = wrk.TokenRun(result, sent=7, tokens=3, per_token=3)
    assert (run.tokens_used, run.cycled) == (3, False)
    assert wrk.TokenRun(result, sent=10, tokens=3, per_token=3).cycled
    assert wrk.TokenRun(result, sent=2, tokens=3, per_token=1).tokens_used == 2


def test_profile_counts_samples_under_the_verification() -> None:
    collapsed = (
        "<module> (flashsale/__main__.py:1);buyer_id (/x/src/flashsale/access/buyers.py:9);"
        "decode (/v/lib/python3.11/site-packages/jwt/api_jwt.py:3);"
        "ECAlgorithm.verify (/v/lib/python3.11/site-packages/jwt/algorithms.py:7) 6\n"
        "<module> (flashsale/__main__.py:1);buyer_id (/x/src/flashsale/access/buyers.py:9);"
        "get_unverified_header (/v/lib/python3.11/site-packages/jwt/api_jws.py:5) 1\n"
        "<module> (flashsale/__main__.py:1);run (asyncio/runners.py:118) 3\n"
    )
    profile = buyer_auth.Profile.parse(collapsed)
    assert profile.samples == 10
    assert profile.leaves.most_common(1) == [("ECAlgorithm.verify (jwt/algorithms.py)", 6)]
    shares = {name: profile.share(n) for name, n in profile.categories.items()}
    assert shares["verification"] == 0.7
    assert shares["PyJWT"] == 0.7
    assert shares["signature"] == 0.6
    assert shares["unverified header"] == 0.1
    assert "base64url" not in shares
    assert profile.auth_functions(1) == [("buyer_id (flashsale/access/buyers.py)", 0.7)]
    assert dict(profile.auth_functions())["decode (jwt/api_jwt.py)"] == 0.6
    assert "run (asyncio/runners.py)" not in dict(profile.auth_functions())


def test_parse_algorithms() -> None:
    assert buyer_auth.parse_algorithms("RS256, ES256,RS256") == ("RS256", "ES256")
    with pytest.raises(ValueError, match="HS256"):
        buyer_auth.parse_algorithms("ES256,HS256")
    with pytest.raises(ValueError, match="no algorithm"):
        buyer_auth.parse_algorithms(" , ")


def test_bench_buyer_auth_prints_checked_figures(
    database_url: str, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    require_tool("wrk", "wrk")
    monkeypatch.setenv("LOG_LEVEL", "warning")
    options = buyer_auth.Options(
        connections=4, seconds=1, rounds=1, algorithms=("ES256",), workers=1, profile=False,
        warmup_s=1,
    )  # fmt: skip
    buyer_auth.run(database_url, options)
    out = capsys.readouterr().out

    assert "no Authorization header: 401 UNAUTHENTICATED: ok" in out
    assert "ES256 token, no buyer_id in the body: 201 buyer_id " in out
    assert "ES256 token, another token: 201 buyer_id " in out
    assert re.search(r"ES256 +\d+\.\d us per new token", out)
    assert "a ES256 token per request" in out
    assert out.split("\nround 1")[0].split("HTTP ceiling")[1].count("(all 404: ok)") == 2
    # (a), (b), (c): each count checked (--profile's runs are left out here: py-spy's output
    # is parsed in test_profile_counts_samples_under_the_verification).
    assert len(re.findall(r"orders stored [\d,]+ vs 2xx [\d,]+: ok", out)) == 3
    assert out.count("no other buyer: ok") == 2
    assert "at most 3 order(s) each" in out
    assert "the load's connections per server worker" in out
    assert len(re.findall(r"server workers' CPU: [\d,]+ us per order", out)) == 3
    summary = out.split("\nsummary")[1]
    for label in ("(a) no auth, a new buyer per order", "(b) ES256, a distinct token per order",
                  "(c) ES256, each token 3x"):  # fmt: skip
        assert re.search(re.escape(label) + r" +[\d,]+ +\d+\.\d +\d+\.\d +\d\.\d\d ", summary)
    assert ">=0.8" in summary
    assert re.search(r"\(b\) ES256, a distinct token per order .* [\d,]+ +[+-][\d,]+  ok", summary)
    assert ">=0.9" in summary
    assert "targets: (b) distinct tokens >= 0.8x (a)" in summary
    assert "MISMATCH" not in out.replace("403 BUYER_MISMATCH: ok", "")  # the server's code
    assert "checks: every count and buyer ok" in out
