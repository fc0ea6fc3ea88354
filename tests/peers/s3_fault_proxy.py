#!/usr/bin/env python3
"""An S3 fault proxy for the cold-tier tests: forwards every request to an S3-compatible
server (moto) on loopback and injects the faults named in a JSON control file, re-read
on every request so that a test switches them on and off while Strata runs:

  {"vhost_domain": "s3.example.test",  # Host "<bucket>.s3.example.test" -> path style
   "hide_new_from_list": 3600,         # ListObjects omits keys written in the last N s
   "fail_complete_and_abort": true,    # CompleteMultipartUpload and AbortMultipartUpload
                                       # answer 503 (an outage between the parts and
                                       # their completion)
   "fail_ranges_over": 1048576,        # a ranged GET of more than N bytes answers 503
   "delay_ms": 20,                     # every request waits N ms before it is forwarded
                                       # (a distant endpoint's round trip)
   "keep_host": true,                  # forward the Host header as received (for an
                                       # upstream that checks SigV4 signatures, which
                                       # cover it), not the upstream's address
   "hold_long_range_until_another": {"over": 1, "seconds": 20}}
                                       # the first ranged GET of more than `over` bytes
                                       # waits until another one arrives; none within
                                       # `seconds`: it answers 503 (once for each
                                       # distinct setting in the proxy's life)

It also serves as a plain HTTP proxy (absolute-form request targets), so that clients
given HTTP_PROXY reach virtual-hosted names without DNS. Every request is appended to
the log file as `METHOD host path -> status`, with ` range=bytes=A-B` before the arrow
for a ranged GET.

Usage: s3_fault_proxy.py --listen PORT --upstream PORT --control FILE --log FILE
"""

import argparse
import http.client
import json
import re
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from urllib.parse import parse_qs, urlsplit

ap = argparse.ArgumentParser()
ap.add_argument("--listen", type=int, required=True)
ap.add_argument("--upstream", type=int, required=True)
ap.add_argument("--control", required=True)
ap.add_argument("--log", required=True)
args = ap.parse_args()

lock = threading.Lock()
written = {}  # "/bucket/key" -> time it was written (PUT or completed upload)
hold = {"setting": None, "count": 0, "another": threading.Event()}
log = open(args.log, "a", buffering=1)


def control():
    try:
        with open(args.control) as f:
            return json.load(f)
    except (OSError, ValueError):
        return {}


def error_xml(code, message):
    return (f'<?xml version="1.0" encoding="UTF-8"?><Error><Code>{code}</Code>'
            f"<Message>{message}</Message><RequestId>proxy</RequestId></Error>").encode()


class Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"

    def log_message(self, *a):
        pass

    def body(self):
        if "chunked" in self.headers.get("Transfer-Encoding", "").lower():
            out = b""
            while True:
                size = int(self.rfile.readline().split(b";")[0].strip() or b"0", 16)
                if size == 0:
                    self.rfile.readline()
                    return out
                out += self.rfile.read(size)
                self.rfile.readline()
        n = int(self.headers.get("Content-Length") or 0)
        return self.rfile.read(n) if n else b""

    def answer(self, status, headers, payload, note=""):
        self.send_response(status)
        for k, v in headers:
            if k.lower() not in ("transfer-encoding", "connection", "content-length",
                                 "server", "date"):
                self.send_header(k, v)
        self.send_header("Content-Length", str(len(payload)))
        self.end_headers()
        # logged before the body goes: a client that has its answer finds it in the log
        rng = self.headers.get("Range")
        rng = f" range={rng}" if rng else ""
        log.write(f"{self.command} {self.host} {self.path_only}{rng} -> {status}{note}\n")
        if self.command != "HEAD":
            self.wfile.write(payload)

    def handle_any(self):
        c = control()
        if c.get("delay_ms"):
            time.sleep(c["delay_ms"] / 1000)
        target = self.path
        self.host = self.headers.get("Host", "")
        if target.startswith("http://"):  # absolute form: we are the client's proxy
            u = urlsplit(target)
            self.host = u.netloc
            target = u.path + ("?" + u.query if u.query else "")
        domain = c.get("vhost_domain")
        name = self.host.split(":")[0]
        if domain and name.endswith("." + domain):
            target = "/" + name[: -len(domain) - 1] + target
        split = urlsplit(target)
        self.path_only = split.path
        query = parse_qs(split.query, keep_blank_values=True)
        payload = self.body() if self.command in ("PUT", "POST") else b""

        if c.get("fail_complete_and_abort") and "uploadId" in query and (
                self.command == "POST" or self.command == "DELETE"):
            self.answer(503, [("Content-Type", "application/xml")],
                        error_xml("ServiceUnavailable", "injected outage"), " (injected)")
            return

        over = c.get("fail_ranges_over")
        m = re.fullmatch(r"bytes=(\d+)-(\d+)", self.headers.get("Range", ""))
        held = c.get("hold_long_range_until_another")
        if held and self.command == "GET" and m and int(m.group(2)) - int(m.group(1)) + 1 > held["over"]:
            with lock:
                setting = json.dumps(held, sort_keys=True)
                if hold["setting"] != setting:
                    hold.update(setting=setting, count=0, another=threading.Event())
                hold["count"] += 1
                first, another = hold["count"] == 1, hold["another"]
            if not first:
                another.set()
            elif not another.wait(held["seconds"]):
                self.answer(503, [("Content-Type", "application/xml")],
                            error_xml("SlowDown", "held: no other long range came"), " (injected)")
                return
        if over is not None and self.command == "GET" and m and int(m.group(2)) - int(m.group(1)) + 1 > over:
            self.answer(503, [("Content-Type", "application/xml")],
                        error_xml("SlowDown", "injected fault on a long range"), " (injected)")
            return

        headers = {k: v for k, v in self.headers.items()
                   if k.lower() not in ("host", "proxy-connection", "transfer-encoding")}
        upstream = f"127.0.0.1:{args.upstream}"
        headers["Host"] = self.headers.get("Host", upstream) if c.get("keep_host") else upstream
        if payload or self.command in ("PUT", "POST"):
            headers["Content-Length"] = str(len(payload))
        up = http.client.HTTPConnection("127.0.0.1", args.upstream, timeout=60)
        up.request(self.command, target, body=payload, headers=headers)
        rsp = up.getresponse()
        data = rsp.read()
        out_headers = rsp.getheaders()
        up.close()

        completed = self.command == "POST" and "uploadId" in query
        if rsp.status == 200 and (self.command == "PUT" and "partNumber" not in query or completed):
            with lock:
                written[split.path] = time.time()
        hide = c.get("hide_new_from_list")
        if hide and self.command == "GET" and split.path.count("/") == 1 and b"<ListBucketResult" in data:
            bucket = split.path
            now = time.time()

            def keep(m):
                key = re.search(rb"<Key>(.*?)</Key>", m.group(0)).group(1).decode()
                with lock:
                    at = written.get(f"{bucket}/{key}")
                return b"" if at is not None and now - at < hide else m.group(0)

            data = re.sub(rb"<Contents>.*?</Contents>", keep, data, flags=re.S)
            data = re.sub(rb"<KeyCount>\d+</KeyCount>",
                          b"<KeyCount>%d</KeyCount>" % data.count(b"<Contents>"), data)
        self.answer(rsp.status, out_headers, data)

    do_GET = do_PUT = do_POST = do_DELETE = do_HEAD = handle_any


ThreadingHTTPServer.daemon_threads = True
ThreadingHTTPServer(("127.0.0.1", args.listen), Handler).serve_forever()
