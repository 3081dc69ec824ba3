//! `ndb-agent cloud-front`: the one service of an installation that holds the cloud's keys
//! (the Docker socket, or Terraform with its state and credentials) and creates VMs when a
//! cluster's leader asks, through the VM API of `providers::front`. The VMs it makes carry
//! its address and the cluster's credential, never the keys themselves.
//!
//! Its state lives in `DATA_DIR/clusters/<cluster>/`: the cluster's credential (0600), the
//! cluster CA it hands to the VMs (`tls/`, key 0600), and for Terraform the working
//! directory (records, root module, state). Killed at any point and started again on the
//! same directory, it brings Terraform's state in line with its records before it answers;
//! the docker provider keeps no state but Docker's own.

use crate::cluster::{ensure_cluster_ca, ensure_secret, init_logging};
use agent_core::backend::{BackendError, CloudProvider, ErrorKind, OpId};
use anyhow::Context;
use axum::extract::{Path as UrlPath, Query, Request, State};
use axum::http::{header, StatusCode};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use axum::routing::{delete, get, post, put};
use axum::{Json, Router};
use providers::front::{CreateVm, ErrorBody, FrontConfig};
use providers::{DockerConfig, DockerProvider, TerraformTarget};
use providers::{ProviderConfig, RuntimeKind, TerraformProvider, TerraformSettings};
use std::path::PathBuf;
use std::sync::Arc;
use tracing::{info, warn};

/// The file of a cluster's credential in its directory.
pub const CREDENTIAL_FILE: &str = "credential";
/// The file of the credential the front writes into the VMs' configuration. It opens the VM
/// calls a leader needs (list, create, start, delete a VM) and nothing else: not the CA,
/// not deleting the cluster. A VM's configuration is read by more parties than the
/// bootstrap's data directory (Terraform's state, cloud metadata).
pub const VM_CREDENTIAL_FILE: &str = "vm-credential";

/// Settings of `ndb-agent cloud-front`.
pub struct FrontOptions {
    /// Where the front listens (`0.0.0.0:9090`).
    pub listen: String,
    /// How the VMs reach the front (`https://10.213.0.1:9090`: HTTPS beyond loopback).
    pub url: String,
    pub data_dir: PathBuf,
    pub cluster: String,
    pub runtime: RuntimeKind,
    pub backend: BackendOptions,
    /// A desired-state file to apply and follow, with the cluster's API token.
    pub follow: Option<(PathBuf, String)>,
}

/// Which real provider the front runs.
pub enum BackendOptions {
    /// Containers made directly through the Docker socket.
    Docker(DockerConfig),
    /// Resources of one Terraform root module.
    Terraform {
        /// The `terraform` program.
        terraform: PathBuf,
        target: TerraformTarget,
    },
}

impl BackendOptions {
    fn cluster(&self) -> &str {
        match self {
            BackendOptions::Docker(c) => &c.cluster,
            BackendOptions::Terraform { target, .. } => target.cluster(),
        }
    }
}

/// The provider the front runs, with what deleting the whole cluster means for it.
enum Backend {
    Docker {
        provider: Box<DockerProvider>,
        /// Present once the cluster was deleted: no VM is made for it again.
        deleted_marker: PathBuf,
    },
    Terraform(TerraformProvider),
}

impl Backend {
    fn provider(&self) -> &dyn CloudProvider {
        match self {
            Backend::Docker { provider, .. } => provider.as_ref(),
            Backend::Terraform(p) => p,
        }
    }

    fn deleted(&self) -> bool {
        match self {
            Backend::Docker { deleted_marker, .. } => deleted_marker.exists(),
            Backend::Terraform(p) => p.cluster_deleted(),
        }
    }

    async fn delete_cluster(&self) -> Result<(), BackendError> {
        match self {
            Backend::Docker {
                provider,
                deleted_marker,
            } => {
                // The marker first: a creation racing the deletion is refused from now on.
                providers::local::write_synced(deleted_marker, b"").map_err(|e| {
                    BackendError::refused(format!("cannot write {}: {e}", deleted_marker.display()))
                })?;
                provider.delete_every_vm().await
            }
            Backend::Terraform(p) => p.delete_cluster().await,
        }
    }
}

