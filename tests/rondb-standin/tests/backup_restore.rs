//! Native backups on every data node and `ndb_restore` into a cluster of another shape.

#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use common::Cluster;
use rondb_standin::cluster::ApiNode;
use rondb_standin::mgm::{ConnectString, Message, MgmClient};
use std::time::Duration;

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

async fn backup(c: &Cluster, id: Option<u32>) -> Message {
    let cs = ConnectString::parse(&c.connectstring()).unwrap();
    let mut m = MgmClient::connect(&cs, 0, Duration::from_millis(100))
        .await
        .unwrap();
    let mut req = Message::new("start backup").arg("completed", 2);
    if let Some(id) = id {
        req = req.arg("backupid", id);
    }
    m.call(&req, Duration::from_secs(60)).await.unwrap()
}

#[test]
fn a_backup_of_two_node_groups_restores_into_one_node_group_of_three() {
    let rt = rt();
    let mut src = Cluster::new(2, 2);
    src.start_mgmd(&[]);
    src.start_all_data_nodes();
    let original = rt.block_on(async {
        let api = api(&src, 67).await;
        api.create_database("shop").await.unwrap();
        api.create_table("shop", "items", "k", "v", 64).await.unwrap();
        api.create_table("shop", "empty", "k", "v", 8).await.unwrap();
        let rows: Vec<_> = (0..1000).map(|k| (k, if k % 7 == 0 { None } else { Some(format!("v{k}")) })).collect();
        api.put("shop", "items", rows).await.unwrap();
        let r = backup(&src, None).await;
        assert_eq!(r.encode(), "start backup reply\nresult: Ok\nid: 1\n\n");
        // A used id is refused with RonDB's error.
        let again = backup(&src, Some(1)).await;
        assert_eq!(
            again.get("result"),
            Some("Backup failed: file already exists (use 'START BACKUP <backup id>'): Temporary error: Temporary Resource error")
        );
        api.scan("shop", "items").await.unwrap()
    });
    let dir = src.path().join("backups/BACKUP/BACKUP-1");
    for n in 1..=4 {
        for f in [
            format!("BACKUP-1.{n}.ctl"),
            format!("BACKUP-1-0.{n}.Data"),
            format!("BACKUP-1.{n}.log"),
        ] {
            assert!(dir.join(&f).exists(), "{f} missing");
        }
    }
    assert!(src
        .cluster_log()
        .contains("Backup 1 started from node 65 completed"));

    let mut dst = Cluster::new(1, 3);
    dst.start_mgmd(&[]);
    dst.start_all_data_nodes();
    let cs = dst.connectstring();
    let path = dir.display().to_string();
    let restore = |extra: &[&str]| {
        let mut args = vec![
            "-c",
            cs.as_str(),
            "--ndb-nodeid=70",
            "-b",
            "1",
            "--backup-path",
            path.as_str(),
        ];
        args.extend_from_slice(extra);
        dst.run("ndb_restore", &args)
    };
    let (code, out) = restore(&["-n", "1", "-m", "--disable-indexes"]);
    assert_eq!(code, 0, "{out}");
    assert!(
        out.contains("Successfully restored table `shop/def/items`"),
        "{out}"
    );
    let mut tuples = 0;
    for n in ["1", "2", "3", "4"] {
        let (code, out) = restore(&["-n", n, "-r"]);
        assert_eq!(code, 0, "{out}");
        let line = out
            .lines()
            .find(|l| l.starts_with("Restored "))
            .unwrap_or_default()
            .to_string();
        tuples += line
            .split_whitespace()
            .nth(1)
            .and_then(|n| n.parse::<u64>().ok())
            .unwrap_or(0);
    }
    // Each row was written by exactly one replica of its node group.
    assert_eq!(tuples, 1000);
    let (code, out) = restore(&["-n", "1", "--rebuild-indexes", "--restore-epoch"]);
    assert_eq!(code, 0, "{out}");
    let restored = rt.block_on(async { api(&dst, 67).await.scan("shop", "items").await.unwrap() });
    assert_eq!(restored, original);

    // Metadata twice: the table exists.
    let (code, out) = restore(&["-n", "1", "-m"]);
    assert_eq!(code, 1);
    assert!(
        out.contains("Schema object with given name already exists"),
        "{out}"
    );
}

#[test]
fn ndb_restore_refuses_missing_or_damaged_files_and_bad_arguments() {
    let c = Cluster::new(1, 1);
    let dir = c.path().join("BACKUP-3");
    std::fs::create_dir_all(&dir).unwrap();
    let path = dir.display().to_string();
    let (code, out) = c.run(
        "ndb_restore",
        &["-b", "3", "-n", "0", "-r", "--backup-path", &path],
    );
    assert_eq!(code, 2);
    assert!(
        out.contains("Error in --nodeid,-n setting, see --help"),
        "{out}"
    );
    let (code, out) = c.run("ndb_restore", &["-n", "1", "-r", "--backup-path", &path]);
    assert_eq!(code, 2);
    assert!(
        out.contains("Error in --backupid,-b setting, see --help"),
        "{out}"
    );
    let (code, out) = c.run(
        "ndb_restore",
        &["-b", "3", "-n", "1", "-r", "--backup-path", &path],
    );
    assert_eq!(code, 1);
    assert!(out.contains("Failed to open file"), "{out}");
    std::fs::write(dir.join("BACKUP-3.1.ctl"), "NDBBCKUP\n{\"truncated\n").unwrap();
    let (code, out) = c.run(
        "ndb_restore",
        &["-b", "3", "-n", "1", "-m", "--backup-path", &path],
    );
    assert_eq!(code, 1);
    assert!(out.contains("is not a backup file or is corrupt"), "{out}");
}
