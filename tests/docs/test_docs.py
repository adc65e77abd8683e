"""The docs stay true: README's set-up section and links, the pass reference equals `graphc passes
--markdown`, the recipe key table equals the recipe's declaration, and every doc link resolves."""
from __future__ import annotations

import re

from doc_commands import ROOT
from graphc.recipe import key_reference
from graphc.report.markdown import passes_markdown, recipe_keys_markdown
from graphc.report.passes import pass_catalog

DOCS = ROOT / "docs"


def test_pass_reference_is_the_output_of_graphc_passes_markdown():
    assert (DOCS / "passes.md").read_text() == passes_markdown(pass_catalog()), \
        "docs/passes.md is stale: run `graphc passes --markdown > docs/passes.md`"


def test_recipe_key_table_is_generated_from_the_recipe():
    text = (DOCS / "recipes.md").read_text()
    assert recipe_keys_markdown(key_reference()) in text, \
        "the key table of docs/recipes.md is stale: paste recipe_keys_markdown(key_reference())"


def test_readme_keeps_the_two_setup_commands_first_and_stays_short():
    readme = (ROOT / "README.md").read_text()
    first = readme.split("\n## ")[1]
    assert first.startswith("Set up and run") and "make demo" in first and "make test" in first
    assert "A 30-second tour" in readme and len(readme.splitlines()) < 80
    for doc in ("docs/tutorial.md", "docs/recipes.md", "docs/passes.md", "docs/report-schema.md",
                "docs/writing-a-pass.md"):
        assert f"]({doc})" in readme


def test_every_relative_link_in_the_docs_resolves():
    pages = [ROOT / "README.md", *DOCS.glob("*.md")]
    for page in pages:
        for target in re.findall(r"\]\(([^)#\s]+)\)", page.read_text()):
            if "://" in target:
                continue
            assert (page.parent / target).exists(), f"{page.name} links to missing {target}"
