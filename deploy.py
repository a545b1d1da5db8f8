"""pyinfra entry point: each host gets the base role, then the roles of its groups.

pyinfra inventory/lab.py deploy.py          # the lab (python -m mailcluster.lab up)
pyinfra inventory/production.py deploy.py   # the 20 production hosts
"""

from pyinfra import host

from mailcluster.roles.base import base
from mailcluster.roles.db import db
from mailcluster.roles.dovecot import dovecot
from mailcluster.roles.exim import exim
from mailcluster.roles.fail2ban import fail2ban
from mailcluster.roles.webmail import webmail

# Each group's roles, in order. Exim first on mail nodes: it creates the Debian-exim
# group that the TLS key and Dovecot's auth socket for Exim belong to. Groups run in
# sorted order, so a host in both `db` and `webmail` has its database before RoundCube.
# Brute-force protection last: it reads the logs of the services before it. A role
# shared by two groups of a host runs once.
ROLES = {
    "db": [db],
    "mail": [exim, dovecot, fail2ban],
    "webmail": [webmail, fail2ban],
}

base()
done = set()
for group in sorted(host.groups):
    for role in ROLES.get(group, []):
        if role not in done:
            done.add(role)
            role()
