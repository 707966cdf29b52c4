"""The OpenAPI contract against the live API: schemathesis over every operation.

The schema is the one the app serves (built from the app object: the same text as the
committed sdk/openapi.json), so a route added later is covered without touching this file.
Each operation runs schemathesis's coverage phase (boundary, missing and invalid values) and a
small fuzzing phase under its built-in checks: no server error; status code, content type and
body as documented; valid data accepted and invalid data refused; no answer without a token.

The services live on the session's event loop, so requests go out from a worker thread while
that loop runs (`_on_loop`): a blocking call on the loop's own thread would deadlock.
"""

from __future__ import annotations

import asyncio
import json
import os
import re
from collections.abc import AsyncIterator, Callable
from typing import Any, TypeVar
from urllib.parse import unquote

import httpx
import hypothesis
import msgspec
import pytest
import schemathesis
from conftest import Stack
from hypothesis import strategies as st
from schemathesis import Case
from schemathesis.config import SchemathesisConfig

from scripts.export_openapi import render
from services.api.actions.analytics import parse_instant, time_range
from services.api.input_schema import schema_problem
from services.api.repos import Invalid
from services.replicator.service import ReplicatorService

# Small per operation: about 35 operations must finish well inside two minutes on two cores.
MAX_EXAMPLES = 10
# Fixed, so a red run can be replayed and CI does not go red by chance; set
# RATCHET_SCHEMA_SEED to explore with other data.
SEED = int(os.environ.get("RATCHET_SCHEMA_SEED", "20261127"))
# A long-poll's wait_s (GET /runs/{run_id}, its stream, POST /runs/results) waits for runs
# that may not exist yet; a valid value is cut to this so a generated 59.0 does not hold the suite for a minute.
LONG_POLL_CAP_S = 0.05

T = TypeVar("T")

CONFIG = SchemathesisConfig.from_dict({
    "seed": SEED,
    "phases": {
        "examples": {"enabled": False},
        "coverage": {"enabled": True},
        "fuzzing": {"enabled": True},
        "stateful": {"enabled": False},
    },
    # The API refuses NUL characters (PostgreSQL cannot store them): valid data has none.
    "generation": {"max-examples": MAX_EXAMPLES, "allow-x00": False},
    "checks": {
        # Litestar 2.x answers OPTIONS on a path served by several handlers with an `Allow`
        # naming only some of its methods (the auto OPTIONS handler keeps the methods of the
        # route it was first built for). OPTIONS is not part of the contract.
        "allow_header_conformance": {"enabled": False},
    },
    "operations": [{
        # The session's NATS runs without auth, so the API has no account to sign NATS
        # credentials with and gives its documented 503 (tests/integration/test_nats_auth.py
        # issues real ones).
        "include-operation-id": "issueNatsCredentials",
        "checks": {"not_a_server_error": {"expected-statuses": ["2xx", "3xx", "4xx", "503"]}},
    }],
})

# Valid values of the string formats the API declares: the schema can say "a CEL expression"
# or "a cron expression" but not spell out their grammars.
schemathesis.openapi.format("cel", st.sampled_from(["true", "input.n > 1", "payload.kind == 'a'"]))
schemathesis.openapi.format("cron", st.sampled_from(["*/5 * * * *", "0 9 * * 1-5", "0 0 1 1 *"]))
# Webhook keys see `input` and `headers`; alert filters see `run` (docs/webhooks.md, alerts.md).
schemathesis.openapi.format("cel-hook", st.sampled_from(["'gh.push'", "'gh.' + headers['x-e']",
                                                         "input.repo"]))
schemathesis.openapi.format("cel-run", st.sampled_from(["true", "run.input.n > 1",
                                                        "run.workflow == 'a'"]))

schema = schemathesis.openapi.from_dict(json.loads(render()), config=CONFIG)
# The token of the tenant of the running test (the `token` fixture sets it).
_TOKEN: dict[str, str] = {}


@schema.auth(refresh_interval=None)
class TenantToken:
    """Bearer auth through schemathesis, so it leaves the header out when a case is about
    a missing token, and its `ignored_auth` check can try requests without one."""

    def get(self, case: Case, ctx: Any) -> str:
        return _TOKEN.get("value", "")

    def set(self, case: Case, data: str, ctx: Any) -> None:
        case.headers = {**(case.headers or {}), "Authorization": f"Bearer {data}"}


OPERATION_ID = re.compile(r"[a-z][A-Za-z]+")


