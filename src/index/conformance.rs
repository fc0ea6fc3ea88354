//! The conformance suite every [`Index`] runs (object_store's `integration.rs` idea, as in
//! `strata_tiers::conformance`). Each check gets a fresh, empty index from the caller's
//! factory and panics with a message naming the broken rule.
//!
//! Tests only: the root crate has no `testing` feature yet to export it to other crates.

use super::prelude::*;
use super::{
    ColdCopy, CommitOutcome, Compression, FixityRecord, HoldRecord, IndexError, NewObject,
    PackRecord, PackedObject, Provenance, SecondaryKey, Tier, Tombstone,
};
use crate::dicom::header::InstanceAttrs;
use strata_tiers::ObjectId;

/// Makes a fresh, empty index; the directory (if any) lives as long as the index is used.
pub type MakeIndex<'a> = dyn Fn() -> (Box<dyn Index>, Option<tempfile::TempDir>) + 'a;

/// One check of the suite, run against a fresh index.
type Check = fn(&dyn Index);

/// Runs every check, each against a fresh index from `make`.
pub fn run_suite(make: &MakeIndex<'_>) {
    let checks: [(&str, Check); 23] = [
        (
            "commit_counts_instances_versions_and_duplicates",
            commit_counts_instances_versions_and_duplicates,
        ),
        (
            "counters_across_series_and_studies",
            counters_across_series_and_studies,
        ),
        ("lookups", lookups),
        ("secondary_indexes", secondary_indexes),
        (
            "patient_conflict_keeps_each_identity",
            patient_conflict_keeps_each_identity,
        ),
        ("date_ranges", date_ranges),
        ("for_each_stops_early", for_each_stops_early),
        ("access_queue", access_queue),
        ("packs_and_tiers", packs_and_tiers),
        (
            "record_pack_adds_cold_only_objects",
            record_pack_adds_cold_only_objects,
        ),
        ("fixity", fixity),
        ("instance_metadata", instance_metadata),
        ("tombstone_study", tombstone_study),
        ("restore_tombstone", restore_tombstone),
        ("holds", holds),
        ("corrected_study_deleted", corrected_study_deleted),
        (
            "concurrent_writers_lose_no_update",
            concurrent_writers_lose_no_update,
        ),
        ("patient_links_and_rejections", patient_links_and_rejections),
        ("issuers_tell_patients_apart", issuers_tell_patients_apart),
        (
            "tombstone_instances_deletes_some_of_a_study",
            tombstone_instances_deletes_some_of_a_study,
        ),
        ("leases", leases),
        ("replication_queue", replication_queue),
        ("purge_queue", purge_queue),
    ];
    for (name, check) in checks {
        let (index, _dir) = make();
        eprintln!("index conformance: {name}");
        check(index.as_ref());
        // whatever the check wrote, the running totals equal a count from scratch
        assert_eq!(
            index.tier_totals().unwrap(),
            scanned_totals(index.as_ref()),
            "{name}: the running tier totals drifted from the records"
        );
    }
}

/// The tier totals counted from the records through the traits: objects, packs, queue.
fn scanned_totals(index: &dyn Index) -> super::TierTotals {
    let mut t = super::TierTotals::default();
    index
        .for_each_object(&mut |_, r| {
            t.apply(&super::TierTotals::object_delta(&r, 1));
            true
        })
        .unwrap();
    for (_, p) in index.packs().unwrap() {
        t.apply(&super::TierTotals::pack_delta(&p, 1));
    }
    t.queued_studies = index.accessed_before(u64::MAX, usize::MAX).unwrap().len() as u64;
    t
}

/// A new object of patient `P1`, CT, StudyDate 20240101, accession `ACC1`; its id is the
/// hash of `payload`.
pub fn object(study: &str, series: &str, sop: &str, payload: &[u8], at: u64) -> NewObject {
    NewObject {
        id: ObjectId::of_bytes(payload),
        size: payload.len() as u64,
        attrs: InstanceAttrs {
            patient_id: "P1".into(),
            study_uid: study.into(),
            series_uid: series.into(),
            sop_instance_uid: sop.into(),
            sop_class_uid: "1.2.840.10008.5.1.4.1.1.2".into(),
            modality: "CT".into(),
            study_date: "20240101".into(),
            accession_number: "ACC1".into(),
            transfer_syntax_uid: "1.2.840.10008.1.2.1".into(),
            ..Default::default()
        },
        dataset: None,
        metadata: Some(format!("metadata of {sop}").into_bytes()),
        replicate: false,
        provenance: Provenance {
            received_at_ms: at,
            calling_ae: "TEST".into(),
            source: "127.0.0.1:1".into(),
            node: String::new(),
        },
    }
}

/// [`object`] with another patient, study date and accession number.
fn object_of(
    study: &str,
    sop: &str,
    patient: &str,
    date: &str,
    accession: &str,
    payload: &[u8],
) -> NewObject {
    let mut o = object(study, &format!("{study}.1"), sop, payload, 1);
    o.attrs.patient_id = patient.into();
    o.attrs.study_date = date.into();
    o.attrs.accession_number = accession.into();
    o
}

fn copy_in(pack: &ObjectId, offset: u64) -> ColdCopy {
    ColdCopy {
        pack: pack.to_hex(),
        offset,
        stored_size: 10,
        compression: Compression::Zstd,
    }
}

fn pack_record(study: &str, members: u64) -> PackRecord {
    PackRecord {
        study_uid: study.into(),
        size: 1000,
        members,
        original_bytes: 2000,
        storage_class: "STANDARD".into(),
        created_ms: 5,
    }
}

fn sorted(mut v: Vec<String>) -> Vec<String> {
    v.sort();
    v
}

/// The former `rocks.rs` unit test, every assertion kept.
fn commit_counts_instances_versions_and_duplicates(index: &dyn Index) {
    let a = object("1.1", "1.1.1", "1.1.1.1", b"a", 1);
    let b = object("1.1", "1.1.1", "1.1.1.2", b"b", 2);
    let mut a2 = object("1.1", "1.1.1", "1.1.1.1", b"a-changed", 3);
    a2.attrs.patient_name = "CORRECTED^NAME".into();
    a2.attrs.study_description = "corrected".into();
    a2.attrs.series_description = "corrected series".into();
    let outcomes = index.commit(&[a.clone(), b, a.clone()]).unwrap();
    assert_eq!(
        outcomes,
        vec![
            CommitOutcome::Stored,
            CommitOutcome::Stored,
            CommitOutcome::AlreadyPresent
        ],
        "a duplicate within one group is AlreadyPresent"
    );
    assert_eq!(
        index.commit(std::slice::from_ref(&a)).unwrap(),
        vec![CommitOutcome::AlreadyPresent],
        "identical bytes again are AlreadyPresent"
    );
    assert_eq!(
        index.commit(std::slice::from_ref(&a2)).unwrap(),
        vec![CommitOutcome::NewVersion],
        "other bytes under a known SOP Instance UID are a NewVersion"
    );

    let study = index.study("1.1").unwrap().unwrap();
    assert_eq!((study.series, study.instances, study.objects), (1, 2, 3));
    assert_eq!(study.bytes, 1 + 1 + 9);
    let inst = index.instance("1.1.1.1").unwrap().unwrap();
    assert_eq!(inst.record.versions.len(), 2);
    assert_eq!(inst.record.current().unwrap().id, a2.id.to_hex());
    // what is queried follows the served version (issue 11: C-FIND showed the first
    // version's names while C-GET sent the second)
    assert_eq!(
        (
            study.patient_name.as_str(),
            study.study_description.as_str()
        ),
        ("CORRECTED^NAME", "corrected")
    );
    let (_, series) = index.series("1.1.1").unwrap().unwrap();
    assert_eq!(series.series_description, "corrected series");
    assert_eq!(index.instances_of_study("1.1").unwrap().len(), 2);
    assert_eq!(index.series("1.1.1").unwrap().unwrap().0, "1.1");
    assert_eq!(
        index.studies_by(SecondaryKey::PatientId, "P1").unwrap(),
        vec!["1.1"]
    );
    assert_eq!(
        index
            .studies_by(SecondaryKey::AccessionNumber, "ACC1")
            .unwrap(),
        vec!["1.1"]
    );
    assert!(
        index
            .studies_by(SecondaryKey::StudyDate, "2024")
            .unwrap()
            .is_empty(),
        "a secondary index matches whole values, not prefixes"
    );
    let mut n = 0;
    index
        .for_each_object(&mut |_, _| {
            n += 1;
            true
        })
        .unwrap();
    assert_eq!(n, 3);
}

