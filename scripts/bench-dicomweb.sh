#!/usr/bin/env bash
# DICOMweb benchmark (issue 13), Strata and Orthanc with its DICOMweb plugin on the same
# data in one run, side by side, printing Strata's ratio for each:
#  - STOW-RS: N CT instances (default 1000, 200 per study) posted study by study, 20
#    instances per request, to each server (instances/s);
#  - WADO-RS: every study retrieved whole as multipart application/dicom, as stored
#    (MB/s of the bodies), from hot disk, by curl: first from disk (the page cache
#    emptied before, when run as root), then with the page cache warm, one client,
#    then 4 at once, each retrieving every study in its own order (aggregate MB/s);
#  - WADO-RS from the cold tier (Strata only; Orthanc has none): every study moved to
#    cold (`strata tier move`, packs on local disk), then retrieved whole once, read
#    from its pack (ranged read, zstd decode, each object verified against its id);
#  - QIDO-RS: 200 study searches by PatientID, latency p50/p99 (ms);
#  - and Strata's WADO-RS retrieve against its own C-GET of the same studies (DCMTK
#    getscu), the issue's "retrieve at least half of C-GET";
#  - the yardstick: what one loopback HTTP stream into curl carries on this machine at
#    best, and four at once (a minimal server sendfile(2)-ing the same bytes from the
#    page cache, no reading, verifying or framing), so the WADO-RS figures can be read
#    against what the clients can take.
# Data from tests/peers/gen_ct.py (shared with the other benchmarks).
# Usage: scripts/bench-dicomweb.sh [N=1000]
set -euo pipefail
cd "$(dirname "$0")/.."
N=${1:-1000}
export CARGO_TARGET_DIR=${CARGO_TARGET_DIR:-/var/tmp/strata-target}
export TCP_NODELAY=1
ROOT=${BENCH_ROOT:-/var/tmp/strata-bench}
WORK=$ROOT/dicomweb
DATA=$ROOT/move-data-$N
BASE=${BENCH_PORT_BASE:-41700}
S_DICOM=$BASE S_HTTP=$((BASE + 1)) O_DICOM=$((BASE + 2)) O_HTTP=$((BASE + 3))
pids=()
# stop what we started, by pid, and wait until it is gone (a next run reuses the ports)
cleanup() {
  for p in "${pids[@]}"; do kill "$p" 2>/dev/null || true; done
  for p in "${pids[@]}"; do
    for _ in $(seq 100); do kill -0 "$p" 2>/dev/null || break; sleep 0.1; done
  done
}
trap cleanup EXIT

cargo build --release --locked --bin strata >&2
if [ ! -f "$DATA.complete" ]; then
  rm -rf "$DATA"
  python3 tests/peers/gen_ct.py --out "$DATA" --studies $((N / 200)) --instances 200 --seed 11 >/dev/null
  touch "$DATA.complete"
fi
rm -rf "$WORK" && mkdir -p "$WORK"
cat > "$WORK/strata.toml" <<TOML
[archive]
data_dir = "$WORK/strata-data"
min_free_space_mb = 0
[dicom]
port = $S_DICOM
bind = "127.0.0.1"
[http]
port = $S_HTTP
bind = "127.0.0.1"
[tiering]
enabled = false
TOML
"$CARGO_TARGET_DIR/release/strata" --config "$WORK/strata.toml" serve 2>"$WORK/strata.log" &
pids+=($!)
for _ in $(seq 100); do curl -sf "http://127.0.0.1:$S_HTTP/healthz" >/dev/null && break; sleep 0.1; done
ORTHANC_EXTRA_JSON='{"Plugins": ["/usr/share/orthanc/plugins/libOrthancDicomWeb.so"], "DicomWeb": {"Enable": true, "Root": "/dicom-web/"}}' \
  scripts/start-orthanc.sh "$WORK/orthanc" "$O_DICOM" "$O_HTTP" ORTHANC >/dev/null
pids+=($(cat "$WORK/orthanc/orthanc.pid"))

python3 - "$DATA" "$S_HTTP" "$O_HTTP" "$S_DICOM" "$WORK" <<'PY'
import os, statistics, subprocess, sys, time, uuid
import requests
data, s_http, o_http, s_dicom, work = sys.argv[1], int(sys.argv[2]), int(sys.argv[3]), int(sys.argv[4]), sys.argv[5]
servers = {"strata": f"http://127.0.0.1:{s_http}/dicom-web", "orthanc": f"http://127.0.0.1:{o_http}/dicom-web"}
studies = sorted(os.listdir(data))
files = {s: sorted(os.path.join(data, s, f) for f in os.listdir(os.path.join(data, s))) for s in studies}
n = sum(len(v) for v in files.values())
session = requests.Session()

