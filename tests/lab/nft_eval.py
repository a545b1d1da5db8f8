"""A small evaluator of the lab's live nft ruleset (`nft -j list table ...`).

It understands exactly the expressions the lab's ruleset uses and fails loudly on any
other, so a changed ruleset cannot pass by being misread. Packets are dicts:
``{"iif", "oif", "family", "saddr", "daddr", "proto", "dport", "ct_state"}``.
"""

from __future__ import annotations

import ipaddress
from typing import Any


class Unsupported(Exception):
    pass


def _value(left: dict[str, Any], pkt: dict[str, Any]) -> Any:
    if "meta" in left:
        key = left["meta"]["key"]
        return {"iifname": pkt["iif"], "oifname": pkt["oif"]}[key]
    if "payload" in left:
        proto, field = left["payload"]["protocol"], left["payload"]["field"]
        if proto == "ip":
            return pkt[field] if pkt["family"] == "ip" else _NO_MATCH
        if proto in ("tcp", "udp"):
            return pkt["dport"] if pkt.get("proto") == proto and field == "dport" else _NO_MATCH
    if "ct" in left and left["ct"]["key"] == "state":
        return pkt.get("ct_state", "new")
    raise Unsupported(f"left side {left}")


_NO_MATCH = object()


def _matches(m: dict[str, Any], pkt: dict[str, Any], sets: dict[str, set[str]]) -> bool:
    left = _value(m["left"], pkt)
    if left is _NO_MATCH:
        return False
    right, op = m["right"], m["op"]
    if isinstance(right, str) and right.startswith("@"):
        hit = str(left) in sets[right[1:]]
    elif isinstance(right, dict) and "set" in right:
        hit = left in right["set"]
    elif isinstance(right, dict) and "prefix" in right:
        net = ipaddress.ip_network(f"{right['prefix']['addr']}/{right['prefix']['len']}")
        hit = ipaddress.ip_address(left) in net
    elif isinstance(right, list):  # ct state in {established, related}
        hit = left in right
    else:
        hit = left == right
    if op in ("==", "in"):
        return hit
    if op == "!=":
        return not hit
    raise Unsupported(f"operator {op}")


def verdict(ruleset: dict[str, Any], chain: str, pkt: dict[str, Any]) -> str:
    """'accept', 'drop' or the chain's policy, for ``pkt`` through ``chain``."""
    items = ruleset["nftables"]
    sets = {i["set"]["name"]: set(i["set"].get("elem", [])) for i in items if "set" in i}
    meta = next(i["chain"] for i in items if "chain" in i and i["chain"]["name"] == chain)
    for item in items:
        rule = item.get("rule")
        if not rule or rule["chain"] != chain:
            continue
        result = None
        for expr in rule["expr"]:
            if "match" in expr:
                if not _matches(expr["match"], pkt, sets):
                    break
            elif "counter" in expr:
                continue
            elif "accept" in expr or "drop" in expr or "masquerade" in expr:
                result = next(iter(expr))
            else:
                raise Unsupported(f"expression {expr}")
        if result:
            return result
    return meta.get("policy", "accept")
