"""Every file the deploy renders from a template carries the managed-by banner in the live
file, exactly once, naming its template: what an operator sees before editing it by hand.

tests/unit/test_templates.py shows what render() makes of a template; this reads what the
deploy (mailcluster.ops.managed_file -> templating.render) actually left on each host.
FILES lists them; test_the_list_is_every_managed_file_of_the_roles (no machine needed)
keeps it in step with mailcluster/roles/.
"""

from __future__ import annotations

import ast
import importlib
from fnmatch import fnmatchcase
from pathlib import Path
from typing import Any, NamedTuple

import yaml

from mailcluster import templating
from tests.conftest import REPO, platform_of

ROLES = REPO / "mailcluster" / "roles"
BANNER = "Managed by mailcluster"


class Managed(NamedTuple):
    template: str
    path: str  # {php}, {postgresql}: the host's versions (mailcluster.platform)
    groups: tuple[str, ...]  # the host groups whose roles write it; () for every host
    comment: str = "#"  # the banner's comment marker (managed_file's comment=)
    # "rendered": render() puts the banner on top (after a script's #! line);
    # "inside": the template has it after "<?php" (banner=False: nothing may precede it);
    # "none": banner=False, a format without comments: no banner at all.
    banner: str = "rendered"
    secret: bool = False  # never show its lines in a failure message


