"""`vlmedge formats --architectures` and the README's architecture table say the same thing,
both computed by the export's own checks (vlmedge.exporters.sources.supported_architectures)."""

from __future__ import annotations

import re
from pathlib import Path

README = Path(__file__).resolve().parents[1] / "README.md"


def test_readme_architecture_table_is_what_formats_lists():
    from vlmedge.formats import architectures, architectures_markdown

    expected = architectures_markdown(architectures())
    block = re.search(r"<!-- architectures:start -->\n(.*?)\n<!-- architectures:end -->", README.read_text(), re.S)
    assert block, "README.md has no architecture table between its markers"
    assert block.group(1).strip() == expected, "README's architecture table is stale; replace it with:\n" + expected


def test_every_refused_architecture_says_why():
    from vlmedge.formats import architectures

    rows = architectures()
    assert rows and all(r["reason"] for r in rows if r["exports"] == "no")
    assert sum(r["exports"] == "yes" for r in rows) >= 0.85 * len(rows)
