"""The site configuration: its schema (the one place defaults and limits live) and its loader.

Every run reads one YAML file (``group_data/site.yaml`` unless ``MAILCLUSTER_SITE`` names
another; the lab inventory uses the lab's own). It is validated here, before pyinfra
connects to any host; a bad value raises :class:`SiteError`, whose message names the file,
the field and the problem.
"""

from __future__ import annotations

import ipaddress
import os
import re
from pathlib import Path
from typing import Annotated, Any, Literal

import yaml
from pydantic import (
    AfterValidator,
    BaseModel,
    ConfigDict,
    Field,
    ValidationError,
    field_validator,
    model_validator,
)

REPO_ROOT = Path(__file__).resolve().parent.parent
DEFAULT_SITE_FILE = REPO_ROOT / "group_data" / "site.yaml"
SITE_ENV = "MAILCLUSTER_SITE"
# In secrets_dir: the mail nodes `mailctl failover` took out of the map (Site.failed_nodes).
FAILED_NODES_FILE = "failed-nodes"
# The lab's git-ignored state folder: the only place inside the checkout secrets may be.
LAB_STATE = REPO_ROOT / ".lab"

# RFC 1123 host label: what every resolver and certificate accepts.
_LABEL = r"[a-z0-9](?:[a-z0-9-]{0,61}[a-z0-9])?"


def _host_name(value: str) -> str:
    if not re.fullmatch(_LABEL, value):
        raise ValueError(f"{value!r} is not a host name (lowercase letters, digits, '-')")
    return value


def _domain_name(value: str) -> str:
    if not re.fullmatch(rf"{_LABEL}(?:\.{_LABEL})+", value):
        raise ValueError(f"{value!r} is not a fully qualified domain name")
    return value


HostName = Annotated[str, AfterValidator(_host_name)]
DomainName = Annotated[str, AfterValidator(_domain_name)]
# Roles the deploy knows; a typo in a group would otherwise silently deploy nothing.
GroupName = Literal["mail", "webmail", "db"]


class SiteError(Exception):
    """An invalid site configuration: the message names file, field and problem."""


class _Strict(BaseModel):
    # Unknown keys are errors: a misspelt setting must not silently fall back to a default.
    model_config = ConfigDict(extra="forbid", frozen=True)


class Host(_Strict):
    name: HostName
    address: ipaddress.IPv4Address
    groups: list[GroupName] = Field(min_length=1)
    # A mail node on its way out (docs/RUNBOOK.md, "Remove a mail node"): still deployed,
    # but no user's backend any more; its users move to the others, their sessions drained.
    draining: bool = False


class Rollout(_Strict):
    """How `python -m mailcluster.rollout` changes the mail nodes (docs/RUNBOOK.md)."""

    # A quarter of the mail nodes at a time: 4 batches of 4 in production, so a bad
    # change reaches at most a quarter of the users before the health check stops it.
    batch_percent: int = Field(default=25, ge=1, le=100)
    # The account the health check logs in with over IMAP and SMTP on every changed node
    # (a real user's mailbox is never touched: the check only logs in and selects INBOX).
    check_user: str | None = None
    # Its password, one line, in a file outside the repository (0600).
    check_password_file: Path | None = None
    # How long a changed node may take to answer again (Exim's reload closes its listener
    # for a moment; Dovecot's reload is seamless) before the batch counts as unhealthy.
    check_timeout_s: int = Field(default=60, ge=1, le=3600)

    @model_validator(mode="after")
    def _both_or_neither(self) -> Rollout:
        if (self.check_user is None) != (self.check_password_file is None):
            raise ValueError("check_user and check_password_file go together")
        if self.check_password_file is not None and not self.check_password_file.is_absolute():
            raise ValueError("check_password_file: must be an absolute path")
        return self


class BruteForce(_Strict):
    """fail2ban on the mail and webmail hosts: an address that fails to log in
    ``max_failures`` times within ``window_s`` (IMAP, SMTP AUTH and webmail alike) is
    refused by that host's mail (or web) ports for ``ban_s``."""

    # Ten: a user with a stale password on a phone and a laptop retries a few times an
    # hour; a password guesser tries hundreds. Dovecot also slows each failure down.
    max_failures: int = Field(default=10, ge=1, le=1000)
    window_s: int = Field(default=600, ge=10, le=86400)
    # Half an hour: long enough to make guessing pointless, short enough that a campus
    # user who locked themselves out is back before the helpdesk call ends.
    ban_s: int = Field(default=1800, ge=10, le=7 * 86400)
    # Never banned (besides the cluster's own hosts, which webmail and the proxies log in
    # from): campus NATs and monitoring, where one address speaks for many users.
    ignore: list[ipaddress.IPv4Network] = Field(default_factory=list)


