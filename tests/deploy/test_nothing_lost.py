"""Nothing lost under a rolling deploy, a node outage and a full home: the load script
bench/nothing_lost.py sends 1,000 uniquely identified messages over all mail nodes while
a rollout changes Dovecot's and Exim's configuration on every node (and back), one
node's Exim and Dovecot are down for 60 s, and one recipient is over quota until the end.
Every accepted message must be in its recipient's Maildir exactly once."""

from __future__ import annotations

import json
import subprocess
import sys

from tests.conftest import REPO


def test_a_thousand_messages_through_a_rollout_an_outage_and_a_full_home(tmp_path) -> None:
    report_file = tmp_path / "report.json"
    proc = subprocess.run(
        [sys.executable, "bench/nothing_lost.py", "--messages", "1000", "--json", str(report_file)],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=1500,
    )
    assert report_file.exists(), proc.stdout[-3000:] + proc.stderr[-3000:]
    report = json.loads(report_file.read_text())
    print(json.dumps(report, indent=2))
    assert report["sent"] == 1000
    assert report["accepted"] == 1000, report
    assert report["lost"] == 0, report
    assert report["duplicated"] == 0, report
    assert report["delivered"] == 1000, report
    # The disturbances happened while mail was coming in: some messages met the stopped
    # node and were retried elsewhere, as another mail server would.
    assert len(report["events"]) == 3, report
    assert report["retried"] > 0, report
    assert proc.returncode == 0, proc.stdout[-3000:]
