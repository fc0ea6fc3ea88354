#!/usr/bin/env python3
"""Scale-out benchmark (issue 16), side by side in one run, on this machine:

1. Ingest at 4 associations (4 DCMTK storescu processes, each a quarter of N generated
   512x512 CT instances of ~525 KB) into
     - 1 Strata node on RocksDB (the embedded default),
     - 1, 2 and 3 Strata nodes sharing one PostgreSQL index and one cold tier
       (associations spread round-robin over the nodes; each node replicates what it
       receives to the cold tier, `ack_after = "local"`),
     - Orthanc on PostgreSQL (Debian orthanc-postgresql, index in PostgreSQL, files on
       disk) as the anchor.
   For each: wall time to the last acknowledgement (instances/s, MB/s), then the time
   until every replica is written (Strata on PostgreSQL), and CPU per instance: the
   receivers' processes and PostgreSQL's (every backend, live or exited: the
   postmaster's own time and its children's), read from /proc before and after.
   On a 2-core machine more nodes cannot add throughput; CPU per instance shows what
   each added node costs.
2. C-FIND study-level p50/p99 on a 1,000,000-instance index on PostgreSQL (built once by
   `cargo bench --bench find_index` with INDEX_URL) and on RocksDB, in process and over
   DICOM (a minimal dicom-ul client on one association), and Orthanc on PostgreSQL
   holding 2,000 studies queried by scripts/bench_find.py, for orientation.

Usage: scripts/bench-scale-out.py [N=1000] [--no-find]
Environment: BENCH_ROOT (default /var/tmp/strata-bench), BENCH_PORT_BASE (default 42300),
CARGO_TARGET_DIR (default /var/tmp/strata-target).
Prints Markdown tables on stdout; progress on stderr. Stops everything it starts, by pid.
"""

import json
import os
import shutil
import signal
import subprocess
import sys
import time
import urllib.request

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from bench_strata import config_text, metric  # noqa: E402

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
TARGET = os.environ.get("CARGO_TARGET_DIR", "/var/tmp/strata-target")
STRATA = os.path.join(TARGET, "release", "strata")
ROOT = os.path.join(os.environ.get("BENCH_ROOT", "/var/tmp/strata-bench"), "scale-out")
BASE = int(os.environ.get("BENCH_PORT_BASE", "42300"))
TICK = os.sysconf("SC_CLK_TCK")
STARTED = []  # (name, Popen) to stop on exit


def log(*a):
    print(*a, file=sys.stderr, flush=True)


def run(cmd, **kw):
    return subprocess.run(cmd, check=True, **kw)


def cpu_seconds(pid, children=False):
    """utime+stime of a process (and, with `children`, of its children it waited for)."""
    try:
        with open(f"/proc/{pid}/stat") as f:
            fields = f.read().rsplit(")", 1)[1].split()
    except OSError:
        return 0.0
    t = int(fields[11]) + int(fields[12])  # utime, stime (fields 14, 15)
    if children:
        t += int(fields[13]) + int(fields[14])  # cutime, cstime
    return t / TICK


def pg_cpu(postmaster):
    """PostgreSQL's CPU so far: the postmaster with its exited children, plus live ones."""
    total = cpu_seconds(postmaster, children=True)
    for pid in os.listdir("/proc"):
        if pid.isdigit():
            try:
                with open(f"/proc/{pid}/stat") as f:
                    ppid = int(f.read().rsplit(")", 1)[1].split()[1])
            except OSError:
                continue
            if ppid == postmaster:
                total += cpu_seconds(int(pid))
    return total


def wait_http(url, seconds=60):
    deadline = time.time() + seconds
    while time.time() < deadline:
        try:
            with urllib.request.urlopen(url, timeout=2) as r:
                return r.read()
        except Exception:
            time.sleep(0.1)
    raise RuntimeError(f"{url} did not answer")