fn counters_across_series_and_studies(index: &dyn Index) {
    // an older version arriving late is kept but not served
    let new = object("3.1", "3.1.1", "3.1.1.1", b"new", 20);
    let old = object("3.1", "3.1.1", "3.1.1.1", b"older", 10);
    let mut mr = object("3.1", "3.1.2", "3.1.2.1", b"mr", 30);
    mr.attrs.modality = "MR".into();
    let other = object("3.2", "3.2.1", "3.2.1.1", b"other study", 40);
    index.commit(&[new.clone(), mr]).unwrap();
    assert_eq!(
        index.commit(std::slice::from_ref(&old)).unwrap(),
        vec![CommitOutcome::NewVersion]
    );
    index.commit(&[other]).unwrap();

    let study = index.study("3.1").unwrap().unwrap();
    assert_eq!(
        (study.series, study.instances, study.objects, study.bytes),
        (2, 2, 3, 3 + 5 + 2),
        "study counters: series, distinct instances, objects, bytes"
    );
    assert_eq!(
        study.modalities,
        vec!["CT", "MR"],
        "modalities sorted, distinct"
    );
    assert_eq!(study.patient_id, "P1");
    let series = index.series_of_study("3.1").unwrap();
    assert_eq!(
        series
            .iter()
            .map(|(uid, _)| uid.as_str())
            .collect::<Vec<_>>(),
        vec!["3.1.1", "3.1.2"]
    );
    let (_, ct) = &series[0];
    assert_eq!(
        (ct.instances, ct.bytes, ct.modality.as_str()),
        (1, 8, "CT"),
        "series counters: distinct instances, bytes of every version"
    );
    let inst = index.instance("3.1.1.1").unwrap().unwrap();
    assert_eq!(
        inst.record
            .versions
            .iter()
            .map(|v| v.received_at_ms)
            .collect::<Vec<_>>(),
        vec![10, 20],
        "versions ordered by receive time"
    );
    assert_eq!(
        inst.record.current().unwrap().id,
        new.id.to_hex(),
        "the newest version is served, not the latest arrival"
    );
    // both studies belong to P1
    assert_eq!(
        sorted(index.studies_by(SecondaryKey::PatientId, "P1").unwrap()),
        vec!["3.1", "3.2"]
    );
    let studies = index.studies().unwrap();
    assert_eq!(
        studies
            .iter()
            .map(|(uid, _)| uid.as_str())
            .collect::<Vec<_>>(),
        vec!["3.1", "3.2"],
        "studies ordered by UID"
    );
    assert_eq!(studies[1].1.instances, 1);
}

fn lookups(index: &dyn Index) {
    let a = object("4.1", "4.1.1", "4.1.1.1", b"lookup a", 7);
    let b = object("4.1", "4.1.2", "4.1.2.1", b"lookup b", 8);
    assert!(!index.has_object(&a.id).unwrap());
    assert!(index.object(&a.id).unwrap().is_none());
    assert!(index.study("4.1").unwrap().is_none());
    assert!(index.instance("4.1.1.1").unwrap().is_none());
    assert!(index.series("4.1.1").unwrap().is_none());
    assert!(index.series_of_study("4.1").unwrap().is_empty());
    assert!(index.instances_of_study("4.1").unwrap().is_empty());
    index.refresh().unwrap();

    index.commit(&[a.clone(), b.clone()]).unwrap();
    assert!(index.has_object(&a.id).unwrap());
    let rec = index.object(&a.id).unwrap().unwrap();
    assert_eq!(rec.size, a.size);
    assert_eq!(rec.tier, Tier::Hot, "a committed object is hot");
    assert!(rec.cold.is_empty());
    assert_eq!(
        (
            rec.study_uid.as_str(),
            rec.series_uid.as_str(),
            rec.sop_instance_uid.as_str()
        ),
        ("4.1", "4.1.1", "4.1.1.1")
    );
    assert_eq!(rec.transfer_syntax_uid, "1.2.840.10008.1.2.1");
    assert_eq!(rec.provenance, a.provenance);

    let inst = index.instance("4.1.2.1").unwrap().unwrap();
    assert_eq!(
        (inst.study_uid.as_str(), inst.series_uid.as_str()),
        ("4.1", "4.1.2")
    );
    assert_eq!(inst.sop_instance_uid, "4.1.2.1");
    assert_eq!(inst.record.sop_class_uid, "1.2.840.10008.5.1.4.1.1.2");
    assert_eq!(inst.record.current().unwrap().id, b.id.to_hex());
    assert_eq!(inst.record.current().unwrap().size, b.size);

    let (study, series) = index.series("4.1.2").unwrap().unwrap();
    assert_eq!(study, "4.1");
    assert_eq!(series.study_uid, "4.1");
    assert_eq!(series.instances, 1);
    let entries = index.instances_of_study("4.1").unwrap();
    assert_eq!(
        entries
            .iter()
            .map(|e| (e.series_uid.as_str(), e.sop_instance_uid.as_str()))
            .collect::<Vec<_>>(),
        vec![("4.1.1", "4.1.1.1"), ("4.1.2", "4.1.2.1")]
    );
    // a study UID that is a prefix of another is not mixed up with it
    index
        .commit(&[object("4.10", "4.10.1", "4.10.1.1", b"lookup c", 9)])
        .unwrap();
    assert_eq!(index.instances_of_study("4.1").unwrap().len(), 2);
    assert_eq!(index.series_of_study("4.1").unwrap().len(), 2);
    assert_eq!(index.instances_of_study("4.10").unwrap().len(), 1);
}

fn secondary_indexes(index: &dyn Index) {
    index
        .commit(&[
            object_of("5.1", "5.1.1.1", "PA", "20230101", "A1", b"s1"),
            object_of("5.2", "5.2.1.1", "PA", "20240202", "A2", b"s2"),
            object_of("5.3", "5.3.1.1", "PB", "20240202", "A3", b"s3"),
        ])
        .unwrap();
    assert_eq!(
        sorted(index.studies_by(SecondaryKey::PatientId, "PA").unwrap()),
        vec!["5.1", "5.2"]
    );
    assert_eq!(
        index.studies_by(SecondaryKey::PatientId, "PB").unwrap(),
        vec!["5.3"]
    );
    assert!(index
        .studies_by(SecondaryKey::PatientId, "P")
        .unwrap()
        .is_empty());
    assert_eq!(
        sorted(
            index
                .studies_by(SecondaryKey::StudyDate, "20240202")
                .unwrap()
        ),
        vec!["5.2", "5.3"]
    );
    assert_eq!(
        index
            .studies_by(SecondaryKey::AccessionNumber, "A3")
            .unwrap(),
        vec!["5.3"]
    );
    // a later instance with a differing value makes the study findable by both
    index
        .commit(&[object_of(
            "5.3", "5.3.1.2", "PB", "20240202", "A3-bis", b"s3b",
        )])
        .unwrap();
    assert_eq!(
        index
            .studies_by(SecondaryKey::AccessionNumber, "A3-bis")
            .unwrap(),
        vec!["5.3"]
    );
    assert_eq!(
        index
            .studies_by(SecondaryKey::AccessionNumber, "A3")
            .unwrap(),
        vec!["5.3"]
    );
    assert_eq!(
        index.study("5.3").unwrap().unwrap().accession_number,
        "A3",
        "the study keeps the first value it was stored with"
    );
}

