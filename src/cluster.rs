//! The distributed commands of `ndb-agent`: `agent` (one VM's agent, started by the `local`
//! provider), `up` (the bootstrap agent that applies and watches a desired-state file),
//! `down` (stops every agent of a data directory), and the HTTP clients `apply` and `status`.

use agent::http::Status;
use agent::ReconcilerConfig;
use agent::{AgentOptions, Exit};
use agent_core::backend::{CloudProvider, OpId, ProcessRuntime, VmInfo, VmSpec, VmState};
use agent_core::desired::VmType;
use agent_core::Role;
use anyhow::{bail, Context};
use providers::docker::{AGENT_GRPC_PORT, AGENT_HTTP_PORT, VM_ENV};
use providers::local::{self, AgentAddress, LocalProvider};
use providers::{ProviderConfig, RuntimeKind, VmConfig};
use runtime_backends::direct::Timeouts;
use runtime_backends::supervisord::Supervisord;
use runtime_backends::{DirectRuntime, VmDummyRuntime};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;
use tokio::net::TcpListener;
use tracing::{info, warn};

/// Milliseconds a pretended program start/stop takes in the dummy runtime (inherited by
/// the agents `up` starts).
pub const DUMMY_DELAY_ENV: &str = "NDB_DUMMY_PROGRAM_DELAY_MS";

/// The environment a bootstrap agent passes on to the VMs it has made: the dummy runtime's
/// delay, and the log filter, so that one `RUST_LOG` shows the same detail on every agent.
pub fn passed_on_to_vms(name: &str) -> bool {
    name == DUMMY_DELAY_ENV || name == "RUST_LOG"
}

/// supervisord's configuration in the agent image, and the directory it includes
/// (compose/images/agent/supervisord.conf).
const SUPERVISORD_CONFIG: &str = "/etc/supervisor/supervisord.conf";
const SUPERVISORD_INCLUDE_DIR: &str = "/etc/supervisor/conf.d";

/// This build's agent version.
pub const AGENT_VERSION: &str = env!("CARGO_PKG_VERSION");

/// Logs to stderr, readable, Raft internals only when they matter.
pub fn init_logging() {
    let filter = tracing_subscriber::EnvFilter::try_from_default_env().unwrap_or_else(|_| {
        tracing_subscriber::EnvFilter::new("info,openraft=error,h2=warn,tower=warn,hyper=warn")
    });
    let _ = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
        .with_target(false)
        .try_init();
}

fn tokio_runtime() -> anyhow::Result<tokio::runtime::Runtime> {
    tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .context("cannot start the async runtime")
}

/// The runtime a VM's configuration names; its servers answer on the VM's address
/// (loopback for a VM without one of its own).
fn make_runtime(vm: &VmConfig, dir: &Path) -> anyhow::Result<Arc<dyn ProcessRuntime>> {
    let sink = sink_dir(vm);
    let address = vm.address.as_deref().unwrap_or("127.0.0.1");
    // Where RonDB lives: in the VM's directory locally (many VMs share the host), where
    // the commands expect it in a container (a machine of its own).
    let home = match vm.provider {
        ProviderConfig::Local { .. } => std::path::absolute(local::rondb_home(dir))?,
        ProviderConfig::Front(_) => PathBuf::from(agent_core::model::RONDB_HOME),
    };
    let rondb = |control: Option<Arc<dyn runtime_backends::process::ProcessControl>>| {
        let r = DirectRuntime::new(&vm.spec.name, &home, &sink, address, Timeouts::default())
            .with_mirrors(vm.artifact_mirrors.clone());
        match control {
            Some(c) => r.with_control(c),
            None => r,
        }
    };
    match vm.runtime {
        RuntimeKind::Direct => Ok(Arc::new(rondb(None))),
        RuntimeKind::Supervisord => Ok(Arc::new(rondb(Some(Arc::new(Supervisord::new(
            Path::new(SUPERVISORD_INCLUDE_DIR),
            Path::new(SUPERVISORD_CONFIG),
        )))))),
        RuntimeKind::Dummy => {
            let delay = std::env::var(DUMMY_DELAY_ENV)
                .ok()
                .and_then(|v| v.parse::<u64>().ok())
                .unwrap_or(0);
            Ok(Arc::new(VmDummyRuntime::new(
                &vm.spec.name,
                dir,
                &sink,
                Duration::from_millis(delay),
            )))
        }
    }
}

/// Binds with SO_REUSEADDR (a restarted agent takes back its port while the killed one's
/// connections linger), retrying for a few seconds.
async fn bind(preferred: Option<&str>, fallback: &str) -> anyhow::Result<TcpListener> {
    let addr: std::net::SocketAddr = preferred
        .unwrap_or(fallback)
        .parse()
        .with_context(|| format!("not an address: {}", preferred.unwrap_or(fallback)))?;
    let deadline = std::time::Instant::now() + Duration::from_secs(5);
    loop {
        let socket = if addr.is_ipv4() {
            tokio::net::TcpSocket::new_v4()?
        } else {
            tokio::net::TcpSocket::new_v6()?
        };
        socket.set_reuseaddr(true)?;
        match socket.bind(addr).and_then(|()| socket.listen(1024)) {
            Ok(l) => return Ok(l),
            Err(e) if std::time::Instant::now() < deadline => {
                warn!(%addr, error = %e, "cannot listen yet; retrying");
                tokio::time::sleep(Duration::from_millis(200)).await;
            }
            Err(e) => {
                return Err(e).with_context(|| {
                    format!("cannot listen on {addr}; is another agent using it?")
                })
            }
        }
    }
}

