"""The config's secrets, masked in its text as in its data (routing/config_mask.py), and put back from the
running file when an edited text leaves a mask where it was; a mask that matches nothing is a problem."""

from __future__ import annotations

import yaml

from routing.config_file import parse_config
from routing.config_mask import MASK, mask_secrets, masked_text, restore_masked

TEXT = """\
# the comment stays
providers:
  up:
    kind: openai
    base_url: http://gw:s3cr3t-pass@127.0.0.1:9/v1   # a literal password in a URL
    api_key: ${UP_KEY}
    headers: {X-Title: my app, X-Count: "3"}
  other:
    kind: vllm
    base_url: "http://127.0.0.1:10/v1"
deployments:
  - {name: a, provider: up, model: m}
  - name: b
    provider: other
    model: m
    headers:
      X-Team: research
routes:
  - name: r
    deployments: [a, b]
    last_resort: {message: "***"}
"""


def test_the_text_masks_what_the_data_masks_and_keeps_the_rest() -> None:
    shown = masked_text(TEXT)
    for secret in ("s3cr3t-pass", "my app", "research"):
        assert secret not in shown
    assert "# the comment stays" in shown and "${UP_KEY}" in shown, "references and comments are kept"
    assert "'http://gw:***@127.0.0.1:9/v1'   # a literal password in a URL" in shown
    as_data = yaml.safe_load(shown)
    assert mask_secrets(yaml.safe_load(TEXT)) == as_data, "the same rule for the text and for the data"
    assert as_data["routes"][0]["last_resort"]["message"] == MASK, "a value of its own, not a mask"


def test_masks_left_in_place_get_the_running_values_back() -> None:
    shown = masked_text(TEXT)
    edited = shown.replace("deployments: [a, b]", "deployments: [b, a]")
    restored, problems = restore_masked(edited, TEXT, "gw.yaml")
    assert problems == []
    assert restored == TEXT.replace("deployments: [a, b]", "deployments: [b, a]"), "byte for byte, but the edit"
    parse_config(restored.replace("${UP_KEY}", "${UP_KEY:-x}"))  # and a config that parses


def test_a_mask_that_moved_is_a_line_numbered_problem_never_written() -> None:
    moved = masked_text(TEXT).replace("  up:\n", "  renamed:\n").replace("provider: up,", "provider: renamed,")
    restored, problems = restore_masked(moved, TEXT, "gw.yaml")
    assert [p.split(": ")[0:2] for p in problems] == [["gw.yaml:5", "providers.renamed.base_url"],
                                                       ["gw.yaml:7", "providers.renamed.headers.X-Title"],
                                                       ["gw.yaml:7", "providers.renamed.headers.X-Count"]]
    assert "stands for a secret of the running config" in problems[0]
    # A new value written over a mask is the new value; the `***` of a field that is no secret is its own.
    fresh = masked_text(TEXT).replace("'http://gw:***@127.0.0.1:9/v1'", "http://gw:n3w@127.0.0.1:9/v1")
    restored, problems = restore_masked(fresh, TEXT, "gw.yaml")
    assert problems == [] and "gw:n3w@" in restored and "s3cr3t" not in restored
    assert 'message: "***"' in restored


def test_without_a_running_file_a_mask_is_a_problem() -> None:
    _, problems = restore_masked("providers:\n  up:\n    kind: openai\n    base_url: http://u:***@h/v1\n", None, "<c>")
    assert len(problems) == 1 and problems[0].startswith("<c>:4: providers.up.base_url:")