def stow(url, paths):
    boundary = uuid.uuid4().hex
    body = b"".join(b"--" + boundary.encode() + b"\r\nContent-Type: application/dicom\r\n\r\n"
                    + open(p, "rb").read() + b"\r\n" for p in paths) + b"--" + boundary.encode() + b"--\r\n"
    r = session.post(f"{url}/studies", data=body, headers={
        "Content-Type": f'multipart/related; type="application/dicom"; boundary={boundary}',
        "Accept": "application/dicom+json"})
    assert r.status_code == 200, (r.status_code, r.text[:300])

def curl_fetch(clients):
    """Runs one curl per list of URLs, all at once (each fetching its URLs in order on one
    connection, bodies to /dev/null); the bytes each received. Any status but 200 fails."""
    procs = []
    for urls in clients:
        args = ["curl", "-s", "-H", 'Accept: multipart/related; type="application/dicom"; transfer-syntax=*',
                "-w", "%{http_code} %{size_download}\n"]
        for u in urls:
            args += ["-o", "/dev/null", u]
        procs.append(subprocess.Popen(args, stdout=subprocess.PIPE, text=True))
    got = []
    for p in procs:
        out, _ = p.communicate()
        lines = [l.split() for l in out.splitlines()]
        assert p.returncode == 0 and all(l[0] == "200" for l in lines), out
        got.append(sum(int(l[1]) for l in lines))
    return got

results = {}
for name, url in servers.items():
    t = time.monotonic()
    for s in studies:
        for i in range(0, len(files[s]), 20):
            stow(url, files[s][i:i + 20])
    results[(name, "stow")] = n / (time.monotonic() - t)

uids = [s["0020000D"]["Value"][0] for s in session.get(f"{servers['strata']}/studies").json()]
pids = [s["00100020"]["Value"][0] for s in session.get(f"{servers['strata']}/studies").json()]
def drop_caches():
    """Empties the page cache (root only); False where that is not allowed."""
    subprocess.run(["sync"], check=True)
    try:
        with open("/proc/sys/vm/drop_caches", "w") as f:
            f.write("3\n")
        return True
    except OSError:
        return False