/// Takes the VM directory's lock for as long as the returned file lives, so that two agents
/// never run on one directory (a leader starting a down VM while `up` does the same).
fn lock_dir(dir: &Path) -> anyhow::Result<std::fs::File> {
    let path = dir.join(local::LOCK_FILE);
    let file = std::fs::OpenOptions::new()
        .create(true)
        .truncate(false)
        .write(true)
        .open(&path)
        .with_context(|| format!("cannot open {}", path.display()))?;
    match file.try_lock() {
        Ok(()) => Ok(file),
        Err(std::fs::TryLockError::WouldBlock) => bail!(
            "another agent already runs on {} (it holds {}); not starting a second one",
            dir.display(),
            path.display()
        ),
        Err(std::fs::TryLockError::Error(e)) => {
            Err(e).with_context(|| format!("cannot lock {}", path.display()))
        }
    }
}

fn write_address(dir: &Path, grpc: &TcpListener, http: &TcpListener) -> anyhow::Result<()> {
    let a = AgentAddress {
        pid: std::process::id(),
        grpc_addr: grpc.local_addr()?.to_string(),
        http_addr: http.local_addr()?.to_string(),
    };
    local::write_atomic(&dir.join(local::PID_FILE), a.pid.to_string().as_bytes())?;
    local::write_atomic(
        &dir.join(local::ADDRESS_FILE),
        &serde_json::to_vec_pretty(&a)?,
    )?;
    Ok(())
}

fn options(vm: &VmConfig, dir: &Path, bootstrap: bool, advertise: Option<String>) -> AgentOptions {
    AgentOptions {
        vm: vm.spec.name.clone(),
        role: vm.spec.role.as_str().to_string(),
        zone: vm.spec.zone.clone(),
        dir: dir.to_path_buf(),
        bootstrap,
        agent_version: AGENT_VERSION.to_string(),
        reconciler: ReconcilerConfig {
            observe_every: Duration::from_secs(2),
            ..Default::default()
        },
        heartbeat: Duration::from_millis(100),
        advertise_host: advertise,
        api_token_sha256: None,
        trust: vm.ca.clone(),
        join: vm.spec.join.as_deref().cloned(),
    }
}

/// The provider a VM's configuration names.
fn make_provider(vm: &VmConfig, program: &Path) -> anyhow::Result<Arc<dyn CloudProvider>> {
    Ok(match &vm.provider {
        ProviderConfig::Local { data_dir } => Arc::new(
            LocalProvider::new(data_dir, program, vm.runtime, vm.ca.cert_pem().to_string())
                .with_artifact_mirrors(vm.artifact_mirrors.clone()),
        ),
        ProviderConfig::Front(cfg) => {
            let cfg = providers::FrontConfig {
                url: crate::front::front_url_of_old_vm(&cfg.url),
                ..cfg.clone()
            };
            Arc::new(crate::front::front_provider(cfg, Some(vm.ca.cert_pem()))?)
        }
    })
}

/// This container's address on its network (Docker maps the hostname to it).
async fn own_address() -> anyhow::Result<String> {
    let host = std::fs::read_to_string("/etc/hostname")
        .context("cannot read /etc/hostname")?
        .trim()
        .to_string();
    let addrs = tokio::net::lookup_host((host.as_str(), 0))
        .await
        .with_context(|| format!("cannot resolve this container's hostname {host}"))?;
    let ip = addrs
        .map(|a| a.ip())
        .find(|ip| ip.is_ipv4() && !ip.is_loopback());
    ip.map(|ip| ip.to_string())
        .with_context(|| format!("{host} resolves to no network address"))
}

/// Listeners and advertised host: loopback ports (kept across restarts) for local VMs,
/// fixed ports on all interfaces for containers.
async fn listeners(
    vm: &VmConfig,
    dir: &Path,
    http: Option<&str>,
) -> anyhow::Result<(TcpListener, TcpListener, Option<String>)> {
    match vm.provider {
        ProviderConfig::Local { .. } => {
            let prev = local::read_address(dir);
            let grpc = bind(prev.as_ref().map(|a| a.grpc_addr.as_str()), "127.0.0.1:0").await?;
            let http = match http {
                Some(h) => bind(Some(h), h).await?,
                None => bind(prev.as_ref().map(|a| a.http_addr.as_str()), "127.0.0.1:0").await?,
            };
            Ok((grpc, http, None))
        }
        ProviderConfig::Front(_) => {
            let grpc = bind(None, &format!("0.0.0.0:{AGENT_GRPC_PORT}")).await?;
            let http = bind(None, http.unwrap_or(&format!("0.0.0.0:{AGENT_HTTP_PORT}"))).await?;
            Ok((grpc, http, Some(own_address().await?)))
        }
    }
}

/// The backup sink every VM of the cluster reaches: a directory of the data directory
/// locally, the cluster's backup volume in a container.
fn sink_dir(vm: &VmConfig) -> PathBuf {
    match vm.local_data_dir() {
        Some(d) => d.join("backups"),
        None => PathBuf::from(providers::docker::BACKUP_DIR),
    }
}

