#!/usr/bin/env python3
"""Send HL7 v2 messages over MLLP with python-hl7's MLLPClient (PyPI `hl7`), one
connection, in order, and print each ACK as a JSON line:
{"code": MSA-1, "control_id": MSA-2, "text": MSA-3, "err": ERR-8} (escape sequences
decoded by python-hl7).

Usage: hl7_send.py --port P < messages.json   (a JSON array of message texts; segments
separated by \\r; a text that is not HL7 is sent as is, framed)

--tls-ca CA.pem [--tls-cert C.pem --tls-key K.pem]: MLLP over TLS (the MLLPClient's
socket wrapped by Python's ssl once connected), verifying the server for --host.
"""

import argparse
import json
import ssl
import sys

import hl7
from hl7.client import MLLPClient


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--host", default="127.0.0.1")
    ap.add_argument("--port", type=int, required=True)
    ap.add_argument("--tls-ca")
    ap.add_argument("--tls-cert")
    ap.add_argument("--tls-key")
    args = ap.parse_args()
    messages = json.load(sys.stdin)
    with MLLPClient(args.host, args.port) as client:
        if args.tls_ca:
            context = ssl.create_default_context(ssl.Purpose.SERVER_AUTH, cafile=args.tls_ca)
            context.minimum_version = ssl.TLSVersion.TLSv1_2
            if args.tls_cert:
                context.load_cert_chain(args.tls_cert, args.tls_key)
            client.socket = context.wrap_socket(client.socket, server_hostname=args.host)
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