MAIL, WEBMAIL, DB, BOTH = ("mail",), ("webmail",), ("db",), ("mail", "webmail")
FILES = [
    # base role: every host
    Managed("apt/01mailcluster-proxy.j2", "/etc/apt/apt.conf.d/01mailcluster-proxy", (), "//"),
    Managed("apt/20auto-upgrades.j2", "/etc/apt/apt.conf.d/20auto-upgrades", (), "//"),
    Managed("base/hostname.j2", "/etc/hostname", ()),
    Managed("base/hosts.j2", "/etc/hosts", ()),
    Managed("base/reload.sh.j2", "/usr/local/sbin/mailcluster-reload", ()),
    Managed("base/timezone.j2", "/etc/timezone", (), banner="none"),
    Managed("chrony/chrony.conf.j2", "/etc/chrony/chrony.conf", ()),
    Managed("chrony/default.j2", "/etc/default/chrony", ()),
    Managed(
        "chrony/unit-override.conf.j2", "/etc/systemd/system/chrony.service.d/mailcluster.conf", ()
    ),
    Managed("ssh/10-mailcluster.conf.j2", "/etc/ssh/sshd_config.d/10-mailcluster.conf", ()),
    # db role
    Managed(
        "postgresql/mailcluster.conf.j2",
        "/etc/postgresql/{postgresql}/main/conf.d/mailcluster.conf",
        DB,
    ),
    Managed("postgresql/pg_hba.conf.j2", "/etc/postgresql/{postgresql}/main/pg_hba.conf", DB),
    Managed(
        "postgresql/roundcube-backup.sh.j2", "/usr/local/sbin/mailcluster-roundcube-backup", DB
    ),
    Managed(
        "postgresql/roundcube-restore.sh.j2", "/usr/local/sbin/mailcluster-roundcube-restore", DB
    ),
    Managed(
        "postgresql/mailcluster-roundcube-backup.service.j2",
        "/etc/systemd/system/mailcluster-roundcube-backup.service",
        DB,
    ),
    Managed(
        "postgresql/mailcluster-roundcube-backup.timer.j2",
        "/etc/systemd/system/mailcluster-roundcube-backup.timer",
        DB,
    ),
    # fencing role (mail nodes)
    Managed("fence/mailcluster-fence.sh.j2", "/usr/local/sbin/mailcluster-fence", MAIL),
    Managed(
        "fence/mailcluster-fence.service.j2", "/etc/systemd/system/mailcluster-fence.service", MAIL
    ),
    Managed(
        "fence/fenced.conf.j2",
        "/etc/systemd/system/dovecot.service.d/mailcluster-fence.conf",
        MAIL,
    ),
    Managed(
        "fence/fenced.conf.j2",
        "/etc/systemd/system/exim4.service.d/mailcluster-fence.conf",
        MAIL,
    ),
    # exim and dovecot roles
    Managed("exim4/exim4.conf.j2", "/etc/exim4/exim4.conf", MAIL),
    Managed("exim4/default.j2", "/etc/default/exim4", MAIL),
    Managed("exim4/backends.j2", "/etc/exim4/mailcluster/backends", MAIL),
    Managed("dovecot/dovecot.conf.j2", "/etc/dovecot/dovecot.conf", MAIL),
    Managed("dovecot/passdb.j2", "/etc/dovecot/mailcluster/passdb", MAIL, secret=True),
    Managed("dovecot/masterdb.j2", "/etc/dovecot/mailcluster/masterdb", MAIL, secret=True),
    Managed("dovecot/openssl.cnf.j2", "/etc/dovecot/openssl.cnf", MAIL),
    Managed(
        "dovecot/service-override.conf.j2",
        "/etc/systemd/system/dovecot.service.d/mailcluster.conf",
        MAIL,
    ),
    Managed(
        "dovecot/service-stop.conf.j2",
        "/etc/systemd/system/dovecot.service.d/mailcluster-stop.conf",
        MAIL,
    ),
    # webmail role
    Managed("roundcube/debconf.j2", "/var/cache/mailcluster/roundcube.debconf", WEBMAIL),
    Managed("roundcube/pgpass.j2", "/root/.pgpass", WEBMAIL, banner="none", secret=True),
    Managed(
        "roundcube/config.inc.php.j2",
        "/etc/roundcube/config.inc.php",
        WEBMAIL,
        "//",
        banner="inside",
        secret=True,
    ),
    Managed(
        "roundcube/mailcluster_plugin.php.j2",
        "/var/lib/roundcube/plugins/mailcluster/mailcluster.php",
        WEBMAIL,
        "//",
        banner="inside",
    ),
    Managed("php/roundcube-pool.conf.j2", "/etc/php/{php}/fpm/pool.d/roundcube.conf", WEBMAIL, ";"),
    Managed("nginx/webmail.conf.j2", "/etc/nginx/sites-available/mailcluster-webmail", WEBMAIL),
    Managed(
        "nginx/mailcluster-maintenance.html.j2",
        "/usr/share/mailcluster/webmail/mailcluster-maintenance.html",
        WEBMAIL,
        banner="none",
    ),
    # fail2ban role: the filter of each group, one jail file
    Managed(
        "fail2ban/mailcluster-auth.conf.j2", "/etc/fail2ban/filter.d/mailcluster-auth.conf", MAIL
    ),
    Managed(
        "fail2ban/mailcluster-webmail.conf.j2",
        "/etc/fail2ban/filter.d/mailcluster-webmail.conf",
        WEBMAIL,
    ),
    Managed("fail2ban/jail.conf.j2", "/etc/fail2ban/jail.d/mailcluster.conf", BOTH),
]


def expected_head(f: Managed) -> list[str]:
    """The banner's lines, written out here (not taken from templating.managed_banner)."""
    return [
        f"{f.comment} {BANNER}, from templates/{f.template}.",
        f"{f.comment} Do not edit: local changes are overwritten on the next deploy.",
    ]


def banner_problem(f: Managed, text: str) -> str | None:
    """What is wrong with the banner of ``text`` (the live file ``f``), or None."""
    lines = text.splitlines()
    if f.banner == "none":
        return (
            f"carries a banner ({BANNER!r}), its format has no comments" if BANNER in text else None
        )
    if f.banner == "inside":
        lead = ["<?php"]
    elif (templating.TEMPLATES / f.template).read_text().startswith("#!"):
        lead = lines[:1] if lines[:1] and lines[0].startswith("#!") else ["#!..."]
    else:
        lead = []
    want = lead + expected_head(f)
    got = lines[: len(want)]
    if got != want:
        shown = "(not shown: it holds secrets)" if f.secret else got
        return f"starts with {shown}, not {want}"
    if text.count(BANNER) != 1:
        return f"carries the banner {text.count(BANNER)} times"
    return None


