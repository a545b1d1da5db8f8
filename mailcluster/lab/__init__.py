"""The lab: Debian 12 machines booted with systemd-nspawn on a private bridge.

Machine-wide resources all carry the prefix ``mclab`` (bridge ``mclab0``, nft table
``inet mclab``, machine names ``mclab-*``, everything under ``/var/lib/mclab``), so a
later run, from any checkout, finds and removes what a killed run left behind.
"""
