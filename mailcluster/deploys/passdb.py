"""Push each mail node its Dovecot passdb (run by `mailctl passwd`): nothing else changes."""

from pyinfra import host

from mailcluster.roles.dovecot import push_passdb

if "mail" in host.groups:
    push_passdb()
