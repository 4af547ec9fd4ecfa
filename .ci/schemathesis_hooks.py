"""Schemathesis hooks for .ci/schemathesis.sh: a fresh session for every test case.

Many operations end the session they are given (logout, revoking sessions, a password
change, a second factor's rotation), so one cookie shared by the whole run would turn
every later case into a `401`. Instead each case logs in anew (as `admin`, with the
password the script gave the server) and sends that session's cookie.

Logins name a client address of their own in `X-Forwarded-For` (which the server reads
from loopback, a trusted proxy by default; the address is from the documentation prefix and
only a header value here) and present the account's device cookie, so the failed logins and
password checks that the fuzzed cases make from 127.0.0.1 never throttle them
(docs/reference/security.md, "Login throttling").
"""

import json
import os
import urllib.request

import schemathesis

BASE = os.environ["SESSIOND_BASE"]
PASSWORD = os.environ["SESSIOND_ADMIN_PASSWORD"]
COOKIE = os.environ.get("SESSIOND_COOKIE", "sessiond")
DEVICE = COOKIE + "_device"

_device = {}


def _login():
    headers = {"Content-Type": "application/json", "X-Forwarded-For": "2001:db8::5"}
    if "value" in _device:
        headers["Cookie"] = f"{DEVICE}={_device['value']}"
    body = json.dumps({"username": "admin", "password": PASSWORD}).encode()
    req = urllib.request.Request(BASE + "/api/login", data=body, headers=headers, method="POST")
    with urllib.request.urlopen(req, timeout=30) as res:
        session = None
        for h in res.headers.get_all("Set-Cookie") or []:
            name, _, rest = h.partition("=")
            value = rest.split(";", 1)[0]
            if name == COOKIE:
                session = value
            elif name == DEVICE:
                _device["value"] = value
    if session is None:
        raise RuntimeError("login set no session cookie")
    return session


# No caching (a new session per case) and no replays on 401 (a 401 is an answer to check).
@schemathesis.auth(refresh_interval=None, retry_on=[])
class FreshSession:
    def get(self, case, ctx):
        return _login()

    def set(self, case, data, ctx):
        case.headers = case.headers or {}
        case.headers["Cookie"] = f"{COOKIE}={data}"
