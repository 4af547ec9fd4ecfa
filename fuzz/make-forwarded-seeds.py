#!/usr/bin/env python3
"""Writes corpus/forwarded_headers/seed-*: inputs in the `arbitrary` 1.x encoding of the
fuzz target's `Input` struct (identity, peer, then eight `Option<&[u8]>` header values).

The encoding, as `arbitrary` decodes it: the `Identity` enum is a little-endian u32 from the
front, variant = (u32 * 3) >> 32; the `Peer` enum is a little-endian u32 from the
front, variant = (u32 * 6) >> 32 (`Any` then takes a bool byte, 1 = IPv4, and 4 or 16 address
bytes); each `Option` is a byte from the front (odd = Some); a slice's length is one byte taken
from the *end* of the input (inputs here stay under 256 bytes), its bytes from the front (the last field too: `Option` keeps the default `arbitrary_take_rest`). Check a seed with
`SESSIOND_FUZZ_VERBOSE=1 target/x86_64-unknown-linux-gnu/release/forwarded_headers SEED`.
"""
import os

FIELDS = ["proto", "host", "uri", "method", "forwarded_for", "forwarded_for_2",
          "original_url", "original_method"]
PEERS = ["Loopback", "Private", "MappedLoopback", "V6Loopback", "Untrusted", "Any"]
IDENTITIES = ["Anonymous", "Bob", "Olga"]


def variant_bytes(k, n):
    """The smallest little-endian u32 that `arbitrary` reads as variant k of n."""
    return (-(-k * 2**32 // n)).to_bytes(4, "little")


def peer_bytes(name, ip=None):
    k = PEERS.index(name)
    x = -(-k * 2**32 // 6)  # smallest u32 with (x * 6) >> 32 == k
    out = x.to_bytes(4, "little")
    if name == "Any":
        # Ipv4Addr / Ipv6Addr come from a little-endian u32 / u128: bytes reversed.
        out += (b"\x01" if len(ip) == 4 else b"\x00") + bytes(reversed(ip))
    return out


def encode(peer, identity="Anonymous", **headers):
    who = variant_bytes(IDENTITIES.index(identity), len(IDENTITIES))
    front, back = bytearray(peer if isinstance(peer, bytes) else peer_bytes(peer)), []
    for f in FIELDS:
        v = headers.get(f)
        if v is None:
            front.append(0)
            continue
        v = v.encode() if isinstance(v, str) else v
        front.append(1)
        back.append(len(v))
        front += v
    data = bytes(front) + bytes(reversed(back))
    assert len(data) <= 256, "keep seeds under 256 bytes (one-byte lengths)"
    # The identity comes first; the check below decodes what follows it.
    # Each length byte must be read while the remaining data is at most 256 bytes and
    # must not exceed what remains then; re-derive to be sure.
    assert decode(data) == (peer if isinstance(peer, bytes) else peer_bytes(peer),
                            {f: (headers[f].encode() if isinstance(headers[f], str) else headers[f])
                             for f in headers}), data
    return who + data


def decode(data):
    """A model of the decoder, to check the encoder."""
    d = bytearray(data)
    k = (int.from_bytes(bytes(d[:4]).ljust(4, b"\0"), "little") * 6) >> 32
    n = 4
    if PEERS[k] == "Any":
        n += 1 + (4 if d[4] & 1 else 16)
    peer, d = bytes(d[:n]), d[n:]
    out = {}
    for f in FIELDS:
        some = bool(d and d.pop(0) & 1)
        if not some:
            continue
        if len(d) <= 1:
            d.clear()
            out[f] = b""
            continue
        size = d.pop() % (len(d) + 1)
        out[f], d = bytes(d[:size]), d[size:]
    return peer, out


SEEDS = {
    "forward-auth": ("Loopback", dict(proto="https", host="app.example.com:8443",
                                      uri="/ops/x?y=1", method="post",
                                      forwarded_for="203.0.113.9, 10.0.0.5", identity="Olga")),
    "forward-auth-public": ("Loopback", dict(proto="https", host="app.example.com",
                                             uri="/public/x")),
    "forward-auth-dots": ("Private", dict(proto="http", host="app.example.com",
                                          uri="/public%2F..%2Fdeny")),
    "forward-auth-double-slash": ("Loopback", dict(proto="http", host="app.example.com",
                                                   uri="/public//../deny/x", identity="Bob")),
    "forward-auth-case": ("Loopback", dict(proto="http", host="app.example.com",
                                           uri="/DENY/x", identity="Bob")),
    "forward-auth-trailing-dot": ("Loopback", dict(proto="http", host="app.example.com",
                                                   uri="/ops./x", identity="Bob")),
    "forward-auth-userinfo": ("Loopback", dict(proto="https", host="evil.com@app.example.com")),
    "forward-auth-ipv6-host": ("V6Loopback", dict(proto="HTTPS", host="[::1]:8443", uri="/")),
    "auth-request": ("Loopback", dict(original_url="https://app.example.com/ops/x?y",
                                      original_method="GET", identity="Bob")),
    "auth-request-encoded-slash": ("Loopback", dict(original_url="https://app.example.com/%2Fops/x",
                                                    identity="Bob")),
    "auth-request-backslash": ("Loopback", dict(original_url="https://a.com\\@evil.com/")),
    "auth-request-fallback": ("MappedLoopback", dict(proto="https", host="a.example.com",
                                                     original_method="DELETE")),
    "xff-chain": ("Loopback", dict(forwarded_for="6.6.6.6, [2001:db8::1]:443",
                                   forwarded_for_2="10.0.0.7")),
    "xff-mapped": ("MappedLoopback", dict(forwarded_for="::ffff:1.2.3.4, 127.0.0.1:80")),
    "xff-untrusted-peer": ("Untrusted", dict(forwarded_for="1.1.1.1")),
    "xff-any-peer-v6": (peer_bytes("Any", [0] * 15 + [1]), dict(forwarded_for="1.2.3.4")),
    "xff-any-peer-v4": (peer_bytes("Any", [10, 9, 8, 7]), dict(forwarded_for="1.2.3.4, 10.0.0.1")),
    "xff-malformed": ("Loopback", dict(forwarded_for="unknown, 198.51.100.7")),
}

here = os.path.dirname(os.path.abspath(__file__))
out = os.path.join(here, "corpus", "forwarded_headers")
os.makedirs(out, exist_ok=True)
for name, (peer, headers) in SEEDS.items():
    with open(os.path.join(out, f"seed-{name}"), "wb") as f:
        f.write(encode(peer, **headers))
print(f"{len(SEEDS)} seeds in {out}")
