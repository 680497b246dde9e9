"""Nothing a test builds may carry the names users deploy."""

from __future__ import annotations

import re
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]


def image_names(compose: str, image_var: str | None) -> dict[str, str]:
    """service -> image as docker compose resolves it with PARASERVE_IMAGE set to `image_var` (None: unset)."""
    names, service = {}, None
    for line in compose.splitlines():
        if m := re.match(r"^  ([a-z0-9_-]+):$", line):
            service = m.group(1)
        elif service and (m := re.match(r"^    image: (.+)$", line)):
            names[service] = re.sub(r"\$\{PARASERVE_IMAGE:-([^}]*)\}", lambda d: image_var or d.group(1), m.group(1).strip())
    return names


def test_the_e2e_script_tags_its_images_apart_from_the_deployable_ones():
    compose = (ROOT / "docker-compose.yml").read_text()
    script = (ROOT / "scripts" / "compose-e2e.sh").read_text()
    e2e_var = re.search(r"^export PARASERVE_IMAGE=(\S+)$", script, re.MULTILINE)
    assert e2e_var, "compose-e2e.sh must set PARASERVE_IMAGE"
    deployable, tested = image_names(compose, None), image_names(compose, e2e_var.group(1))
    assert deployable["int8"] == "paraserve:int8" and deployable["fp32"] == "paraserve:fp32"
    built_by_e2e = {tested[s] for s in ("int8", "fp32")}
    assert not built_by_e2e & {deployable[s] for s in ("int8", "fp32", "loadtest")}, built_by_e2e
