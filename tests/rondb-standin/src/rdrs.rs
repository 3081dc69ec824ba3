//! `rdrs2`: RonDB's REST API server as a control plane sees it. It takes real rdrs2's
//! `-config FILE` (JSON: `REST.ServerIP/ServerPort`, `RonDB.Mgmds`, `RonDB.NodeIDs`,
//! `RonDB.ConnectionPoolSize`) and the control plane's `--ndb-connectstring` /
//! `--ndb-nodeids` command line, listens at once (so probes get 503 until it is ready, as a
//! real rdrs2 does while its cluster connection comes up), joins the cluster as API node(s)
//! and serves `/health` and primary-key reads. Unlike `mysqld` it does not wait for the
//! cluster before listening: rdrs2 readiness is its health endpoint.

use crate::cluster::{ApiNode, ClusterError};
use crate::mgm::ConnectString;
use crate::version::Version;
use axum::extract::{Path as UrlPath, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Json, Router};
use serde_json::{json, Value};
use std::sync::Arc;
use std::time::Duration;
use tokio::signal::unix::{signal, SignalKind};
use tokio::sync::RwLock;

/// rdrs2's default REST port.
pub const DEFAULT_PORT: u16 = 4406;

/// What rdrs2 runs with.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Settings {
    pub bind: String,
    pub port: u16,
    pub connectstring: String,
    /// One entry per pooled cluster connection (`None`: any free API slot).
    pub node_ids: Vec<Option<u32>>,
}

fn usage() -> String {
    "Usage of rdrs2:\n  -config string\n    \tConfiguration file path\n  \
     --ndb-connectstring string\n    \tManagement server(s), host:port[,host:port]\n  \
     --ndb-nodeids string\n    \tAPI node ids, comma separated\n  \
     --rest-bind string\n    \tip:port to serve REST on (overrides the config file)\n  \
     -version\n    \tPrint the version and exit"
        .to_string()
}

/// Reads the fields of real rdrs2's config file that the stand-in uses.
fn apply_config(s: &mut Settings, text: &str) -> Result<(), String> {
    let v: Value = serde_json::from_str(text).map_err(|e| format!("invalid config: {e}"))?;
    if let Some(rest) = v.get("REST") {
        if let Some(ip) = rest.get("ServerIP").and_then(Value::as_str) {
            s.bind = ip.to_string();
        }
        if let Some(p) = rest.get("ServerPort").and_then(Value::as_u64) {
            s.port = u16::try_from(p).map_err(|_| format!("REST.ServerPort {p} out of range"))?;
        }
    }
    if let Some(r) = v.get("RonDB") {
        if let Some(mgmds) = r.get("Mgmds").and_then(Value::as_array) {
            let hosts: Vec<String> = mgmds
                .iter()
                .map(|m| {
                    let ip = m.get("IP").and_then(Value::as_str).unwrap_or("localhost");
                    let port = m.get("Port").and_then(Value::as_u64).unwrap_or(1186);
                    format!("{ip}:{port}")
                })
                .collect();
            if !hosts.is_empty() {
                s.connectstring = hosts.join(",");
            }
        }
        let ids: Vec<Option<u32>> = r
            .get("NodeIDs")
            .and_then(Value::as_array)
            .map(|a| {
                a.iter()
                    .filter_map(Value::as_u64)
                    .filter_map(|n| u32::try_from(n).ok())
                    .map(Some)
                    .collect()
            })
            .unwrap_or_default();
        let pool = r
            .get("ConnectionPoolSize")
            .and_then(Value::as_u64)
            .unwrap_or(1)
            .max(1) as usize;
        if !ids.is_empty() {
            if r.get("ConnectionPoolSize").is_some() && ids.len() != pool {
                return Err(format!(
                    "RonDB.NodeIDs lists {} node ids but RonDB.ConnectionPoolSize is {pool}",
                    ids.len()
                ));
            }
            s.node_ids = ids;
        } else {
            s.node_ids = vec![None; pool];
        }
    }
    Ok(())
}

