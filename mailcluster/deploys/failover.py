"""Take a dead mail node out of the map (run by `mailctl failover NODE` on every other
mail node): each node's passdb and Exim's backends map without it, then a forced queue
run in the background, so that mail queued for its users goes to their new backends
now instead of at Exim's next retry."""

from pyinfra import host
from pyinfra.operations import server

from mailcluster.roles.dovecot_passdb import push_passdb
from mailcluster.roles.exim import push_backends

if "mail" in host.groups:
    push_passdb()
    push_backends()
    server.shell(
        name="Deliver the queue again, to the new backends (in the background)",
        commands=["nohup exim4 -qf >/dev/null 2>&1 &"],
    )