class Sending(_Strict):
    """Limits per authenticated user (SMTP AUTH, webmail included) on each mail node: the
    brake on a phished account sending spam, a university's most common mail incident.
    Over a limit, Exim answers 451 (try later) with the reason (a real user's client retries later)
    and logs "sending limit" with the user name. Counted per mail node (Exim's ratelimit
    database is local): README "Sending limits" says why that is enough."""

    # 100 messages an hour: a busy person sends a few dozen; a spam run sends thousands.
    messages_per_hour: int = Field(default=100, ge=1, le=100_000)
    # 500 recipients an hour: one message to a 300-student class fits; a spam run of
    # 100-recipient messages stops at the fifth.
    recipients_per_hour: int = Field(default=500, ge=1, le=1_000_000)


class Monitoring(_Strict):
    """Thresholds of `mailctl status` (mailcluster/status.py), which monitoring runs as a
    Nagios-style check: over a warning threshold it exits 1, over a critical one 2."""

    # A node's queue holds a few messages between deliveries; a hundred means a
    # destination or a backend is not taking mail; a thousand, that users notice.
    queue_warning: int = Field(default=100, ge=1)
    queue_critical: int = Field(default=1000, ge=1)
    # Exim retries a deferred message every 15 minutes at first: one still queued after
    # an hour failed four times (a backend or a destination is down). After 12 hours the
    # sender is about to get Exim's delay warning (24 h).
    queue_age_warning_s: int = Field(default=3600, ge=60)
    queue_age_critical_s: int = Field(default=12 * 3600, ge=60)
    # A frozen message is one Exim gave up on until someone looks: any is worth a look.
    frozen_warning: int = Field(default=1, ge=1)
    # Three weeks leave time to renew by hand; under 7 days the deploy's own pre-flight
    # refuses the certificate (roles/tls.py), so no node could even be redeployed.
    cert_days_warning: int = Field(default=21, ge=1)
    cert_days_critical: int = Field(default=7, ge=0)

    @model_validator(mode="after")
    def _warning_before_critical(self) -> Monitoring:
        for warn, crit in (
            ("queue_warning", "queue_critical"),
            ("queue_age_warning_s", "queue_age_critical_s"),
        ):
            if getattr(self, warn) >= getattr(self, crit):
                raise ValueError(f"{warn} must be below {crit}")
        if self.cert_days_warning <= self.cert_days_critical:
            raise ValueError("cert_days_warning must be above cert_days_critical")
        return self


class Backups(_Strict):
    """Daily dumps of RoundCube's database (contacts, identities, settings, sessions) on
    the db host (docs/RUNBOOK.md, "Restore the webmail's database")."""

    # Where the dumps go, on the db host. In production, a mount of the backup server
    # there: a dump on the database's own disk is lost with it.
    directory: Path = Path("/var/backups/mailcluster/roundcube")
    # Two weeks: a contact deleted by mistake is noticed within days; a dump of a few MB
    # a day costs nothing to keep.
    keep_days: int = Field(default=14, ge=1, le=3650)
    # When (systemd OnCalendar time of day, the host's time zone): the quietest hour.
    time: str = "03:15"

    @field_validator("directory")
    @classmethod
    def _absolute_dir(cls, value: Path) -> Path:
        if not value.is_absolute() or str(value) == "/":
            raise ValueError("must be an absolute path (not /)")
        if not re.fullmatch(r"[A-Za-z0-9_./-]+", str(value)):
            raise ValueError("letters, digits and _ . / - only (it goes into scripts)")
        return value

    @field_validator("time")
    @classmethod
    def _time_of_day(cls, value: str) -> str:
        if not re.fullmatch(r"([01][0-9]|2[0-3]):[0-5][0-9]", value):
            raise ValueError(f"{value!r} is not a time of day like 03:15")
        return value


class Webmail(_Strict):
    """The webmail hosts' RoundCube."""

    # Install a RoundCube that has known, exploited holes (mailcluster/webmail_security.py)
    # all the same. For tests of the RoundCube 1.4 code path on throw-away machines only:
    # production never sets it; the deploy prints a warning on every run that does.
    allow_known_vulnerable_roundcube: bool = False


class TLS(_Strict):
    """Paths on the machine running the deploy; the files never live in the repo."""

    ca_cert: Path
    cert: Path
    key: Path

    @field_validator("ca_cert", "cert", "key")
    @classmethod
    def _outside_repo(cls, value: Path) -> Path:
        if not value.is_absolute():
            raise ValueError("must be an absolute path (TLS material lives outside the repo)")
        resolved = value.resolve()
        if resolved.is_relative_to(REPO_ROOT) and not resolved.is_relative_to(LAB_STATE):
            raise ValueError("must not point into the repository: secrets are never committed")
        return value