/// One study sent under two PatientIDs (field case: P601 with three instances, then
/// P602 with two in another series): both identities find the study, the second is
/// listed with its series, and deleting the study forgets both.
fn patient_conflict_keeps_each_identity(index: &dyn Index) {
    let sent_as = |patient: &str, series: &str, sop: &str, at: u64| {
        let mut o = object("6.1", series, sop, sop.as_bytes(), at);
        o.attrs.patient_id = patient.into();
        o.attrs.patient_name = format!("NAME^{patient}");
        o
    };
    index
        .commit(&[
            sent_as("P601", "6.1.1", "6.1.1.1", 1),
            sent_as("P601", "6.1.1", "6.1.1.2", 2),
        ])
        .unwrap();
    // the conflicting objects in the same group as one of the study's own
    index
        .commit(&[
            sent_as("P601", "6.1.1", "6.1.1.3", 3),
            sent_as("P602", "6.1.2", "6.1.2.1", 4),
            sent_as("P602", "6.1.2", "6.1.2.2", 5),
        ])
        .unwrap();
    let study = index.study("6.1").unwrap().unwrap();
    assert_eq!(study.patient_id, "P601", "filed under the first identity");
    assert_eq!(study.patient_name, "NAME^P601");
    assert_eq!(study.instances, 5);
    assert_eq!(study.other_patients.len(), 1, "the conflict is recorded");
    let other = &study.other_patients[0];
    assert_eq!(other.patient_id, "P602");
    assert_eq!(other.patient_name, "NAME^P602");
    assert_eq!(other.series, vec!["6.1.2"]);
    assert_eq!(other.first_seen_ms, 4);
    assert_eq!(study.patient_of_series("6.1.2").patient_id, "P602");
    assert_eq!(study.patient_of_series("6.1.1").patient_id, "P601");
    for pid in ["P601", "P602"] {
        assert_eq!(
            index.studies_by(SecondaryKey::PatientId, pid).unwrap(),
            vec!["6.1"],
            "{pid} finds the study"
        );
    }
    // a third series under P602 joins the same identity
    index
        .commit(&[sent_as("P602", "6.1.3", "6.1.3.1", 6)])
        .unwrap();
    // an instance naming P602 in P601's series: the series stays where it is
    index
        .commit(&[sent_as("P602", "6.1.1", "6.1.1.9", 7)])
        .unwrap();
    let study = index.study("6.1").unwrap().unwrap();
    assert_eq!(study.other_patients.len(), 1);
    assert_eq!(study.other_patients[0].series, vec!["6.1.2", "6.1.3"]);
    assert_eq!(study.patient_of_series("6.1.1").patient_id, "P601");
    let t = tombstone_for(index, "6.1", &[]);
    index.tombstone_study(&t).unwrap();
    for pid in ["P601", "P602"] {
        assert!(
            index
                .studies_by(SecondaryKey::PatientId, pid)
                .unwrap()
                .is_empty(),
            "{pid} forgotten"
        );
    }
}

fn date_ranges(index: &dyn Index) {
    index
        .commit(&[
            object_of("6.1", "6.1.1.1", "P", "20230101", "A", b"d1"),
            object_of("6.2", "6.2.1.1", "P", "20240101", "A", b"d2"),
            object_of("6.3", "6.3.1.1", "P", "20240615", "A", b"d3"),
            object_of("6.4", "6.4.1.1", "P", "20250101", "A", b"d4"),
            object_of("6.5", "6.5.1.1", "P", "", "A", b"d5 (no date)"),
        ])
        .unwrap();
    assert_eq!(
        index.studies_by_date_range("", "").unwrap(),
        vec!["6.1", "6.2", "6.3", "6.4"],
        "both bounds open: every dated study, in date order; undated ones never"
    );
    assert_eq!(
        index.studies_by_date_range("20240101", "").unwrap(),
        vec!["6.2", "6.3", "6.4"],
        "open upper bound; the lower bound is inclusive"
    );
    assert_eq!(
        index.studies_by_date_range("", "20240101").unwrap(),
        vec!["6.1", "6.2"],
        "open lower bound; the upper bound is inclusive"
    );
    assert_eq!(
        index.studies_by_date_range("20240102", "20241231").unwrap(),
        vec!["6.3"]
    );
    assert_eq!(
        index.studies_by_date_range("20240615", "20240615").unwrap(),
        vec!["6.3"],
        "a one-day range"
    );
    assert!(index
        .studies_by_date_range("20260101", "")
        .unwrap()
        .is_empty());
    assert!(index
        .studies_by_date_range("20240102", "20240614")
        .unwrap()
        .is_empty());
}

fn for_each_stops_early(index: &dyn Index) {
    let objects: Vec<NewObject> = (0..5)
        .map(|i| {
            object(
                &format!("7.{i}"),
                &format!("7.{i}.1"),
                &format!("7.{i}.1.1"),
                format!("each {i}").as_bytes(),
                1,
            )
        })
        .collect();
    index.commit(&objects).unwrap();

    let mut seen = Vec::new();
    index
        .for_each_study(&mut |uid, rec| {
            assert_eq!(rec.instances, 1);
            seen.push(uid.to_string());
            seen.len() < 2
        })
        .unwrap();
    assert_eq!(
        seen,
        vec!["7.0", "7.1"],
        "for_each_study stops when told, in UID order"
    );
    let mut all = Vec::new();
    index
        .for_each_study(&mut |uid, _| {
            all.push(uid.to_string());
            true
        })
        .unwrap();
    assert_eq!(all, vec!["7.0", "7.1", "7.2", "7.3", "7.4"]);

    let mut n = 0;
    index
        .for_each_object(&mut |_, _| {
            n += 1;
            n < 3
        })
        .unwrap();
    assert_eq!(n, 3, "for_each_object stops when told");
    let mut ids = Vec::new();
    index
        .for_each_object(&mut |id, rec| {
            assert_eq!(rec.tier, Tier::Hot);
            ids.push(id);
            true
        })
        .unwrap();
    let mut expected: Vec<ObjectId> = objects.iter().map(|o| o.id).collect();
    expected.sort();
    ids.sort();
    assert_eq!(ids, expected, "for_each_object visits every object once");
    // a visitor may read the index
    index
        .for_each_object(&mut |id, _| index.object(&id).unwrap().is_some())
        .unwrap();
}

fn access_queue(index: &dyn Index) {
    assert!(index.last_access("q.1").unwrap().is_none());
    assert!(index.accessed_before(u64::MAX, 10).unwrap().is_empty());
    index.record_access(&["q.2".into()], 200).unwrap();
    index
        .record_access(&["q.1".into(), "q.3".into()], 100)
        .unwrap();
    index.record_access(&["q.3".into()], 300).unwrap();
    assert_eq!(index.last_access("q.1").unwrap(), Some(100));
    assert_eq!(index.last_access("q.3").unwrap(), Some(300));
    assert_eq!(
        index.accessed_before(250, 10).unwrap(),
        vec![(100, "q.1".to_string()), (200, "q.2".to_string())],
        "oldest first, only entries before the bound, one entry per study"
    );
    assert_eq!(
        index.accessed_before(250, 1).unwrap(),
        vec![(100, "q.1".to_string())],
        "at most `limit`"
    );
    assert!(
        index.accessed_before(100, 10).unwrap().is_empty(),
        "the bound is exclusive"
    );

    // an older access never replaces a newer one
    index.record_access(&["q.3".into()], 50).unwrap();
    assert_eq!(index.last_access("q.3").unwrap(), Some(300));
    // a newer one moves the study to the back of the queue
    index.record_access(&["q.1".into()], 400).unwrap();
    assert_eq!(index.last_access("q.1").unwrap(), Some(400));
    assert_eq!(
        index.accessed_before(u64::MAX, 10).unwrap(),
        vec![
            (200, "q.2".to_string()),
            (300, "q.3".to_string()),
            (400, "q.1".to_string())
        ]
    );
    // an entry older than the study's last access is stale
    for (at, study) in index.accessed_before(u64::MAX, 10).unwrap() {
        assert!(at >= index.last_access(&study).unwrap().unwrap());
    }

    index.dequeue(200, "q.2").unwrap();
    index.dequeue(12345, "q.2").unwrap(); // not queued: no error
    assert_eq!(
        index.accessed_before(u64::MAX, 10).unwrap(),
        vec![(300, "q.3".to_string()), (400, "q.1".to_string())]
    );
    assert_eq!(
        index.last_access("q.2").unwrap(),
        Some(200),
        "dequeue keeps the access time"
    );

    // storing into a study counts as an access, no older than now
    let before = crate::index::unix_ms_now();
    index
        .commit(&[object("q.4", "q.4.1", "q.4.1.1", b"queued", 1)])
        .unwrap();
    let at = index
        .last_access("q.4")
        .unwrap()
        .expect("commit touches the study");
    assert!(at >= before);
    assert!(index
        .accessed_before(u64::MAX, 10)
        .unwrap()
        .contains(&(at, "q.4".to_string())));
}

