"""Rendering templates/<service>/<file>.j2: StrictUndefined, and a managed-by banner on top.

``MAILCLUSTER_TEMPLATE_PATH`` (colon-separated folders) is searched before templates/:
a site overrides one template without forking the repo, and the tests use it to prove
that a broken template never reaches a live file.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import jinja2

TEMPLATES = Path(__file__).resolve().parent.parent / "templates"

TEMPLATE_PATH_ENV = "MAILCLUSTER_TEMPLATE_PATH"


def search_path() -> list[str]:
    extra = [p for p in os.environ.get(TEMPLATE_PATH_ENV, "").split(":") if p]
    return [*extra, str(TEMPLATES)]


def _environment() -> jinja2.Environment:
    return jinja2.Environment(
        loader=jinja2.FileSystemLoader(search_path()),
        # A missing value is an error at render time, never an empty string in a live config.
        undefined=jinja2.StrictUndefined,
        keep_trailing_newline=True,
        trim_blocks=True,
        lstrip_blocks=True,
        autoescape=False,
    )


def managed_banner(source: str, comment: str = "#") -> str:
    return (
        f"{comment} Managed by mailcluster, from {source}.\n"
        f"{comment} Do not edit: local changes are overwritten on the next deploy.\n"
    )


def render(template: str, comment: str = "#", banner: bool = True, **context: Any) -> str:
    """Render ``templates/<template>`` with the banner first (``comment`` is its marker;
    after the ``#!`` line of a script)."""
    tmpl = _environment().get_template(template)
    body = tmpl.render(**context)
    path = Path(tmpl.filename or template)
    source = (
        str(path.relative_to(TEMPLATES.parent))
        if path.is_relative_to(TEMPLATES.parent)
        else str(path)
    )
    if not banner:
        return body
    if body.startswith("#!"):  # a script's interpreter line stays first
        shebang, _, rest = body.partition("\n")
        return f"{shebang}\n{managed_banner(source, comment)}{rest}"
    return managed_banner(source, comment) + body
