"""RoundCube over plain HTTPS requests (no browser): enough to log in and check a session."""

from __future__ import annotations

import functools
import http.client
import http.cookiejar
import re
import ssl
import urllib.parse
import urllib.request
from typing import Any

from tests.conftest import patience


class _HTTPSFrom(urllib.request.HTTPSHandler):
    """HTTPS from one of the lab host's client addresses."""

    def __init__(self, context: ssl.SSLContext, source: str) -> None:
        super().__init__(context=context)
        self._ctx, self._source = context, source

    def https_open(self, req: urllib.request.Request) -> http.client.HTTPResponse:
        conn = functools.partial(
            http.client.HTTPSConnection, context=self._ctx, source_address=(self._source, 0)
        )
        return self.do_open(conn, req)


class WebmailSession:
    def __init__(
        self, lab: dict[str, Any], base: str | None = None, source: str | None = None
    ) -> None:
        self.base = (base or lab["endpoints"]["webmail"]).rstrip("/") + "/"
        ctx = ssl.create_default_context(cafile=lab["ca_cert"])
        self.jar = http.cookiejar.CookieJar()
        https = _HTTPSFrom(ctx, source) if source else urllib.request.HTTPSHandler(context=ctx)
        self.opener = urllib.request.build_opener(
            https, urllib.request.HTTPCookieProcessor(self.jar)
        )

    def get(self, query: str = "") -> str:
        with self.opener.open(self.base + query, timeout=patience(30)) as resp:
            return resp.read().decode(errors="replace")

    def login(self, user: str, password: str) -> str:
        page = self.get()
        token = re.search(r'name="_token" value="([^"]+)"', page)
        assert token, "no login form"
        form = urllib.parse.urlencode(
            {
                "_token": token.group(1),
                "_task": "login",
                "_action": "login",
                "_timezone": "Asia/Tokyo",
                "_url": "",
                "_user": user,
                "_pass": password,
            }
        ).encode()
        with self.opener.open(self.base + "?_task=login", data=form, timeout=patience(30)) as resp:
            return resp.read().decode(errors="replace")

    def logged_in_as(self) -> str | None:
        """The user a mail page is rendered for, or None (the login form)."""
        page = self.get("?_task=mail&_mbox=INBOX")
        found = re.search(r'<span class="header-title username">([^<@]+)', page)
        return found.group(1) if found and "rcmloginuser" not in page else None
