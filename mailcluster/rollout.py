"""Rolling deploy: the same deploy as `pyinfra INVENTORY deploy.py`, a batch at a time.

    python -m mailcluster.rollout [-i INVENTORY] [--batch-percent N] [PYINFRA OPTIONS]

1. Every host is checked first; a rollout starts only from a healthy cluster.
2. The hosts that are not mail nodes (webmail, db) are deployed first, as one batch, and
   their webmail answers checked.
3. The mail nodes follow in batches of ``rollout.batch_percent`` of them (site setting,
   25% by default), in site order. After each batch, every node of the batch must let
   the site's check account log in over IMAPS (and SELECT INBOX) and over SMTP
   submission (STARTTLS, AUTH) within ``rollout.check_timeout_s``.
4. The first batch that fails to deploy or to pass its checks stops the rollout: the
   batches after it are not touched, and the command exits 1 naming host and check.

A change of the user -> backend map (a node added or draining) must reach every mail
node at once, so the deploy refuses it during a rollout; use the plain deploy for that.
"""

from __future__ import annotations

import argparse
import math
import os
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path

from mailcluster import health
from mailcluster.mailctl import REPO, MailctlError, load_site
from mailcluster.site import Host, Site, SiteError

DEFAULT_INVENTORY = "inventory/production.py"
# Tells the deploy it runs one batch of a rollout (see roles/dovecot_passdb.py: moves refused).
ROLLOUT_ENV = "MAILCLUSTER_ROLLOUT"


class RolloutError(Exception):
    pass


def batches(nodes: list[Host], percent: int) -> list[list[Host]]:
    """``nodes`` in order, in batches of ceil(percent% of them), at least one each."""
    size = max(1, math.ceil(len(nodes) * percent / 100))
    return [nodes[i : i + size] for i in range(0, len(nodes), size)]


def _say(text: str) -> None:
    print(f"rollout: {text}", flush=True)


def _checks(site: Site, h: Host, password: str | None) -> list[Callable[[], str | None]]:
    t = health.Target(
        str(h.address), str(site.tls.ca_cert), {str(k): v for k, v in site.service_names.items()}
    )
    out: list[Callable[[], str | None]] = []
    if "mail" in h.groups:
        user = site.rollout.check_user
        assert user is not None and password is not None
        out += [lambda: health.imap_login(t, user, password)]
        out += [lambda: health.smtp_login(t, user, password)]
    if "webmail" in h.groups:
        out.append(lambda: health.webmail_page(t))
    return out


def healthy(site: Site, hosts: list[Host], password: str | None, timeout_s: float) -> str | None:
    """None when every check of every host passes within ``timeout_s``, else the first
    failure still failing at the deadline."""
    deadline = time.monotonic() + timeout_s
    for h in hosts:
        for check in _checks(site, h, password):
            while (problem := check()) is not None:
                if time.monotonic() > deadline:
                    return f"{h.name}: {problem}"
                time.sleep(2)
    return None


def deploy(inventory: str, hosts: list[Host], extra: list[str]) -> int:
    limits = [arg for h in hosts for arg in ("--limit", h.name)]
    cmd = [sys.executable, "-m", "pyinfra", "-y", inventory, "deploy.py", *limits, *extra]
    env = {**os.environ, ROLLOUT_ENV: "1"}
    return subprocess.run(cmd, cwd=REPO, env=env).returncode


def check_password(site: Site) -> str:
    path = site.rollout.check_password_file
    if site.rollout.check_user is None or path is None:
        raise RolloutError(
            "the site has no rollout.check_user / rollout.check_password_file: the rollout "
            "needs an account to log in with after each batch (docs/RUNBOOK.md)"
        )
    try:
        return Path(path).read_text().strip()
    except OSError as exc:
        raise RolloutError(f"rollout.check_password_file {path}: {exc.strerror}") from None


def rollout(
    inventory: str, percent: int | None, extra: list[str], timeout: int | None = None
) -> None:
    site = load_site(inventory)
    password = check_password(site)
    percent = percent or site.rollout.batch_percent
    timeout = timeout or site.rollout.check_timeout_s
    mail = site.in_group("mail")
    others = [h for h in site.hosts if "mail" not in h.groups]
    plan = ([others] if others else []) + batches(mail, percent)

    _say(f"checking all {len(site.hosts)} hosts before starting")
    problem = healthy(site, site.hosts, password, timeout)
    if problem:
        raise RolloutError(f"not starting: the cluster is unhealthy already ({problem})")

    for i, batch in enumerate(plan, 1):
        names = ", ".join(h.name for h in batch)
        rest = [h.name for b in plan[i:] for h in b]
        untouched = f"; not touched: {', '.join(rest)}" if rest else ""
        _say(f"batch {i}/{len(plan)}: deploying {names}")
        if deploy(inventory, batch, extra) != 0:
            raise RolloutError(f"batch {i} ({names}): the deploy failed; stopped{untouched}")
        _say(f"batch {i}/{len(plan)}: checking {names}")
        problem = healthy(site, batch, password, timeout)
        if problem:
            raise RolloutError(f"batch {i} unhealthy after deploy ({problem}); stopped{untouched}")
        _say(f"batch {i}/{len(plan)}: healthy")
    _say(f"done: {len(site.hosts)} hosts in {len(plan)} batches, all healthy")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m mailcluster.rollout",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("-i", "--inventory", default=DEFAULT_INVENTORY)
    parser.add_argument(
        "--batch-percent",
        type=int,
        choices=range(1, 101),
        metavar="1-100",
        help="mail nodes per batch, in percent (default: the site's rollout.batch_percent)",
    )
    parser.add_argument(
        "--check-timeout",
        type=int,
        metavar="SECONDS",
        help="how long a changed host may take to pass (default: rollout.check_timeout_s)",
    )
    args, extra = parser.parse_known_args(argv)
    try:
        rollout(args.inventory, args.batch_percent, extra, args.check_timeout)
    except (RolloutError, MailctlError, SiteError) as exc:
        _say(f"error: {exc}")
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
