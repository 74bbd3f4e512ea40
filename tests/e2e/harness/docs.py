"""The examples the docs show, read from the pages themselves, so that a test runs
exactly what a reader copies.

A block is marked by an HTML comment on the line before its fence:
`<!-- example: jwt -->` before a full filter configuration (```json, on the filter's
page under docs/filters/; the Rust test `crates/combined-config/tests/docs.rs`
parses every one), `<!-- quickstart: envoy -->` before a snippet of the landing page.
"""

import json
import re

from .paths import ROOT


def marked_block(page: str, marker: str, index: int = 0) -> str:
    """The text of the `index`-th fenced block marked `<!-- marker -->` on `page` (a
    path relative to the repository root)."""
    text = (ROOT / page).read_text()
    pattern = r"^<!-- " + re.escape(marker) + r" -->\n```[a-z]*\n(.*?)^```"
    blocks = re.findall(pattern, text, re.S | re.M)
    assert len(blocks) > index, f"{page} has no block marked <!-- {marker} --> (#{index})"
    return blocks[index]


def doc_example(page: str, filter_name: str, index: int = 0) -> dict:
    """A filter's example configuration (`<!-- example: <filter> -->`) as a dict."""
    return json.loads(marked_block(page, f"example: {filter_name}", index))
