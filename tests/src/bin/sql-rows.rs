//! A MySQL client for the smoke scripts: what a user of README command 1 does by hand with
//! `mysql`, without needing one installed.
//!
//!   sql-rows write ENDPOINT FROM TO   rows FROM..TO into shop.items (table made if missing)
//!   sql-rows check ENDPOINT TO        every row 0..TO is there with its value, nothing else
//!
//! ENDPOINT is `host:port` (one of `ndb-agent status`'s MySQL servers). Exit 0 on success,
//! 1 with what differs, 2 on bad arguments.

use mysql_async::prelude::Queryable;
use std::process::ExitCode;

fn opts(endpoint: &str) -> Result<mysql_async::Opts, String> {
    let (host, port) = endpoint
        .rsplit_once(':')
        .ok_or_else(|| format!("{endpoint:?} is not host:port"))?;
    let port: u16 = port
        .parse()
        .map_err(|_| format!("{endpoint:?}: {port:?} is not a port"))?;
    Ok(mysql_async::OptsBuilder::default()
        .ip_or_hostname(host.to_string())
        .tcp_port(port)
        .user(Some("root"))
        .prefer_socket(false)
        .into())
}

fn number(s: &str) -> Result<i64, String> {
    s.parse().map_err(|_| format!("{s:?} is not a row number"))
}

async fn write(endpoint: &str, from: i64, to: i64) -> Result<String, String> {
    let mut c = mysql_async::Conn::new(opts(endpoint)?)
        .await
        .map_err(|e| format!("cannot connect to {endpoint}: {e}"))?;
    c.query_drop("CREATE DATABASE IF NOT EXISTS shop")
        .await
        .map_err(|e| e.to_string())?;
    c.query_drop(
        "CREATE TABLE IF NOT EXISTS shop.items (k BIGINT PRIMARY KEY, v VARCHAR(32)) ENGINE=NDBCLUSTER",
    )
    .await
    .map_err(|e| e.to_string())?;
    let mut k = from;
    while k < to {
        let end = (k + 100).min(to);
        let values: Vec<String> = (k..end).map(|i| format!("({i}, 'v{i}')")).collect();
        c.query_drop(format!(
            "INSERT INTO shop.items (k, v) VALUES {}",
            values.join(",")
        ))
        .await
        .map_err(|e| format!("writing rows {k}..{end} through {endpoint}: {e}"))?;
        k = end;
    }
    Ok(format!("{} rows written through {endpoint}", to - from))
}

async fn check(endpoint: &str, to: i64) -> Result<String, String> {
    let mut c = mysql_async::Conn::new(opts(endpoint)?)
        .await
        .map_err(|e| format!("cannot connect to {endpoint}: {e}"))?;
    let rows: Vec<(i64, String)> = c
        .query("SELECT k, v FROM shop.items")
        .await
        .map_err(|e| format!("reading shop.items through {endpoint}: {e}"))?;
    let got: std::collections::BTreeMap<i64, String> = rows.into_iter().collect();
    let missing: Vec<i64> = (0..to).filter(|k| !got.contains_key(k)).collect();
    let wrong: Vec<i64> = got
        .iter()
        .filter(|(k, v)| **k < to && **v != format!("v{k}"))
        .map(|(k, _)| *k)
        .collect();
    let extra: Vec<i64> = got
        .keys()
        .filter(|k| **k < 0 || **k >= to)
        .copied()
        .collect();
    if missing.is_empty() && wrong.is_empty() && extra.is_empty() {
        Ok(format!("all {to} rows read back through {endpoint}"))
    } else {
        Err(format!(
            "through {endpoint}: {} row(s) missing (first {:?}), {} with a wrong value (first {:?}), {} unexpected (first {:?})",
            missing.len(),
            missing.first(),
            wrong.len(),
            wrong.first(),
            extra.len(),
            extra.first()
        ))
    }
}

fn main() -> ExitCode {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let usage = "usage: sql-rows write ENDPOINT FROM TO | sql-rows check ENDPOINT TO";
    let rt = match tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("sql-rows: cannot start the async runtime: {e}");
            return ExitCode::from(1);
        }
    };
    let result = match args.iter().map(String::as_str).collect::<Vec<_>>()[..] {
        ["write", ep, from, to] => match (number(from), number(to)) {
            (Ok(f), Ok(t)) => rt.block_on(write(ep, f, t)),
            (Err(e), _) | (_, Err(e)) => {
                eprintln!("sql-rows: {e}\n{usage}");
                return ExitCode::from(2);
            }
        },
        ["check", ep, to] => match number(to) {
            Ok(t) => rt.block_on(check(ep, t)),
            Err(e) => {
                eprintln!("sql-rows: {e}\n{usage}");
                return ExitCode::from(2);
            }
        },
        _ => {
            eprintln!("{usage}");
            return ExitCode::from(2);
        }
    };
    match result {
        Ok(msg) => {
            println!("{msg}");
            ExitCode::SUCCESS
        }
        Err(e) => {
            eprintln!("sql-rows: {e}");
            ExitCode::from(1)
        }
    }
}