fn packs_and_tiers(index: &dyn Index) {
    let a = object("8.1", "8.1.1", "8.1.1.1", b"pack a", 1);
    let b = object("8.1", "8.1.1", "8.1.1.2", b"pack b", 2);
    index.commit(&[a.clone(), b.clone()]).unwrap();
    let p1 = ObjectId::of_bytes(b"pack one");
    let p2 = ObjectId::of_bytes(b"pack two");
    assert!(index.pack(&p1).unwrap().is_none());
    assert!(index.packs().unwrap().is_empty());

    let members = |pack: &ObjectId| -> Vec<PackedObject> {
        vec![
            PackedObject {
                id: a.id,
                copy: copy_in(pack, 512),
                new: None,
            },
            PackedObject {
                id: b.id,
                copy: copy_in(pack, 2048),
                new: None,
            },
        ]
    };
    index
        .record_pack(&p1, &pack_record("8.1", 2), &members(&p1))
        .unwrap();
    assert_eq!(index.pack(&p1).unwrap(), Some(pack_record("8.1", 2)));
    let rec = index.object(&a.id).unwrap().unwrap();
    assert_eq!(
        rec.cold,
        vec![copy_in(&p1, 512)],
        "record_pack adds the cold copy"
    );
    assert_eq!(rec.cold[0].pack_id(), Some(p1));
    assert_eq!(rec.tier, Tier::Hot, "record_pack leaves the hot copy");
    // recorded again: no second copy
    index
        .record_pack(&p1, &pack_record("8.1", 2), &members(&p1))
        .unwrap();
    assert_eq!(index.object(&a.id).unwrap().unwrap().cold.len(), 1);
    index
        .record_pack(&p2, &pack_record("8.1", 2), &members(&p2))
        .unwrap();
    assert_eq!(
        index.object(&b.id).unwrap().unwrap().cold,
        vec![copy_in(&p1, 2048), copy_in(&p2, 2048)]
    );
    let mut packs = index.packs().unwrap();
    packs.sort_by_key(|(id, _)| *id);
    let mut expected = vec![(p1, pack_record("8.1", 2)), (p2, pack_record("8.1", 2))];
    expected.sort_by_key(|(id, _)| *id);
    assert_eq!(packs, expected);

    // a member that is not indexed, without attributes, is refused
    let stranger = ObjectId::of_bytes(b"not indexed");
    assert!(index
        .record_pack(
            &ObjectId::of_bytes(b"pack three"),
            &pack_record("8.1", 1),
            &[PackedObject {
                id: stranger,
                copy: copy_in(&p1, 0),
                new: None,
            }],
        )
        .is_err());
    assert!(!index.has_object(&stranger).unwrap());

    // update_pack rewrites the record only
    let mut moved = pack_record("8.1", 2);
    moved.storage_class = "DEEP_ARCHIVE".into();
    index.update_pack(&p1, &moved).unwrap();
    assert_eq!(
        index.pack(&p1).unwrap().unwrap().storage_class,
        "DEEP_ARCHIVE"
    );
    assert_eq!(index.pack(&p2).unwrap(), Some(pack_record("8.1", 2)));
    assert_eq!(
        index.object(&a.id).unwrap().unwrap().cold,
        vec![copy_in(&p1, 512), copy_in(&p2, 512)],
        "update_pack leaves the object records"
    );

    // set_tier
    index
        .set_tier(&[a.id, b.id, stranger], Tier::Cold, None)
        .unwrap();
    assert_eq!(index.object(&a.id).unwrap().unwrap().tier, Tier::Cold);
    assert_eq!(index.object(&b.id).unwrap().unwrap().tier, Tier::Cold);
    assert!(
        !index.has_object(&stranger).unwrap(),
        "set_tier ignores unknown objects"
    );
    assert_eq!(
        index.object(&a.id).unwrap().unwrap().cold,
        vec![copy_in(&p1, 512), copy_in(&p2, 512)],
        "set_tier keeps the cold copies"
    );
    // a cold object stored again has its hot copy back
    assert_eq!(
        index.commit(std::slice::from_ref(&a)).unwrap(),
        vec![CommitOutcome::AlreadyPresent]
    );
    assert_eq!(index.object(&a.id).unwrap().unwrap().tier, Tier::Hot);
    assert_eq!(index.object(&a.id).unwrap().unwrap().cold.len(), 2);
    assert_eq!(
        index.study("8.1").unwrap().unwrap().objects,
        2,
        "a re-stored cold object is not counted twice"
    );
    index.set_tier(&[a.id], Tier::Hot, None).unwrap();
    assert_eq!(index.object(&a.id).unwrap().unwrap().tier, Tier::Hot);

    // drop_pack forgets the pack and its copies, not the other pack's
    index.drop_pack(&p1).unwrap();
    assert!(index.pack(&p1).unwrap().is_none());
    assert_eq!(index.packs().unwrap().len(), 1);
    assert_eq!(
        index.object(&a.id).unwrap().unwrap().cold,
        vec![copy_in(&p2, 512)]
    );
    assert_eq!(
        index.object(&b.id).unwrap().unwrap().cold,
        vec![copy_in(&p2, 2048)]
    );
    assert_eq!(
        index.object(&b.id).unwrap().unwrap().tier,
        Tier::Cold,
        "drop_pack leaves the tier"
    );
    index.drop_pack(&p2).unwrap();
    assert!(index.packs().unwrap().is_empty());
    assert!(index.object(&b.id).unwrap().unwrap().cold.is_empty());
    assert!(
        index.has_object(&b.id).unwrap(),
        "drop_pack keeps the object"
    );
}

fn record_pack_adds_cold_only_objects(index: &dyn Index) {
    // reindex from the cold tier: members not yet indexed come with their attributes
    let a = object("9.1", "9.1.1", "9.1.1.1", b"cold a", 1);
    let b = object("9.1", "9.1.2", "9.1.2.1", b"cold b", 2);
    index.commit(std::slice::from_ref(&a)).unwrap();
    let p = ObjectId::of_bytes(b"reindexed pack");
    index
        .record_pack(
            &p,
            &pack_record("9.1", 2),
            &[
                PackedObject {
                    id: a.id,
                    copy: copy_in(&p, 512),
                    new: Some(a.clone()),
                },
                PackedObject {
                    id: b.id,
                    copy: copy_in(&p, 4096),
                    new: Some(b.clone()),
                },
            ],
        )
        .unwrap();
    let rec = index.object(&b.id).unwrap().unwrap();
    assert_eq!(
        rec.tier,
        Tier::Cold,
        "an object known only from a pack is cold"
    );
    assert_eq!(rec.cold, vec![copy_in(&p, 4096)]);
    assert_eq!(rec.provenance, b.provenance);
    let rec = index.object(&a.id).unwrap().unwrap();
    assert_eq!(rec.tier, Tier::Hot, "an indexed member keeps its record");
    assert_eq!(rec.cold, vec![copy_in(&p, 512)]);
    let study = index.study("9.1").unwrap().unwrap();
    assert_eq!(
        (study.series, study.instances, study.objects),
        (2, 2, 2),
        "a cold-only object counts like a stored one"
    );
    assert_eq!(
        index.instance("9.1.2.1").unwrap().unwrap().series_uid,
        "9.1.2"
    );
    assert_eq!(index.series("9.1.2").unwrap().unwrap().0, "9.1");
    // stored again over DICOM, it is hot again and not a new instance
    assert_eq!(
        index.commit(std::slice::from_ref(&b)).unwrap(),
        vec![CommitOutcome::AlreadyPresent]
    );
    assert_eq!(index.object(&b.id).unwrap().unwrap().tier, Tier::Hot);
    assert_eq!(index.study("9.1").unwrap().unwrap().objects, 2);
}