/// `ndb-agent agent --vm-dir DIR`: the agent of one local VM. On a restart request it execs
/// itself again, keeping its pid, directory and ports.
pub fn agent_command(dir: &Path) -> anyhow::Result<()> {
    init_logging();
    // A container gets its configuration in the environment; it is kept in the VM's
    // directory (its volume) from then on.
    std::fs::create_dir_all(dir).with_context(|| format!("cannot create {}", dir.display()))?;
    if !dir.join(local::VM_FILE).exists() {
        if let Ok(json) = std::env::var(VM_ENV) {
            local::write_private(&dir.join(local::VM_FILE), json.as_bytes())?;
        }
    }
    let dir = dir
        .canonicalize()
        .with_context(|| format!("no VM directory {}", dir.display()))?;
    let _lock = lock_dir(&dir)?;
    let vm = local::read_vm(&dir).map_err(anyhow::Error::msg)?;
    // A new VM runs the agent version it was created for until it is upgraded.
    if !dir.join("agent_version").exists() {
        local::write_atomic(&dir.join("agent_version"), vm.spec.agent_version.as_bytes())?;
    }
    let program = std::env::current_exe().context("cannot find the ndb-agent binary")?;
    let exit = tokio_runtime()?.block_on(async {
        let (grpc, http, advertise) = listeners(&vm, &dir, None).await?;
        write_address(&dir, &grpc, &http)?;
        let provider = make_provider(&vm, &program)?;
        let runtime = make_runtime(&vm, &dir)?;
        info!(vm = %vm.spec.name, role = ?vm.spec.role, "agent starting");
        let exit = agent::run(
            options(&vm, &dir, false, advertise),
            grpc,
            http,
            provider,
            runtime,
        )
        .await?;
        anyhow::Ok(exit)
    })?;
    match exit {
        Exit::Restart => {
            use std::os::unix::process::CommandExt;
            // After an upgrade, the build the upgrade installed.
            let current = dir.join("current/bin/ndb-agent");
            let program = if current.exists() { current } else { program };
            info!(program = %program.display(), "restarting");
            let err = std::process::Command::new(&program)
                .arg("agent")
                .arg("--vm-dir")
                .arg(&dir)
                .exec();
            bail!("cannot restart {}: {err}", program.display())
        }
    }
}

/// Settings of `ndb-agent up`.
pub struct UpOptions {
    pub desired_state: PathBuf,
    pub data_dir: PathBuf,
    pub http: String,
    pub runtime: RuntimeKind,
    /// Where VMs live: `Local` (processes under the data directory), `Docker` (containers
    /// this agent makes) or `Front` (made by the cloud front). This agent runs in a
    /// container unless the provider is `Local`.
    pub provider: ProviderConfig,
    /// Handed to every VM: where their runtimes fetch tarballs from.
    pub artifact_mirrors: Vec<agent_core::artifacts::ArtifactMirror>,
    /// `Front` beyond loopback: the cluster CA's certificate the front's HTTPS is checked
    /// against (before this agent adopts the whole CA from it).
    pub front_ca: Option<String>,
}

fn read_desired(path: &Path) -> anyhow::Result<Result<agent_core::DesiredState, Vec<String>>> {
    let bytes = std::fs::read(path).with_context(|| format!("cannot read {}", path.display()))?;
    Ok(match agent_core::desired::parse(&bytes) {
        Ok(d) => {
            let v = agent_core::desired::validate(&d);
            if v.is_empty() {
                Ok(d)
            } else {
                Err(v.iter().map(|x| x.to_string()).collect())
            }
        }
        Err(e) => Err(e.problems()),
    })
}

