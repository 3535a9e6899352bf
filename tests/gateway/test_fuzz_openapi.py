"""A bounded, schema-driven fuzz run (schemathesis) over the gateway's own OpenAPI document: no 5xx.

Every operation the document lists gets generated requests (valid and invalid against its schema,
half and half),
sent with the master key to a real gateway in front of simulated vLLM, OpenAI and Anthropic upstreams.
Half the generated chat and completion bodies get a real route as their `model`, so the fuzzing
reaches the routing and the providers' translations, not just the 404 for unknown models. The run is
derandomized and capped (`EXAMPLES`), so it is the same run every time and stays within the suite's
time budget. The closing figures (requests sent, statuses seen) are printed at the end.
"""

from __future__ import annotations

import collections
import warnings
from typing import Any, Iterator

import httpx
import pytest

from tests.routing_env import ADMIN_KEY, ANTHROPIC_KEY, OPENAI_KEY, Sims, base_config, sims  # noqa: F401
from tests.server import GatewayProcess

pytestmark = pytest.mark.process  # gateway, engine or CLI processes, or a model loaded here

schemathesis = pytest.importorskip("schemathesis")
hypothesis = pytest.importorskip("hypothesis")
st = hypothesis.strategies

MASTER = "sk-master-fuzz-test-000000"
ROUTES = ["chat-default", "gpt-first", "claude", "weighted", "degraded"]
EXAMPLES = {"POST /v1/chat/completions": 250, "POST /v1/completions": 120}
DEFAULT_EXAMPLES = 20
SEEN: collections.Counter = collections.Counter()


@pytest.fixture(scope="module")
def fuzz_gw(sims: Sims) -> Iterator[GatewayProcess]:
    sims.reset()
    env = {"SIM_OPENAI_KEY": OPENAI_KEY, "SIM_ANTHROPIC_KEY": ANTHROPIC_KEY, "LLM_GATEWAY_ADMIN_KEY": ADMIN_KEY,
           "LLM_GATEWAY_MASTER_KEY": MASTER}
    with GatewayProcess(base_config(sims), env=env, require_ready=False) as g:
        yield g
    sims.reset()


def operations(g: GatewayProcess) -> list[Any]:
    doc = httpx.get(f"{g.root_url}/openapi.json", headers={"Authorization": f"Bearer {MASTER}"}, timeout=10).json()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        schema = schemathesis.openapi.from_dict(doc)
    return [result.ok() for result in schema.get_all_operations()]


def test_no_generated_request_gets_a_5xx(fuzz_gw: GatewayProcess) -> None:
    g = fuzz_gw
    ops = operations(g)
    labels = {f"{op.method.upper()} {op.path}" for op in ops}
    assert {"POST /v1/chat/completions", "POST /v1/completions", "GET /v1/models"} <= labels, labels
    failures: list[str] = []
    with httpx.Client(base_url=g.root_url, timeout=30) as http:
        for op in ops:
            fuzz(op, http, g, failures)
    total = sum(SEEN.values())
    by_status = collections.Counter()
    for (_, status), n in SEEN.items():
        by_status[status] += n
    print(f"\nfuzz run: {total} requests over {len(ops)} operations; statuses {dict(sorted(by_status.items()))}")
    per_op = collections.Counter()
    for (label, _), n in SEEN.items():
        per_op[label] += n
    print("per operation: " + ", ".join(f"{k} {v}" for k, v in sorted(per_op.items())))
    assert total >= 500
    assert not failures, "\n".join(failures[:10])


def fuzz(op: Any, http: httpx.Client, g: GatewayProcess, failures: list[str]) -> None:
    label = f"{op.method.upper()} {op.path}"

    # Valid requests (by the schema) and invalid ones, half and half.
    cases = st.one_of(op.as_strategy(), op.as_strategy(schemathesis.GenerationMode.NEGATIVE))

    @hypothesis.settings(max_examples=EXAMPLES.get(label, DEFAULT_EXAMPLES), deadline=None, derandomize=True,
                         database=None, suppress_health_check=list(hypothesis.HealthCheck),
                         phases=[hypothesis.Phase.explicit, hypothesis.Phase.generate])
    @hypothesis.given(case=cases, route=st.sampled_from([None, *ROUTES]))
    def run(case: Any, route: str | None) -> None:
        body = case.body
        if route is not None and isinstance(body, dict) and "model" in body:
            body["model"] = route
        kwargs = case.as_transport_kwargs(base_url=g.root_url)
        headers = {k: v for k, v in (kwargs.get("headers") or {}).items() if k.lower() != "authorization"}
        headers["Authorization"] = f"Bearer {MASTER}"
        if isinstance(body, dict) or isinstance(body, list):
            headers["Content-Type"] = "application/json"
        r = http.request(kwargs["method"], kwargs["url"].replace(g.root_url, ""), headers=headers,
                         params=kwargs.get("params"), json=kwargs.get("json"),
                         content=kwargs.get("data") if isinstance(kwargs.get("data"), (bytes, str)) else None)
        SEEN[(label, r.status_code)] += 1
        if r.status_code >= 500:
            failures.append(f"{label} -> {r.status_code}: {r.text[:200]} (body {str(body)[:200]})")
        if r.headers.get("content-type", "").startswith("application/json") and r.status_code >= 400:
            doc = r.json()
            err = doc.get("error")
            if kwargs["url"].replace(g.root_url, "").startswith("/v1/messages"):  # Anthropic's API, Anthropic's shape
                assert doc.get("type") == "error" and isinstance(err, dict) and set(err) == {"type", "message"}, r.text
            else:
                assert isinstance(err, dict) and set(err) == {"message", "type", "param", "code"}, r.text

    run()