fn fixity(index: &dyn Index) {
    let a = object("10.1", "10.1.1", "10.1.1.1", b"fixity", 1);
    index.commit(std::slice::from_ref(&a)).unwrap();
    assert!(index.fixity(&a.id).unwrap().is_none());
    let ok = FixityRecord {
        verified_at_ms: 10,
        ok: true,
        detail: "hot".into(),
    };
    index.record_fixity(&a.id, &ok).unwrap();
    assert_eq!(index.fixity(&a.id).unwrap(), Some(ok));
    let bad = FixityRecord {
        verified_at_ms: 20,
        ok: false,
        detail: "hot: blake3 mismatch".into(),
    };
    index.record_fixity(&a.id, &bad).unwrap();
    assert_eq!(
        index.fixity(&a.id).unwrap(),
        Some(bad),
        "the latest check wins"
    );
    assert_eq!(
        index.object(&a.id).unwrap().unwrap().tier,
        Tier::Hot,
        "fixity leaves the object record"
    );
}

fn tombstone_for(index: &dyn Index, study: &str, packs: &[ObjectId]) -> Tombstone {
    let record = index.study(study).unwrap().unwrap();
    Tombstone {
        study_uid: study.into(),
        patient_id: record.patient_id,
        objects: index
            .instances_of_study(study)
            .unwrap()
            .into_iter()
            .flat_map(|e| {
                e.record
                    .versions
                    .iter()
                    .map(|v| {
                        (
                            e.series_uid.clone(),
                            e.sop_instance_uid.clone(),
                            v.id.clone(),
                        )
                    })
                    .collect::<Vec<_>>()
            })
            .collect(),
        packs: packs.iter().map(|p| p.to_hex()).collect(),
        who: "tester".into(),
        why: "conformance".into(),
        deleted_at_ms: 99,
        partial: false,
    }
}

/// Metadata records are kept per object, given to an object indexed without one when it
/// is stored again, read back as written, and deleted with their study; the first
/// instance of a study or series is the first in UID order.
fn instance_metadata(index: &dyn Index) {
    let a = object("12.1", "12.1.1", "12.1.1.2", b"meta a", 1);
    let b = object("12.1", "12.1.1", "12.1.1.1", b"meta b", 2);
    let mut c = object("12.1", "12.1.2", "12.1.2.1", b"meta c", 3);
    c.metadata = None;
    index.commit(&[a.clone(), b.clone(), c.clone()]).unwrap();
    assert_eq!(index.instance_metadata(&a.id).unwrap(), a.metadata);
    assert_eq!(index.instance_metadata(&b.id).unwrap(), b.metadata);
    assert_eq!(index.instance_metadata(&c.id).unwrap(), None);
    let first = |series| {
        index
            .first_instance("12.1", series)
            .unwrap()
            .map(|e| e.sop_instance_uid)
    };
    assert_eq!(first(None).as_deref(), Some("12.1.1.1"));
    assert_eq!(first(Some("12.1.2")).as_deref(), Some("12.1.2.1"));
    assert_eq!(first(Some("12.1.9")), None);
    assert!(index.first_instance("12.9", None).unwrap().is_none());
    // stored again, now with a record: it gets it; one already there is not replaced
    let mut c_again = c.clone();
    c_again.metadata = Some(b"late".to_vec());
    let mut a_again = a.clone();
    a_again.metadata = Some(b"other".to_vec());
    index.commit(&[c_again, a_again]).unwrap();
    assert_eq!(
        index.instance_metadata(&c.id).unwrap(),
        Some(b"late".to_vec())
    );
    assert_eq!(index.instance_metadata(&a.id).unwrap(), a.metadata);
    index
        .tombstone_study(&tombstone_for(index, "12.1", &[]))
        .unwrap();
    for o in [&a, &b, &c] {
        assert_eq!(index.instance_metadata(&o.id).unwrap(), None);
    }
}

fn tombstone_study(index: &dyn Index) {
    let a = object_of("11.1", "11.1.1.1", "PT", "20200101", "ACC-T", b"tomb a");
    let mut a2 = a.clone();
    a2.id = ObjectId::of_bytes(b"tomb a v2");
    a2.provenance.received_at_ms = 5;
    let mut b = object_of("11.1", "11.1.2.1", "PT", "20200101", "ACC-T", b"tomb b");
    b.attrs.series_uid = "11.1.2".into();
    // another study of the same patient, sharing a SOP Instance UID and a series UID
    let mut keep = object_of("11.2", "11.1.2.1", "PT", "20200101", "ACC-K", b"keep");
    keep.attrs.series_uid = "11.2.1".into();
    let mut keep2 = object_of("11.2", "11.2.9.9", "PT", "20200101", "ACC-K", b"keep 2");
    keep2.attrs.series_uid = "11.1.1".into();
    index.commit(&[a.clone(), b.clone()]).unwrap();
    index.commit(&[a2.clone()]).unwrap();
    index.commit(&[keep.clone(), keep2.clone()]).unwrap();
    let p = ObjectId::of_bytes(b"tomb pack");
    let other_pack = ObjectId::of_bytes(b"keep pack");
    index
        .record_pack(
            &p,
            &pack_record("11.1", 1),
            &[PackedObject {
                id: a.id,
                copy: copy_in(&p, 512),
                new: None,
            }],
        )
        .unwrap();
    index
        .record_pack(
            &other_pack,
            &pack_record("11.2", 1),
            &[PackedObject {
                id: keep.id,
                copy: copy_in(&other_pack, 512),
                new: None,
            }],
        )
        .unwrap();
    assert!(index.last_access("11.1").unwrap().is_some());

    let t = tombstone_for(index, "11.1", &[p]);
    assert_eq!(t.objects.len(), 3);
    // the objects and packs a tombstone names are read by the index itself, under its
    // write serialisation, whatever the caller read before
    let asked = Tombstone {
        objects: Vec::new(),
        packs: Vec::new(),
        ..t.clone()
    };
    assert_eq!(index.tombstone_study(&asked).unwrap(), t);

    assert!(index.study("11.1").unwrap().is_none(), "the study is gone");
    assert!(index.series_of_study("11.1").unwrap().is_empty());
    assert!(index.instances_of_study("11.1").unwrap().is_empty());
    assert!(index.instance("11.1.1.1").unwrap().is_none());
    for o in [&a, &a2, &b] {
        assert!(!index.has_object(&o.id).unwrap(), "its objects are gone");
        assert_eq!(
            index.deleted_object(&o.id).unwrap().as_deref(),
            Some("11.1"),
            "each object is marked deleted with its study"
        );
    }
    assert!(index.pack(&p).unwrap().is_none(), "its packs are dropped");
    assert_eq!(index.packs().unwrap().len(), 1);
    assert_eq!(index.tombstones().unwrap(), vec![t.clone()]);
    assert!(index.last_access("11.1").unwrap().is_none());
    assert!(!index
        .accessed_before(u64::MAX, 100)
        .unwrap()
        .iter()
        .any(|(_, s)| s == "11.1"));
    assert!(index
        .studies_by(SecondaryKey::AccessionNumber, "ACC-T")
        .unwrap()
        .is_empty());
    assert_eq!(
        index.studies_by(SecondaryKey::PatientId, "PT").unwrap(),
        vec!["11.2"]
    );
    assert_eq!(
        index
            .studies_by(SecondaryKey::StudyDate, "20200101")
            .unwrap(),
        vec!["11.2"]
    );

    // the other study is untouched, including the UIDs it shares
    assert!(index.study("11.2").unwrap().is_some());
    assert_eq!(
        index.instance("11.1.2.1").unwrap().unwrap().study_uid,
        "11.2",
        "a SOP index entry of another study stays"
    );
    assert_eq!(
        index.series("11.1.1").unwrap().unwrap().0,
        "11.2",
        "a series index entry of another study stays"
    );
    assert!(index.has_object(&keep.id).unwrap());
    assert!(index.deleted_object(&keep.id).unwrap().is_none());
    assert_eq!(index.object(&keep.id).unwrap().unwrap().cold.len(), 1);

    assert!(
        index.tombstone_study(&t).is_err(),
        "tombstoning a study that is not indexed is an error"
    );

    // stored again after the deletion: it lives again
    assert_eq!(
        index.commit(std::slice::from_ref(&a)).unwrap(),
        vec![CommitOutcome::Stored]
    );
    assert!(index.deleted_object(&a.id).unwrap().is_none());
    assert_eq!(
        index.deleted_object(&b.id).unwrap().as_deref(),
        Some("11.1")
    );
    let study = index.study("11.1").unwrap().unwrap();
    assert_eq!((study.instances, study.objects), (1, 1));
}