/// `ndb-agent up`: runs the bootstrap agent, applies the file, follows its edits, and prints
/// the reconciliation's progress.
pub fn up_command(o: UpOptions) -> anyhow::Result<std::process::ExitCode> {
    init_logging();
    if let Err(problems) = read_desired(&o.desired_state)? {
        eprintln!(
            "{}: not a valid desired state; nothing was started:",
            o.desired_state.display()
        );
        for p in problems {
            eprintln!("  - {p}");
        }
        return Ok(std::process::ExitCode::from(2));
    }
    let local = !o.provider.is_machine_of_its_own();
    if o.runtime == RuntimeKind::Supervisord && local {
        bail!(
            "the supervisord runtime runs in containers, where supervisord runs the agent too: use --provider docker, or --runtime direct for a cluster on this machine"
        );
    }
    std::fs::create_dir_all(&o.data_dir)
        .with_context(|| format!("cannot create {}", o.data_dir.display()))?;
    let data_dir = o.data_dir.canonicalize()?;
    let token = ensure_api_token(&data_dir, std::env::var(agent::api_token::TOKEN_ENV).ok())?;
    if let ProviderConfig::Front(f) = &o.provider {
        adopt_front_ca(&data_dir, f, o.front_ca.as_deref())?;
    }
    let ca = ensure_cluster_ca(&data_dir)?;
    let ca_cert_pem = ca.cert_pem.clone();
    // Locally the bootstrap agent is one of the VM directories; in a container its
    // directory is the data directory (its volume).
    let dir = if local {
        data_dir.join("vms").join("bootstrap")
    } else {
        data_dir.clone()
    };
    std::fs::create_dir_all(&dir)?;
    let _lock = lock_dir(&dir)?;
    let vm = VmConfig {
        spec: VmSpec {
            name: "bootstrap".into(),
            role: Role::Bootstrap,
            zone: "bootstrap".into(),
            vm_type: VmType::Mini,
            storage_gib: 0,
            temporary: false,
            agent_version: AGENT_VERSION.into(),
            join: None,
        },
        runtime: o.runtime,
        provider: match &o.provider {
            ProviderConfig::Local { .. } => ProviderConfig::Local {
                data_dir: data_dir.clone(),
            },
            other => other.clone(),
        },
        address: None,
        artifact_mirrors: o.artifact_mirrors.clone(),
        ca: agent_core::backend::VmTrust::Ca(ca),
    };
    local::write_private(&dir.join(local::VM_FILE), &serde_json::to_vec_pretty(&vm)?)?;
    let program = std::env::current_exe().context("cannot find the ndb-agent binary")?;
    tokio_runtime()?.block_on(async move {
        let (grpc, http, advertise) = listeners(&vm, &dir, Some(&o.http)).await?;
        write_address(&dir, &grpc, &http)?;
        let provider = make_provider(&vm, &program)?;
        let runtime = make_runtime(&vm, &dir)?;
        let resume = tokio::spawn(resume_vms(Arc::clone(&provider)));
        let agent = tokio::spawn(agent::run(
            AgentOptions {
                api_token_sha256: Some(agent::api_token::token_sha256(&token)),
                ..options(&vm, &dir, true, advertise)
            },
            grpc,
            http,
            provider,
            runtime,
        ));
        println!(
            "bootstrap agent: HTTP API on {}  data in {}",
            agent::https::api_url(&o.http, ""),
            data_dir.display()
        );
        if agent::https::is_https(&o.http) {
            println!(
                "the API leaves loopback, so it is HTTPS: clients check it against the cluster CA {} (`--ca-file`)",
                data_dir.join("tls").join("ca.pem").display()
            );
        }
        println!(
            "API token in {} (mode 0600): clients send it as `Authorization: Bearer`; `ndb-agent status --endpoint {} --token-file {}` reads it",
            data_dir.join(agent::api_token::TOKEN_FILE).display(),
            o.http,
            data_dir.join(agent::api_token::TOKEN_FILE).display(),
        );
        println!(
            "edit and save {} to change the cluster",
            o.desired_state.display(),
        );
        if let Err(e) = resume.await {
            warn!(error = %e, "resuming the cluster's VMs stopped");
        }
        let api = Api::new(&o.http, token, Some(&ca_cert_pem))?;
        tokio::select! {
            r = follow(&o.desired_state, &api) => r?,
            r = agent => match r?? {
                // A renewed certificate (or a restart the leader asked for): `up` starts
                // again as it was started, which resumes this cluster.
                Exit::Restart => {
                    use std::os::unix::process::CommandExt;
                    println!("restarting the bootstrap agent (it renewed its certificate, or was asked to restart)");
                    let err = std::process::Command::new(&program)
                        .args(std::env::args_os().skip(1))
                        .exec();
                    bail!("cannot restart {}: {err}", program.display())
                }
            },
            _ = tokio::signal::ctrl_c() => {
                println!("stopping the bootstrap agent; the cluster's other agents keep running (`ndb-agent down --data-dir {}` stops them)", data_dir.display());
            }
        }
        anyhow::Ok(())
    })?;
    Ok(std::process::ExitCode::SUCCESS)
}

/// The front made the cluster CA and hands it to every VM: the bootstrap agent trusts the
/// same one and never makes its own. Waits for the front (it may be starting beside this
/// agent); a CA already here must be the front's.
fn adopt_front_ca(
    data_dir: &Path,
    f: &providers::FrontConfig,
    front_ca: Option<&str>,
) -> anyhow::Result<()> {
    let front = crate::front::front_provider(f.clone(), front_ca)?;
    let ca = tokio_runtime()?.block_on(async {
        front.wait_ready(Duration::from_secs(120)).await?;
        front.cluster_ca().await
    });
    let ca =
        ca.map_err(|e| anyhow::anyhow!("cannot get the cluster CA from the cloud front: {e}"))?;
    if front_ca.is_some_and(|pem| pem.trim() != ca.cert_pem.trim()) {
        bail!(
            "the cloud front at {} served another cluster CA than the one its HTTPS was checked against; give the ca.pem of the front's cluster directory (--front-ca-file)",
            f.url
        );
    }
    let dir = data_dir.join("tls");
    if dir.join("ca.pem").exists() {
        let here = ensure_cluster_ca(data_dir)?;
        if here != ca {
            bail!(
                "{} holds another cluster CA than the cloud front at {} (cluster {}); the VMs the front makes trust the front's only. Was the front's data removed? Remove {} to adopt the front's CA",
                dir.display(),
                f.url,
                f.cluster,
                dir.display()
            );
        }
        return Ok(());
    }
    std::fs::create_dir_all(&dir).with_context(|| format!("cannot create {}", dir.display()))?;
    local::write_private(&dir.join("ca-key.pem"), ca.key_pem.as_bytes())
        .with_context(|| format!("cannot write {}", dir.display()))?;
    local::write_private(&dir.join("ca.pem"), ca.cert_pem.as_bytes())
        .with_context(|| format!("cannot write {}", dir.display()))?;
    std::fs::File::open(&dir)
        .and_then(|d| d.sync_all())
        .with_context(|| format!("cannot sync {}", dir.display()))?;
    info!(front = %f.url, "adopted the cluster CA of the cloud front");
    Ok(())
}

