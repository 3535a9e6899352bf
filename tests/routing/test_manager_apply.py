"""A config text applied through the manager (POST /admin/reload with a body, the console's Apply): refused
with the file's line-numbered problems and nothing changed, or swapped in and written to the config file in
one rename; validated without applying; and refused up front where there is no file the gateway may write."""

from __future__ import annotations

import asyncio
import os
import time
from pathlib import Path
from typing import AsyncIterator

import pytest

from backends.llamacpp.control import LocalControl
from backends.model_cards import load_cards
from routing import manager as manager_module
from routing.config_file import parse_config
from routing.config_mask import masked_text
from routing.config_write import NotWritable
from routing.manager import RuntimeManager

CONFIG = """\
# hand-written, with a comment
providers:
  gpu:
    kind: vllm
    base_url: http://gw:s3cr3t@127.0.0.1:1/v1
deployments:
  - {name: a, provider: gpu, model: m}
routes:
  - {name: r, deployments: [a]}
"""
BROKEN = CONFIG.replace("deployments: [a]", "deployments: [a, nope]")


@pytest.fixture
async def filed(tmp_path: Path) -> AsyncIterator[tuple[RuntimeManager, Path]]:
    path = tmp_path / "gateway.yaml"
    path.write_text(CONFIG)
    path.chmod(0o640)
    cards = load_cards()
    m = RuntimeManager(parse_config(CONFIG, str(path), known_cards=set(cards)), cards, str(path),
                       control=LocalControl())
    yield m, path
    await m.aclose()


async def test_validate_reports_the_problems_of_check_and_changes_nothing(filed: tuple[RuntimeManager, Path]) -> None:
    manager, path = filed
    result = await manager.validate(BROKEN)
    assert result == {"ok": False, "warnings": [],
                      "problems": [f"{path}:9: routes[0].deployments[1]: no deployment named 'nope'"]}
    assert (await manager.validate(masked_text(CONFIG))) == {"ok": True, "problems": [], "warnings": []}
    assert manager.current.version == 1 and manager.last_reload["version"] == 1 and path.read_text() == CONFIG
    # A local model this install cannot start is refused at its line, as check and a reload refuse it.
    missing = path.parent / "nowhere.gguf"
    local = await manager.validate(f"models:\n  - card: smollm2-135m-instruct\n    model_path: {missing}\n" + CONFIG)
    assert local["problems"] == [f"{path}:2: models[0]: model_path {missing} does not exist"]
    emptied = await manager.validate("")
    assert not emptied["ok"] and "refusing to replace version 1" in emptied["problems"][0], "as a reload would"


async def test_a_refused_text_leaves_the_file_and_the_running_config(filed: tuple[RuntimeManager, Path]) -> None:
    manager, path = filed
    old, inode = manager.current, path.stat().st_ino
    result = await manager.apply(BROKEN)
    assert not result["ok"] and result["version"] == 1 and manager.current is old
    assert result["problems"][0].startswith(f"{path}:9: routes[0].deployments[1]:")
    assert manager.last_reload == result, "the console's health page shows the refusal"
    assert path.read_text() == CONFIG and path.stat().st_ino == inode


async def test_an_accepted_text_is_swapped_in_and_replaces_the_file_in_one_rename(
        filed: tuple[RuntimeManager, Path]) -> None:
    manager, path = filed
    inode = path.stat().st_ino
    edited = masked_text(CONFIG) + "  - {name: r2, deployments: [a]}\n"
    result = await manager.apply(edited)
    assert result["ok"] and result["version"] == 2 and "r2" in manager.current.routes
    written = path.read_text()
    assert written == CONFIG + "  - {name: r2, deployments: [a]}\n", "the mask is the running secret again"
    assert path.stat().st_ino != inode, "a new file renamed over the old one, never rewritten in place"
    assert oct(path.stat().st_mode & 0o777) == "0o640", "its permissions kept"
    assert [p.name for p in path.parent.iterdir()] == ["gateway.yaml"], "no temporary file left behind"
    assert manager._file_stamp() == manager._stamp, "the watcher of this worker sees nothing to reload"


async def test_no_file_or_a_read_only_one_refuses_before_anything(filed: tuple[RuntimeManager, Path],
                                                                  tmp_path: Path) -> None:
    manager, path = filed
    path.chmod(0o444)
    with pytest.raises(NotWritable, match="is read-only"):
        await manager.apply(CONFIG + "  - {name: r2, deployments: [a]}\n")
    assert manager.current.version == 1 and path.read_text() == CONFIG
    path.chmod(0o640)
    manager.config_path = None
    with pytest.raises(NotWritable, match="started without --config"):
        await manager.apply(CONFIG)
    assert manager.current.version == 1


async def test_the_watcher_does_not_reload_an_applied_text_again(filed: tuple[RuntimeManager, Path]) -> None:
    manager, path = filed
    watcher = asyncio.create_task(manager._watch_loop())
    try:
        await manager.apply(CONFIG + "  - {name: r2, deployments: [a]}\n")
        await asyncio.sleep(manager.current.config.server.watch_interval_s * 2.5)
        assert manager.current.version == 2, "the write is this worker's own: no second reload"
        path.write_text(CONFIG)  # an edit by hand afterwards is still seen
        os.utime(path, ns=(path.stat().st_mtime_ns + 10**9,) * 2)
        for _ in range(50):
            if manager.current.version == 3:
                break
            await asyncio.sleep(0.1)
        assert manager.current.version == 3 and "r2" not in manager.current.routes
    finally:
        watcher.cancel()
        await asyncio.gather(watcher, return_exceptions=True)


async def test_the_watcher_waits_for_an_apply_that_is_still_writing(filed: tuple[RuntimeManager, Path],
                                                                    monkeypatch: pytest.MonkeyPatch) -> None:
    """The file changes before the apply has taken note of its own write (a slow disk between the rename and
    the fsync of the folder): the watcher, which looks under the same lock, must not take it for an edit."""
    manager, path = filed
    real_write = manager_module.write_atomically

    def slow_write(where: str, text: str) -> Path:
        written = real_write(where, text)
        time.sleep(0.5)  # in the apply's thread: the event loop (and the watcher) run meanwhile
        return written

    monkeypatch.setattr(manager_module, "write_atomically", slow_write)
    monkeypatch.setattr(manager.current.config.server, "watch_interval_s", 0.02)
    watcher = asyncio.create_task(manager._watch_loop())
    try:
        assert (await manager.apply(CONFIG + "  - {name: r2, deployments: [a]}\n"))["ok"]
        await asyncio.sleep(0.2)
        assert manager.current.version == 2, "one apply, one version"
    finally:
        watcher.cancel()
        await asyncio.gather(watcher, return_exceptions=True)
