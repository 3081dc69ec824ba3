//! `ndb-agent cloud-front`: the one service of an installation that holds the cloud's keys
//! (Terraform, its state and credentials) and creates VMs when a cluster's leader asks,
//! through the VM API of `providers::front`. The VMs it makes carry its address and the
//! cluster's credential, never the keys themselves.
//!
//! Its state lives in `DATA_DIR/clusters/<cluster>/`: the cluster's credential (0600), the
//! cluster CA it hands to the VMs (`tls/`, key 0600), and the Terraform working directory
//! (records, root module, state). Killed at any point and started again on the same
//! directory, it brings Terraform's state in line with its records before it answers.

use crate::cluster::{ensure_cluster_ca, ensure_secret, init_logging};
use agent_core::backend::{BackendError, CloudProvider, ErrorKind, OpId};
use anyhow::Context;
use axum::extract::{Path as UrlPath, Query, Request, State};
use axum::http::{header, StatusCode};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use axum::routing::{delete, get, post};
use axum::{Json, Router};
use providers::front::{CreateVm, ErrorBody, FrontConfig};
use providers::TerraformTarget;
use providers::{ProviderConfig, RuntimeKind, TerraformProvider, TerraformSettings};
use std::path::PathBuf;
use std::sync::Arc;
use tracing::{info, warn};

/// The file of a cluster's credential in its directory.
pub const CREDENTIAL_FILE: &str = "credential";

/// Settings of `ndb-agent cloud-front`.
pub struct FrontOptions {
    /// Where the front listens (`0.0.0.0:9090`).
    pub listen: String,
    /// How the VMs reach the front (`http://10.213.0.1:9090`).
    pub url: String,
    pub data_dir: PathBuf,
    pub cluster: String,
    pub runtime: RuntimeKind,
    /// The `terraform` program.
    pub terraform: PathBuf,
    pub target: TerraformTarget,
}

/// The environment variable that gives a bootstrap agent the cluster's credential.
pub const CREDENTIAL_ENV: &str = "NDB_FRONT_CREDENTIAL";

/// The credential `up --provider front` hands its VMs: NDB_FRONT_CREDENTIAL, else the file.
pub fn client_credential(file: Option<PathBuf>) -> anyhow::Result<String> {
    if let Some(c) = std::env::var(CREDENTIAL_ENV)
        .ok()
        .map(|c| c.trim().to_string())
        .filter(|c| !c.is_empty())
    {
        return Ok(c);
    }
    let Some(file) = file else {
        anyhow::bail!(
            "--provider front needs the cluster's credential: set {CREDENTIAL_ENV} or --front-credential-file (the front wrote it to DATA_DIR/clusters/CLUSTER/{CREDENTIAL_FILE})"
        );
    };
    let c = std::fs::read_to_string(&file)
        .with_context(|| format!("cannot read the cluster's credential {}", file.display()))?;
    let c = c.trim().to_string();
    if c.is_empty() {
        anyhow::bail!(
            "{} is empty; it should hold the cluster's credential",
            file.display()
        );
    }
    Ok(c)
}

/// `ndb-agent down --provider front --remove`: the front deletes every VM of the cluster
/// (their disks with them) and creates none for it from then on.
pub fn down_command(cfg: FrontConfig) -> anyhow::Result<()> {
    let cluster = cfg.cluster.clone();
    let url = cfg.url.clone();
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .context("cannot start the async runtime")?
        .block_on(async {
            let front = providers::FrontProvider::new(cfg).map_err(|e| anyhow::anyhow!("{e}"))?;
            front.delete_cluster().await.map_err(|e| {
                anyhow::anyhow!("the cloud front at {url} did not delete cluster {cluster}: {e}")
            })
        })?;
    println!("cluster {cluster}: every VM deleted by the cloud front at {url}; it makes none for this cluster any more");
    Ok(())
}

/// The cluster directory of `cluster` under the front's data directory.
pub fn cluster_dir(data_dir: &std::path::Path, cluster: &str) -> PathBuf {
    data_dir.join("clusters").join(cluster)
}

#[derive(Clone)]
struct Front {
    cluster: String,
    credential_sha256: String,
    provider: Arc<TerraformProvider>,
}

/// Runs the front until SIGINT or SIGTERM.
pub fn front_command(opts: FrontOptions) -> anyhow::Result<()> {
    init_logging();
    tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .context("cannot start the async runtime")?
        .block_on(run(opts))
}

