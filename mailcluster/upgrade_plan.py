"""The plan of an OS upgrade (`mailctl upgrade`, docs/RUNBOOK.md "Upgrade the OS"): which
old mail node each new one replaces, in what batches, how far it got, and where every
user's mailbox is meanwhile.

Kept on the deploying machine in ``secrets_dir/upgrade.json`` (beside failed-nodes: the
cluster's generated state, not the operator's site file), written by rename. While it
exists, Site.backend_nodes() leaves out the new nodes whose batch has not started and
the old nodes whose batch has, and Site.backend_of() follows the plan's pins.

Users move at most twice. Plain rendezvous hashing would move a user of a replaced node
to their next choice, which may be an old node replaced later (and then again, and
again). Instead, from the first batch on, every user is pinned: to the node they are on,
unless it is being replaced; then to their final node (the hash over the nodes left at
the end) if it is already up, else to their choice among the new nodes up so far. So a
user moves at most once while the batches run, only onto a new node, and once more when
the plan ends and the pins go (only if the pin was not their final node).

Webmail and database hosts (``others``: pairs whose old host is not a mail node) are
replaced after every mail batch, one at a time. When the old one holds RoundCube's
database, the copy goes to its replacement and ``db_to`` names it from then on
(mailcluster/roles/db.py db_host() follows it while the old host is still listed).
"""

from __future__ import annotations

import json
import os
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path

from mailcluster.accounts import backend_for

PLAN_FILE = "upgrade.json"
# A batch goes through these, in order; a run that stops resumes at the first not done.
STEPS = ("pending", "joined", "moved", "drained", "removed")


class PlanError(ValueError):
    pass


@dataclass
class Plan:
    target: str  # the platform the new nodes run (e.g. ubuntu24.04)
    pairs: list[tuple[str, str]]  # (old, new), in upgrade order
    batch_size: int = 1
    # old node -> its batch's step (STEPS); absent: pending
    steps: dict[str, str] = field(default_factory=dict)
    pins: dict[str, str] = field(default_factory=dict)  # user -> mail node
    # Old hosts of the pairs that are not mail nodes (webmail, db): moved one at a time,
    # after the mail batches.
    others: list[str] = field(default_factory=list)
    db_to: str = ""  # the new host RoundCube's database was copied to, once it was

    # -- the batches -----------------------------------------------------------------

    def mail_pairs(self) -> list[tuple[str, str]]:
        return [p for p in self.pairs if p[0] not in self.others]

    def host_pairs(self) -> list[tuple[str, str]]:
        return [p for p in self.pairs if p[0] in self.others]

    def batches(self) -> list[list[tuple[str, str]]]:
        n, mail = self.batch_size, self.mail_pairs()
        return [mail[i : i + n] for i in range(0, len(mail), n)] + [[p] for p in self.host_pairs()]

    def step(self, old: str) -> str:
        return self.steps.get(old, "pending")

    def current_batch(self) -> list[tuple[str, str]] | None:
        """The first batch not yet removed (None: every batch is done)."""
        for batch in self.batches():
            if any(self.step(old) != "removed" for old, _ in batch):
                return batch
        return None

    def started(self, old: str) -> bool:
        return self.step(old) != "pending"

    def out_of_map(self, mail_nodes: Iterable[str]) -> set[str]:
        """Mail nodes that hold no mailbox now: new ones not yet joined, old ones joined
        (their users move) or further along."""
        out = set()
        for old, new in self.mail_pairs():
            if self.started(old):
                out.add(old)
            else:
                out.add(new)
        return out & set(mail_nodes)

    def new_nodes(self) -> list[str]:
        """The new mail nodes."""
        return [new for _, new in self.mail_pairs()]

    def old_nodes(self) -> list[str]:
        """The mail nodes replaced."""
        return [old for old, _ in self.mail_pairs()]

    # -- where users go --------------------------------------------------------------

    def final_nodes(self, mail_backends: Iterable[str]) -> list[str]:
        """The nodes that hold mail once the plan is done: today's, without the old ones,
        with the new ones."""
        olds = set(self.old_nodes())
        nodes = [n for n in mail_backends if n not in olds]
        return nodes + [n for n in self.new_nodes() if n not in nodes]

    def pins_for_batch(
        self,
        previous: Mapping[str, str],
        batch: list[tuple[str, str]],
        mail_backends: Iterable[str],
    ) -> dict[str, str]:
        """Every user's node once ``batch`` has joined: ``previous`` maps each user to the
        node they are on before it. ``mail_backends``: the site's mail nodes that hold
        mail outside the plan's say (not draining, not failed), old and new alike."""
        final = self.final_nodes(mail_backends)
        leaving = {old for old, _ in batch}
        up_new = [new for old, new in self.mail_pairs() if self.started(old) or old in leaving]
        if not up_new:
            raise PlanError("no new node has joined: nothing to move the users to")
        pins = {}
        for user, node in previous.items():
            if node not in leaving:
                pins[user] = node
                continue
            want = backend_for(user, final)
            pins[user] = want if want in up_new else backend_for(user, up_new)
        return pins

    # -- the file --------------------------------------------------------------------

    def to_json(self) -> str:
        return json.dumps(
            {
                "target": self.target,
                "pairs": [list(p) for p in self.pairs],
                "batch_size": self.batch_size,
                "steps": self.steps,
                "pins": dict(sorted(self.pins.items())),
                "others": self.others,
                "db_to": self.db_to,
            },
            indent=1,
        )

    @classmethod
    def from_json(cls, text: str) -> Plan:
        data = json.loads(text)
        return cls(
            target=data["target"],
            pairs=[(a, b) for a, b in data["pairs"]],
            batch_size=int(data.get("batch_size", 1)),
            steps=dict(data.get("steps", {})),
            pins=dict(data.get("pins", {})),
            others=list(data.get("others", [])),
            db_to=str(data.get("db_to", "")),
        )