/// `Ok(None)`: `-version` was asked for.
pub fn settings(args: &[String]) -> Result<Option<Settings>, (i32, String)> {
    let mut s = Settings {
        bind: "0.0.0.0".into(),
        port: DEFAULT_PORT,
        connectstring: "localhost:1186".into(),
        node_ids: vec![None],
    };
    let mut config = None;
    let mut cs = None;
    let mut ids = None;
    let mut rest_bind = None;
    let mut i = 0;
    while i < args.len() {
        let a = &args[i];
        i += 1;
        let name = a.trim_start_matches('-');
        if name.len() == a.len() {
            return Err((2, format!("unexpected argument '{a}'\n{}", usage())));
        }
        let (name, inline) = match name.split_once('=') {
            Some((n, v)) => (n, Some(v.to_string())),
            None => (name, None),
        };
        if matches!(name, "version" | "v") {
            return Ok(None);
        }
        let slot = match name {
            "config" => &mut config,
            "ndb-connectstring" | "ndb_connectstring" | "connect-string" => &mut cs,
            "ndb-nodeids" | "ndb_nodeids" => &mut ids,
            "rest-bind" => &mut rest_bind,
            "h" | "help" => return Err((0, usage())),
            _ => {
                return Err((
                    2,
                    format!("flag provided but not defined: -{name}\n{}", usage()),
                ))
            }
        };
        let v = match inline {
            Some(v) => v,
            None => match args.get(i) {
                Some(v) => {
                    i += 1;
                    v.clone()
                }
                None => return Err((2, format!("flag needs an argument: -{name}\n{}", usage()))),
            },
        };
        *slot = Some(v);
    }
    if let Some(f) = config {
        let text = std::fs::read_to_string(&f)
            .map_err(|e| (1, format!("failed to read config file '{f}': {e}")))?;
        apply_config(&mut s, &text).map_err(|e| (1, e))?;
    }
    if let Some(cs) = cs {
        s.connectstring = cs;
    }
    if let Some(ids) = ids {
        s.node_ids = ids
            .split(',')
            .map(str::trim)
            .filter(|x| !x.is_empty())
            .map(|x| {
                x.parse::<u32>()
                    .map(Some)
                    .map_err(|_| (2, format!("invalid node id '{x}' in --ndb-nodeids")))
            })
            .collect::<Result<_, _>>()?;
        if s.node_ids.is_empty() {
            s.node_ids = vec![None];
        }
    }
    if let Some(b) = rest_bind {
        let (ip, port) = b
            .rsplit_once(':')
            .ok_or_else(|| (2, format!("--rest-bind '{b}' is not ip:port")))?;
        s.port = port
            .parse()
            .map_err(|_| (2, format!("--rest-bind '{b}' has a bad port")))?;
        s.bind = ip.trim_matches(['[', ']']).to_string();
    }
    Ok(Some(s))
}

fn log(level: &str, text: &str) {
    eprintln!("{} {level:<5} {text}", crate::logging::timestamp());
}

#[derive(Default)]
struct AppState {
    nodes: RwLock<Vec<Arc<ApiNode>>>,
}

impl AppState {
    /// Connected, and every node group has a started data node.
    async fn node(&self) -> Option<Arc<ApiNode>> {
        let nodes = self.nodes.read().await;
        nodes.iter().find(|n| n.ready()).cloned()
    }
}

/// rdrs2 answers the bare number 1 when its cluster connection is up.
async fn health(State(st): State<Arc<AppState>>) -> Response {
    let healthy = {
        let nodes = st.nodes.read().await;
        !nodes.is_empty() && nodes.iter().all(|n| n.ready())
    };
    if healthy {
        (StatusCode::OK, "1").into_response()
    } else {
        (StatusCode::SERVICE_UNAVAILABLE, "0").into_response()
    }
}

async fn health_versioned(
    State(st): State<Arc<AppState>>,
    UrlPath(_version): UrlPath<String>,
) -> Response {
    health(State(st)).await
}

fn error(status: StatusCode, message: impl Into<String>) -> Response {
    let message = message.into();
    (
        status,
        Json(json!({"code": status.as_u16(), "message": message})),
    )
        .into_response()
}

fn cluster_error(e: ClusterError) -> Response {
    match e {
        ClusterError::NoSuchTable(_) | ClusterError::NoSuchDatabase(_) => {
            error(StatusCode::NOT_FOUND, e.to_string())
        }
        ClusterError::ClusterFailure | ClusterError::Mgm(_) | ClusterError::NodeId(_) => error(
            StatusCode::SERVICE_UNAVAILABLE,
            ClusterError::ClusterFailure.to_string(),
        ),
        other => error(StatusCode::INTERNAL_SERVER_ERROR, other.to_string()),
    }
}

