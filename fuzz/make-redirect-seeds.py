#!/usr/bin/env python3
"""Writes corpus/redirect/seed-oauth2proxy-NNN, one file per line of oauth2-proxy's
openredirects.txt (NNN = its line number), query-unescaped ('+' is a space, %XX a byte).

Usage: python3 make-redirect-seeds.py [PATH/TO/openredirects.txt]
(default: ../../shared/data/openredirects.txt, the project's shared data)

Bytes that are not UTF-8 (two lines have %a0) become U+FFFD, as sessiond's own form and
query decoding turns them into before `safe_redirect` sees them.
"""
import os
import sys
import urllib.parse

here = os.path.dirname(os.path.abspath(__file__))
src = sys.argv[1] if len(sys.argv) > 1 else os.path.join(here, "..", "..", "shared", "data", "openredirects.txt")
out = os.path.join(here, "corpus", "redirect")
os.makedirs(out, exist_ok=True)
with open(src, encoding="utf-8") as f:
    lines = f.read().split("\n")
if lines and lines[-1] == "":
    lines.pop()
for n, line in enumerate(lines, 1):
    raw = urllib.parse.unquote_to_bytes(line.replace("+", " "))
    text = raw.decode("utf-8", errors="replace")
    with open(os.path.join(out, f"seed-oauth2proxy-{n:03}"), "w", encoding="utf-8") as f:
        f.write(text)
print(f"{len(lines)} seeds in {out}")
