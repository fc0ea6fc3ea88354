#!/usr/bin/env python3
"""Presentation-context limits of an association acceptor (PS3.8 9.3.2.2: a context ID is
an odd integer 1-255, so an A-ASSOCIATE-RQ holds at most 128 contexts).

  contexts_limit.py --port P pynetdicom
      pynetdicom proposes the maximum, 128 contexts (Verification in 128 transfer-syntax
      combinations); prints {"accepted": n, "rejected": n, "echo": status}.
  contexts_limit.py --port P raw --contexts N --ids odd|wrap|even
      a raw A-ASSOCIATE-RQ with N contexts for Verification: `odd` numbers them 1, 3, 5...
      (valid up to 128), `wrap` continues past 255 from 1 again (duplicates), `even` uses
      2, 4, 6... (invalid IDs). Prints the answer: {"pdu": "AC", "results": [[id, result],
      ...]} or {"pdu": "RJ", "result": r, "source": s, "reason": r} or
      {"pdu": "ABORT", "source": s, "reason": r} or {"pdu": "closed"}.
"""

import argparse
import json
import socket
import struct

VERIFICATION = "1.2.840.10008.1.1"
APP_CONTEXT = "1.2.840.10008.3.1.1.1"
TS = ["1.2.840.10008.1.2.1", "1.2.840.10008.1.2"]


def item(kind, payload):
    return struct.pack(">BBH", kind, 0, len(payload)) + payload


def uid(s):
    return s.encode()


def raw(args):
    if args.ids == "odd":
        ids = [2 * i + 1 for i in range(args.contexts)]
    elif args.ids == "wrap":
        ids = [(2 * i) % 256 + 1 for i in range(args.contexts)]
    else:
        ids = [(2 * i + 2) % 256 for i in range(args.contexts)]
    body = item(0x10, uid(APP_CONTEXT))
    for pc in ids:
        sub = item(0x30, uid(VERIFICATION)) + b"".join(item(0x40, uid(t)) for t in TS)
        body += item(0x20, struct.pack(">BBBB", pc, 0, 0, 0) + sub)
    body += item(0x50, item(0x51, struct.pack(">I", 16384)) + item(0x52, uid("1.2.3.4")))
    header = struct.pack(">HH", 1, 0) + args.called.ljust(16).encode() + b"CTXLIMIT".ljust(16) + bytes(32)
    pdu = header + body
    s = socket.create_connection((args.host, args.port), timeout=10)
    s.sendall(struct.pack(">BBI", 0x01, 0, len(pdu)) + pdu)

    def read(n):
        out = b""
        while len(out) < n:
            chunk = s.recv(n - len(out))
            if not chunk:
                return None
            out += chunk
        return out

    head = read(6)
    if head is None:
        print(json.dumps({"pdu": "closed"}))
        return
    kind, _, length = struct.unpack(">BBI", head)
    data = read(length) or b""
    if kind == 0x02:
        results = []
        at = 68
        while at + 4 <= len(data):
            t, _, ln = struct.unpack(">BBH", data[at:at + 4])
            if t == 0x21:
                results.append([data[at + 4], data[at + 6]])
            at += 4 + ln
        print(json.dumps({"pdu": "AC", "results": results}))
        # release politely
        s.sendall(struct.pack(">BBI", 0x05, 0, 4) + bytes(4))
    elif kind == 0x03:
        print(json.dumps({"pdu": "RJ", "result": data[1], "source": data[2], "reason": data[3]}))
    elif kind == 0x07:
        print(json.dumps({"pdu": "ABORT", "source": data[2], "reason": data[3]}))
    else:
        print(json.dumps({"pdu": f"type {kind:#x}"}))
    s.close()


def with_pynetdicom(args):
    from pynetdicom import AE

    ae = AE(ae_title="CTXLIMIT")
    # 128 distinct (abstract syntax, transfer syntaxes) proposals of Verification
    syntaxes = ["1.2.840.10008.1.2", "1.2.840.10008.1.2.1", "1.2.840.10008.1.2.2",
                "1.2.840.10008.1.2.1.99"]
    for i in range(128):
        ae.add_requested_context(VERIFICATION, [syntaxes[i % 4]])
    try:
        ae.add_requested_context(VERIFICATION, [syntaxes[0]])
        refused_129th = False
    except ValueError:
        refused_129th = True
    assoc = ae.associate(args.host, args.port, ae_title=args.called)
    if not assoc.is_established:
        print(json.dumps({"established": False}))
        return
    accepted = len(assoc.accepted_contexts)
    rejected = len(assoc.rejected_contexts)
    status = assoc.send_c_echo()
    assoc.release()
    print(json.dumps({"established": True, "accepted": accepted, "rejected": rejected,
                      "echo": status.Status if status else None,
                      "pynetdicom_refuses_a_129th": refused_129th}))


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--host", default="127.0.0.1")
    ap.add_argument("--port", type=int, required=True)
    ap.add_argument("--called", default="STRATA")
    sub = ap.add_subparsers(dest="mode", required=True)
    sub.add_parser("pynetdicom")
    r = sub.add_parser("raw")
    r.add_argument("--contexts", type=int, required=True)
    r.add_argument("--ids", choices=["odd", "wrap", "even"], default="odd")
    args = ap.parse_args()
    (raw if args.mode == "raw" else with_pynetdicom)(args)


if __name__ == "__main__":
    main()