@pytest.fixture(scope="module")
async def replicator(
    stack: Stack, tmp_path_factory: pytest.TempPathFactory
) -> AsyncIterator[ReplicatorService]:
    """The analytics endpoints answer from the OLAP projection, so it runs here too."""
    data_dir = str(tmp_path_factory.mktemp("olap"))
    settings = msgspec.structs.replace(stack.settings, data_dir=data_dir, clickhouse_url="")
    service = ReplicatorService(settings, linger_s=0.05, lag_interval_s=0.2)
    await service.start()
    yield service
    await service.stop()


@pytest.fixture
async def loop() -> asyncio.AbstractEventLoop:
    """The session loop the services run on (async fixtures run on it)."""
    return asyncio.get_running_loop()


@pytest.fixture
def token(stack: Stack, tenant: str) -> str:
    value = str(stack.tokens[tenant])  # type: ignore[attr-defined]
    _TOKEN["value"] = value
    return value


def _on_loop(loop: asyncio.AbstractEventLoop, fn: Callable[[], T]) -> T:
    """Run blocking `fn` in a thread while the session loop serves the API."""
    return loop.run_until_complete(asyncio.to_thread(fn))


def _cap_long_poll(case: Case) -> None:
    """`wait_s` in the query (GET /runs/{id}, the stream) or a body (POST /runs/results)."""
    raw = (case.query or {}).get("wait_s")
    try:
        wait = float(raw)  # type: ignore[arg-type]
    except (TypeError, ValueError):
        pass  # absent, or not a number: the server must refuse it, so leave it be
    else:
        if 0 < wait <= 60:
            case.query["wait_s"] = min(wait, LONG_POLL_CAP_S)
    body = case.body
    if isinstance(body, dict) and type(body.get("wait_s")) in (int, float):  # not a bool
        if 0 < body["wait_s"] <= 60:
            body["wait_s"] = min(body["wait_s"], LONG_POLL_CAP_S)


def _analytics_range(case: Case) -> None:
    """`since` before `until` (default: now), at most 31 days apart."""
    query = case.query or {}
    try:
        time_range(parse_instant("since", query.get("since")),
                   parse_instant("until", query.get("until")))
    except Invalid:
        query.pop("since", None)
        query.pop("until", None)


def _rate_limit_key(case: Case) -> None:
    """The body's optional `key` echoes the path's."""
    if isinstance(case.body, dict) and case.body.get("key") is not None:
        # Path parameters are held percent-encoded.
        case.body["key"] = unquote(case.path_parameters["key"])


def _workflow_rules(case: Case) -> None:
    """Make a valid-by-schema workflow definition keep the rules across fields that the
    schema states in prose only (WorkflowSpec's description): unique task names, parents
    among earlier tasks (so no cycle), hooks without parents, one kind of rate limit key
    and only dynamic ones (a static key must exist first), a usable input_schema, debounce or
    batch but not both."""
    body = case.body
    if not isinstance(body, dict) or not isinstance(body.get("tasks"), list):
        return
    if body.get("debounce") is not None and body.get("batch") is not None:
        body["batch"] = None
    names: list[str] = []
    for i, task in enumerate(body["tasks"]):
        task["name"] = f"t{i}"
        task["parents"] = names[-1:]
        names.append(task["name"])
        _dynamic_rate_limits(task)
        _condition_parents(task)
    for hook in ("on_failure", "on_success"):
        if isinstance(body.get(hook), dict):
            body[hook].update(name=hook.replace("_", "-"), parents=[])
            _dynamic_rate_limits(body[hook])
            _condition_parents(body[hook])
    schema_value = body.get("input_schema")
    if isinstance(schema_value, dict) and schema_problem(schema_value) is not None:
        body["input_schema"] = None


def _condition_parents(task: dict[str, Any]) -> None:
    """A ParentOutput condition names one of its task's parents, or none."""
    for name in ("skip_if", "cancel_if"):
        for cond in task.get(name, []) or []:
            if isinstance(cond, dict) and cond.get("parent") not in (None, "", *task["parents"]):
                cond["parent"] = ""


def _dynamic_rate_limits(task: dict[str, Any]) -> None:
    limits = [rl for rl in task.get("rate_limits", [])
              if rl.get("dynamic_key") and (rl.get("limit") is None) == (rl.get("per") is None)]
    for rl in limits:
        rl["key"] = None
    task["rate_limits"] = limits