fn restore_tombstone(index: &dyn Index) {
    let live = ObjectId::of_bytes(b"stored again");
    let gone = ObjectId::of_bytes(b"still deleted");
    let t = Tombstone {
        study_uid: "12.1".into(),
        patient_id: "P1".into(),
        objects: vec![
            ("12.1.1".into(), "12.1.1.1".into(), gone.to_hex()),
            ("12.1.1".into(), "12.1.1.2".into(), live.to_hex()),
        ],
        packs: vec![],
        who: "tester".into(),
        why: "reindex".into(),
        deleted_at_ms: 3,
        partial: false,
    };
    index.restore_tombstone(&t, &[live]).unwrap();
    assert_eq!(index.tombstones().unwrap(), vec![t]);
    assert_eq!(
        index.deleted_object(&gone).unwrap().as_deref(),
        Some("12.1")
    );
    assert!(
        index.deleted_object(&live).unwrap().is_none(),
        "an object in `live` is not marked deleted"
    );
}

/// The same SOP Instance and Series UIDs stored under two studies (a study corrected
/// under a new Study Instance UID): lookups by SOP or series UID find the newest; when
/// that study is deleted they find the other one again (they used to find nothing).
fn corrected_study_deleted(index: &dyn Index) {
    index
        .commit(&[object("14.1", "14.1.1", "14.1.1.1", b"original", 1)])
        .unwrap();
    index
        .commit(&[object("14.2", "14.1.1", "14.1.1.1", b"corrected", 2)])
        .unwrap();
    assert_eq!(
        index.instance("14.1.1.1").unwrap().unwrap().study_uid,
        "14.2"
    );
    assert_eq!(index.series("14.1.1").unwrap().unwrap().0, "14.2");
    let t = Tombstone {
        study_uid: "14.2".into(),
        patient_id: String::new(),
        objects: Vec::new(),
        packs: Vec::new(),
        who: "tester".into(),
        why: "corrected copy".into(),
        deleted_at_ms: 3,
        partial: false,
    };
    index.tombstone_study(&t).unwrap();
    let back = index
        .instance("14.1.1.1")
        .unwrap()
        .expect("the original is found");
    assert_eq!(back.study_uid, "14.1");
    assert_eq!(index.series("14.1.1").unwrap().unwrap().0, "14.1");
    index
        .tombstone_study(&Tombstone {
            study_uid: "14.1".into(),
            ..t
        })
        .unwrap();
    assert!(index.instance("14.1.1.1").unwrap().is_none());
    assert!(index.series("14.1.1").unwrap().is_none());
}

fn holds(index: &dyn Index) {
    assert!(index.holds("13.1").unwrap().is_empty());
    let h = HoldRecord {
        who: "legal".into(),
        why: "case 42".into(),
        since_ms: 1,
    };
    index.set_holds("13.1", std::slice::from_ref(&h)).unwrap();
    assert_eq!(index.holds("13.1").unwrap(), vec![h.clone()]);
    assert!(index.holds("13.2").unwrap().is_empty());
    let h2 = HoldRecord {
        why: "case 43".into(),
        ..h.clone()
    };
    index.set_holds("13.1", &[h.clone(), h2.clone()]).unwrap();
    assert_eq!(index.holds("13.1").unwrap(), vec![h.clone(), h2.clone()]);
    index.set_holds("13.1", std::slice::from_ref(&h2)).unwrap();
    assert_eq!(index.holds("13.1").unwrap(), vec![h2.clone()]);
    let t = Tombstone {
        study_uid: "13.1".into(),
        patient_id: String::new(),
        objects: Vec::new(),
        packs: Vec::new(),
        who: "tester".into(),
        why: "under hold".into(),
        deleted_at_ms: 1,
        partial: false,
    };
    assert!(
        matches!(index.tombstone_study(&t), Err(IndexError::Held { hold, .. }) if hold == h2),
        "a held study is never tombstoned"
    );
    index.set_holds("13.1", &[]).unwrap();
    assert!(
        index.holds("13.1").unwrap().is_empty(),
        "a lifted hold is gone"
    );
    index.set_holds("13.1", &[]).unwrap(); // lifting again is fine
}

/// Threads doing `commit`, `set_tier`, `record_pack` and `record_access` on the same
/// records at once; afterwards every update must be there.
fn concurrent_writers_lose_no_update(index: &dyn Index) {
    const BASE: usize = 8;
    const COMMITTERS: usize = 3;
    const PER_COMMITTER: usize = 15;
    const PACKERS: usize = 3;
    const ROUNDS: usize = 10;
    let base: Vec<NewObject> = (0..BASE)
        .map(|i| {
            object(
                "14.1",
                "14.1.1",
                &format!("14.1.1.{i}"),
                format!("base {i}").as_bytes(),
                1,
            )
        })
        .collect();
    index.commit(&base).unwrap();
    let ids: Vec<ObjectId> = base.iter().map(|o| o.id).collect();
    let pack_of = |packer: usize, round: usize| {
        ObjectId::of_bytes(format!("pack {packer} {round}").as_bytes())
    };

    std::thread::scope(|s| {
        for c in 0..COMMITTERS {
            s.spawn(move || {
                for n in 0..PER_COMMITTER {
                    let sop = format!("14.1.{}.{n}", c + 2);
                    let o = object("14.1", &format!("14.1.{}", c + 2), &sop, sop.as_bytes(), 1);
                    assert_eq!(index.commit(&[o]).unwrap(), vec![CommitOutcome::Stored]);
                }
            });
        }
        for p in 0..PACKERS {
            let ids = &ids;
            s.spawn(move || {
                for round in 0..ROUNDS {
                    let pack = pack_of(p, round);
                    let members: Vec<PackedObject> = ids
                        .iter()
                        .map(|id| PackedObject {
                            id: *id,
                            copy: copy_in(&pack, 512),
                            new: None,
                        })
                        .collect();
                    index
                        .record_pack(&pack, &pack_record("14.1", BASE as u64), &members)
                        .unwrap();
                }
            });
        }
        let ids = &ids;
        s.spawn(move || {
            // ends on Cold: nothing else changes the tier, so every base object must be
            // cold afterwards
            for round in 0..ROUNDS * 2 {
                let tier = if round % 2 == 0 {
                    Tier::Hot
                } else {
                    Tier::Cold
                };
                index.set_tier(ids, tier, None).unwrap();
            }
        });
        s.spawn(move || {
            for at in 1..=ROUNDS as u64 * 4 {
                index
                    .record_access(&["14.1".into(), "14.9".into()], u64::MAX - 1000 + at)
                    .unwrap();
            }
        });
    });

    let study = index.study("14.1").unwrap().unwrap();
    let total = (BASE + COMMITTERS * PER_COMMITTER) as u64;
    assert_eq!(
        (study.instances, study.objects, study.series),
        (total, total, 1 + COMMITTERS as u64),
        "concurrent commits must not lose study counter updates"
    );
    assert_eq!(
        index.instances_of_study("14.1").unwrap().len() as u64,
        total
    );
    for (uid, series) in index.series_of_study("14.1").unwrap() {
        let expected = if uid == "14.1.1" { BASE } else { PER_COMMITTER } as u64;
        assert_eq!(series.instances, expected, "series {uid} lost an update");
    }
    for id in &ids {
        let rec = index.object(id).unwrap().unwrap();
        assert_eq!(
            rec.tier,
            Tier::Cold,
            "a concurrent record_pack must not undo set_tier"
        );
        assert_eq!(
            rec.cold.len(),
            PACKERS * ROUNDS,
            "concurrent set_tier or record_pack must not lose a cold copy"
        );
        for p in 0..PACKERS {
            for round in 0..ROUNDS {
                assert!(rec.cold.contains(&copy_in(&pack_of(p, round), 512)));
            }
        }
    }
    assert_eq!(index.packs().unwrap().len(), PACKERS * ROUNDS);
    assert_eq!(
        index.last_access("14.1").unwrap(),
        Some(u64::MAX - 1000 + ROUNDS as u64 * 4)
    );
    let queued: Vec<_> = index
        .accessed_before(u64::MAX, 100)
        .unwrap()
        .into_iter()
        .filter(|(_, s)| s == "14.1")
        .collect();
    assert_eq!(
        queued.len(),
        1,
        "one queue entry per study, whoever touched it"
    );
}

