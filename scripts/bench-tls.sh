#!/usr/bin/env bash
# What DICOM TLS costs ingest (issue 14's benchmark): DCMTK storescu sends the same N CT
# instances (default 1000, 513 KB each, tests/peers/gen_ct.py) over 1 association and
# over 4 (4 storescu processes, a quarter each), plain and with TLS (mutual: client
# certificates required, made here by the openssl CLI), to Strata (plain port and
# [dicom] tls_port) and to Orthanc 1.10 (its DicomTls* settings), in one run. Every run
# gets a fresh, empty receiver. Prints instances/s per case and TLS's cost (1 - TLS/plain)
# for each receiver and association count, and where the CPU goes: the receiver's own
# CPU time per instance (/proc/PID/stat) and the storescu clients' (getrusage of the
# children), so that the cost of TLS in the server is told apart from the clients'
# encryption on the same cores. Each case is run ROUNDS times (default 3); medians.
# Usage: scripts/bench-tls.sh [N=1000]
set -euo pipefail
cd "$(dirname "$0")/.."
N=${1:-1000}
export CARGO_TARGET_DIR=${CARGO_TARGET_DIR:-/var/tmp/strata-target}
export TCP_NODELAY=1
ROOT=${BENCH_ROOT:-/var/tmp/strata-bench}
WORK=$ROOT/tls
DATA=$ROOT/move-data-$N
cargo build --release --locked --bin strata >&2
if [ ! -f "$DATA.complete" ]; then
  rm -rf "$DATA"
  python3 tests/peers/gen_ct.py --out "$DATA" --studies $((N / 200)) --instances 200 --seed 11 >/dev/null
  touch "$DATA.complete"