/// The environment variable that gives a bootstrap agent the cluster's credential.
pub const CREDENTIAL_ENV: &str = "NDB_FRONT_CREDENTIAL";

/// The credential `up --provider front` and `down --provider front` send: NDB_FRONT_CREDENTIAL,
/// else the file. The file may not exist yet when the front starts beside the caller (the
/// Docker demo starts both at once): it is waited for, at most `patience`.
pub fn client_credential(
    file: Option<PathBuf>,
    patience: std::time::Duration,
) -> anyhow::Result<String> {
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
    read_front_file(&file, "the cluster's credential", patience, |c| {
        !c.trim().is_empty()
    })
    .map(|c| c.trim().to_string())
}

/// Where `up --provider docker` keeps the credential it gave the front container, in its
/// data directory (0600), so a restarted bootstrap agent still holds it.
pub const BOOTSTRAP_CREDENTIAL_FILE: &str = "front-credential";

/// The credential `up --provider docker` gives the front container it starts: the one it
/// gave before, else a new one.
pub fn bootstrap_credential(data_dir: &std::path::Path) -> anyhow::Result<String> {
    std::fs::create_dir_all(data_dir)
        .with_context(|| format!("cannot create {}", data_dir.display()))?;
    ensure_secret(data_dir, BOOTSTRAP_CREDENTIAL_FILE, None)
}

/// `up --provider docker`: starts the cluster's front container (or starts it again, or
/// uses it) and returns the provider the bootstrap agent and its VMs use (that front), with
/// the cluster CA's certificate its HTTPS is checked against.
pub fn start_front_container(
    f: providers::docker::FrontContainer,
) -> anyhow::Result<(ProviderConfig, String)> {
    let endpoint = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .context("cannot start the async runtime")?
        .block_on(providers::docker::ensure_front(&f))
        .map_err(|e| {
            anyhow::anyhow!(
                "cannot start the cloud front container {}: {e}",
                f.container_name()
            )
        })?;
    println!(
        "cloud front: container {} at {} (the only container holding the Docker socket)",
        f.container_name(),
        endpoint.url
    );
    Ok((
        ProviderConfig::Front(FrontConfig {
            url: endpoint.url,
            cluster: f.cfg.cluster,
            credential: f.credential,
        }),
        endpoint.ca_cert_pem,
    ))
}

/// The environment variable naming the file of the cluster CA a client checks the front's
/// HTTPS against.
pub const CA_FILE_ENV: &str = "NDB_FRONT_CA_FILE";

/// A client of the cloud front: HTTPS checked against the cluster CA (`ca_cert_pem`),
/// plain HTTP only for a front on loopback. A URL that cannot work is refused here, with
/// what to give instead, rather than failing its first call obscurely.
pub fn front_provider(
    cfg: FrontConfig,
    ca_cert_pem: Option<&str>,
) -> anyhow::Result<providers::FrontProvider> {
    if front_url_scheme(&cfg.url)? == Scheme::Https && ca_cert_pem.is_none() {
        return Err(no_ca_given(&cfg.url));
    }
    let http = agent::https::client_builder(ca_cert_pem)?;
    providers::FrontProvider::new(cfg, http).map_err(|e| anyhow::anyhow!("{e}"))
}

fn no_ca_given(url: &str) -> anyhow::Error {
    anyhow::anyhow!(
        "the cloud front at {url} is HTTPS: give the cluster CA it was made with (--front-ca-file or {CA_FILE_ENV}; the front wrote it to DATA_DIR/clusters/CLUSTER/tls/ca.pem)"
    )
}

/// The URL of a front as a VM configured by an older version names it: such a front
/// beyond loopback named `http://` serves `https://` now, and the VM checks it against the
/// CA it holds anyway.
pub fn front_url_of_old_vm(url: &str) -> String {
    match url.strip_prefix("http://") {
        Some(rest) if agent::https::is_https(authority(rest)) => format!("https://{rest}"),
        _ => url.to_string(),
    }
}

