"""README, "API": `/docs` in a real browser (headless Chromium, tests/browser.py) renders the gateway's own
OpenAPI document from assets the gateway serves, with no error in the page, and its "Try it out" calls the
running gateway with the key typed into "Authorize"."""

from __future__ import annotations

from typing import Any, Iterator

import pytest

from tests import browser as harness
from tests.server import GatewayProcess
from tests.sim import VLLMSim

pytestmark = harness.MARKS

MASTER = "sk-master-docs-browser-0000"


@pytest.fixture(scope="module")
def docs_gateway(tmp_path_factory: pytest.TempPathFactory) -> Iterator[GatewayProcess]:
    """A gateway with `server.docs` on, in front of a simulated vLLM (no model to load)."""
    sim = VLLMSim("vllm-docs").start()
    config = {
        "server": {"docs": True, "public_openapi": True},
        "models": [],
        "providers": {"up": {"kind": "vllm", "base_url": f"{sim.url}/v1"}},
        "deployments": [{"name": "d", "provider": "up", "model": "vllm-model"}],
        "routes": [{"name": "docs-route", "deployments": ["d"]}],
        "batches": {"files_dir": str(tmp_path_factory.mktemp("docs-files"))},
    }
    try:
        with GatewayProcess(config, env={"LLM_GATEWAY_MASTER_KEY": MASTER}, ready_timeout=60) as gw:
            yield gw
    finally:
        sim.stop()


async def test_docs_render_the_api_and_try_it_out_calls_the_gateway(page: Any, docs_gateway: GatewayProcess) -> None:
    seen: list[str] = []
    page.on("request", lambda r: seen.append(r.url))
    await page.goto(f"{docs_gateway.root_url}/docs")
    await page.locator(".information-container .title").filter(has_text="llm-gateway").wait_for()
    chat = page.locator("#operations-openai-createChatCompletion")  # Swagger UI's id: tag, operationId
    await chat.wait_for()
    assert "/v1/chat/completions" in await chat.locator(".opblock-summary-path").inner_text()
    await harness.shot(page, "loaded", full_page=False)

    await page.get_by_role("button", name="Authorize").first.click()
    dialog = page.locator(".dialog-ux")
    await dialog.get_by_label("auth-bearer-value").fill(MASTER)
    await dialog.get_by_role("button", name="Apply credentials").first.click()
    await dialog.locator("button", has_text="Logout").first.wait_for()  # the bearer scheme now holds the key
    await dialog.locator(".close-modal").click()

    models = page.locator("#operations-openai-listModels")
    await models.locator(".opblock-summary").click()
    await models.get_by_role("button", name="Try it out").click()
    await models.get_by_role("button", name="Execute").click()
    live = models.locator(".live-responses-table .response")
    await live.wait_for()
    assert (await live.locator(".response-col_status").inner_text()).strip() == "200"
    body = await live.locator(".response-col_description pre").first.inner_text()
    assert '"docs-route"' in body, body
    await live.scroll_into_view_if_needed()
    await harness.shot(page, "models", full_page=False)

    origins = {url.split("/", 3)[2] for url in seen if url.startswith("http")}
    assert origins == {f"127.0.0.1:{docs_gateway.port}"}, f"the page loaded from nowhere else: {origins}"
