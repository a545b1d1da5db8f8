"""The lab's outbound-mail sink: an SMTP server on the lab host that keeps every message.

Exim in the lab relays mail for other domains here (the site's smarthost), so nothing
leaves this machine. Each message is one file in a Maildir (``new/``), its envelope
prepended as ``X-Sink-Mail-From:`` and ``X-Sink-Rcpt-To:`` headers.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import socket
import time
import uuid
from pathlib import Path
from typing import Any

from aiosmtpd.controller import Controller


class MaildirHandler:
    def __init__(self, maildir: Path) -> None:
        self.maildir = maildir
        for sub in ("tmp", "new", "cur"):
            (maildir / sub).mkdir(parents=True, exist_ok=True)

    async def handle_DATA(self, server: Any, session: Any, envelope: Any) -> str:
        name = f"{time.time():.6f}.{uuid.uuid4().hex}.{socket.gethostname()}"
        head = f"X-Sink-Mail-From: <{envelope.mail_from}>\r\n"
        head += "".join(f"X-Sink-Rcpt-To: <{rcpt}>\r\n" for rcpt in envelope.rcpt_tos)
        body = envelope.original_content or envelope.content
        tmp = self.maildir / "tmp" / name
        with open(tmp, "wb") as fh:
            fh.write(head.encode() + body)
            fh.flush()
            os.fsync(fh.fileno())
        # Maildir delivery: complete in tmp/, then one atomic rename into new/.
        tmp.rename(self.maildir / "new" / name)
        return "250 2.0.0 Message accepted by the lab sink"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--listen", required=True, help="ADDRESS:PORT")
    parser.add_argument("--maildir", required=True, type=Path)
    parser.add_argument("--pidfile", required=True, type=Path)
    args = parser.parse_args()
    host, port = args.listen.rsplit(":", 1)
    controller = Controller(
        MaildirHandler(args.maildir),
        hostname=host,
        port=int(port),
        # Keep mail as sent (no 8-bit decoding); allow messages up to 64 MB.
        decode_data=False,
        data_size_limit=64 * 1024 * 1024,
        ident="mailcluster lab sink",
    )
    controller.start()
    args.pidfile.write_text(f"{os.getpid()}\n")
    try:
        asyncio.run(asyncio.Event().wait())
    finally:
        controller.stop()


if __name__ == "__main__":
    main()