/// A cluster stopped as a whole (a power cut, a host reboot, `ndb-agent down`) comes back
/// with one `up`: every VM that is down is started again with its disks. This cannot wait
/// for a leader: the agents elect one only once enough of them run again.
async fn resume_vms(provider: Arc<dyn CloudProvider>) {
    let vms = match provider.list_vms().await {
        Ok(v) => v,
        Err(e) => {
            eprintln!("cannot list the cluster's VMs to resume them: {e}");
            return;
        }
    };
    let down: Vec<VmInfo> = vms
        .into_iter()
        .filter(|v| v.state == VmState::Down)
        .collect();
    if down.is_empty() {
        return;
    }
    println!(
        "resuming the existing cluster: starting {} VM(s) that are down: {}",
        down.len(),
        down.iter()
            .map(|v| v.name.as_str())
            .collect::<Vec<_>>()
            .join(", ")
    );
    let starts = down.iter().map(|v| provider.start_vm(OpId::NONE, &v.name));
    for (v, r) in down.iter().zip(futures::future::join_all(starts).await) {
        match r {
            Ok(_) => println!("  {} is up again", v.name),
            Err(e) => eprintln!("  cannot start {}: {e} (the leader tries again)", v.name),
        }
    }
}

/// Applies the file whenever its content changes (told by the file system, `notify`) and
/// prints status changes. The directory is watched, not the file: editors save by replacing.
/// Applies the file and every saved edit of it through `api`, printing progress lines.
pub async fn follow(file: &Path, api: &Api) -> anyhow::Result<()> {
    use notify::Watcher;
    let (tx, mut changed) = tokio::sync::mpsc::unbounded_channel();
    let name = file.file_name().map(|n| n.to_os_string());
    let mut watcher = notify::recommended_watcher(move |e: notify::Result<notify::Event>| {
        // Only a change of this file counts. Reading it (an access event) must not: every
        // look reads the file, and would wake the next one at once.
        let Ok(e) = e else { return };
        let changes = match e.kind {
            notify::EventKind::Create(_) | notify::EventKind::Remove(_) => true,
            notify::EventKind::Modify(m) => !matches!(m, notify::event::ModifyKind::Metadata(_)),
            _ => false,
        };
        let ours = e
            .paths
            .iter()
            .any(|p| p.file_name().map(|n| n.to_os_string()) == name);
        if changes && ours {
            let _ = tx.send(());
        }
    })
    .context("cannot watch the desired-state file")?;
    let dir = file
        .parent()
        .filter(|p| !p.as_os_str().is_empty())
        .unwrap_or(Path::new("."));
    watcher
        .watch(dir, notify::RecursiveMode::NonRecursive)
        .with_context(|| format!("cannot watch {}", dir.display()))?;
    let mut applied: Option<Vec<u8>> = None;
    // Read at start, after every change, and again while no leader could take it.
    let mut look = true;
    let mut last_line = String::new();
    loop {
        if look {
            look = !apply_if_changed(file, api, &mut applied).await?;
        }
        // Progress twice a second while the cluster changes; at rest a look every few
        // seconds is enough (an edit of the file wakes this loop at once), and the leader
        // answering it stays idle.
        let mut next_look = Duration::from_millis(500);
        if let Ok(s) = api.status().await {
            let line = progress_line(&s);
            if line != last_line {
                println!("{line}");
                last_line = line;
            }
            if s.reconciliation_state == "AT_DESIRED_STATE"
                && s.pending_id.is_none()
                && s.actions_in_flight == 0
            {
                next_look = Duration::from_secs(3);
            }
        }
        tokio::select! {
            Some(()) = changed.recv() => {
                while changed.try_recv().is_ok() {}
                look = true;
            }
            _ = tokio::time::sleep(next_look) => {}
        }
    }
}

/// Submits the file if its content differs from what was last handled; false when it has
/// to be tried again (no leader yet, or leadership moving).
async fn apply_if_changed(
    file: &Path,
    api: &Api,
    applied: &mut Option<Vec<u8>>,
) -> anyhow::Result<bool> {
    let Ok(bytes) = std::fs::read(file) else {
        // Mid-replace by an editor: the next event brings it back.
        return Ok(true);
    };
    if applied.as_ref() == Some(&bytes) {
        return Ok(true);
    }
    match read_desired(file)? {
        Err(problems) => {
            println!("{}: not applied, fix it and save again:", file.display());
            for p in problems {
                println!("  - {p}");
            }
        }
        Ok(d) if applied.is_none() && resumed(api, d.id).await => {
            println!(
                "desired state {} is the cluster's accepted state already: resuming it",
                d.id
            );
        }
        Ok(d) => match api.put_desired(bytes.clone()).await {
            Ok((202, body)) => {
                println!(
                    "desired state {} {}",
                    d.id,
                    body["result"].as_str().unwrap_or("accepted")
                );
            }
            Ok((400, body)) => {
                println!("desired state {} refused:", d.id);
                for e in body["errors"].as_array().into_iter().flatten() {
                    println!("  - {}", e.as_str().unwrap_or_default());
                }
            }
            // No leader yet (or moving): try again on the next round.
            Ok(_) | Err(_) => return Ok(false),
        },
    }
    *applied = Some(bytes);
    Ok(true)
}

/// The cluster (restarted with `up` on its data directory) accepted desired state `id`
/// before: the file is not news to it.
async fn resumed(api: &Api, id: u64) -> bool {
    api.status().await.is_ok_and(|s| s.accepted_id == Some(id))
}

