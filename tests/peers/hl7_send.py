#!/usr/bin/env python3
"""Send HL7 v2 messages over MLLP with python-hl7's MLLPClient (PyPI `hl7`), one
connection, in order, and print each ACK as a JSON line:
{"code": MSA-1, "control_id": MSA-2, "text": MSA-3, "err": ERR-8} (escape sequences
decoded by python-hl7).

Usage: hl7_send.py --port P < messages.json   (a JSON array of message texts; segments
separated by \\r; a text that is not HL7 is sent as is, framed)
"""

import argparse
import json
import sys

import hl7
from hl7.client import MLLPClient


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--host", default="127.0.0.1")
    ap.add_argument("--port", type=int, required=True)
    args = ap.parse_args()
    messages = json.load(sys.stdin)
    with MLLPClient(args.host, args.port) as client:
        for text in messages:
            raw = client.send_message(text)
            ack = hl7.parse(raw.decode("utf-8", "replace"))
            msa = ack.segment("MSA")
            err = ""
            try:
                err = ack.unescape(str(ack.segment("ERR")(8)))
            except KeyError:
                pass
            print(json.dumps({
                "code": str(msa(1)),
                "control_id": str(msa(2)),
                "text": ack.unescape(str(msa(3))) if len(msa) > 3 else "",
                "err": err,
            }), flush=True)


if __name__ == "__main__":
    main()
