//! The stand-in `mysqld` and `rdrs2` against a stand-in cluster, through a real MySQL client
//! library and HTTP: what a control plane's SQL and REST probes see, including 4009 when a
//! node group has no started data node.
// A test binary: in its helpers too, a failed unwrap is a failed test with its reason.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use common::{standin, Cluster};
use mysql_async::prelude::*;
use mysql_async::{Conn, OptsBuilder};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

fn mysqld(args: &[&str]) -> (i32, String) {
    let out = Command::new(standin())
        .arg("mysqld")
        .args(args)
        .output()
        .expect("run mysqld");
    (
        out.status.code().unwrap_or(-1),
        format!(
            "{}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        ),
    )
}

#[test]
fn initializes_and_refuses_as_mysqld_does() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    let d = format!("--datadir={}", data.display());

    let (code, out) = mysqld(&["--bogus"]);
    assert_eq!(code, 1, "{out}");
    assert!(
        out.contains("mysqld: [ERROR] unknown option '--bogus'."),
        "{out}"
    );

    let (code, out) = mysqld(&[&d, "--port=1"]);
    assert_eq!(code, 1, "{out}");
    assert!(
        out.contains("[ERROR] [MY-010172] [Server] failed to set datadir"),
        "{out}"
    );
    std::fs::create_dir_all(&data).unwrap();
    let (code, out) = mysqld(&[&d, "--port=1"]);
    assert_eq!(code, 1, "{out}");
    assert!(
        out.contains("Failed to find valid data directory."),
        "{out}"
    );
    std::fs::remove_dir(&data).unwrap();

    let (code, out) = mysqld(&["--initialize-insecure", &d]);
    assert_eq!(code, 0, "{out}");
    assert!(
        out.contains("root@localhost is created with an empty password"),
        "{out}"
    );
    assert!(data.join("mysql").is_dir());
    let (code, out) = mysqld(&["--initialize-insecure", &d]);
    assert_eq!(code, 1, "{out}");
    assert!(
        out.contains("--initialize specified but the data directory has files in it. Aborting."),
        "{out}"
    );
}

/// Polls a log file until it holds `needle`.
fn wait_log(c: &Cluster, name: &str, needle: &str, timeout: Duration) {
    let deadline = Instant::now() + timeout;
    while !c.log(name).contains(needle) {
        assert!(
            Instant::now() < deadline,
            "{name} never logged {needle:?}:\n{}",
            c.log(name)
        );
        std::thread::sleep(Duration::from_millis(50));
    }
}

fn spawn(c: &mut Cluster, name: &str, program: &str, args: &[String]) {
    use std::os::unix::process::CommandExt;
    let log = std::fs::File::create(c.path().join(format!("{name}.log"))).unwrap();
    let child = Command::new(standin())
        .arg(program)
        .args(args)
        .stdin(Stdio::null())
        .stdout(log.try_clone().unwrap())
        .stderr(log)
        .process_group(0)
        .spawn()
        .unwrap();
    c.procs.insert(name.to_string(), child);
}

fn code(e: mysql_async::Error) -> (u16, String) {
    match e {
        mysql_async::Error::Server(s) => (s.code, s.message),
        other => panic!("expected a server error, got {other}"),
    }
}

