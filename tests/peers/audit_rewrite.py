#!/usr/bin/env python3
"""Rewrite a Strata audit log consistently, as an attacker with write access would:
change the first record's outcome and re-hash every record after it, so that the chain
itself stays valid. Usage: audit_rewrite.py AUDIT_LOG"""
import hashlib
import json
import sys

path = sys.argv[1]
records = [json.loads(l) for l in open(path, encoding="utf-8") if l.strip()]
prev = "0" * 64
out = []
for i, r in enumerate(records):
    if i == 0:
        r["outcome"] = "nothing happened here"
    r["prev"] = prev
    body = {k: r[k] for k in ("v", "seq", "time_ms", "actor", "action", "uids", "outcome", "prev")}
    data = json.dumps(body, separators=(",", ":"), ensure_ascii=False).encode()
    r["hash"] = hashlib.sha256(prev.encode() + b"\n" + data).hexdigest()
    prev = r["hash"]
    out.append(json.dumps({**body, "hash": r["hash"]}, separators=(",", ":"), ensure_ascii=False))
open(path, "w", encoding="utf-8").write("\n".join(out) + "\n")
