"""Schema-driven fuzzing of the whole API (schemathesis) against a live server and database.

Every generated request must get a documented status, a body matching the documented schema
(the error envelope for errors), and never a 5xx. The CI budget is modest; for a longer run:
`FUZZ_EXAMPLES=500 uv run pytest tests/hardening/test_fuzz.py`.

The schema is the app's own OpenAPI document, built in-process at collection time (no server
needed for that); the requests go to the session's live server over HTTP.
"""

from __future__ import annotations

import os
from typing import Any

import schemathesis
from hypothesis import HealthCheck, settings
from schemathesis.checks import (
    content_type_conformance,
    not_a_server_error,
    response_schema_conformance,
    status_code_conformance,
)

from flashsale.app import create_app
from flashsale.bench.harness import LiveServer
from flashsale.config import load_settings

EXAMPLES = int(os.environ.get("FUZZ_EXAMPLES", "30"))

schema = schemathesis.openapi.from_dict(create_app(load_settings()).openapi())


@schemathesis.serializer("application/x-ndjson")
def _ndjson(_: schemathesis.SerializationContext, value: Any) -> bytes:
    """The import's NDJSON body is declared a string: send the generated text as it is."""
    return value if isinstance(value, bytes) else str(value).encode()


@schema.parametrize()
@settings(max_examples=EXAMPLES, deadline=None, suppress_health_check=list(HealthCheck))
def test_every_endpoint_answers_as_documented(
    case: schemathesis.Case[Any], server: LiveServer
) -> None:
    case.call_and_validate(
        base_url=server.url,
        checks=[
            not_a_server_error,
            status_code_conformance,
            content_type_conformance,
            response_schema_conformance,
        ],
        timeout=30,
    )