def test_every_file_the_deploy_renders_carries_its_banner_once(host, lab) -> None:
    name = host.backend.get_hostname()
    groups = set(next(h["groups"] for h in lab["hosts"] if h["name"] == name))
    plat = platform_of(host)
    site = yaml.safe_load(Path(lab["site_file"]).read_text())
    problems, checked = [], []
    for f in FILES:
        if f.groups and not groups & set(f.groups):
            continue
        if f.template == "apt/01mailcluster-proxy.j2" and not site.get("apt_proxy"):
            continue  # written only when the site has an apt proxy
        path = f.path.format(php=plat.php, postgresql=plat.postgresql)
        live = host.file(path)
        if not live.exists:
            problems.append(f"{path} (templates/{f.template}): missing")
            continue
        checked.append(path)
        problem = banner_problem(f, live.content_string)
        if problem:
            problems.append(f"{path} (templates/{f.template}): {problem}")
    assert checked, f"no managed file found on {name} (groups {sorted(groups)})"
    assert not problems, f"{name}:\n" + "\n".join(problems)


# -- FILES against mailcluster/roles/ (no machine) -------------------------------------


def _value(node: ast.expr, namespace: dict[str, Any]) -> str:
    """A call argument as a glob pattern: literals as they are, the role module's names
    (PASSDB, reloads.SCRIPT) resolved, anything else (a local variable) as '*'."""
    if isinstance(node, ast.JoinedStr):
        parts = []
        for v in node.values:
            if isinstance(v, ast.FormattedValue):
                parts.append(_value(v.value, namespace))
            elif isinstance(v, ast.Constant):
                parts.append(str(v.value))
        return "".join(parts)
    try:
        return str(eval(compile(ast.Expression(node), "<role>", "eval"), dict(namespace)))
    except Exception:  # a name only the role function knows (a local variable)
        return "*"


def role_calls() -> list[dict[str, Any]]:
    """Every managed_file(...) of mailcluster/roles/*.py with a template: its keywords."""
    calls = []
    for source in sorted(ROLES.glob("*.py")):
        module = importlib.import_module(f"mailcluster.roles.{source.stem}")
        for node in ast.walk(ast.parse(source.read_text())):
            if not (
                isinstance(node, ast.Call)
                and isinstance(node.func, ast.Name)
                and node.func.id == "managed_file"
            ):
                continue
            kw = {k.arg: k.value for k in node.keywords if k.arg}
            if "template" not in kw:  # content= (the TLS key): no template, no banner
                assert "content" in kw, f"{source.name}:{node.lineno}"
                continue
            calls.append(
                {
                    "where": f"{source.name}:{node.lineno}",
                    "template": _value(kw["template"], vars(module)),
                    "dest": _value(kw["dest"], vars(module)),
                    "comment": _value(kw["comment"], {}) if "comment" in kw else "#",
                    "banner": _value(kw["banner"], {}) if "banner" in kw else "True",
                }
            )
    return calls


def _matches(f: Managed, call: dict[str, Any]) -> bool:
    path = f.path.replace("{php}", "*").replace("{postgresql}", "*")
    return fnmatchcase(f.template, call["template"]) and (
        fnmatchcase(path, call["dest"]) or fnmatchcase(call["dest"], path)
    )


def test_the_list_is_every_managed_file_of_the_roles() -> None:
    calls = role_calls()
    assert len(calls) >= 20, calls  # the parse found the roles' calls
    for call in calls:
        assert any(_matches(f, call) for f in FILES), f"not in FILES: {call}"
    for f in FILES:
        mine = [c for c in calls if _matches(f, c)]
        assert mine, f"{f.template} -> {f.path}: no managed_file in mailcluster/roles/ writes it"
        for call in mine:
            assert call["banner"] == ("True" if f.banner == "rendered" else "False"), (f, call)
            if f.banner == "rendered":
                assert call["comment"] == f.comment, (f, call)
