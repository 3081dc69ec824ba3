//! A stand-in cluster on loopback addresses behaves as RonDB does: node restarts copy what
//! they missed, a node group's last node cannot be stopped, losing it shuts the cluster
//! down, versions are checked.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod common;

use common::Cluster;
use rondb_standin::cluster::request;
use rondb_standin::cluster::{ApiNode, ClusterError};
use rondb_standin::mgm::{ConnectString, Message, MgmClient};
use rondb_standin::transporter::{DataReply, DataRequest};
use std::time::{Duration, Instant};

fn rt() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap()
}

async fn api(c: &Cluster, id: u32) -> ApiNode {
    let cs = ConnectString::parse(&c.connectstring()).unwrap();
    let api = ApiNode::connect(&cs, Some(id), "test").await.unwrap();
    api.wait_ready(Duration::from_secs(30)).await.unwrap();
    api
}

async fn mgm(c: &Cluster, req: Message) -> Message {
    let cs = ConnectString::parse(&c.connectstring()).unwrap();
    let mut m = MgmClient::connect(&cs, 0, Duration::from_millis(100))
        .await
        .unwrap();
    m.call(&req, Duration::from_secs(120)).await.unwrap()
}

/// Every row of `table` as one data node holds it (what a read that goes to it sees).
async fn rows_on(c: &Cluster, node: u32, table: &str) -> Vec<(i64, Option<String>)> {
    let addr = format!("{}:11860", c.ip(node));
    let req = DataRequest::Scan {
        table: table.into(),
    };
    match request(&addr, &req).await.unwrap() {
        DataReply::Rows(r) => r,
        other => panic!("node {node} answered {other:?}"),
    }
}

