"""Operations shared by the roles: a managed file validated before it goes live, service
reloads that a failed run cannot lose, and a barrier that orders roles across hosts."""

from __future__ import annotations

import difflib
import hashlib
import shlex
from io import StringIO
from typing import Any

from pyinfra import host, logger, state
from pyinfra.api import FileUploadCommand, StringCommand, operation
from pyinfra.facts.files import File, FileContents, Sha1File

from mailcluster.templating import render


@operation()
def managed_file(
    dest: str,
    template: str | None = None,
    context: dict[str, Any] | None = None,
    validate: str | None = None,
    mode: str = "644",
    user: str = "root",
    group: str = "root",
    comment: str = "#",
    banner: bool = True,
    notify: list[str] | None = None,
    always: bool = False,
    secret: bool = False,
    content: str | None = None,
):
    """Render ``template`` to ``dest``; the live file changes only if the candidate validates.

    + validate: a shell command run on the candidate, ``{path}`` standing for its path
      (``doveconf -n -c {path}``, ``exim -bV -C {path}``); on failure the candidate is
      removed, the live file and the running service are untouched, and the run stops.
    + banner: False only for files whose format has no comments (/etc/timezone).
    + notify: "service.action" markers (see ``service_action``) written in the same step
      as the new file goes live, so a run that stops before the reload leaves it pending.
    + always: write even if the live file already has this content (facts are read before
      the run: an earlier step of the same run may have replaced the file meanwhile).
    + secret: the file holds secrets (keys, passwords, password hashes): ``--diff`` says
      which lines change, never what they hold (a dry run's output ends up in terminals,
      tickets and CI logs).
    + content: the file's text as is, instead of a template (e.g. a private key).
    """
    if content is None:
        if template is None:
            raise ValueError(f"{dest}: managed_file needs a template or content")
        content = render(template, comment=comment, banner=banner, **(context or {}))
    source = f"templates/{template}" if template else "the site's file"
    digest = hashlib.sha1(content.encode()).hexdigest()
    remote = host.get_fact(File, path=dest)
    # pyinfra's File fact reports mode as the octal digits read as decimal (0o640 -> 640).
    want_mode = int(mode)

    if remote and not always and host.get_fact(Sha1File, path=dest) == digest:
        # Same content: only ownership and mode may need mending.
        q = shlex.quote(dest)
        if remote["user"] != user or remote["group"] != group:
            yield StringCommand(f"chown {user}:{group} {q}")
        if remote["mode"] != want_mode:
            yield StringCommand(f"chmod {mode} {q}")
        return

    if state.config.DIFF:
        old = host.get_fact(FileContents, path=dest) if remote else []
        verb = "modify" if remote else "create"
        if secret:
            host.log(f"Will {verb} {dest} (it holds secrets: values not shown)", logger.info)
            for line in redacted_diff(old or [], content.splitlines()):
                logger.info("  %s", line)
        else:
            host.log(f"Will {verb} {dest}", logger.info)
            for line in difflib.unified_diff(
                [line + "\n" for line in (old or [])],
                content.splitlines(keepends=True),
                fromfile=f"{dest} (live)",
                tofile=f"{dest} ({source})",
            ):
                logger.info("  %s", line.rstrip("\n"))

    candidate = f"{dest}.mailcluster-new"
    q_cand, q_dest = shlex.quote(candidate), shlex.quote(dest)
    yield StringCommand(f"mkdir -p {shlex.quote(dest.rsplit('/', 1)[0] or '/')}")
    yield FileUploadCommand(StringIO(content), candidate)
    # Ownership and mode before the rename: the live name never holds a looser file.
    yield StringCommand(f"chown {user}:{group} {q_cand} && chmod {mode} {q_cand}")
    if validate:
        check = validate.format(path=q_cand)
        yield StringCommand(
            f"if ! out=$({check} 2>&1); then rm -f {q_cand}; "
            f'echo "validation failed, {dest} left unchanged: $out" >&2; exit 1; fi'
        )
    marks = "".join(f" && touch {PENDING}/{shlex.quote(m)}" for m in notify or [])
    if marks:
        yield StringCommand(f"mkdir -p {PENDING}")
    yield StringCommand(f"mv -f {q_cand} {q_dest}{marks}")


