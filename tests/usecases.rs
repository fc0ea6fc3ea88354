//! The application layer without any adapter: every use case, called directly with a
//! caller identity, writes its own audit record naming that caller (DESIGN promise 8;
//! issue "One application layer": a use case audits itself, so no adapter can forget).

use crate::common::*;
use strata::archive::principal::{Grant, Role, Roles};
use strata::archive::tier::TierTarget;
use strata::archive::{Archive, Principal};
use strata::config::Config;
use strata::query::{Level, Model, Query};
use strata::storage::Storage;

const STUDY_INSTANCE_UID: u32 = 0x0020_000D;
const PATIENT_ID: u32 = 0x0010_0020;

/// An archive opened by the library alone (as a CLI command would): (its scratch
/// directory, its data directory, the storage, the archive).
fn open_archive(name: &str) -> (tempfile::TempDir, std::path::PathBuf, Storage, Archive) {
    let dir = scratch(name);
    let data = dir.path().join("data");
    let config = Config::from_toml(&format!(
        "[archive]\ndata_dir = \"{}\"\nmin_free_space_mb = 0\n",
        data.display()
    ))
    .unwrap();
    let (storage, _) = Storage::open_exclusive(&config, "test").unwrap();
    let archive = Archive::exclusive(&config, &storage).unwrap();
    (dir, data, storage, archive)
}

