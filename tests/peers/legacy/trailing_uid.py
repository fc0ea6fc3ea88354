"""A source that stores a Study Instance UID with a trailing space (PS3.5 §6.2 pads UI
with NUL, but such values exist in the field) and matches UIDs byte-exactly: the study
must be moved under the UID exactly as the source gave it, or, if nothing arrives, never
be reported as verified ("source 0, archive 0")."""
import os, sys
sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import json, shutil
from lib import *
D = os.environ["DIR"]
state = os.path.join(D, "state"); shutil.rmtree(state, ignore_errors=True)
A, se = uid(), uid()
data = [make_ct(pid="PID801", study=A, series=se, inst=i + 1, study_date="20240801") for i in range(3)]
for ds in data:
    set_raw(ds, "StudyInstanceUID", A + " ")
B, seb = uid(), uid()
data += [make_ct(pid="PID802", study=B, series=seb, inst=i + 1, study_date="20240802") for i in range(2)]
# C: listed at STUDY level, but no instance is listed or sent (and no count given)
C, sec = uid(), uid()
dc = [make_ct(pid="PID803", study=C, series=sec, inst=i + 1, study_date="20240803") for i in range(2)]
data += dc
hidden = {str(x.SOPInstanceUID) for x in dc}
pacs = LegacyPacs(data, uid_exact=True, count={A + " ": None, C: None},
                  hide_in_find=hidden, move_skip=hidden).start()
src = f"OLDPACS@127.0.0.1:{SRC_PORT}"
rc, out = migrate(state, "plan", "--source", src, "--from", "20240801", "--to", "20240831"); print("plan", rc, out)
rc2, out2 = migrate(state, "run", "--dest-ae", "STRATA", "--dest", f"127.0.0.1:{PORT}", "--parallel", "1"); print("run", rc2, out2)
rep = os.path.join(D, "report"); rc_r, _ = migrate(state, "report", "--out", rep)
summary = open(os.path.join(rep, "summary.txt")).read(); print(summary)
studies = json.load(open(os.path.join(rep, "summary.json")))["studies"]
a = [s for s in studies if s["study_uid"].strip() == A]
arch = archive_sops(A)
check("the study stored with a trailing space is migrated whole",
      len(arch) == 3 and a and a[0]["status"] == "verified",
      f"archive {len(arch)}/3; ledger {[(s['study_uid'], s['status']) for s in a]}",
      "3 instances in the archive, moved under the UID exactly as the source gave it")
c = [s for s in studies if s["study_uid"] == C]
check("a study the source lists but gives no instance of is not signed off",
      c and c[0]["status"] != "verified" and "RESULT: COMPLETE" not in summary,
      f"ledger {[(s['study_uid'], s['status']) for s in c]}; {[l for l in summary.splitlines() if l.startswith('RESULT')]}",
      "never 'verified: source 0, archive 0'; the report is NOT COMPLETE")
check("the ordinary study beside it migrates", len(archive_sops(B)) == 2, f"{len(archive_sops(B))}/2", "2")
pacs.stop()
finish()