fn progress_line(s: &Status) -> String {
    let mut roles: std::collections::BTreeMap<&str, usize> = Default::default();
    for v in &s.vms {
        *roles.entry(v.role.as_str()).or_default() += 1;
    }
    let roles: Vec<String> = roles.iter().map(|(r, n)| format!("{n} {r}")).collect();
    format!(
        "[desired {}{}] {}: {} action(s) done, {} running; VMs: {}; leader: {}; {} agent(s), {} voter(s){}{}",
        s.accepted_id.map(|i| i.to_string()).unwrap_or_else(|| "-".into()),
        s.pending_id.map(|i| format!(", pending {i}")).unwrap_or_default(),
        s.reconciliation_state,
        s.actions_completed,
        s.actions_in_flight,
        if roles.is_empty() { "none".into() } else { roles.join(", ") },
        s.leader_vm.as_deref().unwrap_or("none"),
        s.agents.len(),
        s.agents.iter().filter(|a| a.voter).count(),
        if s.voters_joint { " (joint: a voter change under way)" } else { "" },
        s.last_error.as_ref().map(|e| format!("\n  error: {e}")).unwrap_or_default(),
    )
}

/// An HTTP client of the agents' API, carrying the cluster's token on every request, over
/// HTTPS checked against the cluster CA wherever the API leaves loopback (`agent::https`).
pub struct Api {
    endpoint: String,
    token: String,
    client: reqwest::Client,
}

impl Api {
    /// A client of the agent at `endpoint` (`HOST:PORT` or a URL); `ca_cert_pem` is the
    /// cluster CA, needed for any endpoint that is not loopback.
    pub fn new(endpoint: &str, token: String, ca_cert_pem: Option<&str>) -> anyhow::Result<Self> {
        Ok(Api {
            endpoint: endpoint.to_string(),
            token,
            client: agent::https::client(ca_cert_pem)?,
        })
    }

    async fn put_desired(&self, body: Vec<u8>) -> anyhow::Result<(u16, serde_json::Value)> {
        let r = self
            .client
            .put(agent::https::api_url(&self.endpoint, "/desired-state"))
            .bearer_auth(&self.token)
            .timeout(Duration::from_secs(30))
            .body(body)
            .send()
            .await
            .with_context(|| format!("cannot reach the agent at {}", self.endpoint))?;
        let code = r.status().as_u16();
        let body = r.json().await.unwrap_or(serde_json::Value::Null);
        Ok((code, body))
    }

    /// The status as the agent at `endpoint` (this client's own when `None`) sees it.
    async fn status_of(&self, endpoint: Option<&str>) -> anyhow::Result<Status> {
        let endpoint = endpoint.unwrap_or(&self.endpoint);
        let r = self
            .client
            .get(agent::https::api_url(endpoint, "/status"))
            .bearer_auth(&self.token)
            .timeout(Duration::from_secs(5))
            .send()
            .await
            .with_context(|| format!("cannot reach the agent at {endpoint}"))?;
        if !r.status().is_success() {
            let code = r.status().as_u16();
            let body: serde_json::Value = r.json().await.unwrap_or_default();
            let errors: Vec<&str> = body["errors"]
                .as_array()
                .into_iter()
                .flatten()
                .filter_map(|e| e.as_str())
                .collect();
            bail!(
                "the agent at {endpoint} answered {code}: {}",
                errors.join("; ")
            );
        }
        r.json()
            .await
            .context("the agent's status is not the expected JSON")
    }

    async fn status(&self) -> anyhow::Result<Status> {
        self.status_of(None).await
    }
}

/// The token of `ndb-agent up`'s API: DATA_DIR/api-token, made at random on the first `up`
/// (or the `given` one, from NDB_AGENT_TOKEN), mode 0600, fsync'd before any agent starts.
/// A given token that differs from the file's replaces it: that is how a token is rotated.
pub fn ensure_api_token(data_dir: &Path, given: Option<String>) -> anyhow::Result<String> {
    ensure_secret(data_dir, agent::api_token::TOKEN_FILE, given)
}

/// The secret in `dir/file`: made at random (256 bits, hex) when the file does not exist,
/// or the `given` one, which replaces a different one (a rotation); 0600 and fsync'd with
/// its directory before it is returned.
pub fn ensure_secret(dir: &Path, file: &str, given: Option<String>) -> anyhow::Result<String> {
    use std::os::unix::fs::PermissionsExt;
    let data_dir = dir;
    let path = data_dir.join(file);
    let given = given
        .map(|t| t.trim().to_string())
        .filter(|t| !t.is_empty());
    if let Ok(existing) = std::fs::read_to_string(&path) {
        let existing = existing.trim().to_string();
        if !existing.is_empty() && given.as_ref().is_none_or(|g| *g == existing) {
            // A secret readable by others is a leaked secret: tighten what an older
            // version or a user's copy left behind.
            std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o600))
                .with_context(|| format!("cannot make {} private (0600)", path.display()))?;
            return Ok(existing);
        }
    }
    let token = match given {
        Some(t) => t,
        None => {
            use rand::Rng;
            let bytes: [u8; 32] = rand::rng().random();
            bytes.iter().map(|b| format!("{b:02x}")).collect()
        }
    };
    local::write_private(&path, format!("{token}\n").as_bytes())
        .with_context(|| format!("cannot write {}", path.display()))?;
    std::fs::File::open(data_dir)
        .and_then(|d| d.sync_all())
        .with_context(|| format!("cannot sync {}", data_dir.display()))?;
    Ok(token)
}