#[test]
fn each_use_case_audits_itself() {
    let (dir, data, storage, archive) = open_archive("usecases-audit");
    let rt = tokio::runtime::Runtime::new().unwrap();
    let who = Principal::cli_via("auditor-test", "library", Grant::all());

    // store, from a Part-10 byte stream
    let files: Vec<_> = dcm_files(ct_study()).into_iter().take(3).collect();
    for f in &files {
        let mut file = std::fs::File::open(f).unwrap();
        archive
            .store_part10_blocking(&who, &mut file, &f.display().to_string(), None)
            .unwrap();
    }
    let study = archive.study_uids_blocking().unwrap().remove(0);

    // find, from a typed query built without an identifier (as URL parameters would)
    let matches = rt.block_on(async {
        let query = Query::from_keys(
            Level::Study,
            &[(STUDY_INSTANCE_UID, study.as_str()), (PATIENT_ID, "")],
        );
        let mut found = archive.find(&who, Model::StudyRoot, query).unwrap();
        let mut n = 0;
        while found.next().await.is_some() {
            n += 1;
        }
        found.finish().await.unwrap();
        n
    });
    assert_eq!(matches, 1);

    // retrieve: resolve, read every object back, finish
    rt.block_on(async {
        let query = Query::from_keys(Level::Study, &[(STUDY_INSTANCE_UID, study.as_str())]);
        let retrieval = archive
            .retrieve(&who, &query, "library read")
            .await
            .unwrap();
        let reader = retrieval.reader();
        assert_eq!(retrieval.items().len(), 3);
        for item in retrieval.items().iter() {
            let bytes = reader.read(&item.id).await.unwrap();
            assert_eq!(strata_tiers::ObjectId::of_bytes(&bytes), item.id);
        }
        retrieval.finish(3, 0).await;
    });

    // export and verify (blocking use cases, on the runtime's blocking pool)
    let out = dir.path().join("export");
    let (a, s, o) = (archive.clone(), vec![study.clone()], out.clone());
    let w = who.clone();
    let exported = rt
        .block_on(rt.spawn_blocking(move || {
            a.export_blocking(
                &w,
                &s,
                &o,
                strata::archive::export::ExportIdentity::AsStored,
            )
        }))
        .unwrap()
        .unwrap();
    assert_eq!(exported.files, 3);
    let (a, w) = (archive.clone(), who.clone());
    let verified = rt
        .block_on(rt.spawn_blocking(move || {
            a.verify_blocking(&w, 1, strata::archive::integrity::VerifyScope::All)
        }))
        .unwrap()
        .unwrap();
    assert!(verified.is_clean());

    // storage commitment
    let refs = vec![(
        CT_IMAGE_STORAGE.to_string(),
        "1.2.3.4.5.6.7.8.9".to_string(),
    )];
    let commitment = rt
        .block_on(archive.commitment(&who, "1.2.3.999", refs))
        .unwrap();
    assert_eq!(
        commitment.failed[0].2, 0x0112,
        "no such instance (PS3.4 J.3.3.1.1)"
    );

    // governance: holds (one per matter) refuse a delete until the last is lifted;
    // tier moves; delete
    archive
        .hold_blocking(&who, &study, "matter A", false, None)
        .unwrap();
    archive
        .hold_blocking(&who, &study, "matter B", false, None)
        .unwrap();
    assert!(
        matches!(
            archive.hold_blocking(&who, &study, "matter A", false, None),
            Err(strata::Error::InvalidRequest(_))
        ),
        "a second hold for the same matter is refused"
    );
    let which = archive.hold_blocking(&who, &study, "closed", true, None);
    assert!(
        matches!(&which, Err(strata::Error::InvalidRequest(m)) if m.contains("matter A") && m.contains("matter B")),
        "with two holds standing, a release must say which: {which:?}"
    );
    assert!(
        archive
            .hold_blocking(&who, &study, "", true, Some("matter A"))
            .is_err(),
        "a release says why"
    );
    let both = rt.block_on(archive.delete_study(&who, &study, "cleanup"));
    let said = both
        .as_ref()
        .err()
        .map(|e| e.to_string())
        .unwrap_or_default();
    assert!(
        said.contains("matter A") && said.contains("matter B") && said.contains("--hold"),
        "a refusal names every hold and how to lift one: {said}"
    );
    let lifted = archive
        .hold_blocking(&who, &study, "A closed", true, Some("matter A"))
        .unwrap();
    assert_eq!(lifted.why, "matter A");
    let refused = rt.block_on(archive.delete_study(&who, &study, "cleanup"));
    assert!(
        matches!(&refused, Err(strata::Error::Held { why, .. }) if why == "matter B"),
        "matter B still stands: {refused:?}"
    );
    archive
        .hold_blocking(&who, &study, "B closed", true, None)
        .unwrap();
    assert!(
        matches!(
            archive.hold_blocking(&who, &study, "again", true, None),
            Err(strata::Error::NotFound(_))
        ),
        "no hold left to lift"
    );
    rt.block_on(archive.tier_move(&who, &study, TierTarget::Cold))
        .unwrap();
    rt.block_on(archive.delete_study(&who, &study, "library test"))
        .unwrap();
    drop(rt);
    assert!(archive.shutdown_blocking());
    storage.close(true).unwrap();

    let records = strata::audit::read_all(&strata::audit::log_path(&data)).unwrap();
    for action in [
        "store",
        "query",
        "retrieve",
        "export",
        "verify",
        "commitment",
        "hold",
        "tier_move",
        "delete",
    ] {
        let mine: Vec<_> = records.iter().filter(|r| r.body.action == action).collect();
        assert!(!mine.is_empty(), "no {action} record");
        for r in mine {
            assert_eq!(
                (r.body.actor.kind.as_str(), r.body.actor.user.as_str()),
                ("cli", "auditor-test"),
                "{action} attributed to {:?}",
                r.body.actor
            );
        }
    }
    let stores = records.iter().filter(|r| r.body.action == "store").count();
    assert_eq!(stores, 3);
    let refused = records
        .iter()
        .any(|r| r.body.action == "delete" && r.body.outcome.starts_with("refused"));
    assert!(refused, "the refused delete is on record too");
}