#[test]
fn serves_sql_and_rest_against_a_cluster() {
    let mut c = Cluster::new(1, 2);
    c.start_mgmd(&[]);
    c.start_all_data_nodes();

    // mysqld as the control plane starts it: an option file plus a few command-line options.
    let data = c.path().join("mysqld");
    let (rc, out) = mysqld(&[
        "--initialize-insecure",
        &format!("--datadir={}", data.display()),
    ]);
    assert_eq!(rc, 0, "{out}");
    let cnf = c.path().join("my.cnf");
    let ip = c.ip(67);
    std::fs::write(
        &cnf,
        format!(
            "[mysqld]\nndbcluster\nndb-connectstring={}\nndb-cluster-connection-pool=2\n\
             ndb-cluster-connection-pool-nodeids=67,68\nport=3306\ndatadir={}\nbind-address={ip}\n",
            c.connectstring(),
            data.display()
        ),
    )
    .unwrap();
    spawn(
        &mut c,
        "mysqld",
        "mysqld",
        &[
            format!("--defaults-file={}", cnf.display()),
            "--server-id=1".into(),
        ],
    );
    wait_log(
        &c,
        "mysqld",
        "ready for connections",
        Duration::from_secs(60),
    );
    assert!(
        c.log("mysqld").contains("port: 3306  RonDB-"),
        "{}",
        c.log("mysqld")
    );

    // rdrs2 with the control plane's command line.
    let rest = format!("{}:4406", c.ip(69));
    let rdrs_args = [
        format!("--ndb-connectstring={}", c.connectstring()),
        "--ndb-nodeids=69".into(),
        format!("--rest-bind={rest}"),
    ];
    spawn(&mut c, "rdrs", "rdrs2", &rdrs_args);

    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    rt.block_on(async {
        let opts = OptsBuilder::default()
            .ip_or_hostname(ip.clone())
            .tcp_port(3306)
            .user(Some("root"))
            .prefer_socket(false);
        // Wrong credentials: 1045 as MySQL sends it.
        let bad = Conn::new(opts.clone().pass(Some("secret")))
            .await
            .unwrap_err();
        let (n, msg) = code(bad);
        assert_eq!(n, 1045, "{msg}");
        assert!(msg.starts_with("Access denied for user 'root'@"), "{msg}");

        let mut conn = Conn::new(opts.clone()).await.unwrap();
        assert_eq!(
            conn.query_first::<i64, _>("SELECT 1").await.unwrap(),
            Some(1)
        );
        assert_eq!(
            conn.query_first::<String, _>("SELECT @@version")
                .await
                .unwrap(),
            Some("8.0.37".into())
        );
        let (n, msg) = code(conn.query_drop("SELEC 1").await.unwrap_err());
        assert_eq!(n, 1064, "{msg}");
        let (n, _) = code(
            conn.query_drop("SELECT v FROM t WHERE k = 1")
                .await
                .unwrap_err(),
        );
        assert_eq!(n, 1046);

        conn.query_drop("CREATE DATABASE shop").await.unwrap();
        let (n, _) = code(conn.query_drop("CREATE DATABASE shop").await.unwrap_err());
        assert_eq!(n, 1007);
        conn.query_drop("CREATE DATABASE IF NOT EXISTS shop;")
            .await
            .unwrap();
        let dbs: Vec<String> = conn.query("SHOW DATABASES").await.unwrap();
        assert!(dbs.contains(&"shop".to_string()), "{dbs:?}");
        let (n, _) = code(conn.query_drop("USE nowhere").await.unwrap_err());
        assert_eq!(n, 1049);
        conn.query_drop("USE shop").await.unwrap();
        let (n, _) = code(conn.query_drop("SELECT * FROM items").await.unwrap_err());
        assert_eq!(n, 1146);
        conn.query_drop(
            "CREATE TABLE items (id BIGINT PRIMARY KEY, name VARCHAR(32)) ENGINE=NDBCLUSTER",
        )
        .await
        .unwrap();
        let (n, _) = code(
            conn.query_drop(
                "CREATE TABLE items (id BIGINT PRIMARY KEY, name VARCHAR(32)) ENGINE=NDBCLUSTER",
            )
            .await
            .unwrap_err(),
        );
        assert_eq!(n, 1050);
        let tables: Vec<String> = conn.query("SHOW TABLES").await.unwrap();
        assert_eq!(tables, vec!["items".to_string()]);

        // 1000 rows in batches of 100.
        for batch in 0..10 {
            let values: Vec<String> = (0..100)
                .map(|i| {
                    let k = batch * 100 + i;
                    format!("({k},'item-{k}')")
                })
                .collect();
            conn.query_drop(format!(
                "INSERT INTO items (id, name) VALUES {}",
                values.join(",")
            ))
            .await
            .unwrap();
            assert_eq!(conn.affected_rows(), 100);
        }
        assert_eq!(
            conn.query_first::<i64, _>("SELECT COUNT(*) FROM items")
                .await
                .unwrap(),
            Some(1000)
        );
        for k in [0, 1, 499, 999] {
            assert_eq!(
                conn.query_first::<String, _>(format!(
                    "SELECT name FROM shop.items WHERE id = {k}"
                ))
                .await
                .unwrap(),
                Some(format!("item-{k}"))
            );
        }
        let all: Vec<(i64, String)> = conn.query("SELECT * FROM items").await.unwrap();
        assert_eq!(all.len(), 1000);
        assert_eq!(all[7], (7, "item-7".to_string()));
        conn.query_drop("REPLACE INTO items VALUES (7, 'seven')")
            .await
            .unwrap();
        assert_eq!(
            conn.query_first::<(i64, String), _>("SELECT id, name FROM items WHERE id = 7")
                .await
                .unwrap(),
            Some((7, "seven".to_string()))
        );
        conn.query_drop("DELETE FROM items WHERE id = 999")
            .await
            .unwrap();
        assert_eq!(conn.affected_rows(), 1);
        assert_eq!(
            conn.query_first::<String, _>("SELECT name FROM items WHERE id = 999")
                .await
                .unwrap(),
            None
        );
        assert_eq!(
            conn.query_first::<i64, _>("SELECT COUNT(*) FROM items")
                .await
                .unwrap(),
            Some(999)
        );
        let (n, _) = code(
            conn.query_drop(format!(
                "INSERT INTO items VALUES (5000, '{}')",
                "x".repeat(33)
            ))
            .await
            .unwrap_err(),
        );
        assert_eq!(n, 1406);

        // REST: health, then a primary-key read as rdrs2 answers it.
        let http = reqwest::Client::new();
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            let r = http.get(format!("http://{rest}/0.1.0/health")).send().await;
            if let Ok(r) = r {
                if r.status() == 200 {
                    assert_eq!(r.text().await.unwrap(), "1");
                    break;
                }
            }
            assert!(
                Instant::now() < deadline,
                "rdrs2 never healthy:\n{}",
                c.log("rdrs")
            );
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        let r = http
            .post(format!("http://{rest}/0.1.0/shop/items/pk-read"))
            .json(&serde_json::json!({
                "filters": [{"column": "id", "value": 7}],
                "readColumns": [{"column": "name"}],
                "operationId": "op1"
            }))
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), 200);
        let body: serde_json::Value = r.json().await.unwrap();
        assert_eq!(
            body,
            serde_json::json!({"operationId": "op1", "data": {"name": "seven"}})
        );
        let r = http
            .post(format!("http://{rest}/0.1.0/shop/items/pk-read"))
            .json(&serde_json::json!({"filters": [{"column": "id", "value": 999}]}))
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), 404);

        // The node group loses its last data node: statements fail with 4009.
        c.kill("ndbd-1");
        c.kill("ndbd-2");
        let deadline = Instant::now() + Duration::from_secs(30);
        let (n, msg) = loop {
            match conn.query_drop("INSERT INTO items VALUES (1, 'a')").await {
                Err(e) => break code(e),
                Ok(()) => {
                    assert!(Instant::now() < deadline, "writes still succeed");
                    tokio::time::sleep(Duration::from_millis(100)).await;
                }
            }
        };
        assert_eq!(n, 1297);
        assert_eq!(
            msg,
            "Got temporary error 4009 'Cluster Failure' from NDBCLUSTER"
        );
        for q in [
            "SELECT name FROM items WHERE id = 1",
            "SELECT COUNT(*) FROM items",
            "DELETE FROM items WHERE id = 1",
        ] {
            let (n, msg) = code(conn.query_drop(q).await.unwrap_err());
            assert_eq!(n, 1297, "{q}: {msg}");
        }
        // The REST server learns of the lost node group from the management server, as
        // the MySQL server did (moments apart).
        let deadline = Instant::now() + Duration::from_secs(10);
        loop {
            let r = http
                .get(format!("http://{rest}/health"))
                .send()
                .await
                .unwrap();
            if r.status() == 503 {
                break;
            }
            assert!(
                Instant::now() < deadline,
                "health still {} after the node group was lost",
                r.status()
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        let _ = conn.disconnect().await;
    });

    // SIGTERM: both stop cleanly with exit 0.
    for name in ["mysqld", "rdrs"] {
        let pid = c.procs[name].id() as i32;
        nix::sys::signal::kill(
            nix::unistd::Pid::from_raw(pid),
            nix::sys::signal::Signal::SIGTERM,
        )
        .unwrap();
        assert_eq!(
            c.wait_exit(name, Duration::from_secs(10)),
            Some(0),
            "{}",
            c.log(name)
        );
    }
    assert!(c.log("mysqld").contains("Shutdown complete"));
}