/// One node group of two; node 1's link to the management server comes back
/// `node1_delay_ms` after it lost it. The management server restarts while rows are written;
/// afterwards every row acknowledged must be on both nodes and in a scan. Returns the cluster
/// (for its logs) and the number of rows written.
fn restart_mgmd_with_node_1_late(node1_delay_ms: &str, rejoin_ms: &str) -> (Cluster, i64) {
    let mut c = Cluster::new(1, 2);
    c.start_mgmd(&[]);
    c.start_data_node(
        1,
        true,
        &[("RONDB_STANDIN_RECONNECT_DELAY_MS", node1_delay_ms)],
    );
    c.start_data_node(2, true, &[]);
    c.wait_started(&[1, 2]);
    let rt = rt();
    let written = rt.block_on(async {
        let api = api(&c, 67).await;
        api.create_database("d").await.unwrap();
        api.create_table("d", "t", "k", "v", 32).await.unwrap();
        api.put("d", "t", rows(0, 100)).await.unwrap();
        c.kill("mgmd");
        api.put("d", "t", rows(100, 200)).await.unwrap();
        c.start_mgmd(&[("RONDB_STANDIN_REJOIN_MS", rejoin_ms)]);
        // Node 2 is back at once, node 1 only later: every write acknowledged meanwhile
        // must reach node 1 too, or be copied to it before it serves reads again.
        let mut k = 200;
        let until = Instant::now() + Duration::from_secs(4);
        while Instant::now() < until {
            api.put("d", "t", rows(k, k + 1)).await.unwrap();
            k += 1;
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        c.wait_for("node 1 back in contact", |st| {
            st.iter().any(|n| n.id == 1 && n.status != "NO_CONTACT")
        });
        c.wait_started(&[1, 2]);
        api.wait_ready(Duration::from_secs(30)).await.unwrap();
        api.put("d", "t", rows(k, k + 1)).await.unwrap();
        k += 1;
        let want = rows(0, k);
        let missing = |on: &[(i64, Option<String>)]| -> Vec<i64> {
            want.iter()
                .filter(|r| !on.contains(r))
                .map(|r| r.0)
                .collect()
        };
        // A scan reads the lowest node id first: node 1.
        let scan = api.scan("d", "t").await.unwrap();
        assert_eq!(
            missing(&scan),
            Vec::<i64>::new(),
            "a scan lacks acknowledged rows\ncluster log:\n{}",
            c.cluster_log()
        );
        assert_eq!(scan.len(), want.len());
        assert_eq!(api.count("d", "t").await.unwrap(), k as u64);
        for node in [1, 2] {
            let on = rows_on(&c, node, "d.t").await;
            assert_eq!(
                missing(&on),
                Vec::<i64>::new(),
                "node {node} lacks acknowledged rows"
            );
        }
        k
    });
    (c, written)
}

#[test]
fn a_data_node_whose_link_comes_back_after_its_group_went_on_catches_up_first() {
    // Node 1's link comes back after the management server stopped waiting for it: node 2
    // took writes alone meanwhile, so node 1 must copy them (a node restart) before it is a
    // member again and before a read goes to it.
    let (c, written) = restart_mgmd_with_node_1_late("3000", "500");
    assert!(written > 200);
    let log = c.cluster_log();
    assert!(
        log.contains("Node 1: Node group 0 went on without node 1"),
        "{log}"
    );
    assert!(c.log("ndbd-1").contains("Ndb has terminated"));
}

#[test]
fn started_data_nodes_back_after_a_management_server_restart_rejoin_together() {
    // Node 1's link comes back while the management server still waits for it: both nodes
    // are equally current and rejoin together, without a node restart.
    let (c, _) = restart_mgmd_with_node_1_late("600", "5000");
    let log = c.log("ndbd-1");
    assert!(!log.contains("Ndb has terminated"), "{log}");
    assert!(!c.cluster_log().contains("went on without"));
}

fn rows(from: i64, to: i64) -> Vec<(i64, Option<String>)> {
    (from..to)
        .map(|k| (k, Some(format!("value-{k}"))))
        .collect()
}

#[test]
fn a_restarted_data_node_copies_what_it_missed_and_no_row_is_lost() {
    let mut c = Cluster::new(2, 2);
    c.start_mgmd(&[]);
    c.start_all_data_nodes();
    let rt = rt();
    rt.block_on(async {
        let api = api(&c, 67).await;
        api.create_database("shop").await.unwrap();
        api.create_table("shop", "items", "k", "v", 64)
            .await
            .unwrap();
        api.put("shop", "items", rows(0, 200)).await.unwrap();
        // Node 2 dies; node 1 alone takes group 0's writes.
        c.kill_data_node(2);
        api.put("shop", "items", rows(200, 400)).await.unwrap();
        assert!(api.delete("shop", "items", 5).await.unwrap());
        // Node 2 restarts from its own files (not initial) and copies what it missed.
        c.start_data_node(2, false, &[]);
        c.wait_started(&[2]);
        c.kill_data_node(1);
        assert_eq!(api.count("shop", "items").await.unwrap(), 399);
        assert_eq!(
            api.get("shop", "items", 399).await.unwrap(),
            Some(Some("value-399".into()))
        );
        assert_eq!(api.get("shop", "items", 5).await.unwrap(), None);
        // Node 1 comes back with --initial: everything is copied from node 2.
        c.start_data_node(1, true, &[]);
        c.wait_started(&[1]);
        c.kill_data_node(2);
        let all = api.scan("shop", "items").await.unwrap();
        assert_eq!(all.len(), 399);
        assert!(all
            .iter()
            .all(|(k, v)| v.as_deref() == Some(format!("value-{k}").as_str())));
    });
}

#[test]
fn the_last_started_node_of_a_node_group_cannot_be_stopped() {
    let mut c = Cluster::new(2, 2);
    c.start_mgmd(&[]);
    c.start_all_data_nodes();
    let rt = rt();
    rt.block_on(async {
        let stop = |n: u32| Message::new("stop v2").arg("node", n).arg("abort", 0).arg("force", 0);
        let r = mgm(&c, stop(1)).await;
        assert_eq!(r.encode(), "stop reply\nresult: Ok\nstopped: 1\ndisconnect: 0\n\n");
        let r = mgm(&c, stop(2)).await;
        assert_eq!(
            r.encode(),
            "stop reply\nresult: Node shutdown would cause system crash: Permanent error: Application error\nstopped: 0\ndisconnect: 0\n\n"
        );
        assert_eq!(c.node_status(2), "STARTED");
        // The stopped node's angel exits 0 after a graceful stop.
        assert_eq!(c.wait_exit("ndbd-1", Duration::from_secs(10)), Some(0));
        let r = mgm(&c, Message::new("restart node v2").arg("node", 2)).await;
        assert_eq!(r.get("result"), Some("5028-Node shutdown would cause system crash: Permanent error: Application error"));
    });
}

#[test]
fn losing_the_last_node_of_a_node_group_shuts_the_cluster_down() {
    let mut c = Cluster::new(2, 2);
    c.start_mgmd(&[]);
    c.start_all_data_nodes();
    let rt = rt();
    rt.block_on(async {
        let api = api(&c, 67).await;
        api.create_database("d").await.unwrap();
        api.create_table("d", "t", "k", "v", 16).await.unwrap();
        api.put("d", "t", rows(0, 50)).await.unwrap();
        c.kill_data_node(1);
        c.kill("ndbd-2");
        // Nodes 3 and 4 (group 1, untouched) shut down with RonDB's arbitration error.
        assert_eq!(c.wait_exit("ndbd-3", Duration::from_secs(20)), Some(1));
        assert_eq!(c.wait_exit("ndbd-4", Duration::from_secs(20)), Some(1));
        for n in [3, 4] {
            assert!(
                c.log(&format!("ndbd-{n}")).contains("Caused by error 2305"),
                "{}",
                c.log(&format!("ndbd-{n}"))
            );
        }
        assert!(c
            .cluster_log()
            .contains("Arbitration check lost - missing node group 0"));
        c.wait_for("every data node NO_CONTACT and API nodes UNKNOWN", |st| {
            st.iter()
                .filter(|n| n.kind == "NDB")
                .all(|n| n.status == "NO_CONTACT")
                && st
                    .iter()
                    .filter(|n| n.kind == "API")
                    .all(|n| n.status == "UNKNOWN")
        });
        let err = api.put("d", "t", rows(50, 51)).await.unwrap_err();
        assert!(matches!(err, ClusterError::ClusterFailure), "{err}");
        assert_eq!(
            err.to_string(),
            "Got temporary error 4009 'Cluster Failure' from NDBCLUSTER"
        );
    });
}

#[test]
fn a_data_node_newer_than_the_management_server_is_refused() {
    let mut c = Cluster::new(1, 1);
    c.start_mgmd(&[("RONDB_STANDIN_VERSION", "24.10.1")]);
    c.start_data_node(1, true, &[("RONDB_STANDIN_VERSION", "24.10.2")]);
    assert_eq!(c.wait_exit("ndbd-1", Duration::from_secs(20)), Some(1));
    let log = c.log("ndbd-1");
    assert!(
        log.contains("version RonDB-24.10.2 is newer than management server version RonDB-24.10.1"),
        "{log}"
    );
    assert_eq!(c.node_status(1), "NO_CONTACT");
}

#[test]
fn statements_keep_working_while_the_management_server_restarts() {
    let mut c = Cluster::new(2, 2);
    c.start_mgmd(&[]);
    c.start_all_data_nodes();
    let rt = rt();
    rt.block_on(async {
        let api = api(&c, 67).await;
        api.create_database("d").await.unwrap();
        api.create_table("d", "t", "k", "v", 16).await.unwrap();
        api.put("d", "t", rows(0, 100)).await.unwrap();
        // RonDB's data nodes and API nodes keep talking while the management server is away.
        c.kill("mgmd");
        api.put("d", "t", rows(100, 200)).await.unwrap();
        c.start_mgmd(&[]);
        for k in 200..300 {
            api.put("d", "t", rows(k, k + 1)).await.unwrap();
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
        c.wait_started(&c.data_nodes());
        assert_eq!(api.count("d", "t").await.unwrap(), 300);
    });
}
