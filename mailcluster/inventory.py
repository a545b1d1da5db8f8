"""Inventory groups from a site file: what inventory/*.py hand to pyinfra."""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Any

from mailcluster import site as site_mod

GROUPS = ("mail", "webmail", "db")


def load_or_exit(path: Path) -> site_mod.Site:
    """Validate the site file, or stop the run before any host is touched."""
    site_mod.select(path)
    try:
        return site_mod.load(path)
    except site_mod.SiteError as exc:
        print(f"mailcluster: invalid site configuration, no host touched:\n{exc}", file=sys.stderr)
        raise SystemExit(2) from None


def groups(
    site: site_mod.Site, connect: dict[str, dict[str, Any]] | None = None
) -> dict[str, list[tuple[str, dict[str, Any]]]]:
    """``{group: [(name, host data)]}``; ``connect`` adds per-host connection data."""
    out: dict[str, list[tuple[str, dict[str, Any]]]] = {g: [] for g in GROUPS}
    for h in site.hosts:
        data = {"ssh_hostname": str(h.address), **(connect or {}).get(h.name, {})}
        for g in h.groups:
            out[g].append((h.name, data))
    return out
