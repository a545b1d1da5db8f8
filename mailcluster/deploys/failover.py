"""Take a dead mail node out of the map (run by `mailctl failover NODE` on every other
mail node): each node's passdb and Exim's backends map without it, then a forced queue
run in the background, so that mail queued for its users goes to their new backends
now instead of at Exim's next retry."""

from pyinfra import host
from pyinfra.operations import server

from mailcluster.roles.dovecot_passdb import push_passdb
from mailcluster.roles.exim import push_backends
from mailcluster.site import Site

site: Site = host.data.site
failed = [str(site.host(n).address) for n in site.failed_nodes()]

if "mail" in host.groups:
    push_passdb()
    push_backends()
    # A hand-over to the dead node that was under way when it died (connecting, or
    # waiting for an answer) holds its message, locked, until the transport's timeout; a
    # queue run would skip it. Those Exim
    # processes are ended first: the message stays in the queue, unlocked, and the run
    # below sends it to the new backend. (One the dead node took in just before it died,
    # its answer lost, then arrives twice: the race every SMTP hand-over has.)
    server.shell(
        name="End hand-overs still waiting for the failed node",
        commands=[
            f"for a in {' '.join(failed)}; do "
            "ss -Htnp dst $a | grep exim4 | grep -o 'pid=[0-9]*' "
            "| cut -d= -f2; done | sort -u | xargs -r kill"
        ],
    )
    # Three queue runs within a minute, in the background: the second and third catch
    # hand-overs that began on the old map just before it changed and were deferred
    # after the first (Exim's own queue runner may be half an hour away).
    server.shell(
        name="Deliver the queue again, to the new backends (in the background)",
        commands=[
            "nohup sh -c 'exim4 -qf; sleep 20; exim4 -qf; sleep 40; exim4 -qf' >/dev/null 2>&1 &"
        ],
    )