/// `POST /{version}/{db}/{table}/pk-read`.
async fn pk_read(
    State(st): State<Arc<AppState>>,
    UrlPath((_version, db, table)): UrlPath<(String, String, String)>,
    body: axum::body::Bytes,
) -> Response {
    let req: Value = match serde_json::from_slice(&body) {
        Ok(v) => v,
        Err(e) => {
            return error(
                StatusCode::BAD_REQUEST,
                format!("invalid request body: {e}"),
            )
        }
    };
    let Some(node) = st.node().await else {
        return cluster_error(ClusterError::ClusterFailure);
    };
    let def = match node.table(&db, &table).await {
        Ok(d) => d,
        Err(e) => return cluster_error(e),
    };
    let filters = req.get("filters").and_then(Value::as_array);
    let key = match filters.map(Vec::as_slice) {
        Some([f]) => {
            let col = f.get("column").and_then(Value::as_str).unwrap_or("");
            if col != def.key_column {
                return error(
                    StatusCode::BAD_REQUEST,
                    format!(
                        "filters must name the primary key column '{}', not '{col}'",
                        def.key_column
                    ),
                );
            }
            let v = f.get("value");
            match v
                .and_then(Value::as_i64)
                .or_else(|| v.and_then(Value::as_str).and_then(|s| s.parse().ok()))
            {
                Some(k) => k,
                None => {
                    return error(
                        StatusCode::BAD_REQUEST,
                        format!("filter value for '{col}' is not an integer"),
                    )
                }
            }
        }
        _ => {
            return error(
                StatusCode::BAD_REQUEST,
                format!(
                    "filters must hold exactly the primary key column '{}'",
                    def.key_column
                ),
            )
        }
    };
    let mut columns = Vec::new();
    match req.get("readColumns").and_then(Value::as_array) {
        None => {
            columns.push(def.key_column.clone());
            columns.push(def.value_column.clone());
        }
        Some(cols) => {
            for c in cols {
                let name = c.get("column").and_then(Value::as_str).unwrap_or("");
                if name != def.key_column && name != def.value_column {
                    return error(
                        StatusCode::BAD_REQUEST,
                        format!("unknown column '{name}' in readColumns"),
                    );
                }
                columns.push(name.to_string());
            }
        }
    }
    let row = match node.get(&db, &table, key).await {
        Ok(Some(v)) => v,
        Ok(None) => return error(StatusCode::NOT_FOUND, "Not Found"),
        Err(e) => return cluster_error(e),
    };
    let mut data = serde_json::Map::new();
    for c in columns {
        let v = if c == def.key_column {
            json!(key)
        } else {
            row.clone().map(Value::String).unwrap_or(Value::Null)
        };
        data.insert(c, v);
    }
    let mut out = serde_json::Map::new();
    if let Some(id) = req.get("operationId") {
        out.insert("operationId".into(), id.clone());
    }
    out.insert("data".into(), Value::Object(data));
    (StatusCode::OK, Json(Value::Object(out))).into_response()
}

/// The REST routes.
fn router(st: Arc<AppState>) -> Router {
    Router::new()
        .route("/health", get(health))
        .route("/{version}/health", get(health_versioned))
        .route("/{version}/{db}/{table}/pk-read", post(pk_read))
        .with_state(st)
}

/// Joins the cluster in the background, retrying while the management server refuses.
async fn connect(st: Arc<AppState>, s: Settings) {
    let cs = match ConnectString::parse(&s.connectstring) {
        Ok(cs) => cs,
        Err(e) => {
            log("ERROR", &e.to_string());
            return;
        }
    };
    for (i, id) in s.node_ids.iter().enumerate() {
        let mut delay = Duration::from_millis(100);
        let mut last = String::new();
        let node = loop {
            match ApiNode::connect(&cs, *id, "rdrs2").await {
                Ok(n) => break n,
                Err(e) => {
                    let why = e.to_string();
                    if why != last {
                        log(
                            "WARN",
                            &format!(
                                "connection {i}: cannot connect to RonDB at '{}': {why}; retrying",
                                s.connectstring
                            ),
                        );
                        last = why;
                    }
                    tokio::time::sleep(delay).await;
                    delay = (delay * 2).min(Duration::from_secs(2));
                }
            }
        };
        log(
            "INFO",
            &format!(
                "connection {i}: connected to RonDB as node id {}",
                node.node_id()
            ),
        );
        st.nodes.write().await.push(Arc::new(node));
    }
}