for name, url in servers.items():
    # WADO-RS whole studies, as stored, fetched by curl: first from disk (the page cache
    # emptied before, where allowed: Strata writes its files with O_DIRECT, so what it
    # just stored is not in the cache, while Orthanc's buffered writes are), then from
    # the page cache (every file read once before, untimed), one client, then 4 at once
    study_urls = [f"{url}/studies/{uid}" for uid in uids]
    if drop_caches():
        t = time.monotonic()
        total = sum(curl_fetch([study_urls]))
        results[(name, "wado_disk")] = total / 1e6 / (time.monotonic() - t)
    curl_fetch([study_urls])
    t = time.monotonic()
    total = sum(curl_fetch([study_urls]))
    results[(name, "wado")] = total / 1e6 / (time.monotonic() - t)
    t = time.monotonic()
    total = sum(curl_fetch([[f"{url}/studies/{uid}" for uid in uids[k:] + uids[:k]] for k in range(4)]))
    results[(name, "wado4")] = total / 1e6 / (time.monotonic() - t)
    # QIDO-RS by PatientID
    lat = []
    for i in range(200):
        t = time.monotonic()
        r = session.get(f"{url}/studies", params={"PatientID": pids[i % len(pids)]})
        assert r.status_code == 200 and r.json(), (name, r.status_code)
        lat.append((time.monotonic() - t) * 1000)
    lat.sort()
    results[(name, "qido_p50")] = lat[len(lat) // 2]
    results[(name, "qido_p99")] = lat[int(len(lat) * 0.99) - 1]

# the yardstick: loopback streams of the same bytes, sent by sendfile(2), into curl —
# one stream, then 4 at once (what 4 clients could take at best on this machine)
import socket, threading
blob = os.path.join(work, "yardstick.bin")
with open(blob, "wb") as out:
    for s in studies:
        for p in files[s]:
            out.write(open(p, "rb").read())
listener = socket.socket()
listener.bind(("127.0.0.1", 0))
listener.listen(8)
def send_blob(c):
    c.recv(65536)
    c.sendall(f"HTTP/1.1 200 OK\r\nContent-Length: {os.path.getsize(blob)}\r\nConnection: close\r\n\r\n".encode())
    with open(blob, "rb") as f:
        c.sendfile(f)
    c.close()
def serve_blob():
    while True:
        c, _ = listener.accept()
        threading.Thread(target=send_blob, args=(c,), daemon=True).start()
threading.Thread(target=serve_blob, daemon=True).start()
blob_url = f"http://127.0.0.1:{listener.getsockname()[1]}/"
speeds = []
for _ in range(3):
    out = subprocess.run(["curl", "-s", "-o", "/dev/null", "-w", "%{speed_download}", blob_url],
                         capture_output=True, text=True, check=True)
    speeds.append(float(out.stdout) / 1e6)
yardstick = statistics.median(speeds)
speeds = []
for _ in range(3):
    t = time.monotonic()
    procs = [subprocess.Popen(["curl", "-s", "-o", "/dev/null", blob_url]) for _ in range(4)]
    assert all(p.wait() == 0 for p in procs)
    speeds.append(4 * os.path.getsize(blob) / 1e6 / (time.monotonic() - t))
yardstick4 = statistics.median(speeds)
os.remove(blob)

# Strata's own C-GET of the same studies (DCMTK getscu), for the retrieve ratio
t, got = time.monotonic(), 0
for uid in uids:
    out = os.path.join(work, "getscu", uid)
    os.makedirs(out, exist_ok=True)
    subprocess.run(["/usr/bin/getscu", "-S", "-aec", "STRATA", "-od", out, "-k", "QueryRetrieveLevel=STUDY",
                    "-k", f"StudyInstanceUID={uid}", "127.0.0.1", str(s_dicom)], check=True,
                   stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    got += sum(os.path.getsize(os.path.join(out, f)) for f in os.listdir(out))
cget = got / 1e6 / (time.monotonic() - t)

# Strata's WADO-RS from the cold tier: every study moved to cold, then retrieved once
strata_bin = os.path.join(os.environ["CARGO_TARGET_DIR"], "release", "strata")
for uid in uids:
    subprocess.run([strata_bin, "--config", os.path.join(work, "strata.toml"), "tier", "move", uid, "--to", "cold"],
                   check=True, stdout=subprocess.DEVNULL)
t = time.monotonic()
total = sum(curl_fetch([[f"{servers['strata']}/studies/{uid}" for uid in uids]]))
cold = total / 1e6 / (time.monotonic() - t)

print(f"\nDICOMweb, {n} CT instances of {os.path.getsize(files[studies[0]][0]) // 1024} KB in {len(studies)} studies, both servers in one run\n")
print("| measure | Strata | Orthanc + DICOMweb | ratio |")
print("|---|---:|---:|---:|")
for key, label, higher in (("stow", "STOW-RS instances/s", True),
                           ("wado_disk", "WADO-RS study retrieve MB/s (hot, from disk: page cache emptied)", True),
                           ("wado", "WADO-RS study retrieve MB/s (hot, page cache warm)", True),
                           ("wado4", "WADO-RS study retrieve MB/s (hot, page cache warm, 4 clients)", True),
                           ("qido_p50", "QIDO-RS p50 ms", False), ("qido_p99", "QIDO-RS p99 ms", False)):
    if ("strata", key) not in results:
        print(f"| {label} | not measured (emptying the page cache needs root) | | |")
        continue
    s, o = results[("strata", key)], results[("orthanc", key)]
    ratio = s / o if higher else o / s
    print(f"| {label} | {s:.1f} | {o:.1f} | {ratio:.2f}x |")
print(f"\nStrata WADO-RS {results[('strata', 'wado')]:.1f} MB/s vs its own C-GET (getscu) {cget:.1f} MB/s: "
      f"{results[('strata', 'wado')] / cget:.2f}x")
print(f"One loopback stream at best (sendfile into curl, median of 3): {yardstick:.1f} MB/s; WADO-RS (hot) "
      f"reaches {results[('strata', 'wado')] / yardstick:.2f}x of it for Strata, "
      f"{results[('orthanc', 'wado')] / yardstick:.2f}x for Orthanc")
print(f"Four loopback streams at once at best (sendfile into 4 curls, median of 3): {yardstick4:.1f} MB/s; "
      f"WADO-RS (hot, 4 clients) reaches {results[('strata', 'wado4')] / yardstick4:.2f}x of it for Strata, "
      f"{results[('orthanc', 'wado4')] / yardstick4:.2f}x for Orthanc")
print(f"Strata WADO-RS from the cold tier {cold:.1f} MB/s: {cold / results[('orthanc', 'wado')]:.2f}x Orthanc's "
      f"(hot) and {cold / results[('strata', 'wado')]:.2f}x its own from hot")
PY
