"""pyinfra entry point: each host gets the base role, then the roles of its groups.

pyinfra inventory/lab.py deploy.py          # the lab (python -m mailcluster.lab up)
pyinfra inventory/production.py deploy.py   # the 20 production hosts
"""

from pyinfra import host

from mailcluster.ops import barrier
from mailcluster.roles.base import base
from mailcluster.roles.db import db
from mailcluster.roles.dovecot import dovecot
from mailcluster.roles.exim import exim
from mailcluster.roles.fail2ban import fail2ban
from mailcluster.roles.fencing import fencing
from mailcluster.roles.webmail import webmail

# Each role is called from its own line: pyinfra orders each host's operations by the
# line numbers of their calls, so roles called from one line in a loop would interleave
# by their line numbers inside the role modules (and hosts with different groups then
# form ordering cycles). Across hosts pyinfra keeps no order by itself: the barrier, run
# by every host, makes the database host finish before any webmail host starts. The
# order: the database before RoundCube (on its own host or on the same one);
# Exim before Dovecot (it creates the Debian-exim group that the TLS key and Dovecot's
# auth socket for Exim belong to); brute-force protection last, once per host (it reads
# the logs of the services before it).
groups = set(host.groups)
base()
if "db" in groups:
    db()
barrier(name="The database exists before any RoundCube host starts", reason="db")
if "mail" in groups:
    fencing()
    exim()
    dovecot()
if "webmail" in groups:
    webmail()
if groups & {"mail", "webmail"}:
    fail2ban()