/// A control plane may start the SQL and REST nodes before the data nodes: mysqld keeps
/// retrying and does not listen until every node group has a started data node, rdrs2
/// listens but reports 503; SIGTERM while waiting still stops mysqld cleanly.
#[test]
fn waits_for_the_data_nodes_before_serving() {
    let mut c = Cluster::new(1, 1);
    c.start_mgmd(&[]);
    let data = c.path().join("mysqld");
    let (rc, out) = mysqld(&[
        "--initialize-insecure",
        &format!("--datadir={}", data.display()),
    ]);
    assert_eq!(rc, 0, "{out}");
    let ip = c.ip(67);
    let args = [
        "--ndbcluster".to_string(),
        format!("--ndb-connectstring={}", c.connectstring()),
        "--ndb-nodeid=67".into(),
        format!("--datadir={}", data.display()),
        format!("--bind-address={ip}"),
        "--port=3306".into(),
    ];
    spawn(&mut c, "early", "mysqld", &args);
    let rest = format!("{}:4406", c.ip(69));
    let rdrs_args = [
        format!("--ndb-connectstring={}", c.connectstring()),
        format!("--rest-bind={rest}"),
    ];
    spawn(&mut c, "rdrs", "rdrs2", &rdrs_args);
    std::thread::sleep(Duration::from_millis(1500));
    assert!(!c.log("early").contains("ready for connections"));
    assert!(std::net::TcpStream::connect((ip.as_str(), 3306)).is_err());
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    let health = |rt: &tokio::runtime::Runtime| {
        rt.block_on(async {
            reqwest::get(format!("http://{rest}/0.1.0/health"))
                .await
                .map(|r| r.status().as_u16())
                .unwrap_or(0)
        })
    };
    assert_eq!(health(&rt), 503);

    let pid = c.procs["early"].id() as i32;
    nix::sys::signal::kill(
        nix::unistd::Pid::from_raw(pid),
        nix::sys::signal::Signal::SIGTERM,
    )
    .unwrap();
    assert_eq!(
        c.wait_exit("early", Duration::from_secs(10)),
        Some(0),
        "{}",
        c.log("early")
    );

    spawn(&mut c, "mysqld", "mysqld", &args);
    std::thread::sleep(Duration::from_millis(300));
    c.start_all_data_nodes();
    wait_log(
        &c,
        "mysqld",
        "ready for connections",
        Duration::from_secs(60),
    );
    let deadline = Instant::now() + Duration::from_secs(30);
    while health(&rt) != 200 {
        assert!(Instant::now() < deadline, "{}", c.log("rdrs"));
        std::thread::sleep(Duration::from_millis(100));
    }
    rt.block_on(async {
        let opts = OptsBuilder::default()
            .ip_or_hostname(ip.clone())
            .tcp_port(3306)
            .user(Some("root"))
            .db_name(Some("mysql"))
            .prefer_socket(false);
        let mut conn = Conn::new(opts).await.unwrap();
        assert_eq!(
            conn.query_first::<Option<String>, _>("SELECT DATABASE()")
                .await
                .unwrap(),
            Some(Some("mysql".into()))
        );
        conn.disconnect().await.unwrap();
    });
}