class Site(_Strict):
    domain: DomainName
    # Users are told these names (SERVICE.md); certificates cover them.
    service_names: dict[Literal["imap", "smtp", "webmail"], DomainName]
    hosts: list[Host] = Field(min_length=1)
    # Asia/Tokyo: the university's own zone; logs and Date: headers read as users expect.
    timezone: str = "Asia/Tokyo"
    # Dovecot on shared storage needs synced clocks (it refuses to run when time jumps back).
    ntp_servers: list[str] = Field(min_length=1)
    # Security updates only: feature updates of Dovecot/Exim are a deliberate deploy.
    unattended_upgrades: bool = True
    # An HTTP proxy for apt (the lab's package cache; sites behind a proxy). None: direct.
    apt_proxy: str | None = None
    # Where Exim sends mail for other domains; None: direct MX delivery.
    smarthost: str | None = None
    # Where users' homes, and so their ~/Maildir, live. "nfs": production's file server
    # (SERVICE.md: homes are NFS-mounted on the mail nodes); Dovecot then follows its NFS
    # advice (templates/dovecot/dovecot.conf.j2). "local": the mail node's own disk (the
    # lab and Vagrant, whose kernels have no NFS).
    home_filesystem: Literal["local", "nfs"] = "nfs"
    # Webmail attachment limit: 2 MB is what users are told (SERVICE.md, "WebMail").
    attachment_max_bytes: int = Field(default=2 * 1024 * 1024, gt=0, le=100 * 1024 * 1024)
    tls: TLS
    # Generated secrets (password hashes, master-user secret) on the deploying machine.
    secrets_dir: Path
    # Pin a user to a mail node (e.g. while draining one); everyone else is hashed.
    backend_overrides: dict[str, HostName] = Field(default_factory=dict)
    rollout: Rollout = Field(default_factory=Rollout)
    bruteforce: BruteForce = Field(default_factory=BruteForce)
    webmail: Webmail = Field(default_factory=Webmail)
    sending: Sending = Field(default_factory=Sending)
    monitoring: Monitoring = Field(default_factory=Monitoring)
    backups: Backups = Field(default_factory=Backups)

    @field_validator("timezone")
    @classmethod
    def _known_timezone(cls, value: str) -> str:
        if not re.fullmatch(r"[A-Za-z0-9_+-]+(?:/[A-Za-z0-9_+-]+)*", value):
            raise ValueError(f"{value!r} is not a tz database name like 'Asia/Tokyo'")
        return value

    @field_validator("apt_proxy")
    @classmethod
    def _proxy_url(cls, value: str | None) -> str | None:
        if value is not None and not re.fullmatch(r"https?://[^\s/]+/?", value):
            raise ValueError(f"{value!r} is not an http://host:port URL")
        return value

    @field_validator("secrets_dir")
    @classmethod
    def _absolute(cls, value: Path) -> Path:
        if not value.is_absolute():
            raise ValueError("must be an absolute path outside the repository")
        return value

    @field_validator("hosts")
    @classmethod
    def _consistent_hosts(cls, hosts: list[Host]) -> list[Host]:
        for label in ("name", "address"):
            values = [str(getattr(h, label)) for h in hosts]
            dupes = sorted({v for v in values if values.count(v) > 1})
            if dupes:
                raise ValueError(f"duplicate {label} {', '.join(dupes)}")
        # Every site needs both services; a db host is optional (webmail can hold it).
        for group in ("mail", "webmail"):
            if not any(group in h.groups for h in hosts):
                raise ValueError(f"no host in group {group!r}")
        return hosts

    @model_validator(mode="after")
    def _overrides_name_mail_nodes(self) -> Site:
        for h in self.hosts:
            if h.draining and "mail" not in h.groups:
                raise ValueError(f"hosts: {h.name}: draining is for mail nodes only")
        backends = [h.name for h in self.hosts if "mail" in h.groups and not h.draining]
        if not backends:
            raise ValueError("hosts: every mail node is draining; at least one must hold mail")
        for user, node in self.backend_overrides.items():
            if node not in backends:
                raise ValueError(
                    f"backend_overrides.{user}: {node!r} is not a mail node that holds mail "
                    f"({', '.join(backends)})"
                )
        return self

    # -- derived views -------------------------------------------------------------

    def in_group(self, group: str) -> list[Host]:
        return [h for h in self.hosts if group in h.groups]

    def webmail_mail_node(self, name: str) -> Host:
        """The mail node webmail host ``name`` sends its IMAP and SMTP to (spread by
        position; any node serves any user: the mail nodes proxy IMAP to the user's
        backend). The webmail host reaches it under the IMAP and SMTP service names
        (templates/base/hosts.j2): RoundCube keys its users by the IMAP host's name, so
        that name must not change when mail nodes are replaced."""
        webmail = [h.name for h in self.in_group("webmail")]
        mail = self.in_group("mail")
        return mail[webmail.index(name) % len(mail)]

    def host(self, name: str) -> Host:
        for h in self.hosts:
            if h.name == name:
                return h
        raise KeyError(name)

    def failed_nodes(self) -> list[str]:
        """Mail nodes failed over (`mailctl failover`, docs/RUNBOOK.md): no user's backend
        until `mailctl rejoin`. Kept on the deploying machine in secrets_dir/failed-nodes
        (a name per line), beside the cluster's other generated state, so that the site
        file stays the operator's own."""
        try:
            text = (self.secrets_dir / FAILED_NODES_FILE).read_text()
        except FileNotFoundError:
            return []
        names = {h.name for h in self.in_group("mail")}
        return [n for n in text.split() if n in names]

    def upgrade_plan(self) -> Any:
        """The OS upgrade under way (mailcluster/upgrade_plan.py), or None."""
        from mailcluster import upgrade_plan

        return upgrade_plan.load(self.secrets_dir)

    def backend_nodes(self) -> list[str]:
        """Mail nodes that hold mailboxes: all but the draining and the failed ones, and,
        during an OS upgrade, the new nodes not yet joined and the old ones replaced."""
        failed = set(self.failed_nodes())
        mail = [h.name for h in self.hosts if "mail" in h.groups]
        plan = self.upgrade_plan()
        outside = plan.out_of_map(mail) if plan else set()
        return [
            h.name
            for h in self.hosts
            if "mail" in h.groups
            and not h.draining
            and h.name not in failed
            and h.name not in outside
        ]

    def backend_of(self, user: str) -> str:
        """The mail node holding ``user``'s mailbox (the one place the map is computed).
        An override naming a failed node gives way to the user's next choice; so does
        an OS upgrade's pin (which comes before the site's overrides)."""
        from mailcluster.accounts import backend_for

        nodes = self.backend_nodes()
        plan = self.upgrade_plan()
        pins = plan.pins if plan else {}
        overrides = {u: n for u, n in self.backend_overrides.items() if n in nodes}
        overrides.update({u: n for u, n in pins.items() if n in nodes})
        return backend_for(user, nodes, overrides)

    def fqdn(self, name: str) -> str:
        return f"{name}.{self.domain}"

    def groups(self) -> dict[str, list[Host]]:
        out: dict[str, list[Host]] = {}
        for h in self.hosts:
            for g in h.groups:
                out.setdefault(g, []).append(h)
        return out


