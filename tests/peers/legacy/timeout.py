import os, sys
sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import os, sys, time, json, shutil
from lib import *
D = os.environ["DIR"]
state = os.path.join(D, "state"); shutil.rmtree(state, ignore_errors=True)
st, se = uid(), uid()
data = [make_ct(pid="PID801", study=st, series=se, inst=i + 1, study_date="20240808") for i in range(3)]
pacs = LegacyPacs(data, move_silence=8).start()
src = f"OLDPACS@127.0.0.1:{SRC_PORT}"
rc, out = migrate(state, "--timeout", "5s", "plan", "--source", src, "--from", "20240808", "--to", "20240808"); print("plan", rc, out)
t0 = time.time()
rc, out = migrate(state, "--timeout", "5s", "run", "--dest-ae", "STRATA", "--dest", f"127.0.0.1:{PORT}", "--retries", "1")
print(f"run (5 s timeout) rc={rc} in {time.time()-t0:.0f}s:", out)
time.sleep(12)
rep = os.path.join(D, "report1"); rc_r, _ = migrate(state, "report", "--out", rep)
s1 = open(os.path.join(rep, "summary.txt")).read(); print(s1)
arch = archive_sops(st)
check("a timed-out study is not verified; the report says why",
      rc != 0 and "NOT COMPLETE" in s1 and ("timed out" in s1.lower() or "timeout" in s1.lower() or "no response" in s1.lower()),
      f"run rc={rc}; report: {[l for l in s1.splitlines() if st in l]}; meanwhile the source delivered {len(arch)}/3",
      "PS3.4 C.4.2.3.1: pending responses are optional, so silence is legal; a timeout is reported as such, never as success")
line = [l for l in s1.splitlines() if st in l][0]
check("the report does not claim instances left the source when it never listed them",
      "no longer in the source" not in line and "removed from the source" not in s1,
      line, "only the timeout is reported; the source was never listed, so nothing is known to have vanished")
rc2, out2 = migrate(state, "--timeout", "30s", "run", "--dest-ae", "STRATA", "--dest", f"127.0.0.1:{PORT}")
print("run (30 s timeout)", rc2, out2)
rep2 = os.path.join(D, "report2"); rc_r2, _ = migrate(state, "report", "--out", rep2)
s2 = open(os.path.join(rep2, "summary.txt")).read()
check("with a longer timeout the study verifies", rc2 == 0 and "RESULT: COMPLETE" in s2, f"run rc={rc2}", "verified")
print("source C-MOVE requests:", len([m for m in pacs.moves]), [(m[0], m[2]) for m in pacs.moves])
pacs.stop()
finish()