/// The loopback cluster: 1 management server, 2 node groups x 2 replicas, 1 MySQL
/// server; rows written through the MySQL protocol survive data-node restarts with and
/// without `--initial`, read back through the MySQL protocol.
#[test]
fn rows_written_through_mysql_survive_data_node_restarts_in_two_node_groups() {
    let mut c = Cluster::new(2, 2);
    c.start_mgmd(&[]);
    c.start_all_data_nodes();
    let data = c.path().join("mysqld");
    let (rc, out) = mysqld(&[
        "--initialize-insecure",
        &format!("--datadir={}", data.display()),
    ]);
    assert_eq!(rc, 0, "{out}");
    let cnf = c.path().join("my.cnf");
    let ip = c.ip(67);
    std::fs::write(
        &cnf,
        format!(
            "[mysqld]\nndbcluster\nndb-connectstring={}\nndb-cluster-connection-pool=1\nndb-cluster-connection-pool-nodeids=67\nport=3306\ndatadir={}\nbind-address={ip}\n",
            c.connectstring(),
            data.display()
        ),
    )
    .unwrap();
    spawn(
        &mut c,
        "mysqld",
        "mysqld",
        &[format!("--defaults-file={}", cnf.display())],
    );
    wait_log(
        &c,
        "mysqld",
        "ready for connections",
        Duration::from_secs(60),
    );
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    rt.block_on(async {
        let opts = OptsBuilder::default()
            .ip_or_hostname(ip.clone())
            .tcp_port(3306)
            .user(Some("root"))
            .prefer_socket(false);
        let mut conn = Conn::new(opts).await.unwrap();
        conn.query_drop("CREATE DATABASE shop").await.unwrap();
        conn.query_drop(
            "CREATE TABLE shop.items (k BIGINT PRIMARY KEY, v VARCHAR(32)) ENGINE=NDBCLUSTER",
        )
        .await
        .unwrap();
        for batch in 0..10 {
            let values: Vec<String> = (batch * 100..batch * 100 + 100)
                .map(|k| format!("({k}, 'v{k}')"))
                .collect();
            conn.query_drop(format!(
                "INSERT INTO shop.items (k, v) VALUES {}",
                values.join(",")
            ))
            .await
            .unwrap();
        }
        // Node 2 killed, a row written while it is down, node 2 restarted on its own files
        // (it catches up from node 1); then node 1 killed, so only the restarted node holds
        // group 0.
        c.kill_data_node(2);
        conn.query_drop("REPLACE INTO shop.items (k, v) VALUES (0, 'v0')")
            .await
            .unwrap();
        c.start_data_node(2, false, &[]);
        c.wait_started(&[2]);
        c.kill_data_node(1);
        check_rows(&mut conn).await;
        // Node 3 killed and restarted with --initial: it copies everything from node 4.
        c.kill_data_node(3);
        c.start_data_node(3, true, &[]);
        c.wait_started(&[3]);
        c.kill_data_node(4);
        check_rows(&mut conn).await;
        assert!(
            !c.cluster_log().contains("Forced node shutdown"),
            "{}",
            c.cluster_log()
        );
    });
}

async fn check_rows(conn: &mut Conn) {
    let n: Option<i64> = conn
        .query_first("SELECT COUNT(*) FROM shop.items")
        .await
        .unwrap();
    assert_eq!(n, Some(1000));
    for k in [0, 1, 499, 998, 999] {
        let v: Option<String> = conn
            .query_first(format!("SELECT v FROM shop.items WHERE k = {k}"))
            .await
            .unwrap();
        assert_eq!(v, Some(format!("v{k}")));
    }
}
