"""Fencing (group `mail`): a mail node that comes back from a crash or a power cut does
not serve mailboxes with the map it had, which `mailctl failover` may have replaced
while it was off (two Dovecot servers writing one Maildir is the corruption the
one-backend design exists to prevent). See templates/fence/mailcluster-fence.sh.j2.

The deploy releases a fenced node right after installing this, before the Exim and
Dovecot roles write the current maps and (re)start the services: nothing starts between
the release and the maps.
"""

from __future__ import annotations

from pyinfra import host
from pyinfra.api import deploy
from pyinfra.facts.files import File
from pyinfra.operations import server, systemd
from pyinfra.operations.util import any_changed

from mailcluster.ops import managed_file, run_service

SCRIPT = "/usr/local/sbin/mailcluster-fence"
UNIT = "mailcluster-fence.service"
# Exists while this boot runs (a clean shutdown removes it): found at boot, the last
# boot ended without one.
UP_MARKER = "/var/lib/mailcluster/fence/up"
# On /run (gone at every boot): set by the boot check, removed by the deploy.
FENCED_FLAG = "/run/mailcluster/fenced"
# The services a fence holds: the mailbox readers and writers.
FENCED_SERVICES = ("dovecot", "exim4")


@deploy("Fencing after a crash")
def fencing() -> None:
    context = {"script": SCRIPT, "up_marker": UP_MARKER, "fenced_flag": FENCED_FLAG}
    changed = [
        managed_file(
            name="mailcluster-fence",
            dest=SCRIPT,
            template="fence/mailcluster-fence.sh.j2",
            context=context,
            mode="755",
            validate="sh -n {path}",
        ),
        managed_file(
            name=UNIT,
            dest=f"/etc/systemd/system/{UNIT}",
            template="fence/mailcluster-fence.service.j2",
            context=context,
        ),
    ]
    for service in FENCED_SERVICES:
        changed.append(
            managed_file(
                name=f"{service} waits while the node is fenced",
                dest=f"/etc/systemd/system/{service}.service.d/mailcluster-fence.conf",
                template="fence/fenced.conf.j2",
                context=context,
            )
        )
    systemd.daemon_reload(name="systemd reads the fencing units", _if=any_changed(*changed))
    # Its first start, retried once: systemd 245 in the lab's containers sometimes fails
    # to create a new unit's cgroup (status 219/CGROUP; 2 of 16 mail nodes in a fresh
    # 20-host deploy), as restarts do.
    run_service("The boot check", UNIT)
    if host.get_fact(File, path=FENCED_FLAG):
        server.shell(name="Release the fence (the maps follow)", commands=[f"{SCRIPT} release"])
