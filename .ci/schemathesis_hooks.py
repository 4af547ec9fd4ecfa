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

Forward auth answers `400` to a target on another host than the public URL's
(`localhost` here), which is all a generated host ever is; every other forward-auth case
names a target on `localhost` instead, as a browser navigation (`Accept: text/html`) or
not, with the session or without, on paths under each access rule the script configures,
so the `200`, `302`, `401` and `403` answers are checked too.

Generated passwords are never right, so the operations that check one would only ever
answer `400`/`401`/`429`. Every other case of those gets the real password instead (a
password change to the same password, which keeps the run's logins working), so their
`200` answers are checked against the description too.
"""

import itertools
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


# The operations that check the admin's password, and the fields that carry it.
RIGHT_PASSWORD = {
    ("POST", "/api/login"): ("password",),
    ("POST", "/api/password"): ("current_password", "new_password"),
    ("POST", "/api/2fa/totp/setup"): ("password",),
}
_turn = itertools.count()


FORWARD_AUTH = {"/api/authz/forward-auth", "/api/verify", "/api/authz/auth-request"}
# Header values a target on this server's host is made of (a value is replaced only where
# the case has one that is a string, so a case without the header stays without it).
OUR_TARGET = {
    "X-Forwarded-Host": "localhost",
    "X-Forwarded-Uri": "{path}?x=1",
    "X-Forwarded-Method": "GET",
    "X-Original-URL": "http://localhost{path}?x=1",
    "X-Original-Method": "GET",
}
# A path under each access rule of .ci/schemathesis.sh, and one under none.
PATHS = ["/app/page", "/open/page", "/closed/page", "/staff/page", "/secure/page"]
_forward_turn = itertools.count()


def _our_target(case):
    turn = next(_forward_turn)
    if turn % 2 or case.headers is None:
        return
    path = PATHS[turn // 8 % len(PATHS)]
    for name, value in OUR_TARGET.items():
        if isinstance(case.headers.get(name), str):
            case.headers[name] = value.format(path=path)
    variant = turn // 2 % 4
    if variant & 1:
        case.headers["Accept"] = "text/html"
    if variant & 2:
        case.headers.pop("Cookie", None)


@schemathesis.hook
def map_case(context, case):
    if case.method.upper() == "GET" and case.operation.path in FORWARD_AUTH:
        _our_target(case)
        return case
    fields = RIGHT_PASSWORD.get((case.method.upper(), case.operation.path))
    if fields and isinstance(case.body, dict) and next(_turn) % 2 == 0:
        # Only strings are replaced: a negative case whose fault is a field's type keeps it.
        for field in (*fields, "username"):
            if isinstance(case.body.get(field), str):
                case.body[field] = "admin" if field == "username" else PASSWORD
    return case