/// The cluster CA of `up`'s data directory (DATA_DIR/tls/ca.pem and ca-key.pem, 0600),
/// made on the first `up`: the agents of the cluster trust certificates of it only.
pub fn ensure_cluster_ca(data_dir: &Path) -> anyhow::Result<agent_core::backend::ClusterCa> {
    let dir = data_dir.join("tls");
    let (cert, key) = (dir.join("ca.pem"), dir.join("ca-key.pem"));
    if let (Ok(cert_pem), Ok(key_pem)) = (
        std::fs::read_to_string(&cert),
        std::fs::read_to_string(&key),
    ) {
        return Ok(agent_core::backend::ClusterCa { cert_pem, key_pem });
    }
    if cert.exists() || key.exists() {
        bail!(
            "{} holds half a cluster CA (ca.pem and ca-key.pem go together); restore the missing file, the agents trust no other CA",
            dir.display()
        );
    }
    std::fs::create_dir_all(&dir).with_context(|| format!("cannot create {}", dir.display()))?;
    let ca = agent::tls::make_ca()?;
    // The key first: a CA certificate without its key would be unusable.
    local::write_private(&key, ca.key_pem.as_bytes())
        .with_context(|| format!("cannot write {}", key.display()))?;
    local::write_private(&cert, ca.cert_pem.as_bytes())
        .with_context(|| format!("cannot write {}", cert.display()))?;
    std::fs::File::open(&dir)
        .and_then(|d| d.sync_all())
        .with_context(|| format!("cannot sync {}", dir.display()))?;
    Ok(ca)
}

/// The token a CLI command sends: `--token` or NDB_AGENT_TOKEN (clap reads both), else the
/// token file of `up`'s data directory.
pub fn client_token(token: Option<String>, token_file: &Path) -> anyhow::Result<String> {
    if let Some(t) = token
        .map(|t| t.trim().to_string())
        .filter(|t| !t.is_empty())
    {
        return Ok(t);
    }
    let t = std::fs::read_to_string(token_file).with_context(|| {
        format!(
            "no API token: pass --token, set {}, or point --token-file at the api-token file in the data directory of `ndb-agent up` (cannot read {})",
            agent::api_token::TOKEN_ENV,
            token_file.display()
        )
    })?;
    let t = t.trim().to_string();
    if t.is_empty() {
        bail!(
            "{} is empty: it should hold the cluster's API token",
            token_file.display()
        );
    }
    Ok(t)
}

/// `ndb-agent apply -f FILE --endpoint ADDR`.
pub fn apply_command(file: &Path, api: &Api) -> anyhow::Result<std::process::ExitCode> {
    let bytes = std::fs::read(file).with_context(|| format!("cannot read {}", file.display()))?;
    let (code, body) = tokio_runtime()?.block_on(api.put_desired(bytes))?;
    match code {
        202 => {
            println!(
                "desired state {} {}",
                body["id"],
                body["result"].as_str().unwrap_or("")
            );
            Ok(std::process::ExitCode::SUCCESS)
        }
        400 => {
            eprintln!("refused; nothing changed:");
            for e in body["errors"].as_array().into_iter().flatten() {
                eprintln!("  - {}", e.as_str().unwrap_or_default());
            }
            Ok(std::process::ExitCode::from(2))
        }
        _ => {
            eprintln!("the agent answered {code}: {}", body["errors"]);
            Ok(std::process::ExitCode::from(1))
        }
    }
}

/// `ndb-agent status --endpoint ADDR [--json]`.
pub fn status_command(api: &Api, json: bool) -> anyhow::Result<std::process::ExitCode> {
    let s = tokio_runtime()?.block_on(async {
        let s = api.status().await?;
        // RonDB's view of the programs is the leader's alone: ask it when another answered.
        let leader_http = s
            .agents
            .iter()
            .find(|a| Some(&a.vm) == s.leader_vm.as_ref() && a.vm != s.answered_by)
            .map(|a| a.http_addr.clone());
        match leader_http {
            Some(addr) => Ok(api.status_of(Some(&addr)).await.unwrap_or(s)),
            None => anyhow::Ok(s),
        }
    })?;
    if json {
        println!("{}", serde_json::to_string_pretty(&s)?);
        return Ok(std::process::ExitCode::SUCCESS);
    }
    println!("reconciliation: {}", s.reconciliation_state);
    println!(
        "accepted id:    {}",
        s.accepted_id
            .map(|i| i.to_string())
            .unwrap_or_else(|| "-".into())
    );
    println!(
        "pending id:     {}",
        s.pending_id
            .map(|i| i.to_string())
            .unwrap_or_else(|| "-".into())
    );
    println!(
        "leader:         {}",
        s.leader_vm.as_deref().unwrap_or("none")
    );
    if let Some(why) = &s.leader_problem {
        println!("                ({why})");
    }
    println!(
        "actions:        {} done, {} running",
        s.actions_completed, s.actions_in_flight
    );
    if let Some(e) = &s.last_error {
        println!("last error:     {e}");
    }
    let voters = s.agents.iter().filter(|a| a.voter).count();
    match s.agent_losses_survived {
        0 if s.agents.len() < 3 => println!(
            "fault tolerance: none ({} agent(s), {voters} voter(s)): losing the leader's agent stops reconciliation; three agents are needed to survive the loss of one",
            s.agents.len()
        ),
        0 => println!(
            "fault tolerance: none yet ({} agent(s), {voters} voter(s)): the leader is making more agents voters",
            s.agents.len()
        ),
        n => println!("fault tolerance: survives the loss of {n} agent(s) ({voters} voters)"),
    }
    if !s.mysqld_endpoints.is_empty() {
        println!("MySQL servers:  {}", s.mysqld_endpoints.join(", "));
    }
    let mut agents = comfy_table::Table::new();
    agents
        .load_style(comfy_table::presets::NOTHING)
        .set_header(["AGENT", "ROLE", "ZONE", "RAFT ID", "VOTER", "HTTP"]);
    for a in &s.agents {
        agents.add_row([
            a.vm.clone(),
            a.role.clone(),
            a.zone.clone(),
            a.raft_id.to_string(),
            if a.voter { "yes" } else { "no" }.to_string(),
            a.http_addr.clone(),
        ]);
    }
    let mut vms = comfy_table::Table::new();
    vms.load_style(comfy_table::presets::NOTHING).set_header([
        "VM",
        "ROLE",
        "ZONE",
        "ADDRESS",
        "PROGRAM",
        "RONDB SAYS",
    ]);
    for v in &s.vms {
        vms.add_row([
            v.name.clone(),
            v.role.clone(),
            v.zone.clone(),
            v.address.clone(),
            match (v.down, v.running) {
                (true, _) => "VM down",
                (false, true) => "running",
                (false, false) => "stopped",
            }
            .to_string(),
            v.rondb
                .iter()
                .map(ToString::to_string)
                .collect::<Vec<_>>()
                .join(", "),
        ]);
    }
    println!("\n{agents}\n\n{vms}");
    Ok(std::process::ExitCode::SUCCESS)
}

