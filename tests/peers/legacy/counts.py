import os, sys
sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import os, sys, time, json, shutil
from lib import *
D = os.environ["DIR"]
state = os.path.join(D, "state"); shutil.rmtree(state, ignore_errors=True)
def study(pid, n, day):
    st, se = uid(), uid()
    return st, [make_ct(pid=pid, study=st, series=se, inst=i + 1, study_date=day) for i in range(n)]
A, da = study("PID301", 4, "20240301")   # count omitted
B, db = study("PID302", 4, "20240302")   # count says 2
C, dc = study("PID303", 6, "20240303")   # count 6; IMAGE-level answers capped at 4; C-MOVE sends 6
Dd, dd = study("PID304", 6, "20240304")  # count 6; IMAGE-level lists 4; C-MOVE sends those 4, Success
data = da + db + dc + dd
hidden_c = {str(x.SOPInstanceUID) for x in dc[4:]}
hidden_d = {str(x.SOPInstanceUID) for x in dd[4:]}
pacs = LegacyPacs(data, count={A: None, B: 2}, hide_in_find=hidden_c | hidden_d, move_skip=hidden_d).start()
src = f"OLDPACS@127.0.0.1:{SRC_PORT}"
rc, out = migrate(state, "plan", "--source", src, "--from", "20240301", "--to", "20240331"); print("plan", rc, out)
rc, out = migrate(state, "run", "--dest-ae", "STRATA", "--dest", f"127.0.0.1:{PORT}", "--parallel", "1"); print("run", rc, out)
rep = os.path.join(D, "report"); rc_r, _ = migrate(state, "report", "--out", rep)
summary = open(os.path.join(rep, "summary.txt")).read(); print(summary)
sj = {s["study_uid"]: s for s in json.load(open(os.path.join(rep, "summary.json")))["studies"]}
arch = {s: archive_sops(s) for s in (A, B, C, Dd)}
check("A (no count) and B (count 2, has 4): all 4 migrated and verified",
      len(arch[A]) == 4 and len(arch[B]) == 4 and sj[A]["status"] == "verified" and sj[B]["status"] == "verified",
      f"A {len(arch[A])}/4 {sj[A]['status']}, B {len(arch[B])}/4 {sj[B]['status']}",
      "NumberOfStudyRelatedInstances is optional (PS3.4 C.6.1.1.4 / Table C.6-5): absent or wrong, the instances still move")
check("C (IMAGE-level answers capped at 4 of 6): all 6 in the archive", len(arch[C]) == 6,
      f"{len(arch[C])}/6, status {sj[C]['status']}, extra {len(sj[C]['extra'])}, vanished {sj[C]['vanished_from_source']}",
      "6 (the STUDY-level C-MOVE sends them all)")
# the source still counts 6 for D at the end
st, m = find(q("STUDY", StudyInstanceUID=Dd, NumberOfStudyRelatedInstances=""), port=SRC_PORT, ae_title="OLDPACS")
still = m[0].NumberOfStudyRelatedInstances if m else None
check("D (source counts 6, lists and sends 4): not signed off as complete",
      not (sj[Dd]["status"] == "verified" and "RESULT: COMPLETE" in summary),
      f"archive {len(arch[Dd])}/6; ledger status {sj[Dd]['status']}; report: "
      + [l for l in summary.splitlines() if l.startswith("RESULT")][0]
      + f"; study line: {[l for l in summary.splitlines() if Dd in l]}; the source still answers NumberOfStudyRelatedInstances={still}",
      "2 instances the source itself still counts never arrived: the study is not verified and the report says the counts disagree (it cannot know they were deleted)")
pacs.stop()
finish()