/// The `host:port` of a URL without its scheme.
fn authority(rest: &str) -> &str {
    rest.split('/').next().unwrap_or(rest)
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Scheme {
    Http,
    Https,
}

/// A front that listens beyond loopback serves HTTPS only, and one on loopback plain HTTP.
/// So `http://` cannot reach a front at an address beyond loopback; `https://` may name
/// loopback (a front listening on every interface is reached there too).
fn front_url_scheme(url: &str) -> anyhow::Result<Scheme> {
    if url.starts_with("https://") {
        return Ok(Scheme::Https);
    }
    if let Some(rest) = url.strip_prefix("http://") {
        let authority = authority(rest);
        if agent::https::is_https(authority) {
            anyhow::bail!(
                "the cloud front at {url} is beyond loopback, where it serves HTTPS only: use https://{authority}"
            );
        }
        return Ok(Scheme::Http);
    }
    anyhow::bail!("the cloud front URL {url} is not an http:// or https:// URL")
}

/// The cluster CA a client of the front at `url` checks it against: none for a front on
/// loopback; else `file` (`--front-ca-file`), or the `tls/ca.pem` beside the credential
/// file, as the front keeps them in its cluster directory. The file may not exist yet when
/// the front starts beside the caller: it is waited for, at most `patience`.
pub fn client_ca(
    url: &str,
    file: Option<PathBuf>,
    credential_file: Option<&std::path::Path>,
    patience: std::time::Duration,
) -> anyhow::Result<Option<String>> {
    if front_url_scheme(url)? == Scheme::Http {
        return Ok(None);
    }
    let file = file.or_else(|| {
        credential_file
            .and_then(|c| c.parent())
            .map(|d| d.join("tls").join("ca.pem"))
    });
    let Some(file) = file else {
        return Err(no_ca_given(url));
    };
    read_front_file(&file, "the cluster CA", patience, |pem| {
        pem.contains("-----END CERTIFICATE-----")
    })
    .map(Some)
}

/// Reads a file the front writes when it first starts (the credential, the CA). It may not
/// exist yet when the front starts beside the caller (the Docker demo starts both at once):
/// it is waited for, at most `patience`. `complete` says whether it holds `what` yet.
fn read_front_file(
    file: &std::path::Path,
    what: &str,
    patience: std::time::Duration,
    complete: impl Fn(&str) -> bool,
) -> anyhow::Result<String> {
    let deadline = std::time::Instant::now() + patience;
    let mut told = false;
    loop {
        match std::fs::read_to_string(file) {
            Ok(c) if complete(&c) => return Ok(c),
            Ok(_) | Err(_) if std::time::Instant::now() < deadline => {
                if !told {
                    println!(
                        "waiting for the cloud front to write {what} {}",
                        file.display()
                    );
                    told = true;
                }
                std::thread::sleep(std::time::Duration::from_millis(250));
            }
            Ok(_) => anyhow::bail!("{} does not hold {what}", file.display()),
            Err(e) => {
                return Err(e).with_context(|| {
                    format!(
                        "cannot read {what} {} (is the cloud front running?)",
                        file.display()
                    )
                })
            }
        }
    }
}

/// `ndb-agent down --provider front --remove`: the front deletes every VM of the cluster
/// (their disks with them) and creates none for it from then on.
pub fn down_command(cfg: FrontConfig, ca_cert_pem: Option<&str>) -> anyhow::Result<()> {
    let cluster = cfg.cluster.clone();
    let url = cfg.url.clone();
    let front = front_provider(cfg, ca_cert_pem)?;
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .context("cannot start the async runtime")?
        .block_on(async {
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
    vm_credential_sha256: String,
    backend: Arc<Backend>,
    ca: agent_core::backend::ClusterCa,
    /// Forwards the users' API calls to the cluster's agents.
    client: reqwest::Client,
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
    if opts.backend.cluster() != opts.cluster {
        anyhow::bail!(
            "the provider's settings are for cluster {}, the front for {}",
            opts.backend.cluster(),
            opts.cluster
        );
    }
    // Beyond loopback the cluster's credential crosses a network: HTTPS only, as the agents'
    // API. The URL the VMs are given must say so.
    let tls = agent::https::is_https(&opts.listen);
    if tls != (front_url_scheme(&opts.url)? == Scheme::Https) {
        unreachable_scheme(&opts)?;
    }
    let dir = cluster_dir(&opts.data_dir, &opts.cluster);
    std::fs::create_dir_all(&dir).with_context(|| format!("cannot create {}", dir.display()))?;
    // `up --provider docker` starts the front with the credential it made.
    let credential = ensure_secret(&dir, CREDENTIAL_FILE, std::env::var(CREDENTIAL_ENV).ok())?;
    let ca = ensure_cluster_ca(&dir)?;
    let vm_credential = ensure_secret(&dir, VM_CREDENTIAL_FILE, None)?;
    let vm_provider = ProviderConfig::Front(FrontConfig {
        url: opts.url.clone(),
        cluster: opts.cluster.clone(),
        credential: vm_credential.clone(),
    });
    let backend = match opts.backend {
        BackendOptions::Docker(cfg) => Backend::Docker {
            provider: Box::new(
                DockerProvider::new(cfg, opts.runtime, ca.cert_pem.clone(), vm_provider)
                    .map_err(|e| anyhow::anyhow!("{e}"))?,
            ),
            deleted_marker: dir.join("cluster-deleted"),
        },
        BackendOptions::Terraform { terraform, target } => {
            info!(cluster = %opts.cluster, dir = %dir.display(), "opening the Terraform working directory (finishing any apply cut short)");
            Backend::Terraform(
                TerraformProvider::open(
                    TerraformSettings {
                        terraform,
                        work_dir: dir.join("terraform"),
                        target,
                    },
                    opts.runtime,
                    ca.clone(),
                    vm_provider,
                )
                .await
                .map_err(|e| anyhow::anyhow!("{e}"))?,
            )
        }
    };
    // The VMs' agents serve their API over HTTPS (it leaves loopback): checked against the
    // cluster CA.
    let client = agent::https::client_builder(Some(&ca.cert_pem))?
        .connect_timeout(std::time::Duration::from_secs(3))
        .timeout(std::time::Duration::from_secs(60))
        .build()
        .context("cannot make an HTTP client")?;
    let front = Front {
        cluster: opts.cluster.clone(),
        credential_sha256: agent::api_token::token_sha256(&credential),
        vm_credential_sha256: agent::api_token::token_sha256(&vm_credential),
        backend: Arc::new(backend),
        ca,
        client,
    };
    // Its certificate is made at every start (kept in memory only): it is of the cluster CA,
    // which the front holds, and names what every agent certificate names, so clients of
    // the agents' API accept the front's forwarding of it too.
    // It is renewed in place, as the agents' are (a front runs as long as its cluster).
    let server_tls = if tls {
        let ca = front.ca.clone();
        let issue = move || agent::tls::AgentTls::issue(&ca, FRONT_CERT_NAME);
        let identity = issue().context("cannot issue the cloud front's certificate")?;
        let (config, served) = agent::https::renewable_server_config(&identity)?;
        tokio::spawn(keep_certificate_fresh(identity, served, issue));
        Some(config)
    } else {
        None
    };
    let ca_cert_pem = front.ca.cert_pem.clone();
    let listener = tokio::net::TcpListener::bind(&opts.listen)
        .await
        .with_context(|| format!("cannot listen on {}", opts.listen))?;
    info!(cluster = %opts.cluster, listen = %opts.listen, url = %opts.url, https = tls, "cloud front serving");
    if let Some((file, token)) = opts.follow {
        // Through this front's own forwarding, so the file reaches whichever agent leads.
        let port = listener.local_addr().context("the front's address")?.port();
        let scheme = if tls { "https" } else { "http" };
        let api = crate::cluster::Api::new(
            &format!("{scheme}://127.0.0.1:{port}"),
            token,
            Some(&ca_cert_pem),
        )?;
        info!(file = %file.display(), "following the desired-state file");
        tokio::spawn(async move {
            if let Err(e) = crate::cluster::follow(&file, &api).await {
                warn!(file = %file.display(), error = %e, "stopped following the desired-state file");
            }
        });
    }
    let app = router(front);
    match server_tls {
        Some(config) => {
            let listener =
                agent::https::TlsListener::new(listener, config).context("cannot serve HTTPS")?;
            axum::serve(listener, app)
                .with_graceful_shutdown(stopped())
                .await
        }
        None => {
            axum::serve(listener, app)
                .with_graceful_shutdown(stopped())
                .await
        }
    }
    .context("the cloud front's server failed")
}

/// Replaces the front's certificate once two thirds of its validity are over (as agents
/// renew theirs), for as long as the front serves: its VMs refuse an expired one.
async fn keep_certificate_fresh(
    mut current: agent::tls::AgentTls,
    served: Arc<agent::https::ServedCertificate>,
    issue: impl Fn() -> Result<agent::tls::AgentTls, agent::tls::TlsError>,
) {
    const RETRY: std::time::Duration = std::time::Duration::from_secs(3600);
    loop {
        let at = match current.renew_at(FRONT_CERT_NAME, std::path::Path::new("(in memory)")) {
            Ok(at) => at,
            Err(e) => {
                warn!(error = %e, "cannot tell when the cloud front's certificate expires, so it will not be renewed; restart the front before it expires");
                return;
            }
        };
        // In steps: the wall clock may jump (a suspended machine, a clock set right).
        while let Ok(left) = at.duration_since(std::time::SystemTime::now()) {
            if left.is_zero() {
                break;
            }
            tokio::time::sleep(left.min(RETRY)).await;
        }
        let renewed = issue().map_err(|e| e.to_string()).and_then(|t| {
            served.replace(&t).map_err(|e| e.to_string())?;
            Ok(t)
        });
        match renewed {
            Ok(t) => {
                let until = t
                    .validity()
                    .ok()
                    .and_then(|(_, u)| u.duration_since(std::time::UNIX_EPOCH).ok())
                    .map(|d| d.as_secs());
                info!(valid_until_unix = ?until, "renewed the cloud front's certificate");
                current = t;
            }
            Err(e) => {
                warn!(error = %e, "cannot renew the cloud front's certificate; trying again in an hour");
                tokio::time::sleep(RETRY).await;
            }
        }
    }
}

/// The name the front's own certificate is issued for (besides the agents' shared name).
/// No VM is ever called this, so the certificate opens no agent's gRPC service.
const FRONT_CERT_NAME: &str = "cloud-front";

/// The front's `--url` must use the scheme it serves, or no VM could reach it.
fn unreachable_scheme(opts: &FrontOptions) -> anyhow::Result<()> {
    if agent::https::is_https(&opts.listen) {
        anyhow::bail!(
            "the front listens on {}, beyond loopback, so it serves HTTPS only: give --url with https:// (it is {})",
            opts.listen,
            opts.url
        )
    }
    anyhow::bail!(
        "the front listens on {}, on loopback, so it serves plain HTTP: give --url with http:// (it is {})",
        opts.listen,
        opts.url
    )
}

/// Resolves at SIGINT or SIGTERM.
async fn stopped() {
    let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()).ok();
    tokio::select! {
        _ = tokio::signal::ctrl_c() => {}
        _ = async { match term.as_mut() { Some(t) => { t.recv().await; } None => std::future::pending::<()>().await } } => {}
    }
    info!("cloud front stopping");
}

fn router(front: Front) -> Router {
    // What only the cluster's owner may do; the VMs' credential does not open it.
    let owner = Router::new()
        .route("/v1/clusters/{cluster}", delete(delete_cluster))
        .route("/v1/clusters/{cluster}/ca", get(cluster_ca))
        .route_layer(axum::middleware::from_fn(owner_only));
    let vms = Router::new()
        .merge(owner)
        .route("/v1/clusters/{cluster}/vms", get(list).post(create))
        .route("/v1/clusters/{cluster}/vms/{vm}", delete(remove))
        .route("/v1/clusters/{cluster}/vms/{vm}/start", post(start))
        .route_layer(axum::middleware::from_fn_with_state(
            front.clone(),
            authorize,
        ));
    // The users' API, forwarded as it is: the agents check the API token.
    let users = Router::new()
        .route("/status", get(forward))
        .route("/desired-state", put(forward));
    Router::new()
        .route("/health", get(|| async { "ok" }))
        .merge(vms)
        .merge(users)
        .with_state(front)
}

/// `GET /status` and `PUT /desired-state` of the cluster's API, forwarded to the first of
/// the cluster's running VMs whose agent answers (an agent that does not lead forwards a
/// desired state to the leader itself). The caller's token goes along; the front neither
/// holds nor checks it.
async fn forward(State(front): State<Front>, req: Request) -> Response {
    let (parts, body) = req.into_parts();
    let Ok(body) = axum::body::to_bytes(body, 1 << 20).await else {
        return (
            StatusCode::PAYLOAD_TOO_LARGE,
            "a desired state is at most 1 MiB\n",
        )
            .into_response();
    };
    let vms = match front.backend.provider().list_vms().await {
        Ok(v) => v,
        Err(e) => return failed(e),
    };
    let path = parts.uri.path();
    let mut tried = Vec::new();
    for vm in vms
        .iter()
        .filter(|v| v.state == agent_core::backend::VmState::Running)
    {
        let url = agent::https::api_url(
            &format!("{}:{}", vm.address, providers::docker::AGENT_HTTP_PORT),
            path,
        );
        let mut r = front
            .client
            .request(parts.method.clone(), &url)
            .body(body.clone());
        for h in [header::AUTHORIZATION, header::CONTENT_TYPE] {
            if let Some(v) = parts.headers.get(&h) {
                r = r.header(h, v.clone());
            }
        }
        match r.send().await {
            Ok(resp) => {
                let status = resp.status();
                let ctype = resp.headers().get(header::CONTENT_TYPE).cloned();
                let bytes = resp.bytes().await.unwrap_or_default();
                let mut out = (status, bytes).into_response();
                if let Some(c) = ctype {
                    out.headers_mut().insert(header::CONTENT_TYPE, c);
                }
                return out;
            }
            Err(e) => tried.push(format!("{}: {e}", vm.name)),
        }
    }
    (
        StatusCode::SERVICE_UNAVAILABLE,
        Json(serde_json::json!({
            "error": format!(
                "no agent of cluster {} answered{}; while the cluster is being created, ask the bootstrap agent",
                front.cluster,
                if tried.is_empty() { " (it has no running VM yet)".to_string() } else { format!(": {}", tried.join("; ")) }
            )
        })),
    )
        .into_response()
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

/// Who called the VM API: the cluster's owner (the bootstrap agent, `down`) or a VM's agent.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Caller {
    Owner,
    Vm,
}

/// Only this front's cluster, and only with its credential (or the VMs' one, which the
/// handlers that need the owner refuse).
async fn authorize(
    State(front): State<Front>,
    UrlPath(params): UrlPath<Vec<(String, String)>>,
    mut req: Request,
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
    if agent::api_token::check(Some(&front.vm_credential_sha256), auth).is_ok() {
        req.extensions_mut().insert(Caller::Vm);
        return next.run(req).await;
    }
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
            format!("{what}; the front keeps it in DATA_DIR/clusters/{cluster}/{CREDENTIAL_FILE}"),
        );
    }
    req.extensions_mut().insert(Caller::Owner);
    next.run(req).await
}

