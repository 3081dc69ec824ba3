//! The attached suites' MySQL client: one thread writes and reads rows through the MySQL
//! servers for a whole sequence of live operations, reconnecting to another server when one
//! goes away, and records every operation that failed even after that retry, per step.

use mysql_async::prelude::Queryable;
use std::collections::BTreeSet;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

/// What the client saw, per step.
#[derive(Default)]
pub struct Record {
    pub step: String,
    /// Rows written and acknowledged: (key, value).
    pub written: BTreeSet<i64>,
    pub failures: Vec<(String, String)>,
    pub ops: u64,
}

pub struct Client {
    stop: Arc<AtomicBool>,
    pub record: Arc<Mutex<Record>>,
    endpoints: Arc<Mutex<Vec<String>>>,
    thread: Option<std::thread::JoinHandle<()>>,
}

pub fn opts(endpoint: &str) -> mysql_async::Opts {
    let (host, port) = endpoint.rsplit_once(':').unwrap();
    mysql_async::OptsBuilder::default()
        .ip_or_hostname(host.to_string())
        .tcp_port(port.parse().unwrap())
        .user(Some("root"))
        .prefer_socket(false)
        .into()
}

impl Client {
    /// Creates the table, writes `rows` rows, then writes and reads one row at a time
    /// until stopped. An operation that fails is tried once more on another MySQL server;
    /// only a second failure counts.
    pub fn start(endpoints: Vec<String>, rows: i64) -> Client {
        let stop = Arc::new(AtomicBool::new(false));
        let record = Arc::new(Mutex::new(Record {
            step: "create".into(),
            ..Default::default()
        }));
        let endpoints = Arc::new(Mutex::new(endpoints));
        let (s, r, e) = (stop.clone(), record.clone(), endpoints.clone());
        let thread = std::thread::spawn(move || {
            let rt = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .unwrap();
            rt.block_on(async move {
                let first = e.lock().unwrap()[0].clone();
                let mut conn = mysql_async::Conn::new(opts(&first)).await.unwrap();
                conn.query_drop("CREATE DATABASE shop").await.unwrap();
                conn.query_drop(
                    "CREATE TABLE shop.items (k BIGINT PRIMARY KEY, v VARCHAR(32)) ENGINE=NDBCLUSTER",
                )
                .await
                .unwrap();
                for batch in (0..rows).step_by(100) {
                    let values: Vec<String> = (batch..(batch + 100).min(rows))
                        .map(|k| format!("({k}, 'v{k}')"))
                        .collect();
                    conn.query_drop(format!(
                        "INSERT INTO shop.items (k, v) VALUES {}",
                        values.join(",")
                    ))
                    .await
                    .unwrap();
                    r.lock().unwrap().written.extend(batch..(batch + 100).min(rows));
                }
                let mut conn = Some(conn);
                let mut next = 0usize;
                let mut key = 1_000_000i64;
                while !s.load(Ordering::SeqCst) {
                    let mut last_err = String::new();
                    let mut ok = false;
                    for _attempt in 0..2 {
                        if conn.is_none() {
                            let eps = e.lock().unwrap().clone();
                            next += 1;
                            let ep = eps[next % eps.len()].clone();
                            match tokio::time::timeout(Duration::from_secs(5), mysql_async::Conn::new(opts(&ep))).await {
                                Ok(Ok(c)) => conn = Some(c),
                                Ok(Err(err)) => {
                                    last_err = format!("connect {ep}: {err}");
                                    continue;
                                }
                                Err(_) => {
                                    last_err = format!("connect {ep}: timed out");
                                    continue;
                                }
                            }
                        }
                        let c = conn.as_mut().unwrap();
                        let res = async {
                            c.query_drop(format!("INSERT INTO shop.items (k, v) VALUES ({key}, 'v{key}')"))
                                .await?;
                            let v: Option<String> = c
                                .query_first(format!("SELECT v FROM shop.items WHERE k = {key}"))
                                .await?;
                            Ok::<_, mysql_async::Error>(v)
                        };
                        match tokio::time::timeout(Duration::from_secs(20), res).await {
                            Ok(Ok(Some(v))) if v == format!("v{key}") => {
                                ok = true;
                                break;
                            }
                            Ok(Ok(other)) => {
                                last_err = format!("read back {other:?} for key {key}");
                                conn = None;
                            }
                            Ok(Err(err)) => {
                                last_err = err.to_string();
                                conn = None;
                            }
                            Err(_) => {
                                last_err = "no answer within 20 s".into();
                                conn = None;
                            }
                        }
                    }
                    {
                        let mut rec = r.lock().unwrap();
                        rec.ops += 1;
                        if ok {
                            rec.written.insert(key);
                        } else {
                            let step = rec.step.clone();
                            rec.failures.push((step, last_err));
                        }
                    }
                    if !ok {
                        tokio::time::sleep(Duration::from_millis(100)).await;
                    }
                    key += 1;
                }
            });
        });
        Client {
            stop,
            record,
            endpoints,
            thread: Some(thread),
        }
    }

    pub fn step(&self, name: &str) {
        self.record.lock().unwrap().step = name.to_string();
    }

    pub fn set_endpoints(&self, eps: Vec<String>) {
        if !eps.is_empty() {
            *self.endpoints.lock().unwrap() = eps;
        }
    }

    pub fn failures_in(&self, step: &str) -> Vec<String> {
        self.record
            .lock()
            .unwrap()
            .failures
            .iter()
            .filter(|(s, _)| s == step)
            .map(|(_, e)| e.clone())
            .collect()
    }

    pub fn finish(mut self) -> Record {
        self.stop.store(true, Ordering::SeqCst);
        if let Some(t) = self.thread.take() {
            t.join().unwrap();
        }
        std::mem::take(&mut *self.record.lock().unwrap())
    }
}

/// Every acknowledged row is there, read through a MySQL server.
pub fn check_rows(endpoints: &[String], written: &BTreeSet<i64>) -> usize {
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    rt.block_on(async {
        let mut conn = mysql_async::Conn::new(opts(&endpoints[0])).await.unwrap();
        let rows: Vec<(i64, String)> = conn.query("SELECT k, v FROM shop.items").await.unwrap();
        let have: BTreeSet<i64> = rows
            .iter()
            .filter(|(k, v)| *v == format!("v{k}"))
            .map(|(k, _)| *k)
            .collect();
        written.difference(&have).count()
    })
}