/// Patient links (a merge, then the survivor renamed) keep their aliases right, an HL7
/// control id is remembered, and rejections are found by study.
/// Some instances of a study deleted (IOCM rejection notes asking for it): their records
/// go, marked deleted; the counters, ModalitiesInStudy and an emptied series follow;
/// every pack of the study is dropped and the objects kept are hot-only; a partial
/// tombstone stands beside a later whole one. An object kept that is cold-only refuses
/// it.
fn tombstone_instances_deletes_some_of_a_study(index: &dyn Index) {
    let a = object("9.1", "9.1.1", "9.1.1.1", b"9a", 1);
    let b = object("9.1", "9.1.1", "9.1.1.2", b"9b", 2);
    let mut c = object("9.1", "9.1.2", "9.1.2.1", b"9c", 3);
    c.attrs.modality = "MR".into();
    index.commit(&[a.clone(), b.clone(), c.clone()]).unwrap();
    let pack = ObjectId::of_bytes(b"pack of 9.1");
    let members: Vec<PackedObject> = [&a, &b, &c]
        .iter()
        .enumerate()
        .map(|(n, o)| PackedObject {
            id: o.id,
            copy: copy_in(&pack, 512 * (n as u64 + 1)),
            new: None,
        })
        .collect();
    index
        .record_pack(&pack, &pack_record("9.1", 3), &members)
        .unwrap();
    let asked = Tombstone {
        study_uid: "9.1".into(),
        patient_id: "P1".into(),
        objects: Vec::new(),
        packs: Vec::new(),
        who: "retention".into(),
        why: "IOCM".into(),
        deleted_at_ms: 10,
        partial: true,
    };
    let doomed = [
        ("9.1.1".to_string(), "9.1.1.2".to_string()),
        ("9.1.2".to_string(), "9.1.2.1".to_string()),
        ("9.1.9".to_string(), "9.1.9.9".to_string()),
    ];
    // a kept object only in the cold tier: refused, nothing changed
    index.set_tier(&[a.id], Tier::Cold, None).unwrap();
    assert!(index.tombstone_instances(&asked, &doomed).is_err());
    assert_eq!(index.study("9.1").unwrap().unwrap().instances, 3);
    index.set_tier(&[a.id], Tier::Hot, None).unwrap();
    let t = index.tombstone_instances(&asked, &doomed).unwrap();
    assert!(t.partial);
    assert_eq!(
        sorted(t.objects.iter().map(|(_, sop, _)| sop.clone()).collect()),
        vec!["9.1.1.2", "9.1.2.1"]
    );
    assert_eq!(t.packs, vec![pack.to_hex()]);
    let study = index.study("9.1").unwrap().unwrap();
    assert_eq!((study.instances, study.objects, study.series), (1, 1, 1));
    assert_eq!(study.modalities, vec!["CT"]);
    assert_eq!(study.bytes, a.size);
    assert!(index.series("9.1.2").unwrap().is_none());
    assert_eq!(index.series("9.1.1").unwrap().unwrap().1.instances, 1);
    assert!(index.instance("9.1.1.2").unwrap().is_none());
    assert_eq!(index.deleted_object(&b.id).unwrap().as_deref(), Some("9.1"));
    assert!(index.object(&b.id).unwrap().is_none());
    let kept = index.object(&a.id).unwrap().unwrap();
    assert!(kept.cold.is_empty() && kept.tier == Tier::Hot);
    assert!(index.pack(&pack).unwrap().is_none());
    // the whole study later: both tombstones stand
    let whole = Tombstone {
        partial: false,
        deleted_at_ms: 20,
        ..asked.clone()
    };
    index.tombstone_study(&whole).unwrap();
    let mut kinds: Vec<bool> = index
        .tombstones()
        .unwrap()
        .iter()
        .map(|t| t.partial)
        .collect();
    kinds.sort();
    assert_eq!(kinds, vec![false, true]);
}

/// A patient is (PatientID, IssuerOfPatientID): the same PatientID from two known issuers
/// is two patients (a conflict when in one study); an unknown issuer is none of them and
/// is learnt; `set_patient_issuers` fills only unknown issuers; migration steps are
/// remembered.
fn issuers_tell_patients_apart(index: &dyn Index) {
    let sent = |series: &str, sop: &str, issuer: &str| {
        let mut o = object("7.1", series, sop, sop.as_bytes(), 1);
        o.attrs.issuer_of_patient_id = issuer.into();
        o
    };
    // unknown first, then known: the study's patient learns the issuer
    index
        .commit(&[
            sent("7.1.1", "7.1.1.1", ""),
            sent("7.1.1", "7.1.1.2", "EAST"),
        ])
        .unwrap();
    let study = index.study("7.1").unwrap().unwrap();
    assert_eq!(study.issuer_of_patient_id, "EAST");
    assert!(study.other_patients.is_empty());
    // the same PatientID from another issuer: another patient, kept apart
    index.commit(&[sent("7.1.2", "7.1.2.1", "WEST")]).unwrap();
    let study = index.study("7.1").unwrap().unwrap();
    assert_eq!(study.other_patients.len(), 1);
    assert_eq!(study.other_patients[0].issuer_of_patient_id, "WEST");
    assert_eq!(study.patient_of_series("7.1.2").key(), "P1\\WEST");
    assert_eq!(study.patient_of_series("7.1.1").key(), "P1\\EAST");
    // issuers fill only identities that have none
    index
        .commit(&[object("7.2", "7.2.1", "7.2.1.1", b"72", 1)])
        .unwrap();
    let changed = index
        .set_patient_issuers(&[
            ("7.2".into(), "P1".into(), "NORTH".into()),
            ("7.1".into(), "P1".into(), "SOUTH".into()),
            ("7.9".into(), "P1".into(), "NORTH".into()),
        ])
        .unwrap();
    assert_eq!(changed, 1, "only the study of unknown issuer changes");
    assert_eq!(
        index.study("7.2").unwrap().unwrap().issuer_of_patient_id,
        "NORTH"
    );
    assert_eq!(
        index.study("7.1").unwrap().unwrap().issuer_of_patient_id,
        "EAST"
    );
    assert!(!index.migrated("step-1").unwrap());
    index.mark_migrated("step-1").unwrap();
    assert!(index.migrated("step-1").unwrap());
    assert!(!index.migrated("step-2").unwrap());
    // links are per patient key
    let link = super::PatientLink {
        patient_id: "P9".into(),
        issuer: "EAST".into(),
        patient_name: String::new(),
        patient_birth_date: String::new(),
        patient_sex: String::new(),
        changed_at_ms: 1,
        control_id: String::new(),
    };
    index
        .set_patient_links(&[("P1\\EAST".into(), link)], None)
        .unwrap();
    assert!(index.patient_link("P1").unwrap().is_none());
    assert!(index.patient_link("P1\\WEST").unwrap().is_none());
    assert_eq!(index.patient_aliases("P9").unwrap(), vec!["P1\\EAST"]);
}

