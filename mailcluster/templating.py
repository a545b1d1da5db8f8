"""Rendering templates/<service>/<file>.j2: StrictUndefined, and a managed-by banner on top."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import jinja2

TEMPLATES = Path(__file__).resolve().parent.parent / "templates"

_env = jinja2.Environment(
    loader=jinja2.FileSystemLoader(str(TEMPLATES)),
    # A missing value is an error at render time, never an empty string in a live config.
    undefined=jinja2.StrictUndefined,
    keep_trailing_newline=True,
    trim_blocks=True,
    lstrip_blocks=True,
    autoescape=False,
)


def managed_banner(template: str, comment: str = "#") -> str:
    return (
        f"{comment} Managed by mailcluster, from templates/{template}.\n"
        f"{comment} Do not edit: local changes are overwritten on the next deploy.\n"
    )


def render(template: str, comment: str = "#", banner: bool = True, **context: Any) -> str:
    """Render ``templates/<template>`` with the banner first (``comment`` is its marker)."""
    body = _env.get_template(template).render(**context)
    return (managed_banner(template, comment) if banner else "") + body
