#!/usr/bin/env python3
"""The physical floor of durable ingest on this disk: what no archive can beat.

Measures, in the directory given (use the receiver's data directory's file system):

1. **one durable instance at best** (`floor_inst_s`): SIZE bytes received over a loopback
   TCP connection (a sender thread writes them, the receiver reads them into one buffer),
   then written with `pwrite` over space of a file that was filled and synced beforehand
   (no allocation, no metadata: the cheapest write the file system has) and made durable
   with one `fdatasync`; one after the other, as a modality on one association sends and
   waits. ROUNDS of them; the median and the mean per instance, and instances/s = 1 /
   mean.
2. **the disk's synced sequential bandwidth** (`synced_mb_s`): BW_MIB MiB written in 4 MiB
   `write`s to a new file, then one `fdatasync` (what `dd bs=4M conv=fdatasync` does),
   MB/s with MB = 10^6 bytes; and in instances of SIZE bytes per second
   (`bandwidth_inst_s`).

For comparison (not the floor): the median cost of a new file of SIZE bytes + `fdatasync`
(`new_file_fdatasync_ms`), and of that + rename into place + `fsync` of the directory
(`new_file_rename_dirsync_ms`): a file per instance made durable on its own.

Prints one JSON object on stdout (keys above, plus `size`, `rounds`, `median_ms`,
`mean_ms`, `bw_mib`), progress on stderr. The files are deleted afterwards.

Usage: scripts/probe-floor.py DIR [SIZE=537600] [ROUNDS=300] [BW_MIB=1024]
537,600 bytes is one generated 512x512 16-bit CT instance (tests/peers/gen_ct.py) as
stored (Part-10 with its meta group), about 525 KiB.
"""

import json
import os
import socket
import statistics
import sys
import threading
import time

if len(sys.argv) < 2:
    sys.exit(__doc__)
root = sys.argv[1]
size = int(sys.argv[2]) if len(sys.argv) > 2 else 537_600
rounds = int(sys.argv[3]) if len(sys.argv) > 3 else 300
bw_mib = int(sys.argv[4]) if len(sys.argv) > 4 else 1024
os.makedirs(root, exist_ok=True)

# --- 1. receive + pwrite over written space + fdatasync -------------------------------
# a ring of slots in one file, written and synced once before timing: each round
# overwrites the next slot (as a preallocated journal would)
slots = 64
ring = os.path.join(root, "floor-ring")
fd = os.open(ring, os.O_RDWR | os.O_CREAT | os.O_TRUNC, 0o600)
chunk = b"\0" * size
for i in range(slots):
    os.pwrite(fd, chunk, i * size)
os.fsync(fd)

payload = os.urandom(size)
listener = socket.socket()
listener.bind(("127.0.0.1", 0))
listener.listen(1)
port = listener.getsockname()[1]
go = [threading.Semaphore(0), threading.Semaphore(0)]  # (send next, stop)


def sender():
    s = socket.create_connection(("127.0.0.1", port))
    s.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    for _ in range(rounds):
        go[0].acquire()
        s.sendall(payload)
    s.close()


t = threading.Thread(target=sender, daemon=True)
t.start()
conn, _ = listener.accept()
buf = bytearray(size)
view = memoryview(buf)
times = []
for i in range(rounds):
    started = time.perf_counter()
    go[0].release()
    got = 0
    while got < size:
        n = conn.recv_into(view[got:], size - got)
        if n == 0:
            sys.exit("probe-floor: the sender hung up")
        got += n
    os.pwrite(fd, buf, (i % slots) * size)
    os.fdatasync(fd)
    times.append(time.perf_counter() - started)
t.join()
conn.close()
listener.close()
os.close(fd)
os.unlink(ring)
mean = statistics.fmean(times)
median = statistics.median(times)
print(f"probe-floor: durable {size} B instance: median {median * 1e3:.3f} ms, mean {mean * 1e3:.3f} ms", file=sys.stderr)

# --- for comparison: what a file per instance costs ---------------------------------
# a new file + fdatasync (allocation and metadata committed through the file system's
# journal), and the same + rename into place + fsync of the directory (today's hot path)
def per_file(rename):
    costs = []
    d = os.path.join(root, "floor-files")
    os.makedirs(d, exist_ok=True)
    dfd = os.open(d, os.O_RDONLY | os.O_DIRECTORY)
    for i in range(min(rounds, 100)):
        started = time.perf_counter()
        tmp = os.path.join(d, f"tmp-{i}")
        f = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        os.write(f, payload)
        os.fdatasync(f)
        os.close(f)
        if rename:
            os.rename(tmp, os.path.join(d, f"obj-{i}"))
            os.fsync(dfd)
        costs.append(time.perf_counter() - started)
    os.close(dfd)
    for name in os.listdir(d):
        os.unlink(os.path.join(d, name))
    os.rmdir(d)
    return statistics.median(costs)


new_file = per_file(False)
new_file_rename = per_file(True)
print(f"probe-floor: new file + fdatasync {new_file * 1e3:.3f} ms; + rename + directory fsync {new_file_rename * 1e3:.3f} ms", file=sys.stderr)

# --- 2. synced sequential bandwidth --------------------------------------------------
seq = os.path.join(root, "floor-seq")
block = os.urandom(4 << 20)
started = time.perf_counter()
fd = os.open(seq, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
for _ in range(bw_mib // 4):
    os.write(fd, block)
os.fdatasync(fd)
elapsed = time.perf_counter() - started
os.close(fd)
os.unlink(seq)
mb_s = (bw_mib // 4) * len(block) / elapsed / 1e6
print(f"probe-floor: synced sequential write: {mb_s:.1f} MB/s", file=sys.stderr)

print(json.dumps({
    "size": size,
    "rounds": rounds,
    "median_ms": round(median * 1e3, 3),
    "mean_ms": round(mean * 1e3, 3),
    "floor_inst_s": round(1 / mean, 1),
    "new_file_fdatasync_ms": round(new_file * 1e3, 3),
    "new_file_rename_dirsync_ms": round(new_file_rename * 1e3, 3),
    "bw_mib": bw_mib,
    "synced_mb_s": round(mb_s, 1),
    "bandwidth_inst_s": round(mb_s * 1e6 / size, 1),
}))
