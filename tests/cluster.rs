//! Nodes of one archive (issue 16): each `strata serve` records a heartbeat in the
//! index, and `strata cluster status` shows every node, alive, stopped or down. On a
//! PostgreSQL index (`STRATA_TEST_PG`, the second pass of `scripts/test.sh`), two nodes
//! with their own hot disks share the index and the cold tier: a study DCMTK stores on
//! one is found by findscu on the other at once (read-your-writes across nodes).

use crate::common::*;
use crate::find::findscu;

fn status(archive: &Archive) -> (i32, serde_json::Value) {
    let out = run(&mut archive.strata(&["cluster", "status", "--json"]));
    (
        out.status.code().unwrap_or(-1),
        serde_json::from_slice(&out.stdout).unwrap_or(serde_json::Value::Null),
    )
}

fn node<'a>(nodes: &'a serde_json::Value, id: &str) -> &'a serde_json::Value {
    nodes
        .as_array()
        .unwrap()
        .iter()
        .find(|n| n["node_id"] == id)
        .unwrap_or_else(|| panic!("no node {id}: {nodes}"))
}

#[test]
fn nodes_share_the_index_and_say_whether_they_are_alive() {
    let cold = scratch("cluster-cold");
    let shared = format!(
        "\n[cold]\nurl = \"file://{}\"\n\n[cluster]\nheartbeat = \"1s\"\n",
        cold.path().display()
    );
    let a = Archive::with_config("cluster-a", &format!("{shared}node_id = \"node-a\"\n"));
    let server_a = a.start();
    let (code, nodes) = status(&a);
    assert_eq!(code, 0, "{nodes}");
    assert_eq!(node(&nodes, "node-a")["alive"], true, "{nodes}");
    assert!(node(&nodes, "node-a")["hot_free_bytes"].as_u64().unwrap() > 0);
    // its metrics say which node they are (checked and stripped by `metrics`)
    assert!(server_a.metrics().contains("strata_active_associations"));

    if let Some(b) = a.another_node("cluster-b", &format!("{shared}node_id = \"node-b\"\n")) {
        let data = scratch("cluster-data");
        small_ct(data.path(), &["--studies", "1", "--instances", "3"]);
        run_ok(storescu(server_a.dicom_port).args(dcm_files(data.path())));
        // a packs the study: the bucket is claimed for the archive (its id, in the
        // index too); b, with no id of its own, joins it — its cold tier checks out
        let study = a.ls_json()[0]["study_uid"].as_str().unwrap().to_string();
        run_ok(&mut a.strata(&["tier", "move", &study, "--to", "cold"]));
        let server_b = b.start();
        let checked = run(&mut b.strata(&["tier", "status"]));
        assert!(
            checked.status.success(),
            "{}",
            String::from_utf8_lossy(&checked.stdout)
        );
        // stored on a, found on b at once
        let (n, text) = findscu(
            server_b.dicom_port,
            "-S",
            &[
                "QueryRetrieveLevel=STUDY",
                "StudyInstanceUID",
                "NumberOfStudyRelatedInstances",
            ],
        );
        assert_eq!(n, 1, "{text}");
        assert_eq!(
            crate::find::values(&text, "NumberOfStudyRelatedInstances"),
            vec!["3"]
        );
        let (code, nodes) = status(&b);
        assert_eq!(code, 0, "{nodes}");
        assert_eq!(node(&nodes, "node-b")["alive"], true, "{nodes}");
        assert_eq!(node(&nodes, "node-a")["alive"], true, "{nodes}");
        // a node killed goes silent: down after three heartbeats, and the status says so
        server_b.kill9();
        std::thread::sleep(std::time::Duration::from_millis(4500));
        let (code, nodes) = status(&a);
        assert_eq!(code, 1, "a node is down: {nodes}");
        assert_eq!(node(&nodes, "node-b")["alive"], false, "{nodes}");
        assert_eq!(node(&nodes, "node-b")["stopped"], false, "{nodes}");
    }
    // a node stopped cleanly says so: stopped, not down
    server_a.stop();
    let (_, nodes) = status(&a);
    assert_eq!(node(&nodes, "node-a")["stopped"], true, "{nodes}");
    assert_eq!(node(&nodes, "node-a")["alive"], false, "{nodes}");
}
