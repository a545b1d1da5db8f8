"""pyinfra entry point: each host gets the base role, then the roles of its groups.

pyinfra inventory/lab.py deploy.py          # the lab (python -m mailcluster.lab up)
pyinfra inventory/production.py deploy.py   # the 20 production hosts
"""

from pyinfra import host

from mailcluster.roles.base import base
from mailcluster.roles.dovecot import dovecot

# Each group's roles, in order. Exim (mail), webmail and db arrive with their issues.
ROLES = {
    "mail": [dovecot],
}

base()
for group in sorted(host.groups):
    for role in ROLES.get(group, []):
        role()
