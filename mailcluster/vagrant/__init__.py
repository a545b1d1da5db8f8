"""The cluster as Vagrant VMs (``python -m mailcluster.vagrant box|up|deploy|info|destroy``).

The same topology as the lab and production (``mailcluster.lab.topology``), real VMs
under libvirt/qemu (or VirtualBox by hand). Machine-wide resources carry the prefix
``mcvagrant`` (libvirt networks ``mcvagrant*``, nft table ``inet mcvagrant``,
``/var/lib/mcvagrant``, ``/var/cache/mcvagrant``), never the lab's ``mclab``.
"""
