import os, sys
sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import os, sys, time, json, shutil
from lib import *
D = os.environ["DIR"]
state = os.path.join(D, "state"); shutil.rmtree(state, ignore_errors=True)
st, se = uid(), uid()
data = [make_ct(pid="PID701", study=st, series=se, inst=i + 1, study_date="20240701") for i in range(3)]
pacs = LegacyPacs(data, models="patient").start()
# the source works for a Patient Root SCU (sanity check of the stand-in)
s_, m = find(q("PATIENT", PatientID="", PatientName=""), port=SRC_PORT, ae_title="OLDPACS", model=PATIENT_FIND)
print("patient-root C-FIND on the source:", s_, [str(x.PatientID) for x in m])
src = f"OLDPACS@127.0.0.1:{SRC_PORT}"
rc, out = migrate(state, "plan", "--source", src, "--from", "20240701", "--to", "20240701"); print("plan", rc, out)
rc2, out2 = migrate(state, "run", "--dest-ae", "STRATA", "--dest", f"127.0.0.1:{PORT}"); print("run", rc2, out2)
arch = archive_sops(st)
migrated = len(arch) == 3
clear = rc != 0 and ("Patient Root" in out or "Study Root" in out or "1.2.840.10008.5.1.4.1.2.2.1" in out)
check("a Patient-Root-only source is migrated, or refused with a message naming what is missing",
      migrated or clear,
      f"archive {len(arch)}/3; plan rc={rc}: {out.strip()[:300]}",
      "PS3.4 C.6: an SCP may support either information model; the tool uses Patient Root, or says the source lacks Study Root")
print("NOTE: message names the model by name:", "Study Root" in out or "Patient Root" in out)
rep = os.path.join(D, "report"); rc_r, out_r = migrate(state, "report", "--out", rep)
summary = open(os.path.join(rep, "summary.txt")).read() if os.path.exists(os.path.join(rep, "summary.txt")) else out_r
print(summary)
check("after a plan that could not query the source, run/report do not say complete",
      not (rc2 == 0 and rc_r == 0 and "RESULT: COMPLETE" in summary),
      f"run rc={rc2} '{out2.strip()}'; report rc={rc_r}: {[l for l in summary.splitlines() if l.startswith(('RESULT', 'Studies'))]}",
      "an inventory that never ran is not a complete migration")
pacs.stop()
finish()
