"""The README and docs/ stay one page to start from and a reference that matches the code: every setting documented,
every relative link resolving, every page in the site's index, the README short. (`mkdocs build --strict` in CI
checks the links and anchors inside docs/.)"""

from __future__ import annotations

import re
from pathlib import Path

import yaml

from app.shared.config import Settings

ROOT = Path(__file__).resolve().parents[2]
LINK = re.compile(r"\]\(([^)#\s]+)(#[^)\s]*)?\)")


def test_the_settings_and_metrics_tables_are_what_the_code_generates():
    from scripts.gen_docs import render

    api = (ROOT / "docs" / "api.md").read_text()
    assert render(api) == api, "docs/api.md is stale: run python -m scripts.gen_docs"


def test_the_generated_tables_hold_every_setting_with_its_default_and_every_metric():
    from scripts.gen_docs import metrics_table, settings_table

    settings = settings_table()
    for name, field in Settings.model_fields.items():
        row = next(line for line in settings.splitlines() if line.startswith(f"| `PARASERVE_{name.upper()}` |"))
        if isinstance(field.default, int | float) and not isinstance(field.default, bool):
            assert f"`{field.default}`" in row, row  # the default the code has, not one a page remembers
    metrics = metrics_table()
    for metric in ("paraserve_grpc_refused_total", "paraserve_cascade_pairs_total", "paraserve_queue_depth_pairs"):
        assert f"| `{metric}` |" in metrics


def test_the_readme_is_one_short_page_whose_links_resolve():
    readme = (ROOT / "README.md").read_text()
    assert len(readme.splitlines()) < 200
    local = [target for target, _ in LINK.findall(readme) if not target.startswith(("http://", "https://"))]
    assert local and all((ROOT / target).exists() for target in local), [t for t in local if not (ROOT / t).exists()]


def test_every_docs_page_is_in_the_site_index():
    nav = yaml.safe_load((ROOT / "mkdocs.yml").read_text())["nav"]
    listed = {page for entry in nav for page in entry.values()}
    pages = {p.name for p in (ROOT / "docs").glob("*.md")}
    assert pages == listed, f"in docs/ but not in mkdocs.yml nav: {pages - listed}; listed but missing: {listed - pages}"


def test_no_placeholder_is_left_in_the_pages():
    for page in [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]:
        text = page.read_text()
        assert not re.search(r"\b[A-Z]+(-[A-Z]+)+-(TABLE|RUN|EXAMPLE)\b|FULL-RUN|MEASURE-ME", text), page.name