fn patient_links_and_rejections(index: &dyn Index) {
    use super::{PatientLink, RejectionRecord};
    assert_eq!(index.patient_link("B").unwrap(), None);
    assert!(index.rejections_of_study("1.1").unwrap().is_empty());
    let link = |to: &str| PatientLink {
        patient_id: to.into(),
        issuer: String::new(),
        patient_name: "DOE^JANE".into(),
        patient_birth_date: String::new(),
        patient_sex: "F".into(),
        changed_at_ms: 1,
        control_id: "M1".into(),
    };
    index
        .set_patient_links(
            &[("B".into(), link("A")), ("A".into(), link("A"))],
            Some(("M1", "merged")),
        )
        .unwrap();
    assert_eq!(index.patient_link("B").unwrap().unwrap().patient_id, "A");
    assert_eq!(sorted(index.patient_aliases("A").unwrap()), vec!["A", "B"]);
    assert_eq!(index.hl7_message("M1").unwrap().as_deref(), Some("merged"));
    assert_eq!(index.hl7_message("M2").unwrap(), None);
    // A renamed C: both stored IDs move to C, A's aliases are gone
    index
        .set_patient_links(&[("B".into(), link("C")), ("A".into(), link("C"))], None)
        .unwrap();
    assert!(index.patient_aliases("A").unwrap().is_empty());
    assert_eq!(sorted(index.patient_aliases("C").unwrap()), vec!["A", "B"]);
    assert_eq!(index.patient_links().unwrap().len(), 2);
    let why = RejectionRecord {
        code: "113001".into(),
        meaning: "Rejected for Quality Reasons".into(),
        note: "9.9".into(),
        rejected_at_ms: 2,
        by: "QC".into(),
    };
    index
        .reject_instances(&[("1.1".into(), "1.1.1".into(), "1.1.1.1".into())], &why)
        .unwrap();
    let found = index.rejections_of_study("1.1").unwrap();
    assert_eq!(
        found,
        vec![("1.1.1".to_string(), "1.1.1.1".to_string(), why.clone())]
    );
    assert!(
        index.rejections_of_study("1.10").unwrap().is_empty(),
        "a prefix is not a study"
    );
    assert_eq!(index.rejections().unwrap().len(), 1);
}

/// One node holds a lease at a time; it renews it, gives it up, or loses it by letting
/// it expire; releasing another node's lease does nothing.
fn leases(index: &dyn Index) {
    let job = "tier/1.2.3";
    assert!(index.claim(job, "a", 1_000, 61_000).unwrap());
    assert!(!index.claim(job, "b", 2_000, 62_000).unwrap(), "held by a");
    assert!(index.claim(job, "a", 30_000, 90_000).unwrap(), "a renews");
    let leases = index.leases().unwrap();
    assert_eq!(leases.len(), 1);
    assert_eq!(leases[0].0, job);
    assert_eq!(
        (
            leases[0].1.node.as_str(),
            leases[0].1.taken_ms,
            leases[0].1.until_ms
        ),
        ("a", 1_000, 90_000)
    );
    index.release(job, "b").unwrap();
    assert!(
        !index.claim(job, "b", 60_000, 120_000).unwrap(),
        "b's release did nothing"
    );
    // expired: b takes it over
    assert!(index.claim(job, "b", 90_001, 150_000).unwrap());
    assert!(!index.claim(job, "a", 100_000, 160_000).unwrap());
    index.release(job, "b").unwrap();
    assert!(index.leases().unwrap().is_empty());
    assert!(
        index.claim(job, "a", 100_000, 160_000).unwrap(),
        "free again"
    );
    assert!(
        index.claim("tier/other", "b", 100_000, 160_000).unwrap(),
        "leases are per job"
    );
}

/// A commit queues the objects it is asked to replicate, per receiving node, atomically
/// with the objects; recording their replicas takes them off the queue.
fn replication_queue(index: &dyn Index) {
    let mut a = object("1.2.3", "1.2.3.1", "1.2.3.1.1", b"a", 10);
    a.provenance.node = "n1".into();
    a.replicate = true;
    let mut b = object("1.2.3", "1.2.3.1", "1.2.3.1.2", b"b", 20);
    b.provenance.node = "n2".into();
    b.replicate = true;
    let mut c = object("1.2.3", "1.2.3.1", "1.2.3.1.3", b"c", 30);
    c.provenance.node = "n1".into();
    index.commit(&[a.clone(), b.clone(), c.clone()]).unwrap();
    assert_eq!(
        index.replication_queue("n1", 100).unwrap(),
        vec![(a.id, 10)]
    );
    assert_eq!(
        index.replication_queue("n2", 100).unwrap(),
        vec![(b.id, 20)]
    );
    assert_eq!(
        index.object(&a.id).unwrap().unwrap().hot_node.as_deref(),
        Some("n1")
    );
    assert!(!index.object(&a.id).unwrap().unwrap().replica);
    index.set_replicated("n1", &[a.id], true).unwrap();
    assert!(index.replication_queue("n1", 100).unwrap().is_empty());
    assert!(index.object(&a.id).unwrap().unwrap().replica);
    assert_eq!(
        index.replication_queue("n2", 100).unwrap().len(),
        1,
        "n2's queue is its own"
    );
    // in a pack now: the replica is no longer counted on (and is deleted)
    index.set_replicated("n1", &[a.id], false).unwrap();
    assert!(!index.object(&a.id).unwrap().unwrap().replica);
    assert!(index.replication_queue("n1", 100).unwrap().is_empty());
}

/// Deleting objects queues the removal of their hot files for the node that holds each
/// (objects recorded before nodes were named are the deleting node's own: not queued).
fn purge_queue(index: &dyn Index) {
    let mut a = object("1.2.3", "1.2.3.1", "1.2.3.1.1", b"a", 10);
    a.provenance.node = "n1".into();
    let mut b = object("1.2.3", "1.2.3.1", "1.2.3.1.2", b"b", 20);
    b.provenance.node = "n2".into();
    let c = object("1.2.3", "1.2.3.1", "1.2.3.1.3", b"c", 30);
    index.commit(&[a.clone(), b.clone(), c.clone()]).unwrap();
    assert!(index.purge_queue("n1", 10).unwrap().is_empty());
    index
        .tombstone_study(&Tombstone {
            study_uid: "1.2.3".into(),
            patient_id: "P1".into(),
            objects: Vec::new(),
            packs: Vec::new(),
            who: "tester".into(),
            why: "purge".into(),
            deleted_at_ms: 40,
            partial: false,
        })
        .unwrap();
    assert_eq!(index.purge_queue("n1", 10).unwrap(), vec![a.id]);
    assert_eq!(index.purge_queue("n2", 10).unwrap(), vec![b.id]);
    index.purged("n1", &[a.id]).unwrap();
    assert!(index.purge_queue("n1", 10).unwrap().is_empty());
    assert_eq!(
        index.purge_queue("n2", 10).unwrap().len(),
        1,
        "n2's queue is its own"
    );
}