def redacted_diff(old: list[str], new: list[str]) -> list[str]:
    """Which lines of a secret-bearing file a change touches, by number, with nothing of
    what they hold: ``replace: lines 3-4 (live) -> lines 3-5 (new)``."""

    def span(a: int, b: int) -> str:
        if a == b:
            return "none"
        return f"line {a + 1}" if b == a + 1 else f"lines {a + 1}-{b}"

    out = [f"{len(old)} lines live, {len(new)} lines new"]
    matcher = difflib.SequenceMatcher(a=old, b=new, autojunk=False)
    for tag, a1, a2, b1, b2 in matcher.get_opcodes():
        if tag != "equal":
            out.append(f"{tag}: {span(a1, a2)} (live) -> {span(b1, b2)} (new)")
    return out


@operation()
def barrier(reason: str):
    """Changes nothing; every host calls it, from one line of deploy.py, so it orders
    operations across hosts. pyinfra keeps only each host's own order (a topological sort
    of the hosts' sequences, ties broken by line number): without a barrier, an operation
    on one host may run before an earlier-written one on another host that has more
    operations before it (on the full topology RoundCube's schema step on webmail01 ran
    before db01 had created the database). ``reason`` names what must be done first."""
    yield from ()


# Services whose configuration changed but that were not yet reloaded: a marker per
# "service.action". A run that fails after a change and before the reload leaves it, and
# the next run does the reload even though nothing changes any more.
PENDING = "/var/lib/mailcluster/pending"


@operation()
def _pending_action(service: str, action: str, command: str):
    marker = f"{PENDING}/{service}.{action}"
    if host.get_fact(File, path=marker):
        yield StringCommand(f"{command} && rm -f {marker}")


def run_service(name: str, service: str) -> None:
    """``service`` enabled, and started if it is not running: the start retried once, as
    restarts are (restart_with_retry). For a service the cluster stops on purpose (php-fpm
    in a webmail maintenance window): the deploy that follows starts it again, and a
    plain start failed there with 219/CGROUP (systemd 255, a 24.04 webmail host in the
    20-host lab's OS upgrade)."""
    from pyinfra.facts.systemd import SystemdStatus
    from pyinfra.operations import server, systemd

    systemd.service(name=f"{name} (enabled)", service=service, running=None, enabled=True)
    unit = service if service.endswith(".service") else f"{service}.service"
    if not host.get_fact(SystemdStatus).get(unit):
        server.shell(
            name=f"{name} (started)",
            commands=[restart_with_retry(f"systemctl start {service}")],
        )


def restart_with_retry(command: str) -> str:
    """A restart tried once more after 2 s if it fails. systemd in a container sometimes
    fails to re-create a unit's cgroup right after stopping it ("Failed to attach to
    cgroup /system.slice/exim4.service: No such file or directory", status 219/CGROUP:
    both lab mail nodes once, in a fresh deploy), which left the service stopped. A
    configuration the service refuses fails twice, and the deploy with it.

    It stays on the path of VMs and bare metal too (production and the Vagrant VMs),
    where that race is not known to happen, because there it is harmless:
    + a restart that works runs once, exactly as without the retry;
    + a unit or configuration the service refuses fails the second try as well: the
      deploy stops with the same error, 2 s later, and the pending marker is kept;
    + a restart that fails once and then works leaves the service running, which is what
      the deploy wants; the first failure stays in the journal;
    + two starts stay well under systemd's start limit (5 in 10 s by default).
    Limiting it to containers (Platform.in_container) would give VMs a restart command
    of their own, one that `make test` (the lab's machines are containers) never runs."""
    return f"{{ {command}; }} || {{ sleep 2 && {command}; }}"


def service_action(
    name: str, service: str, action: str, changed: list[Any], command: str | None = None
) -> None:
    """``systemctl <action> <service>`` if one of ``changed`` changed in this run, or an
    earlier run left the action pending (its managed files were given
    ``notify=[f"{service}.{action}"]``)."""
    from pyinfra.operations import server
    from pyinfra.operations.util import any_changed

    command = command or f"systemctl {action} {service}"
    if action == "restart":
        command = restart_with_retry(command)
    marker = f"{PENDING}/{service}.{action}"
    server.shell(name=name, commands=[f"{command} && rm -f {marker}"], _if=any_changed(*changed))
    _pending_action(
        name=f"{name} (pending from an earlier run)",
        service=service,
        action=action,
        command=command,
    )
