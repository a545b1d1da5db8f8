"""Take a dead mail node out of the map (run by `mailctl failover NODE` on every other
mail node): each node's passdb and Exim's backends map without it; then whatever this
node still has open to it is aborted, and the queue is run again, so that mail queued
for its users goes to their new backends now instead of at Exim's next retry."""

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
    # Connections to the dead node wait for timeouts, since it can no longer answer: a
    # hand-over under way when it died (connecting, or waiting for its answer) holds its
    # message, locked, past the queue run below; a proxied IMAP session waits on it too.
    # They are aborted here (the socket, not the process: Exim then defers the message as
    # after any broken connection, where a killed transport would freeze it), and the
    # queue runs send those messages to the new backends. (One the dead node took in just
    # before it died, its answer lost, then arrives twice: the race every SMTP hand-over
    # has.)
    server.shell(
        name="Abort connections to the failed node",
        commands=[f"for a in {' '.join(failed)}; do ss -K dst $a >/dev/null 2>&1; done; true"],
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
