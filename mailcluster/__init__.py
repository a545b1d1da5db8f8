"""mailcluster: deploys and proves a university mail service."""
