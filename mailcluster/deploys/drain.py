"""Empty a draining mail node (run by `mailctl drain NODE`): it must no longer be any
user's backend (the site marks it draining and the deploy has run), and its Exim queue
is delivered until empty. Then the node can be powered off without losing a message."""

import os

from pyinfra import host
from pyinfra.operations import server

from mailcluster.roles.dovecot import PASSDB

TIMEOUT_S = int(os.environ.get("MAILCLUSTER_DRAIN_TIMEOUT", "600"))

# A passdb line without host= is a user whose mailbox this node serves itself.
LOCAL_USERS = f"awk -F: '!/^#/ && NF && $8 !~ /(^| )host=/ {{print $1}}' {PASSDB}"

server.shell(
    name=f"{host.name}: no user's backend any more",
    commands=[
        f'local=$({LOCAL_USERS} | tr "\\n" " "); if [ -n "$local" ]; then '
        'echo "still the backend of: $local- mark the node draining in the site file '
        'and run the deploy first" >&2; exit 1; fi'
    ],
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
