"""Empty a draining mail node (run by `mailctl drain NODE`): it must no longer be any
user's backend (the site marks it draining and the deploy has run), and its Exim queue
is delivered until empty. Then the node can be powered off without losing a message."""

import os
import shlex

from pyinfra import host
from pyinfra.facts.files import FileContents
from pyinfra.operations import server

from mailcluster import passdb
from mailcluster.roles.dovecot_conf import PASSDB

TIMEOUT_S = int(os.environ.get("MAILCLUSTER_DRAIN_TIMEOUT", "600"))

# The users this node does not hand on to another backend, as its live passdb has them
# (read while pyinfra prepares the run; no operation here writes it): the ones whose
# mailbox it serves itself, and any that a stopped run left mid-move. Either way the
# deploy must run first.
local = passdb.not_proxied(passdb.parse(host.get_fact(FileContents, path=PASSDB) or [], host.name))
still = (
    f"still the backend of: {' '.join(local)} - mark the node draining in the site file "
    "and run the deploy first"
)
server.shell(
    name=f"{host.name}: no user's backend any more",
    commands=[f"echo {shlex.quote(still)} >&2; exit 1" if local else "true"],
)
server.shell(
    name=f"{host.name}: deliver the Exim queue until it is empty",
    commands=[
        f"deadline=$(( $(date +%s) + {TIMEOUT_S} )); "
        'while n=$(exim4 -bpc) && [ "$n" -gt 0 ]; do '
        'if [ "$(date +%s)" -ge "$deadline" ]; then '
        f'echo "$n messages still queued after {TIMEOUT_S}s (exim4 -bp lists them)" >&2; '
        "exit 1; fi; exim4 -qff; sleep 5; done"
    ],
)