/// Roles are enforced by the use cases themselves (docs/security.md "Roles"), whatever
/// adapter calls them: each refusal is `Error::Forbidden` and an audit record; a
/// patient-restricted caller finds and retrieves that patient's instances only.
#[test]
fn use_cases_enforce_roles_and_patient_restriction() {
    let (_dir, data, storage, archive) = open_archive("usecases-roles");
    let rt = tokio::runtime::Runtime::new().unwrap();
    let as_role = |name: &str, roles: &[Role]| {
        Principal::web_user("dicomweb", "127.0.0.1:1", Some(name.into()), None)
            .granted(Grant::roles(Roles::of(roles)))
    };
    let (viewer, uploader, auditor) = (
        as_role("v", &[Role::Viewer]),
        as_role("u", &[Role::Uploader]),
        as_role("a", &[Role::Auditor]),
    );
    let forbidden =
        |r: Result<(), strata::Error>| matches!(r, Err(strata::Error::Forbidden { .. }));

    let file = dcm_files(ct_study()).remove(0);
    let store = |who: &Principal| {
        let mut f = std::fs::File::open(&file).unwrap();
        archive
            .store_part10_blocking(who, &mut f, "test", None)
            .map(|_| ())
    };
    assert!(forbidden(store(&viewer)), "a viewer may not store");
    store(&uploader).unwrap();
    let study = archive.study_uids_blocking().unwrap().remove(0);
    let pid = strata::dicom::header::read_header_blocking(&file)
        .unwrap()
        .patient_id;

    let count = |who: &Principal, patient_key: &str| -> Result<usize, strata::Error> {
        rt.block_on(async {
            let query = Query::from_keys(
                Level::Study,
                &[(STUDY_INSTANCE_UID, ""), (PATIENT_ID, patient_key)],
            );
            let mut found = archive.find(who, Model::StudyRoot, query)?;
            let mut n = 0;
            while found.next().await.is_some() {
                n += 1;
            }
            found.finish().await?;
            Ok(n)
        })
    };
    assert!(
        forbidden(count(&uploader, "").map(|_| ())),
        "an uploader may not query"
    );
    assert_eq!(count(&viewer, "").unwrap(), 1);
    let restricted = |patient: &str| {
        viewer.clone().granted(Grant {
            roles: Roles::of(&[Role::Viewer]),
            patient: Some(patient.to_string()),
        })
    };
    assert_eq!(count(&restricted(&pid), "").unwrap(), 1);
    assert_eq!(count(&restricted("SOMEONE-ELSE"), "").unwrap(), 0);
    assert_eq!(
        count(&restricted(&pid), "SOMEONE-ELSE").unwrap(),
        0,
        "asking for another patient finds nothing"
    );
    assert!(
        forbidden(store(&restricted(&pid))),
        "restricted tokens are read-only"
    );
    let items = |who: &Principal| {
        rt.block_on(async {
            let query = Query::from_keys(Level::Study, &[(STUDY_INSTANCE_UID, study.as_str())]);
            let r = archive.retrieve(who, &query, "test").await?;
            let n = r.items().len();
            r.finish(0, 0).await;
            Ok::<_, strata::Error>(n)
        })
    };
    assert_eq!(items(&restricted(&pid)).unwrap(), 1);
    assert_eq!(items(&restricted("SOMEONE-ELSE")).unwrap(), 0);
    assert!(
        forbidden(items(&auditor).map(|_| ())),
        "an auditor gets no pixel data"
    );

    let (a, w) = (archive.clone(), auditor.clone());
    rt.block_on(rt.spawn_blocking(move || {
        a.verify_blocking(&w, 1, strata::archive::integrity::VerifyScope::Hot)
    }))
    .unwrap()
    .unwrap();
    assert!(forbidden(
        rt.block_on(archive.delete_study(&auditor, &study, "no"))
            .map(|_| ())
    ));
    assert!(forbidden(
        archive
            .hold_blocking(&viewer, &study, "matter", false, None)
            .map(|_| ())
    ));
    drop(rt);
    assert!(archive.shutdown_blocking());
    storage.close(true).unwrap();
    let records = strata::audit::read_all(&strata::audit::log_path(&data)).unwrap();
    let refused = |action: &str, user: &str| {
        records.iter().any(|r| {
            r.body.action == action
                && r.body.actor.user == user
                && r.body.outcome.starts_with("refused: ")
        })
    };
    assert!(refused("store", "v") && refused("query", "u") && refused("retrieve", "a"));
    assert!(refused("delete", "a") && refused("hold", "v"));
}
