"""The proxy configs of docs/VERIFY.md, read as the tests and benches run them: exactly as written."""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path


def config_block(docs: Path, heading: str, language: str, substitutions: Mapping[str, str]) -> str:
    """The first fenced ```language block after `heading` in `docs`, exactly as written but for each
    `old → new` of `substitutions` (applied in order: the ports of this run for the documented ones)."""
    text = docs.read_text()
    block = text.split(heading, 1)[1].split(f"```{language}\n", 1)[1].split("```", 1)[0]
    for old, new in substitutions.items():
        block = block.replace(old, new)
    return block