fi
rm -rf "$WORK" && mkdir -p "$WORK/certs"
(
  cd "$WORK/certs"
  ec=(-newkey ec -pkeyopt ec_paramgen_curve:P-256 -nodes)
  openssl req -x509 "${ec[@]}" -keyout ca.key -out ca.pem -days 2 -subj "/CN=Bench CA" 2>/dev/null
  for name in server client; do
    openssl req "${ec[@]}" -keyout $name.key -out $name.csr -subj "/CN=$name" 2>/dev/null
    printf "subjectAltName=IP:127.0.0.1,DNS:localhost\nextendedKeyUsage=serverAuth,clientAuth\n" > $name.ext
    openssl x509 -req -in $name.csr -CA ca.pem -CAkey ca.key -CAcreateserial -out $name.pem -days 2 -extfile $name.ext 2>/dev/null
  done
  chmod 600 ./*.key
)
python3 - "$DATA" "$WORK" "$CARGO_TARGET_DIR/release/strata" <<'PY'
import json, os, resource, statistics, subprocess, sys, time, urllib.request
data, work, strata = sys.argv[1:4]
certs = os.path.join(work, "certs")
files = sorted(os.path.join(d, f) for d, _, fs in os.walk(data) for f in fs)
n = len(files)
tls_args = ["+tls", f"{certs}/client.key", f"{certs}/client.pem", "+cf", f"{certs}/ca.pem"]

def wait_http(url):
    for _ in range(300):
        try:
            urllib.request.urlopen(url, timeout=1)
            return
        except Exception:
            time.sleep(0.1)
    raise SystemExit(f"{url} did not answer")

def start_strata(run):
    d = os.path.join(work, run)
    os.makedirs(d)
    cfg = os.path.join(d, "strata.toml")
    with open(cfg, "w") as f:
        f.write(f"""[archive]
data_dir = "{d}/data"
min_free_space_mb = 0
[http]
port = 41811
bind = "127.0.0.1"
[dicom]
port = 41812
tls_port = 41813
bind = "127.0.0.1"
[tiering]
enabled = false
[tls]
cert_file = "{certs}/server.pem"
key_file = "{certs}/server.key"
client_ca_file = "{certs}/ca.pem"
""")
    p = subprocess.Popen([strata, "--config", cfg, "serve"], stderr=open(os.path.join(d, "log"), "w"))
    wait_http("http://127.0.0.1:41811/healthz")
    return p, {"plain": 41812, "tls": 41813}

def start_orthanc(run, tls):
    d = os.path.join(work, run)
    extra = {}
    if tls:
        extra = {"DicomTlsEnabled": True, "DicomTlsCertificate": f"{certs}/server.pem",
                 "DicomTlsPrivateKey": f"{certs}/server.key", "DicomTlsTrustedCertificates": f"{certs}/ca.pem",
                 "DicomTlsRemoteCertificateRequired": True}
    env = dict(os.environ, ORTHANC_EXTRA_JSON=json.dumps(extra))
    subprocess.run(["scripts/start-orthanc.sh", d, "41814", "41815", "ORTHANC"], env=env, check=True,
                   stdout=subprocess.DEVNULL)
    pid = int(open(os.path.join(d, "orthanc.pid")).read())
    return pid, 41814

TICK = os.sysconf("SC_CLK_TCK")
ROUNDS = int(os.environ.get("ROUNDS", "3"))

def cpu_of(pid):
    """CPU seconds (user + system) the process has used so far (/proc/PID/stat)."""
    fields = open(f"/proc/{pid}/stat").read().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / TICK

def children_cpu():
    r = resource.getrusage(resource.RUSAGE_CHILDREN)
    return r.ru_utime + r.ru_stime

def send(port, aec, associations, tls, server_pid):
    """(instances/s, server CPU ms per instance, clients' CPU ms per instance)"""
    parts = [files[i::associations] for i in range(associations)]
    server0, clients0 = cpu_of(server_pid), children_cpu()
    t = time.monotonic()
    procs = [subprocess.Popen(["/usr/bin/storescu", "-aec", aec] + (tls_args if tls else []) +
                              ["127.0.0.1", str(port)] + part, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
             for part in parts]
    for p in procs:
        _, err = p.communicate()
        if p.returncode != 0:
            raise SystemExit(f"storescu failed: {err.decode()[-500:]}")
    rate = n / (time.monotonic() - t)
    time.sleep(0.5)  # the last acks are out; let the server's flusher settle
    return rate, 1000 * (cpu_of(server_pid) - server0) / n, 1000 * (children_cpu() - clients0) / n

runs = {}
for _ in range(ROUNDS):
    for associations in (1, 4):
        for tls in (False, True):
            mode = "tls" if tls else "plain"
            p, ports = start_strata(f"strata-{mode}-{associations}")
            try:
                runs.setdefault(("strata", associations, mode), []).append(
                    send(ports[mode], "STRATA", associations, tls, p.pid))
            finally:
                p.terminate(); p.wait()
                subprocess.run(["rm", "-rf", os.path.join(work, f"strata-{mode}-{associations}")])
            pid, port = start_orthanc(f"orthanc-{mode}-{associations}", tls)
            try:
                runs.setdefault(("orthanc", associations, mode), []).append(
                    send(port, "ORTHANC", associations, tls, pid))
            finally:
                os.kill(pid, 15)
                time.sleep(1)
                subprocess.run(["rm", "-rf", os.path.join(work, f"orthanc-{mode}-{associations}")])
median = lambda xs: statistics.median(xs)
results = {k: median([r[0] for r in v]) for k, v in runs.items()}
server_ms = {k: median([r[1] for r in v]) for k, v in runs.items()}
client_ms = {k: median([r[2] for r in v]) for k, v in runs.items()}

print(f"\nDICOM TLS ingest: {n} CT instances of {os.path.getsize(files[0]) // 1024} KB, DCMTK storescu, "
      f"mutual TLS (P-256 certificates), median of {ROUNDS} rounds\n")
print("| receiver | associations | plain, instances/s | TLS, instances/s | TLS costs |")
print("|---|---:|---:|---:|---:|")
for who in ("strata", "orthanc"):
    for a in (1, 4):
        plain, tls = results[(who, a, "plain")], results[(who, a, "tls")]
        print(f"| {who} | {a} | {plain:.1f} | {tls:.1f} | {100 * (1 - tls / plain):.1f} % |")
print("\nCPU per instance (ms; receiver from /proc, storescu clients from getrusage):\n")
print("| receiver | associations | receiver plain | receiver TLS | receiver's TLS cost | clients plain | clients TLS |")
print("|---|---:|---:|---:|---:|---:|---:|")
for who in ("strata", "orthanc"):
    for a in (1, 4):
        sp, st = server_ms[(who, a, "plain")], server_ms[(who, a, "tls")]
        cp, ct = client_ms[(who, a, "plain")], client_ms[(who, a, "tls")]
        print(f"| {who} | {a} | {sp:.2f} | {st:.2f} | {100 * (st / sp - 1):+.1f} % | {cp:.2f} | {ct:.2f} |")
for a in (1, 4):
    print(f"Strata over TLS vs Orthanc over TLS, {a} association(s): "
          f"{results[('strata', a, 'tls')] / results[('orthanc', a, 'tls')]:.2f}x")
PY
