"""Push each mail node its account maps (run by `mailctl passwd`): Dovecot's passdb and
Exim's backends map. Nothing else changes."""

from pyinfra import host

from mailcluster.roles.dovecot_passdb import push_passdb
from mailcluster.roles.exim import push_backends

if "mail" in host.groups:
    push_passdb()
    push_backends()