async fn run(opts: FrontOptions) -> anyhow::Result<()> {
    if opts.target.cluster() != opts.cluster {
        anyhow::bail!(
            "the Terraform target is for cluster {}, the front for {}",
            opts.target.cluster(),
            opts.cluster
        );
    }
    let dir = cluster_dir(&opts.data_dir, &opts.cluster);
    std::fs::create_dir_all(&dir).with_context(|| format!("cannot create {}", dir.display()))?;
    let credential = ensure_secret(&dir, CREDENTIAL_FILE, None)?;
    let ca = ensure_cluster_ca(&dir)?;
    let vm_provider = ProviderConfig::Front(FrontConfig {
        url: opts.url.clone(),
        cluster: opts.cluster.clone(),
        credential: credential.clone(),
    });
    info!(cluster = %opts.cluster, dir = %dir.display(), "opening the Terraform working directory (finishing any apply cut short)");
    let provider = TerraformProvider::open(
        TerraformSettings {
            terraform: opts.terraform.clone(),
            work_dir: dir.join("terraform"),
            target: opts.target.clone(),
        },
        opts.runtime,
        ca,
        vm_provider,
    )
    .await
    .map_err(|e| anyhow::anyhow!("{e}"))?;
    let front = Front {
        cluster: opts.cluster.clone(),
        credential_sha256: agent::api_token::token_sha256(&credential),
        provider: Arc::new(provider),
    };
    let listener = tokio::net::TcpListener::bind(&opts.listen)
        .await
        .with_context(|| format!("cannot listen on {}", opts.listen))?;
    info!(cluster = %opts.cluster, listen = %opts.listen, url = %opts.url, "cloud front serving");
    axum::serve(listener, router(front))
        .with_graceful_shutdown(async {
            let mut term =
                tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()).ok();
            tokio::select! {
                _ = tokio::signal::ctrl_c() => {}
                _ = async { match term.as_mut() { Some(t) => { t.recv().await; } None => std::future::pending::<()>().await } } => {}
            }
            info!("cloud front stopping");
        })
        .await
        .context("the cloud front's server failed")
}

fn router(front: Front) -> Router {
    let vms = Router::new()
        .route("/v1/clusters/{cluster}", delete(delete_cluster))
        .route("/v1/clusters/{cluster}/vms", get(list).post(create))
        .route("/v1/clusters/{cluster}/vms/{vm}", delete(remove))
        .route("/v1/clusters/{cluster}/vms/{vm}/start", post(start))
        .route_layer(axum::middleware::from_fn_with_state(
            front.clone(),
            authorize,
        ));
    Router::new()
        .route("/health", get(|| async { "ok" }))
        .merge(vms)
        .with_state(front)
}

fn refuse(status: StatusCode, message: String) -> Response {
    (
        status,
        Json(ErrorBody {
            kind: ErrorKind::Refused,
            vm: None,
            message,
        }),
    )
        .into_response()
}

/// Only this front's cluster, and only with its credential.
async fn authorize(
    State(front): State<Front>,
    UrlPath(params): UrlPath<Vec<(String, String)>>,
    req: Request,
    next: Next,
) -> Response {
    let cluster = params
        .iter()
        .find(|(k, _)| k == "cluster")
        .map(|(_, v)| v.as_str())
        .unwrap_or_default();
    if cluster != front.cluster {
        return refuse(
            StatusCode::NOT_FOUND,
            format!(
                "this cloud front serves cluster {}, not {cluster}",
                front.cluster
            ),
        );
    }
    let auth = req
        .headers()
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok());
    if let Err(why) = agent::api_token::check(Some(&front.credential_sha256), auth) {
        use agent::api_token::Refusal;
        let what = match why {
            Refusal::Wrong => "wrong credential: it is not this cluster's",
            Refusal::Malformed => "the Authorization header is not `Bearer <credential>`",
            Refusal::Missing | Refusal::NotJoined => "the VM API needs the cluster's credential",
        };
        warn!(cluster, "VM API call refused: {what}");
        return refuse(
            StatusCode::UNAUTHORIZED,
            format!("{what}; the VMs of the cluster hold it in vm.json, the front in DATA_DIR/clusters/{cluster}/{CREDENTIAL_FILE}"),
        );
    }
    next.run(req).await
}

fn failed(e: BackendError) -> Response {
    let status = match e.kind {
        ErrorKind::VmGone => StatusCode::NOT_FOUND,
        ErrorKind::Transient => StatusCode::SERVICE_UNAVAILABLE,
        ErrorKind::Refused => StatusCode::UNPROCESSABLE_ENTITY,
    };
    (status, Json(ErrorBody::from(&e))).into_response()
}

#[derive(serde::Deserialize)]
struct OpQuery {
    #[serde(default)]
    op: u64,
}

async fn delete_cluster(State(front): State<Front>) -> Response {
    info!(cluster = %front.cluster, "delete cluster");
    match front.provider.delete_cluster().await {
        Ok(()) => StatusCode::NO_CONTENT.into_response(),
        Err(e) => failed(e),
    }
}

async fn list(State(front): State<Front>) -> Response {
    match front.provider.list_vms().await {
        Ok(vms) => Json(vms).into_response(),
        Err(e) => failed(e),
    }
}

async fn create(State(front): State<Front>, Json(req): Json<CreateVm>) -> Response {
    info!(cluster = %front.cluster, op = %req.op, vm = %req.spec.name, "create VM");
    match front.provider.create_vm(req.op, &req.spec).await {
        Ok(vm) => Json(vm).into_response(),
        Err(e) => failed(e),
    }
}

async fn remove(
    State(front): State<Front>,
    UrlPath((_, vm)): UrlPath<(String, String)>,
    Query(q): Query<OpQuery>,
) -> Response {
    info!(cluster = %front.cluster, op = %OpId(q.op), %vm, "delete VM");
    match front.provider.delete_vm(OpId(q.op), &vm).await {
        Ok(()) => StatusCode::NO_CONTENT.into_response(),
        Err(e) => failed(e),
    }
}

async fn start(
    State(front): State<Front>,
    UrlPath((_, vm)): UrlPath<(String, String)>,
    Query(q): Query<OpQuery>,
) -> Response {
    info!(cluster = %front.cluster, op = %OpId(q.op), %vm, "start VM");
    match front.provider.start_vm(OpId(q.op), &vm).await {
        Ok(vm) => Json(vm).into_response(),
        Err(e) => failed(e),
    }
}
