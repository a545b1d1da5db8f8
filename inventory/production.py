"""The production hosts: names, addresses and groups from the site file.

The site file is group_data/site.yaml unless MAILCLUSTER_SITE names another.
"""

from mailcluster import inventory, site

_site = inventory.load_or_exit(site.selected_path())
_groups = inventory.groups(_site)

mail = _groups["mail"]
webmail = _groups["webmail"]
db = _groups["db"]