def validate(plan: Plan, mail_nodes: Iterable[str]) -> None:
    """A plan names each node once, replaces mail nodes (and ``plan.others``: webmail
    and database hosts) only, and has batches."""
    nodes = set(mail_nodes) | set(plan.others)
    olds, news = [o for o, _ in plan.pairs], [n for _, n in plan.pairs]
    seen = olds + news
    dupes = sorted({n for n in seen if seen.count(n) > 1})
    if dupes:
        raise PlanError(f"each node may appear once in the plan: {', '.join(dupes)}")
    missing = sorted(set(olds) - nodes)
    if missing:
        raise PlanError(f"not mail, webmail or db hosts of the site: {', '.join(missing)}")
    if plan.batch_size < 1:
        raise PlanError("batch size must be at least 1")
    for old, step in plan.steps.items():
        if step not in STEPS:
            raise PlanError(f"{old}: unknown step {step!r} (one of {', '.join(STEPS)})")


_cache: dict[Path, tuple[tuple[int, int, int], Plan]] = {}


def load(secrets_dir: Path) -> Plan | None:
    """The plan, or None. Read again only when the file changed: Site.backend_of() asks
    for every user on every node. Shared: to change it, change a copy and save that."""
    path = secrets_dir / PLAN_FILE
    try:
        st = path.stat()
    except FileNotFoundError:
        _cache.pop(path, None)
        return None
    key = (st.st_ino, st.st_mtime_ns, st.st_size)  # a save is a new inode
    hit = _cache.get(path)
    if hit and hit[0] == key:
        return hit[1]
    plan = Plan.from_json(path.read_text())
    _cache[path] = (key, plan)
    return plan


def save(secrets_dir: Path, plan: Plan) -> None:
    path = secrets_dir / PLAN_FILE
    tmp = path.with_name(path.name + ".new")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w") as fh:
        fh.write(plan.to_json() + "\n")
        fh.flush()
        os.fsync(fh.fileno())
    os.replace(tmp, path)


def remove(secrets_dir: Path) -> None:
    (secrets_dir / PLAN_FILE).unlink(missing_ok=True)
