"""Thin shim: pyinfra reads only .py here. The site data is YAML (site.yaml, or the file
the inventory selected), validated by mailcluster.site before any host is touched."""

from mailcluster import site as _site_mod

site = _site_mod.current()