def dataset(n):
    per_study = 200
    studies = -(-n // per_study)
    while n % studies:
        studies += 1
    data = os.path.join(os.path.dirname(ROOT), f"data-{n}")
    stamp = f"studies={studies} instances={n // studies} rows=512 cols=512 seed=1"
    marker = os.path.join(data, ".complete")
    if not (os.path.exists(marker) and open(marker).readline().strip() == stamp):
        log(f"generating {n} instances in {data}")
        shutil.rmtree(data, ignore_errors=True)
        os.makedirs(data)
        out = run([sys.executable, f"{REPO}/tests/peers/gen_ct.py", "--out", data,
                   "--studies", str(studies), "--instances", str(n // studies),
                   "--rows", "512", "--cols", "512", "--seed", "1",
                   "--patient-prefix", "BENCH"], capture_output=True, text=True).stdout
        with open(marker, "w") as f:
            f.write(stamp + "\n" + out)
    files = sorted(os.path.join(d, f) for d, _, fs in os.walk(data) for f in fs if f.endswith(".dcm"))
    assert len(files) == n, f"expected {n} files in {data}"
    for f in files:  # warm the page cache: measure receivers, not our reads
        with open(f, "rb") as fh:
            while fh.read(1 << 20):
                pass
    return files


def send(files, targets):
    """4 storescu processes, association i to targets[i % len]; returns seconds."""
    env = dict(os.environ, TCP_NODELAY="1")
    quarter = -(-len(files) // 4)
    procs = []
    started = time.time()
    for i in range(4):
        aec, port = targets[i % len(targets)]
        chunk = files[i * quarter:(i + 1) * quarter]
        procs.append(subprocess.Popen(["/usr/bin/storescu", "-aec", aec, "127.0.0.1", str(port), *chunk],
                                      env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE))
    errors = [p.communicate()[1] for p in procs]
    elapsed = time.time() - started
    for p, err in zip(procs, errors):
        if p.returncode != 0:
            raise RuntimeError(f"storescu failed: {err.decode()[-500:]}")
    return elapsed


class Postgres:
    def __init__(self, port):
        self.dir = os.path.join(ROOT, "pg")
        self.port = port
        shutil.rmtree(self.dir, ignore_errors=True)
        os.makedirs(ROOT, exist_ok=True)
        out = run(["bash", f"{REPO}/tests/peers/postgres.sh", "start", self.dir, str(port)],
                  capture_output=True, text=True).stdout
        self.postmaster = int(out.split()[0])

    def url(self, db):
        return f"postgresql://postgres@127.0.0.1:{self.port}/{db}"

    def createdb(self, db):
        run(["psql", self.url("postgres"), "-qc", f"DROP DATABASE IF EXISTS {db}"])
        run(["psql", self.url("postgres"), "-qc", f"CREATE DATABASE {db}"])

    def stop(self):
        subprocess.run(["bash", f"{REPO}/tests/peers/postgres.sh", "stop", self.dir],
                       stdout=subprocess.DEVNULL)


class Node:
    """A `strata serve` of the benchmark."""

    def __init__(self, name, index, cold, secret, dicom_port, http_port):
        self.dir = os.path.join(ROOT, name)
        shutil.rmtree(self.dir, ignore_errors=True)
        os.makedirs(self.dir)
        self.http = http_port
        self.dicom = dicom_port
        self.config = os.path.join(self.dir, "strata.toml")
        with open(self.config, "w") as f:
            f.write(config_text(f"{self.dir}/data", dicom_port, http_port, f"""[cold]
url = "file://{cold}"
[tiering]
hot_max_age = "100days"
[cluster]
node_id = "{name}"
heartbeat = "2s"
secret_file = "{secret}"
{index}"""))
        self.log = open(os.path.join(self.dir, "serve.log"), "w")
        self.proc = subprocess.Popen([STRATA, "--config", self.config, "serve"],
                                     stdout=self.log, stderr=subprocess.STDOUT)
        STARTED.append((name, self.proc))
        wait_http(f"http://127.0.0.1:{http_port}/healthz")

    def metric(self, name):
        return metric(self.http, name)

    def instances(self):
        out = run([STRATA, "--config", self.config, "ls", "--json"], capture_output=True).stdout
        return sum(s["instances"] for s in json.loads(out))

    def stop(self):
        self.proc.send_signal(signal.SIGTERM)
        self.proc.wait(timeout=60)


def strata_run(label, files, nodes_n, pg, db, tag):
    cold = os.path.join(ROOT, f"cold-{tag}")
    shutil.rmtree(cold, ignore_errors=True)
    os.makedirs(cold)
    secret = os.path.join(ROOT, "cluster.secret")
    with open(secret, "w") as f:
        f.write("benchmark-secret-shared-by-the-nodes-0123456789\n")
    os.chmod(secret, 0o600)
    if pg:
        pg.createdb(db)
        index = f'[index]\nbackend = "postgres"\nurl = "{pg.url(db)}"\n'
    else:
        index = ""
    nodes = [Node(f"{tag}-{i + 1}", index, cold, secret, BASE + 10 + 2 * i, BASE + 11 + 2 * i)
             for i in range(nodes_n)]
    pg_before = pg_cpu(pg.postmaster) if pg else 0.0
    node_before = sum(cpu_seconds(n.proc.pid) for n in nodes)
    start = time.time()
    elapsed = send(files, [("STRATA", n.dicom) for n in nodes])
    drained = None
    if pg:
        while any(n.metric("strata_replication_pending") > 0 for n in nodes):
            time.sleep(0.05)
        drained = time.time() - start
    node_cpu = sum(cpu_seconds(n.proc.pid) for n in nodes) - node_before
    pg_used = (pg_cpu(pg.postmaster) - pg_before) if pg else 0.0
    count = nodes[0].instances()
    for n in nodes:
        n.stop()
    return dict(label=label, nodes=nodes_n, n=count, seconds=elapsed,
                drained=drained, node_cpu=node_cpu, pg_cpu=pg_used)


def start_orthanc_pg(pg, db, name, dicom, http):
    """A fresh Orthanc with its index in PostgreSQL database `db` (files on disk); its pid."""
    pg.createdb(db)
    d = os.path.join(ROOT, name)
    shutil.rmtree(d, ignore_errors=True)
    extra = {"Plugins": ["/usr/share/orthanc/plugins/libOrthancPostgreSQLIndex.so"],
             "PostgreSQL": {"EnableIndex": True, "EnableStorage": False, "Host": "127.0.0.1",
                            "Port": pg.port, "Database": db, "Username": "postgres",
                            "Password": "", "Lock": False}}
    env = dict(os.environ, ORTHANC_EXTRA_JSON=json.dumps(extra))
    return int(run([f"{REPO}/scripts/start-orthanc.sh", d, str(dicom), str(http)], env=env,
                   capture_output=True, text=True).stdout.split()[0])


def orthanc_run(files, pg):
    dicom, http = BASE + 30, BASE + 31
    pid = start_orthanc_pg(pg, "orthanc_bench", "orthanc", dicom, http)
    pg_before, o_before = pg_cpu(pg.postmaster), cpu_seconds(pid)
    elapsed = send(files, [("ORTHANC", dicom)])
    o_cpu, pg_used = cpu_seconds(pid) - o_before, pg_cpu(pg.postmaster) - pg_before
    count = json.loads(wait_http(f"http://127.0.0.1:{http}/statistics"))["CountInstances"]
    os.kill(pid, signal.SIGTERM)
    for _ in range(300):
        if not os.path.exists(f"/proc/{pid}"):
            break
        time.sleep(0.1)
    return dict(label="Orthanc on PostgreSQL", nodes=1, n=count, seconds=elapsed,
                drained=None, node_cpu=o_cpu, pg_cpu=pg_used)


def ingest(n, pg):
    files = dataset(n)
    size = sum(os.path.getsize(f) for f in files)
    rows = []
    runs = [("Strata on RocksDB", 1, None, None, "rocks"),
            ("Strata on PostgreSQL", 1, pg, "strata_bench_1", "pg1"),
            ("Strata on PostgreSQL", 2, pg, "strata_bench_2", "pg2"),
            ("Strata on PostgreSQL", 3, pg, "strata_bench_3", "pg3")]
    for label, nodes_n, p, db, tag in runs:
        log(f"ingest: {label}, {nodes_n} node(s)")
        rows.append(strata_run(label, files, nodes_n, p, db, tag))
    log("ingest: Orthanc on PostgreSQL")
    rows.append(orthanc_run(files, pg))
    print(f"\n### Ingest at 4 associations, {n} CT instances ({size / 1e6:.0f} MB), one run\n")
    print("| receiver | nodes | instances | s to last ack | inst/s | MB/s | s to last replica "
          "| receiver CPU ms/inst | PostgreSQL CPU ms/inst | total CPU ms/inst |")
    print("|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|")
    for r in rows:
        per = lambda t: 1000 * t / max(r["n"], 1)
        drained = f"{r['drained']:.1f}" if r["drained"] is not None else "-"
        print(f"| {r['label']} | {r['nodes']} | {r['n']} | {r['seconds']:.1f} | {r['n'] / r['seconds']:.1f} "
              f"| {size / 1e6 / r['seconds']:.1f} | {drained} | {per(r['node_cpu']):.2f} "
              f"| {per(r['pg_cpu']):.2f} | {per(r['node_cpu'] + r['pg_cpu']):.2f} |")
    base = rows[0]["n"] / rows[0]["seconds"]
    orth = rows[-1]["n"] / rows[-1]["seconds"]
    print("\n| Strata run | inst/s vs 1 node on RocksDB | vs Orthanc on PostgreSQL |")
    print("|---|---:|---:|")
    for r in rows[:-1]:
        rate = r["n"] / r["seconds"]
        print(f"| {r['label']}, {r['nodes']} node(s) | {rate / base:.2f}x | {rate / orth:.2f}x |")


def find(pg):
    env = dict(os.environ, CARGO_TARGET_DIR=TARGET)
    tmpl_dir = os.path.join(ROOT, "template")
    if not os.path.exists(tmpl_dir + ".complete"):
        shutil.rmtree(tmpl_dir, ignore_errors=True)
        run([sys.executable, f"{REPO}/tests/peers/gen_ct.py", "--out", tmpl_dir, "--studies", "1",
             "--instances", "1", "--seed", "5"], stdout=subprocess.DEVNULL)
        open(tmpl_dir + ".complete", "w").close()
    template = next(os.path.join(d, f) for d, _, fs in os.walk(tmpl_dir) for f in fs if f.endswith(".dcm"))
    env["METADATA_TEMPLATE"] = template
    db = "strata_find"
    exists = subprocess.run(["psql", pg.url("postgres"), "-Atc",
                             f"SELECT 1 FROM pg_database WHERE datname = '{db}'"],
                            capture_output=True, text=True).stdout.strip() == "1"
    if not exists:
        pg.createdb(db)
    # the 1 M-instance indexes (built once), queried in process
    log("find: in process, RocksDB and PostgreSQL (building each index once)")
    rocks = run(["cargo", "bench", "--locked", "--bench", "find_index"], env=env, cwd=REPO,
                capture_output=True, text=True).stdout
    pgq = run(["cargo", "bench", "--locked", "--bench", "find_index"], env=dict(env, INDEX_URL=pg.url(db)),
              cwd=REPO, capture_output=True, text=True).stdout
    print("\n### C-FIND at 1,000,000 instances, in process (`query::find`)\n")
    print("RocksDB:\n" + rocks.strip() + "\n\nPostgreSQL:\n" + pgq.strip())
    # over DICOM: strata serve on each index, the minimal client
    secret = os.path.join(ROOT, "cluster.secret")
    rocks_dir = "/var/tmp/strata-find-bench-50000x20-meta"
    open(os.path.join(rocks_dir, "clean-shutdown"), "w").close()
    over = {}
    for label, index, data in (("RocksDB", "", rocks_dir),
                               ("PostgreSQL", f'[index]\nbackend = "postgres"\nurl = "{pg.url(db)}"\n', None)):
        node = Node(f"find-{label.lower()}", index, os.path.join(ROOT, "cold-find"), secret, BASE + 40, BASE + 41)
        if data:  # serve the prebuilt RocksDB index: restart on its data dir
            node.stop()
            text = open(node.config).read().replace(f'data_dir = "{node.dir}/data"', f'data_dir = "{data}"')
            open(node.config, "w").write(text)
            node.proc = subprocess.Popen([STRATA, "--config", node.config, "serve"], stdout=node.log,
                                         stderr=subprocess.STDOUT)
            STARTED.append(("find-rocks", node.proc))
            wait_http(f"http://127.0.0.1:{node.http}/healthz")
        envq = dict(env, FIND_PORT=str(node.dicom))
        if label == "PostgreSQL":
            envq["INDEX_URL"] = pg.url(db)
        out = run(["cargo", "bench", "--locked", "--bench", "find_index"], env=envq, cwd=REPO,
                  capture_output=True, text=True).stdout
        over[label] = out[out.find("| over DICOM"):].strip()
        node.stop()
    print("\n### C-FIND at 1,000,000 instances over DICOM (one association, minimal dicom-ul client)\n")
    for label, table in over.items():
        print(f"{label}:\n{table}\n")
    # Orthanc on PostgreSQL for orientation: 2,000 small studies, queried by pynetdicom
    small = os.path.join(ROOT, "small")
    if not os.path.exists(small + ".complete"):
        shutil.rmtree(small, ignore_errors=True)
        run([sys.executable, f"{REPO}/tests/peers/gen_ct.py", "--out", small, "--studies", "2000",
             "--instances", "1", "--rows", "64", "--cols", "64", "--seed", "3"], stdout=subprocess.DEVNULL)
        open(small + ".complete", "w").close()
    pid = start_orthanc_pg(pg, "orthanc_find", "orthanc-find", BASE + 42, BASE + 43)
    run(["/usr/bin/storescu", "-aec", "ORTHANC", "+sd", "+r", "127.0.0.1", str(BASE + 42), small],
        env=dict(os.environ, TCP_NODELAY="1"), stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    print("| target | query (study level) | studies | matches/query | p50 | p99 |")
    print("|---|---|---:|---:|---:|---:|")
    sys.stdout.flush()
    run([sys.executable, f"{REPO}/scripts/bench_find.py", "--port", str(BASE + 42), "--called-ae", "ORTHANC",
         "--queries", "1000", "--label", "Orthanc on PostgreSQL, 2,000 instances"])
    os.kill(pid, signal.SIGTERM)


def main():
    args = [a for a in sys.argv[1:] if not a.startswith("--")]
    n = int(args[0]) if args else 1000
    run(["cargo", "build", "--release", "--locked", "--bin", "strata"], cwd=REPO,
        env=dict(os.environ, CARGO_TARGET_DIR=TARGET), stdout=subprocess.DEVNULL)
    os.makedirs(ROOT, exist_ok=True)
    pg = Postgres(BASE)
    try:
        print(f"Scale-out benchmark, {time.strftime('%Y-%m-%d')}, {os.cpu_count()} cores")
        ingest(n, pg)
        if "--no-find" not in sys.argv:
            find(pg)
    finally:
        for name, p in STARTED:
            if p.poll() is None:
                p.kill()
        pg.stop()


if __name__ == "__main__":
    main()