/// `ndb-agent down --data-dir DIR`: stops every agent of the directory (the bootstrap too).
pub fn down_command(data_dir: &Path, remove: bool) -> anyhow::Result<()> {
    let vms = data_dir.join("vms");
    let entries = match std::fs::read_dir(&vms) {
        Ok(e) => e,
        Err(_) => {
            println!("no cluster in {}", data_dir.display());
            return Ok(());
        }
    };
    let mut stopped = 0;
    for e in entries.flatten() {
        let dir = e.path();
        let pid = std::fs::read_to_string(dir.join(local::PID_FILE))
            .ok()
            .and_then(|s| s.trim().parse::<i32>().ok());
        if let Some(pid) = pid {
            let alive = std::fs::read(format!("/proc/{pid}/cmdline"))
                .map(|c| String::from_utf8_lossy(&c).contains("ndb-agent"))
                .unwrap_or(false);
            if alive {
                let _ = nix::sys::signal::kill(
                    nix::unistd::Pid::from_raw(pid),
                    nix::sys::signal::Signal::SIGKILL,
                );
                stopped += 1;
            }
        }
        // A VM that goes down stops everything on it, RonDB's programs too.
        local::kill_vm_processes(&dir);
    }
    println!("stopped {stopped} agent(s) of {}", data_dir.display());
    if remove {
        std::fs::remove_dir_all(data_dir)
            .with_context(|| format!("cannot remove {}", data_dir.display()))?;
        println!("removed {}", data_dir.display());
    } else {
        warn!("data kept in {}", data_dir.display());
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::expect_used)]
    use super::*;
    use std::os::unix::fs::PermissionsExt;

    fn mode(p: &Path) -> u32 {
        std::fs::metadata(p).unwrap().permissions().mode() & 0o777
    }

    #[test]
    fn up_makes_one_private_token_and_keeps_it() {
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join(agent::api_token::TOKEN_FILE);
        let t1 = ensure_api_token(dir.path(), None).unwrap();
        assert_eq!(t1.len(), 64, "256 random bits in hex");
        assert_eq!(mode(&file), 0o600);
        assert_eq!(std::fs::read_to_string(&file).unwrap().trim(), t1);
        // The next `up` on the same directory: the same token.
        assert_eq!(ensure_api_token(dir.path(), None).unwrap(), t1);
        // A copy left readable by others is made private again.
        std::fs::set_permissions(&file, std::fs::Permissions::from_mode(0o644)).unwrap();
        assert_eq!(ensure_api_token(dir.path(), None).unwrap(), t1);
        assert_eq!(mode(&file), 0o600);
        // A token given in the environment replaces it (rotation), and is what the file holds.
        let t2 = ensure_api_token(dir.path(), Some(" rotated \n".into())).unwrap();
        assert_eq!(t2, "rotated");
        assert_eq!(std::fs::read_to_string(&file).unwrap().trim(), "rotated");
        assert_eq!(mode(&file), 0o600);
        // Another data directory gets another random token.
        let other = tempfile::tempdir().unwrap();
        assert_ne!(ensure_api_token(other.path(), None).unwrap(), t1);
    }

    #[test]
    fn a_client_takes_the_flag_or_environment_first_then_the_file_and_says_what_is_missing() {
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("api-token");
        assert_eq!(client_token(Some("abc".into()), &file).unwrap(), "abc");
        let e = client_token(None, &file).unwrap_err().to_string();
        assert!(
            e.contains("--token") && e.contains("NDB_AGENT_TOKEN"),
            "{e}"
        );
        assert!(e.contains(&file.display().to_string()), "{e}");
        std::fs::write(&file, "from-file\n").unwrap();
        assert_eq!(client_token(None, &file).unwrap(), "from-file");
        assert_eq!(client_token(Some("  ".into()), &file).unwrap(), "from-file");
        std::fs::write(&file, "\n").unwrap();
        assert!(client_token(None, &file).is_err());
    }
}