def _field_path(loc: tuple[Any, ...]) -> str:
    out = ""
    for part in loc:
        out += f"[{part}]" if isinstance(part, int) else (f".{part}" if out else str(part))
    return out or "(top level)"


def parse(data: Any, source: str) -> Site:
    """Validate already-loaded YAML data; ``source`` names the file in errors."""
    if not isinstance(data, dict):
        raise SiteError(f"{source}: (top level): expected a mapping of settings")
    try:
        return Site.model_validate(data)
    except ValidationError as exc:
        lines = []
        for err in exc.errors():
            msg = err["msg"].removeprefix("Value error, ")
            if err["type"] not in ("value_error", "missing") and "input" in err:
                msg += f" (got {err['input']!r})"
            if err["loc"]:
                lines.append(f"{source}: {_field_path(err['loc'])}: {msg}")
            else:  # a cross-field check names its own field first
                lines.append(f"{source}: {msg}")
        raise SiteError("\n".join(lines)) from None


def load(path: Path | str) -> Site:
    path = Path(path)
    try:
        text = path.read_text()
    except OSError as exc:
        raise SiteError(f"{path}: cannot read site configuration: {exc.strerror}") from None
    try:
        data = yaml.safe_load(text)
    except yaml.YAMLError as exc:
        raise SiteError(f"{path}: not valid YAML: {exc}") from None
    return parse(data, str(path))


_selected: Path | None = None


def select(path: Path | str) -> None:
    """Called by an inventory: the site file this run uses."""
    global _selected
    _selected = Path(path)


def selected_path() -> Path:
    if _selected is not None:
        return _selected
    return Path(os.environ.get(SITE_ENV) or DEFAULT_SITE_FILE)


def current() -> Site:
    return load(selected_path())


def main(argv: list[str] | None = None) -> int:
    """``python -m mailcluster.site [FILE]``: validate a site file without touching a host."""
    import sys

    args = sys.argv[1:] if argv is None else argv
    path = Path(args[0]) if args else selected_path()
    try:
        site = load(path)
    except SiteError as exc:
        print(exc, file=sys.stderr)
        return 2
    counts = ", ".join(f"{g}: {len(hs)}" for g, hs in site.groups().items())
    print(f"{path}: valid ({site.domain}; {len(site.hosts)} hosts; {counts})")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