_HOOK_OPTIONS = {"github": set(), "stripe": {"tolerance_s"}, "slack": {"tolerance_s"},
                 "hmac": {"header", "prefix", "id_header"}, "basic": {"username", "id_header"},
                 "api_key": {"header", "id_header"}}


def _webhook_rules(case: Case) -> None:
    """A hook takes only its source's options, basic needs a username, and names starting
    with '_' are reserved (WebhookIn's description, docs/webhooks.md)."""
    body = case.body
    if not isinstance(body, dict) or body.get("source") not in _HOOK_OPTIONS:
        return
    for option in ("header", "prefix", "username", "tolerance_s", "id_header"):
        if option not in _HOOK_OPTIONS[body["source"]]:
            body.pop(option, None)
    if body["source"] == "basic" and not body.get("username"):
        body["username"] = "u"
    if isinstance(body.get("name"), str) and body["name"].startswith("_"):
        body["name"] = "h" + body["name"]


def _alert_rules(case: Case) -> None:
    """An alert rule needs at least one destination (AlertIn's description)."""
    body = case.body
    if isinstance(body, dict) and not (body.get("slack_webhook_url") or body.get("email")
                                       or body.get("webhook_url")):
        body["webhook_url"] = "http://127.0.0.1:9/alert"


# Rules across fields or parameters that the schema states in prose only: valid-by-schema
# data is made to keep them before it is sent (only for positive cases, so an invalid case
# stays invalid).
PROSE_RULES: dict[tuple[str, str], Callable[[Case], None]] = {
    ("POST", "/workflows"): _workflow_rules,
    ("POST", "/webhooks"): _webhook_rules,
    ("POST", "/alerts"): _alert_rules,
    ("PUT", "/rate-limits/{key}"): _rate_limit_key,
    ("GET", "/analytics/runs"): _analytics_range,
    ("GET", "/analytics/tasks"): _analytics_range,
    ("GET", "/analytics/throughput"): _analytics_range,
}


def test_every_operation_has_a_readable_id() -> None:
    """Generated clients name their methods after operationIds: set one per handler."""
    raw = json.loads(render())
    ids = [op.get("operationId", "") for path in raw["paths"].values() for op in path.values()
           if isinstance(op, dict) and "responses" in op]
    assert ids and len(set(ids)) == len(ids)
    assert [i for i in ids if not OPERATION_ID.fullmatch(i)] == []


@pytest.mark.asyncio(loop_scope="session")
async def test_served_schema_is_the_exported_one(stack: Stack) -> None:
    """What this module tests (and sdk/openapi.json holds) is what the server serves."""
    async with httpx.AsyncClient(base_url=stack.api_url) as http:
        served = (await http.get("/schema/openapi.json")).json()
    assert served == json.loads(render())


@pytest.mark.asyncio(loop_scope="session")
async def test_bodies_are_read_with_json_types(stack: Stack, token: str) -> None:
    """A string for an int, a number for a bool or a NUL character is a 400 naming the
    problem; 2.0 is an integer, as JSON Schema says."""
    headers = {"Authorization": f"Bearer {token}"}
    async with httpx.AsyncClient(base_url=stack.api_url, headers=headers) as http:
        as_text = await http.put("/rate-limits/k", json={"limit": "5"})
        assert as_text.status_code == 400 and "$.limit" in as_text.json()["detail"]
        spec = {"name": "wf", "tasks": [{"name": "t", "desired_labels": {"gpu": {
            "value": "a100", "required": 1}}}]}
        as_int = await http.post("/workflows", json=spec)
        assert as_int.status_code == 400 and "required" in as_int.json()["detail"]
        nul = await http.post("/events", json={"key": "k", "payload": {"text": "a\x00b"}})
        assert nul.status_code == 400 and "NUL" in nul.json()["detail"]
        integral = await http.put("/rate-limits/k", json={"limit": 5.0, "per": "minute"})
        assert integral.status_code == 200 and integral.json()["limit"] == 5


@schema.parametrize()
@hypothesis.settings(
    deadline=None, database=None, suppress_health_check=list(hypothesis.HealthCheck)
)
def test_api_matches_its_schema(
    case: Case, stack: Stack, token: str, loop: asyncio.AbstractEventLoop,
    replicator: ReplicatorService,
) -> None:
    _cap_long_poll(case)
    rule = PROSE_RULES.get((case.method, case.path))
    if rule is not None and case.meta is not None and case.meta.generation.mode.is_positive:
        rule(case)
    _on_loop(loop, lambda: case.call_and_validate(base_url=stack.api_url))
