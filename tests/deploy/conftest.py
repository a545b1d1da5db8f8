"""Fixtures the deploy tests share with the end-to-end tests."""

# The browser on the webmail (tests/e2e/test_webmail.py): the backup test saves a
# contact and an identity through it.
from tests.e2e.test_webmail import browsing, webmail  # noqa: F401