/// Lets through only calls `authorize` found to come from the cluster's owner.
async fn owner_only(req: Request, next: Next) -> Response {
    if req.extensions().get::<Caller>() == Some(&Caller::Owner) {
        return next.run(req).await;
    }
    let what = format!("{} {}", req.method(), req.uri().path());
    warn!("refused {what} with a VM's credential");
    refuse(
        StatusCode::FORBIDDEN,
        format!("{what} needs the cluster's credential (DATA_DIR/clusters/CLUSTER/{CREDENTIAL_FILE} of the front); the VMs' credential does not open it"),
    )
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

async fn cluster_ca(State(front): State<Front>) -> Response {
    Json(front.ca.clone()).into_response()
}

async fn delete_cluster(State(front): State<Front>) -> Response {
    info!(cluster = %front.cluster, "delete cluster");
    match front.backend.delete_cluster().await {
        Ok(()) => StatusCode::NO_CONTENT.into_response(),
        Err(e) => failed(e),
    }
}

async fn list(State(front): State<Front>) -> Response {
    match front.backend.provider().list_vms().await {
        Ok(vms) => Json(vms).into_response(),
        Err(e) => failed(e),
    }
}

async fn create(State(front): State<Front>, Json(req): Json<CreateVm>) -> Response {
    info!(cluster = %front.cluster, op = %req.op, vm = %req.spec.name, "create VM");
    if front.backend.deleted() {
        return failed(BackendError::refused(format!(
            "cluster {} was deleted through the cloud front; no VM is made for it any more",
            front.cluster
        )));
    }
    match front.backend.provider().create_vm(req.op, &req.spec).await {
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
    match front.backend.provider().delete_vm(OpId(q.op), &vm).await {
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
    match front.backend.provider().start_vm(OpId(q.op), &vm).await {
        Ok(vm) => Json(vm).into_response(),
        Err(e) => failed(e),
    }
}

#[cfg(test)]
mod tests {
    use super::{client_ca, client_credential, front_url_scheme, Scheme};
    use std::time::Duration;

    /// A front serves longer than its certificate lives: the certificate its clients see is
    /// replaced once two thirds of its validity are over, without a restart, and the new one
    /// is of the same CA (the clients check it) and lives longer.
    #[tokio::test]
    async fn the_fronts_certificate_is_renewed_while_it_serves() {
        use agent::tls::AgentTls;
        let ca = agent::tls::make_ca().unwrap();
        let issuer = ca.clone();
        let issue =
            move || AgentTls::issue_for(&issuer, super::FRONT_CERT_NAME, Duration::from_secs(3));
        let first = issue().unwrap();
        let (config, served) = agent::https::renewable_server_config(&first).unwrap();
        tokio::spawn(super::keep_certificate_fresh(first.clone(), served, issue));
        let tcp = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let url = format!(
            "https://127.0.0.1:{}/health",
            tcp.local_addr().unwrap().port()
        );
        let listener = agent::https::TlsListener::new(tcp, config).unwrap();
        let app = axum::Router::new().route("/health", axum::routing::get(|| async { "ok" }));
        tokio::spawn(async move { axum::serve(listener, app).await });
        // A new connection and a full handshake per request (a resumed session shows the
        // certificate of the session it resumes).
        let mut tls = agent::https::client_config(&ca.cert_pem).unwrap();
        tls.resumption = rustls::client::Resumption::disabled();
        let client = reqwest::Client::builder()
            .use_preconfigured_tls(tls)
            .tls_info(true)
            .pool_max_idle_per_host(0)
            .build()
            .unwrap();
        let shown = || async {
            let r = client.get(&url).send().await.unwrap();
            assert!(r.status().is_success());
            let info = r
                .extensions()
                .get::<reqwest::tls::TlsInfo>()
                .cloned()
                .unwrap();
            info.peer_certificate().unwrap().to_vec()
        };
        let first_der = shown().await;
        let (_, issued) =
            x509_parser::pem::parse_x509_pem(first.identity_pem().0.as_bytes()).unwrap();
        assert_eq!(first_der, issued.contents);
        let deadline = std::time::Instant::now() + Duration::from_secs(15);
        let renewed = loop {
            let der = shown().await;
            if der != first_der {
                break der;
            }
            assert!(
                std::time::Instant::now() < deadline,
                "the front still shows its first certificate after 15 s"
            );
            tokio::time::sleep(Duration::from_millis(200)).await;
        };
        let until = |der: &[u8]| {
            let (_, cert) = x509_parser::parse_x509_certificate(der).unwrap();
            cert.validity().not_after.timestamp()
        };
        assert!(until(&renewed) > until(&first_der));
    }

    #[test]
    fn an_old_vms_plain_front_url_is_called_over_https_beyond_loopback() {
        use super::front_url_of_old_vm;
        assert_eq!(
            front_url_of_old_vm("http://10.213.0.4:9090"),
            "https://10.213.0.4:9090"
        );
        assert_eq!(
            front_url_of_old_vm("http://127.0.0.1:9090/"),
            "http://127.0.0.1:9090/"
        );
        assert_eq!(
            front_url_of_old_vm("https://10.213.0.4:9090"),
            "https://10.213.0.4:9090"
        );
    }

    #[test]
    fn a_front_beyond_loopback_is_https_and_one_on_loopback_plain_http() {
        assert_eq!(
            front_url_scheme("https://10.213.0.4:9090").unwrap(),
            Scheme::Https
        );
        assert_eq!(
            front_url_scheme("http://127.0.0.1:9090/").unwrap(),
            Scheme::Http
        );
        let e = front_url_scheme("http://10.213.0.4:9090").unwrap_err();
        assert!(e.to_string().contains("use https://10.213.0.4:9090"), "{e}");
        // A front listening on every interface answers HTTPS on loopback too.
        assert_eq!(
            front_url_scheme("https://127.0.0.1:9090").unwrap(),
            Scheme::Https
        );
        assert!(front_url_scheme("10.213.0.4:9090").is_err());
    }

    #[test]
    fn the_fronts_ca_is_found_beside_its_credential_or_asked_for() {
        let dir = tempfile::tempdir().unwrap();
        // A front on loopback needs none.
        assert_eq!(
            client_ca("http://127.0.0.1:9090", None, None, Duration::ZERO).unwrap(),
            None
        );
        // Beyond loopback: without a file, an error that says what to give.
        let e = client_ca("https://10.0.0.1:9090", None, None, Duration::ZERO).unwrap_err();
        assert!(e.to_string().contains("--front-ca-file"), "{e}");
        // The front keeps tls/ca.pem beside its credential.
        let credential = dir.path().join("credential");
        std::fs::create_dir_all(dir.path().join("tls")).unwrap();
        let pem = "-----BEGIN CERTIFICATE-----\nMIIB\n-----END CERTIFICATE-----\n";
        std::fs::write(dir.path().join("tls").join("ca.pem"), pem).unwrap();
        let found = client_ca(
            "https://10.0.0.1:9090",
            None,
            Some(&credential),
            Duration::ZERO,
        )
        .unwrap();
        assert_eq!(found.as_deref(), Some(pem));
        // A named file that is not a certificate is refused, naming it.
        let other = dir.path().join("other.pem");
        std::fs::write(&other, "not a certificate").unwrap();
        let e = client_ca(
            "https://10.0.0.1:9090",
            Some(other.clone()),
            Some(&credential),
            Duration::ZERO,
        )
        .unwrap_err();
        assert!(e.to_string().contains(&other.display().to_string()), "{e}");
    }

    #[test]
    fn the_credential_file_is_waited_for_while_the_front_starts() {
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("credential");
        let writer = {
            let file = file.clone();
            std::thread::spawn(move || {
                std::thread::sleep(Duration::from_millis(400));
                std::fs::write(file, "c0ffee\n").unwrap();
            })
        };
        let c = client_credential(Some(file), Duration::from_secs(10)).unwrap();
        writer.join().unwrap();
        assert_eq!(c, "c0ffee");
    }

    #[test]
    fn a_credential_file_that_never_comes_is_a_clear_error() {
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("credential");
        let e = client_credential(Some(file.clone()), Duration::ZERO).unwrap_err();
        let text = format!("{e:#}");
        assert!(text.contains(&file.display().to_string()), "{text}");
        assert!(text.contains("is the cloud front running?"), "{text}");
        std::fs::write(&file, "\n").unwrap();
        let e = client_credential(Some(file), Duration::ZERO).unwrap_err();
        assert!(e.to_string().contains("does not hold"), "{e}");
    }
}
