"""pyinfra entry point: each host gets the base role, then the roles of its groups.

pyinfra inventory/lab.py deploy.py          # the lab (python -m mailcluster.lab up)
pyinfra inventory/production.py deploy.py   # the 20 production hosts
"""

from pyinfra import host

from mailcluster.roles.base import base

base()

# Service roles arrive with their issues: mail (Dovecot + Exim), webmail, db.
ROLES: dict[str, object] = {}
for group in host.groups:
    role = ROLES.get(group)
    if callable(role):
        role()
