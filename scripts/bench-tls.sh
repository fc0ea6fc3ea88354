#!/usr/bin/env bash
# What DICOM TLS costs ingest (issue 14's benchmark): DCMTK storescu sends the same N CT
# instances (default 1000, 513 KB each, tests/peers/gen_ct.py) over 1 association and
# over 4 (4 storescu processes, a quarter each), plain and with TLS (mutual: client
# certificates required, made here by the openssl CLI), to Strata (plain port and
# [dicom] tls_port) and to Orthanc 1.10 (its DicomTls* settings), in one run. Every run
# gets a fresh, empty receiver. Prints instances/s per case and TLS's cost (1 - TLS/plain)
# for each receiver and association count.
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
import json, os, subprocess, sys, time, urllib.request
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

def send(port, aec, associations, tls):
    parts = [files[i::associations] for i in range(associations)]
    t = time.monotonic()
    procs = [subprocess.Popen(["/usr/bin/storescu", "-aec", aec] + (tls_args if tls else []) +
                              ["127.0.0.1", str(port)] + part, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
             for part in parts]
    for p in procs:
        _, err = p.communicate()
        if p.returncode != 0:
            raise SystemExit(f"storescu failed: {err.decode()[-500:]}")
    return n / (time.monotonic() - t)

results = {}
for associations in (1, 4):
    for tls in (False, True):
        mode = "tls" if tls else "plain"
        p, ports = start_strata(f"strata-{mode}-{associations}")
        try:
            results[("strata", associations, mode)] = send(ports[mode], "STRATA", associations, tls)
        finally:
            p.terminate(); p.wait()
        pid, port = start_orthanc(f"orthanc-{mode}-{associations}", tls)
        try:
            results[("orthanc", associations, mode)] = send(port, "ORTHANC", associations, tls)
        finally:
            os.kill(pid, 15)
            time.sleep(1)

print(f"\nDICOM TLS ingest: {n} CT instances of {os.path.getsize(files[0]) // 1024} KB, DCMTK storescu, "
      f"mutual TLS (P-256 certificates), one run\n")
print("| receiver | associations | plain, instances/s | TLS, instances/s | TLS costs |")
print("|---|---:|---:|---:|---:|")
for who in ("strata", "orthanc"):
    for a in (1, 4):
        plain, tls = results[(who, a, "plain")], results[(who, a, "tls")]
        print(f"| {who} | {a} | {plain:.1f} | {tls:.1f} | {100 * (1 - tls / plain):.1f} % |")
for a in (1, 4):
    print(f"Strata over TLS vs Orthanc over TLS, {a} association(s): "
          f"{results[('strata', a, 'tls')] / results[('orthanc', a, 'tls')]:.2f}x")
PY
