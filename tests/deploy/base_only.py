"""pyinfra deploy file for tests: only the base role (tests/deploy/test_address_reuse.py)."""

from mailcluster.roles.base import base

base()
