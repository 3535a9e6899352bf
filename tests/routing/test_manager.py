"""The runtime manager on its own: reloads that swap, reloads that are refused, what a reload carries over,
and health checks. No gateway process: remote deployments point at a closed loopback port."""

from __future__ import annotations

from typing import AsyncIterator

import pytest

from backends.llamacpp.control import LocalControl
from backends.model_cards import load_cards
from routing.config_file import parse_config
from routing.manager import RuntimeManager
from tests.import_blocker import blocking

CONFIG = """\
providers:
  gpu:
    kind: vllm
    base_url: http://127.0.0.1:1/v1
  other:
    kind: openai
    base_url: http://127.0.0.1:1/v1
deployments:
  - {name: a, provider: gpu, model: m}
  - {name: b, provider: other, model: m}
routes:
  - {name: r, deployments: [a, b]}
"""


@pytest.fixture
async def manager() -> AsyncIterator[RuntimeManager]:
    cards = load_cards()
    m = RuntimeManager(parse_config(CONFIG, known_cards=set(cards)), cards, control=LocalControl())
    yield m
    await m.aclose()


async def test_a_valid_reload_swaps_and_carries_over_what_did_not_change(manager: RuntimeManager) -> None:
    old = manager.current
    a, b = old.deployments["a"], old.deployments["b"]
    for _ in range(5):
        a.breaker.record_failure()
    assert a.breaker.state == "open"
    changed = CONFIG.replace("  - {name: b, provider: other, model: m}", "  - {name: b, provider: other, model: m2}")
    result = await manager.reload(changed + "  - {name: r2, deployments: [b]}\n")
    assert result["ok"] and result["version"] == 2 and manager.current is not old
    new = manager.current
    assert set(new.routes) >= {"r", "r2"} and old.routes.get("r2") is None, "requests already running keep theirs"
    assert new.deployments["a"].backend is a.backend, "an unchanged deployment keeps its backend (and pool)"
    assert new.deployments["a"].breaker is a.breaker and new.deployments["a"].breaker.state == "open"
    assert new.deployments["b"].backend is not b.backend, "a changed deployment is built anew"


@pytest.mark.parametrize("text, line", [
    (CONFIG.replace("routes:", "routes: [oops"), None),  # invalid YAML
    (CONFIG.replace("deployments: [a, b]", "deployments: [a, missing]"), 12),  # a dangling reference
    ("", 1),  # an emptied file: a truncated write, never applied
])
async def test_a_bad_reload_is_refused_with_line_numbers_and_the_old_config_serves(
        manager: RuntimeManager, text: str, line: int | None) -> None:
    old = manager.current
    result = await manager.reload(text)
    assert not result["ok"] and result["version"] == 1 and manager.current is old
    assert result["problems"] and all(p.startswith("<config>:") for p in result["problems"])
    if line is not None:
        assert result["problems"][0].startswith(f"<config>:{line}:"), result["problems"]
    assert manager.last_reload == result


async def test_a_reload_is_refused_with_schema_and_cross_reference_problems_at_once(manager: RuntimeManager) -> None:
    """One refusal lists both: a bad field in one route, a dangling reference in another, by line."""
    text = CONFIG.replace("  - {name: r, deployments: [a, b]}",
                          "  - {name: r, deployments: [a, b], retry: {max_attempts: 0}}\n"
                          "  - {name: r2, deployments: [a, nope]}")
    result = await manager.reload(text)
    assert not result["ok"] and manager.current.version == 1
    assert [p.split(": ", 2)[:2] for p in result["problems"]] == [
        ["<config>:12", "routes[0].retry.max_attempts"], ["<config>:13", "routes[1].deployments[1]"]]
    assert "no deployment named 'nope'" in result["problems"][1]


async def test_a_reload_adding_a_local_model_whose_weights_are_not_here_is_refused_at_its_line(
        manager: RuntimeManager, tmp_path) -> None:
    missing = tmp_path / "nowhere.gguf"
    result = await manager.reload(f"models:\n  - card: smollm2-135m-instruct\n    model_path: {missing}\n" + CONFIG)
    assert not result["ok"] and manager.current.version == 1
    assert result["problems"] == [f"<config>:2: models[0]: model_path {missing} does not exist"]


async def test_a_reload_adding_a_local_model_on_a_remote_only_install_is_refused_at_its_line(
        manager: RuntimeManager, monkeypatch: pytest.MonkeyPatch) -> None:
    """Without llama.cpp (the `local` extra) the new model could never start: refused before the swap, with
    the way out, and the remote routes keep serving."""
    blocking(monkeypatch)
    result = await manager.reload("models:\n  - card: smollm2-135m-instruct\n" + CONFIG)
    assert not result["ok"] and manager.current.version == 1 and "r" in manager.current.routes
    (problem,) = result["problems"]
    assert problem.startswith("<config>:2: models[0]: local model 'smollm2-135m-instruct' needs llama.cpp"), problem
    assert "pip install 'llm-gateway-server[local]'" in problem


async def test_a_reload_without_a_file_is_refused(manager: RuntimeManager) -> None:
    result = await manager.reload()
    assert not result["ok"] and "started without --config" in result["problems"][0]


async def test_health_checks_mark_a_deployment_that_does_not_answer(manager: RuntimeManager) -> None:
    deps = manager.current.deployments
    assert all(d.healthy for d in deps.values())
    await manager.check_health()
    assert not deps["a"].healthy, "nothing listens on 127.0.0.1:1: the vLLM health probe fails"


async def test_a_health_check_that_sees_a_deployment_come_back_lets_its_open_breaker_probe_now(
        manager: RuntimeManager, monkeypatch: pytest.MonkeyPatch) -> None:
    a = manager.current.deployments["a"]
    for _ in range(5):
        a.breaker.record_failure()
    assert a.breaker.state == "open" and not a.breaker.available(), "30 s of cooldown ahead"
    await manager.check_health()  # nothing listens: unhealthy, and the breaker waits on
    assert not a.healthy and not a.breaker.available()

    async def answers() -> bool:
        return True

    monkeypatch.setattr(a.backend, "probe", answers)
    await manager.check_health()
    assert a.healthy and a.breaker.available(), "healthy again: the next request is the probe"
    assert a.breaker.allow() and a.breaker.state == "half_open"