pub async fn main(args: Vec<String>) -> i32 {
    let s = match settings(&args) {
        Ok(Some(s)) => s,
        Ok(None) => {
            println!("rdrs2 version: RonDB-{}", Version::current());
            return 0;
        }
        Err((code, text)) => {
            eprintln!("{text}");
            return code;
        }
    };
    let mut term = match signal(SignalKind::terminate()) {
        Ok(t) => t,
        Err(e) => {
            log("ERROR", &format!("cannot handle SIGTERM: {e}"));
            return 1;
        }
    };
    let mut int = match signal(SignalKind::interrupt()) {
        Ok(t) => t,
        Err(e) => {
            log("ERROR", &format!("cannot handle SIGINT: {e}"));
            return 1;
        }
    };
    let addr = format!("{}:{}", s.bind, s.port);
    let listener = match tokio::net::TcpListener::bind((s.bind.as_str(), s.port)).await {
        Ok(l) => l,
        Err(e) => {
            log(
                "ERROR",
                &format!("failed to start REST server on {addr}: {e}"),
            );
            return 1;
        }
    };
    let st = Arc::new(AppState::default());
    let joiner = tokio::spawn(connect(st.clone(), s.clone()));
    log(
        "INFO",
        &format!(
            "RonDB REST API server RonDB-{} listening on {addr}",
            Version::current()
        ),
    );
    let served = axum::serve(listener, router(st))
        .with_graceful_shutdown(async move {
            tokio::select! {
                _ = term.recv() => {}
                _ = int.recv() => {}
            }
        })
        .await;
    joiner.abort();
    match served {
        Ok(()) => {
            log("INFO", "received signal, REST server stopped");
            0
        }
        Err(e) => {
            log("ERROR", &format!("REST server failed: {e}"));
            1
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn args(a: &[&str]) -> Vec<String> {
        a.iter().map(|s| s.to_string()).collect()
    }

    #[test]
    fn takes_the_control_planes_command_line() {
        let s = settings(&args(&[
            "--ndb-connectstring=10.0.0.1:1186,10.0.0.2:1186",
            "--ndb-nodeids=195,196",
        ]))
        .unwrap()
        .unwrap();
        assert_eq!(s.connectstring, "10.0.0.1:1186,10.0.0.2:1186");
        assert_eq!(s.node_ids, vec![Some(195), Some(196)]);
        assert_eq!(s.port, DEFAULT_PORT);
        let s = settings(&args(&["--rest-bind", "127.0.0.9:5000"]))
            .unwrap()
            .unwrap();
        assert_eq!((s.bind.as_str(), s.port), ("127.0.0.9", 5000));
        let e = settings(&args(&["-bogus"])).unwrap_err();
        assert_eq!(e.0, 2);
        assert!(e.1.starts_with("flag provided but not defined: -bogus"));
    }

    #[test]
    fn reads_real_rdrs2_config_files() {
        let dir = tempfile::tempdir().unwrap();
        let f = dir.path().join("rest_api.json");
        std::fs::write(
            &f,
            r#"{"REST": {"Enable": true, "ServerIP": "127.0.0.5", "ServerPort": 4407},
                "RonDB": {"Mgmds": [{"IP": "mgmd_1", "Port": 1186}, {"IP": "mgmd_2", "Port": 1187}],
                          "ConnectionPoolSize": 1, "NodeIDs": [195]}}"#,
        )
        .unwrap();
        let s = settings(&args(&["-config", &f.display().to_string()]))
            .unwrap()
            .unwrap();
        assert_eq!(
            s,
            Settings {
                bind: "127.0.0.5".into(),
                port: 4407,
                connectstring: "mgmd_1:1186,mgmd_2:1187".into(),
                node_ids: vec![Some(195)],
            }
        );
        // The command line wins over the file.
        let s = settings(&args(&[
            &format!("-config={}", f.display()),
            "--ndb-connectstring=h:1",
        ]))
        .unwrap()
        .unwrap();
        assert_eq!(s.connectstring, "h:1");
        std::fs::write(&f, "{not json").unwrap();
        assert_eq!(
            settings(&args(&["-config", &f.display().to_string()]))
                .unwrap_err()
                .0,
            1
        );
    }

    #[tokio::test]
    async fn is_unhealthy_until_connected() {
        let st = Arc::new(AppState::default());
        let r = health(State(st)).await;
        assert_eq!(r.status(), StatusCode::SERVICE_UNAVAILABLE);
    }
}
