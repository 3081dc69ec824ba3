//! `ndb-agent`: the one binary of managed RonDB. It wires the backends chosen by flags to the
//! reconciler in `agent-core`.

use anyhow::Context;
use clap::{Parser, Subcommand, ValueEnum};
use std::path::PathBuf;
use std::process::ExitCode;

#[derive(Parser)]
#[command(
    name = "ndb-agent",
    version,
    about = "Managed RonDB agent: validates desired states and reconciles RonDB clusters towards them"
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

/// Where the VMs of a cluster live.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
enum ProviderArg {
    /// Agent processes on this machine, under DATA_DIR/vms.
    Local,
    /// Containers on a user-defined Docker network, made by the cluster's cloud front
    /// container (`<cluster>-front`, the only one holding the Docker socket), which `up`
    /// starts, starts again or uses.
    Docker,
    /// As `docker`, but the front makes the containers through Terraform (the local-docker
    /// target; front image from compose/images/build-front.sh).
    Terraform,
    /// VMs made by a cloud front (`ndb-agent cloud-front`): this agent runs where the VMs
    /// reach it and holds no key to the cloud.
    Front,
}

/// What the cloud front makes VMs with.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
enum FrontProviderArg {
    /// Containers, through the Docker socket.
    Docker,
    /// Resources of a Terraform root module (`--target`).
    Terraform,
}

/// Where the cloud front's Terraform creates VMs.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
enum TargetArg {
    /// VM containers on this machine's Docker engine (`terraform_data` + local-exec).
    LocalDocker,
}

/// How the agents run RonDB programs.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
enum RuntimeArg {
    /// Pretended programs: real configuration files and command lines, no RonDB process.
    Dummy,
    /// RonDB's programs as processes, installed from the desired state's RonDB tarballs;
    /// every local VM gets a loopback address of its own.
    Direct,
    /// RonDB's programs under supervisord, installed from the desired state's RonDB
    /// tarballs (containers: `--provider docker`, the agent image runs supervisord).
    Supervisord,
}

impl RuntimeArg {
    fn kind(self) -> providers::RuntimeKind {
        match self {
            RuntimeArg::Dummy => providers::RuntimeKind::Dummy,
            RuntimeArg::Direct => providers::RuntimeKind::Direct,
            RuntimeArg::Supervisord => providers::RuntimeKind::Supervisord,
        }
    }
}

/// How a client proves it may use the cluster's API.
#[derive(clap::Args)]
struct TokenArgs {
    /// The cluster's API token (prefer NDB_AGENT_TOKEN or --token-file: a command line is
    /// visible to every user of the machine).
    #[arg(long, env = "NDB_AGENT_TOKEN", hide_env_values = true)]
    token: Option<String>,
    /// The file holding the token: `ndb-agent up` writes DATA_DIR/api-token.
    #[arg(long, default_value = "ndb-data/api-token")]
    token_file: PathBuf,
    /// The cluster CA's certificate, against which an agent whose API leaves loopback
    /// (HTTPS) is checked: `ndb-agent up` keeps it in DATA_DIR/tls/ca.pem.
    #[arg(long, env = "NDB_AGENT_CA_FILE", default_value = "ndb-data/tls/ca.pem")]
    ca_file: PathBuf,
}

impl TokenArgs {
    fn api(self, endpoint: &str) -> anyhow::Result<ndb_agent::cluster::Api> {
        let token = ndb_agent::cluster::client_token(self.token, &self.token_file)?;
        let ca = if agent::https::is_https(endpoint) {
            Some(std::fs::read_to_string(&self.ca_file).with_context(|| {
                format!(
                    "the agent at {endpoint} serves HTTPS (its API leaves loopback) and is checked against the cluster CA, but {} cannot be read; give --ca-file (DATA_DIR/tls/ca.pem of `ndb-agent up`)",
                    self.ca_file.display()
                )
            })?)
        } else {
            None
        };
        ndb_agent::cluster::Api::new(endpoint, token, ca.as_deref())
    }
}

#[derive(Subcommand)]
enum Command {
    /// Check a desired-state file (JSONC) against every rule, and optionally the transition
    /// from the previously accepted one. Exit 0 when valid, 2 with every error when not.
    Validate {
        /// The desired-state file to check.
        file: PathBuf,
        /// The last accepted desired state; enables the transition rules (stale Id,
        /// immutable fields, clocks that never decrease, ...).
        #[arg(long)]
        previous: Option<PathBuf>,
        /// Treat the cluster as one where RonDB has already run (restore no longer allowed).
        #[arg(long)]
        rondb_has_run: bool,
    },
    /// Run the real reconciler against a simulated cloud (mock provider, dummy runtime) in
    /// simulated time, starting from an empty world and submitting each file in order.
    Simulate {
        /// Desired-state files, submitted one after the other.
        #[arg(required = true)]
        files: Vec<PathBuf>,
        /// One JSON object per submitted desired state on its own line.
        #[arg(long)]
        json: bool,
        /// Seed of fault and ordering randomness.
        #[arg(long, default_value_t = 1)]
        seed: u64,
        /// Probability that an action fails transiently (and changes nothing).
        #[arg(long, default_value_t = 0.0)]
        fault_rate: f64,
        /// Probability, per action, that a VM whose loss the cluster survives disappears.
        #[arg(long, default_value_t = 0.0)]
        vm_loss_rate: f64,
        /// Probability, per action, that a VM stops (down, disks kept) until the agents start
        /// it again.
        #[arg(long, default_value_t = 0.0)]
        vm_down_rate: f64,
        /// Simulates the agents' Raft log too: the leader hands over before its own VM goes,
        /// dies with its VM, and loses its leadership at each write with this probability.
        #[arg(long)]
        leader_change_rate: Option<f64>,
        /// A backup of another cluster already present in the sink (repeatable).
        #[arg(long = "existing-backup")]
        existing_backup: Vec<u64>,
        /// Attempts of one action before ERROR_STATE.
        #[arg(long, default_value_t = 3)]
        max_attempts: u32,
        /// JSON object overriding action durations in seconds, e.g.
        /// {"create_vm": 120, "start_data_node_initial": 300}.
        #[arg(long)]
        cost_model: Option<PathBuf>,
    },
    /// Start a managed cluster on this machine: runs the bootstrap agent (local provider:
    /// every VM is an agent process under DATA_DIR/vms), applies the desired-state file,
    /// follows every saved edit of it and prints the reconciliation's progress.
    Up {
        /// The desired-state file (JSONC) to apply and watch.
        #[arg(long)]
        desired_state: PathBuf,
        /// Where the VMs' directories live.
        #[arg(long, default_value = "ndb-data")]
        data_dir: PathBuf,
        /// The bootstrap agent's HTTP API address.
        #[arg(long, default_value = "127.0.0.1:8181")]
        http: String,
        /// The ProcessRuntime of the agents.
        #[arg(long, value_enum, default_value_t = RuntimeArg::Dummy)]
        runtime: RuntimeArg,
        /// Where VMs live.
        #[arg(long, value_enum, default_value_t = ProviderArg::Local)]
        provider: ProviderArg,
        /// docker: the cluster's name (container and volume names, label value).
        #[arg(long, default_value = "managed-rondb")]
        cluster_name: String,
        /// docker: the user-defined network of the VMs.
        #[arg(long, default_value = "managed-rondb")]
        docker_network: String,
        /// docker, terraform: the agent image of the VMs.
        #[arg(long, default_value = "managed-rondb/ndb-agent:latest")]
        agent_image: String,
        /// docker, terraform: the image of the cloud front container (default: the agent
        /// image for docker, managed-rondb/cloud-front:latest for terraform).
        #[arg(long)]
        front_image: Option<String>,
        /// front: the cloud front's URL as the VMs reach it.
        #[arg(long, required_if_eq("provider", "front"))]
        front_url: Option<String>,
        /// front: the cluster's credential file (DATA_DIR/clusters/CLUSTER/credential of the
        /// front); NDB_FRONT_CREDENTIAL gives it instead.
        #[arg(long, env = "NDB_FRONT_CREDENTIAL_FILE")]
        front_credential_file: Option<PathBuf>,
        /// front: the cluster CA the front's HTTPS is checked against
        /// (DATA_DIR/clusters/CLUSTER/tls/ca.pem of the front; default: tls/ca.pem beside
        /// --front-credential-file). Not needed for a front on loopback (plain HTTP).
        #[arg(long, env = "NDB_FRONT_CA_FILE")]
        front_ca_file: Option<PathBuf>,
        /// PREFIX=REPLACEMENT: fetch tarballs whose link starts with PREFIX from REPLACEMENT
        /// (an http(s) URL or file:///DIR/) instead; repeatable. scripts/up.sh serves the
        /// stand-in's tarballs this way.
        #[arg(long = "artifact-mirror", value_name = "PREFIX=REPLACEMENT")]
        artifact_mirrors: Vec<agent_core::artifacts::ArtifactMirror>,
    },
    /// Run the cloud front of one cluster: the only holder of the cloud's keys (Terraform,
    /// its state), it creates and deletes the cluster's VMs when the cluster's leader asks.
    CloudFront {
        /// The cluster's name (container names, labels).
        #[arg(long)]
        cluster: String,
        /// Where the front keeps the cluster's credential, CA and Terraform state.
        #[arg(long, default_value = "front-data")]
        data_dir: PathBuf,
        /// The address the front listens on.
        #[arg(long, default_value = "0.0.0.0:9090")]
        listen: String,
        /// The front's URL as the VMs reach it.
        #[arg(long)]
        url: String,
        /// What makes the VMs.
        #[arg(long, value_enum, default_value_t = FrontProviderArg::Docker)]
        provider: FrontProviderArg,
        /// terraform: the target VMs are created with.
        #[arg(long, value_enum, default_value_t = TargetArg::LocalDocker)]
        target: TargetArg,
        /// The `terraform` program (scripts/install-terraform.sh prints one).
        #[arg(long, env = "TERRAFORM", default_value = "terraform")]
        terraform: PathBuf,
        /// The ProcessRuntime of the agents.
        #[arg(long, value_enum, default_value_t = RuntimeArg::Dummy)]
        runtime: RuntimeArg,
        /// docker, local-docker: the user-defined network of the VMs (it must have a subnet).
        #[arg(long, default_value = "managed-rondb")]
        docker_network: String,
        /// local-docker: that network's subnet; VMs get fixed addresses from host 16 up.
        #[arg(long, default_value = "10.213.0.0/24")]
        subnet: String,
        /// docker, local-docker: the agent image of the VMs.
        #[arg(long, default_value = "managed-rondb/ndb-agent:latest")]
        agent_image: String,
        /// A desired-state file (JSONC) the front applies and follows (every saved edit),
        /// through the cluster's agents; needs the cluster's API token.
        #[arg(long)]
        desired_state: Option<PathBuf>,
        /// With --desired-state: the cluster's API token file (the bootstrap agent's
        /// DATA_DIR/api-token); NDB_AGENT_TOKEN gives it instead.
        #[arg(long)]
        token_file: Option<PathBuf>,
    },
    /// Run the agent of one local VM (started by the local provider).
    Agent {
        /// The VM's directory (holds vm.json).
        #[arg(long)]
        vm_dir: PathBuf,
    },
    /// Submit a desired state to a cluster (any agent; followers forward to the leader).
    Apply {
        /// The desired-state file (JSONC).
        #[arg(short = 'f', long = "file")]
        file: PathBuf,
        /// An agent's HTTP API address.
        #[arg(long, default_value = "127.0.0.1:8181")]
        endpoint: String,
        #[command(flatten)]
        auth: TokenArgs,
    },
    /// Show the reconciliation state, the agents and the VMs of a cluster.
    Status {
        /// An agent's HTTP API address.
        #[arg(long, default_value = "127.0.0.1:8181")]
        endpoint: String,
        #[command(flatten)]
        auth: TokenArgs,
        /// The raw JSON of GET /status.
        #[arg(long)]
        json: bool,
    },
    /// Stop every agent of a local cluster (and with --remove, delete its data directory).
    Down {
        #[arg(long, default_value = "ndb-data")]
        data_dir: PathBuf,
        #[arg(long)]
        remove: bool,
        /// Where the cluster's VMs live: `local` (this machine), or `front` (the cloud front
        /// deletes every VM; needs --remove, --front-url and --cluster-name).
        #[arg(long, value_enum, default_value_t = ProviderArg::Local)]
        provider: ProviderArg,
        /// front: the cloud front's URL.
        #[arg(long, required_if_eq("provider", "front"))]
        front_url: Option<String>,
        /// front: the cluster's name.
        #[arg(long, required_if_eq("provider", "front"))]
        cluster_name: Option<String>,
        /// front: the cluster's credential file; NDB_FRONT_CREDENTIAL gives it instead.
        #[arg(long, env = "NDB_FRONT_CREDENTIAL_FILE")]
        front_credential_file: Option<PathBuf>,
        /// front: the cluster CA the front's HTTPS is checked against (default: tls/ca.pem
        /// beside --front-credential-file).
        #[arg(long, env = "NDB_FRONT_CA_FILE")]
        front_ca_file: Option<PathBuf>,
    },
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    match run(cli) {
        Ok(code) => code,
        Err(e) => {
            eprintln!("error: {e:#}");
            ExitCode::from(1)
        }
    }
}

fn run(cli: Cli) -> anyhow::Result<ExitCode> {
    match cli.command {
        Command::Validate {
            file,
            previous,
            rondb_has_run,
        } => validate(&file, previous.as_deref(), rondb_has_run),
        Command::Up {
            desired_state,
            data_dir,
            http,
            runtime,
            provider,
            cluster_name,
            docker_network,
            agent_image,
            front_image,
            front_url,
            front_credential_file,
            front_ca_file,
            artifact_mirrors,
        } => {
            let (provider, front_ca) = match provider {
                ProviderArg::Local => (
                    providers::ProviderConfig::Local {
                        data_dir: data_dir.clone(),
                    },
                    None,
                ),
                ProviderArg::Docker | ProviderArg::Terraform => {
                    let kind = if provider == ProviderArg::Terraform {
                        providers::docker::FrontKind::Terraform
                    } else {
                        providers::docker::FrontKind::Docker
                    };
                    let front_image = front_image.unwrap_or_else(|| match kind {
                        providers::docker::FrontKind::Docker => agent_image.clone(),
                        providers::docker::FrontKind::Terraform => {
                            "managed-rondb/cloud-front:latest".into()
                        }
                    });
                    let (provider, ca) = ndb_agent::front::start_front_container(
                        providers::docker::FrontContainer {
                            kind,
                            image: front_image,
                            cfg: providers::DockerConfig {
                                cluster: cluster_name,
                                network: docker_network,
                                image: agent_image,
                                env: std::env::vars()
                                    .filter(|(k, _)| ndb_agent::cluster::passed_on_to_vms(k))
                                    .collect(),
                            },
                            runtime: runtime.kind(),
                            credential: ndb_agent::front::bootstrap_credential(&data_dir)?,
                        },
                    )?;
                    (provider, Some(ca))
                }
                ProviderArg::Front => {
                    let url = front_url.unwrap_or_default();
                    // The front may be starting beside this agent (the Docker demo).
                    let patience = std::time::Duration::from_secs(120);
                    let ca = ndb_agent::front::client_ca(
                        &url,
                        front_ca_file,
                        front_credential_file.as_deref(),
                        patience,
                    )?;
                    let provider = providers::ProviderConfig::Front(providers::FrontConfig {
                        url,
                        cluster: cluster_name,
                        credential: ndb_agent::front::client_credential(
                            front_credential_file,
                            patience,
                        )?,
                    });
                    (provider, ca)
                }
            };
            ndb_agent::cluster::up_command(ndb_agent::cluster::UpOptions {
                desired_state,
                data_dir,
                http,
                runtime: runtime.kind(),
                provider,
                artifact_mirrors,
                front_ca,
            })
        }
        Command::CloudFront {
            cluster,
            data_dir,
            listen,
            url,
            provider,
            target,
            terraform,
            runtime,
            docker_network,
            subnet,
            agent_image,
            desired_state,
            token_file,
        } => {
            let follow = match desired_state {
                None => None,
                Some(file) => {
                    let token = ndb_agent::cluster::client_token(
                        std::env::var(agent::api_token::TOKEN_ENV).ok(),
                        token_file
                            .as_deref()
                            .unwrap_or(std::path::Path::new("api-token")),
                    )?;
                    Some((file, token))
                }
            };
            let env = std::env::vars()
                .filter(|(k, _)| ndb_agent::cluster::passed_on_to_vms(k))
                .collect();
            let backend = match (provider, target) {
                (FrontProviderArg::Docker, _) => {
                    ndb_agent::front::BackendOptions::Docker(providers::DockerConfig {
                        cluster: cluster.clone(),
                        network: docker_network,
                        image: agent_image,
                        env,
                    })
                }
                (FrontProviderArg::Terraform, TargetArg::LocalDocker) => {
                    ndb_agent::front::BackendOptions::Terraform {
                        terraform,
                        target: providers::TerraformTarget::LocalDocker {
                            cluster: cluster.clone(),
                            network: docker_network,
                            subnet,
                            image: agent_image,
                            env,
                        },
                    }
                }
            };
            ndb_agent::front::front_command(ndb_agent::front::FrontOptions {
                listen,
                url,
                data_dir,
                cluster,
                runtime: runtime.kind(),
                backend,
                follow,
            })?;
            Ok(ExitCode::SUCCESS)
        }
        Command::Agent { vm_dir } => {
            ndb_agent::cluster::agent_command(&vm_dir)?;
            Ok(ExitCode::SUCCESS)
        }
        Command::Apply {
            file,
            endpoint,
            auth,
        } => ndb_agent::cluster::apply_command(&file, &auth.api(&endpoint)?),
        Command::Status {
            endpoint,
            auth,
            json,
        } => ndb_agent::cluster::status_command(&auth.api(&endpoint)?, json),
        Command::Down {
            data_dir,
            remove,
            provider,
            front_url,
            cluster_name,
            front_credential_file,
            front_ca_file,
        } => {
            match provider {
                ProviderArg::Local => ndb_agent::cluster::down_command(&data_dir, remove)?,
                ProviderArg::Front => {
                    anyhow::ensure!(
                        remove,
                        "down --provider front deletes every VM of the cluster and its disks; say so with --remove"
                    );
                    let url = front_url.unwrap_or_default();
                    let ca = ndb_agent::front::client_ca(
                        &url,
                        front_ca_file,
                        front_credential_file.as_deref(),
                        std::time::Duration::ZERO,
                    )?;
                    ndb_agent::front::down_command(
                        providers::FrontConfig {
                            url,
                            cluster: cluster_name.unwrap_or_default(),
                            credential: ndb_agent::front::client_credential(
                                front_credential_file,
                                std::time::Duration::ZERO,
                            )?,
                        },
                        ca.as_deref(),
                    )?;
                }
                ProviderArg::Docker | ProviderArg::Terraform => anyhow::bail!(
                    "down --provider docker|terraform: use `down --provider front --remove` with the front's URL (or compose/down.sh for the Docker demo)"
                ),
            }
            Ok(ExitCode::SUCCESS)
        }
        Command::Simulate {
            files,
            json,
            seed,
            fault_rate,
            vm_loss_rate,
            vm_down_rate,
            leader_change_rate,
            existing_backup,
            max_attempts,
            cost_model,
        } => {
            let cost = match cost_model {
                Some(path) => {
                    let text = std::fs::read_to_string(&path)
                        .with_context(|| format!("cannot read {}", path.display()))?;
                    serde_json::from_str(&text).with_context(|| {
                        format!(
                            "{}: not a cost model (a JSON object of action durations in seconds)",
                            path.display()
                        )
                    })?
                }
                None => agent_core::cost::CostModel::default(),
            };
            if [
                fault_rate,
                vm_loss_rate,
                vm_down_rate,
                leader_change_rate.unwrap_or(0.0),
            ]
            .iter()
            .any(|p| !(0.0..=1.0).contains(p))
            {
                anyhow::bail!("--fault-rate, --vm-loss-rate, --vm-down-rate and --leader-change-rate are probabilities between 0 and 1");
            }
            let opts = ndb_agent::simulation::SimOptions {
                seed,
                faults: sim_world::FaultConfig {
                    action_failure_rate: fault_rate,
                    vm_loss_rate,
                    process_death_rate: 0.0,
                    vm_down_rate,
                },
                existing_backups: existing_backup,
                max_attempts,
                cost,
                leader_change_rate,
            };
            simulate(&files, json, &opts)
        }
    }
}

fn validate(
    file: &std::path::Path,
    previous: Option<&std::path::Path>,
    rondb_has_run: bool,
) -> anyhow::Result<ExitCode> {
    use agent_core::desired::{self, TransitionContext};
    let load =
        |p: &std::path::Path| -> anyhow::Result<Result<agent_core::DesiredState, Vec<String>>> {
            let bytes = std::fs::read(p).with_context(|| format!("cannot read {}", p.display()))?;
            Ok(desired::parse(&bytes).map_err(|e| e.problems()))
        };
    let mut errors = Vec::new();
    let new = match load(file)? {
        Ok(d) => Some(d),
        Err(p) => {
            errors.extend(p.into_iter().map(|e| format!("{}: {e}", file.display())));
            None
        }
    };
    let old = match previous {
        Some(p) => match load(p)? {
            Ok(d) => Some(d),
            Err(errs) => {
                errors.extend(
                    errs.into_iter()
                        .map(|e| format!("{} (--previous): {e}", p.display())),
                );
                None
            }
        },
        None => None,
    };
    if let Some(new) = &new {
        let mut v = desired::validate(new);
        match (&old, previous) {
            (Some(old), _) => v.extend(desired::validate_transition(
                old,
                new,
                TransitionContext { rondb_has_run },
            )),
            (None, None) => v.extend(desired::validate_first(new)),
            (None, Some(_)) => {}
        }
        errors.extend(v.into_iter().map(|e| format!("{}: {e}", file.display())));
    }
    match new {
        Some(d) if errors.is_empty() => {
            println!("valid: {}", d.summary());
            Ok(ExitCode::SUCCESS)
        }
        _ => {
            eprintln!("invalid: {} problem(s)", errors.len());
            for e in errors {
                eprintln!("  {e}");
            }
            Ok(ExitCode::from(2))
        }
    }
}

fn simulate(
    files: &[PathBuf],
    json: bool,
    opts: &ndb_agent::simulation::SimOptions,
) -> anyhow::Result<ExitCode> {
    use agent_core::desired;
    let mut all_ok = true;
    {
        let mut sim = ndb_agent::simulation::Simulation::new(opts);
        sim.set_verbose(!json);
        for file in files {
            let bytes =
                std::fs::read(file).with_context(|| format!("cannot read {}", file.display()))?;
            let report = match desired::parse(&bytes) {
                Ok(d) => {
                    if !json {
                        println!("== {}: submitting {}", file.display(), d.summary());
                    }
                    sim.submit(d)
                }
                Err(e) => ndb_agent::simulation::StepReport {
                    desired_id: 0,
                    outcome: "REJECTED".into(),
                    rejection: Some(e.problems().join("; ")),
                    makespan_s: 0.0,
                    actions: vec![],
                    invariant_violations: vec![],
                    cluster: None,
                    error: None,
                },
            };
            if report.outcome != "AT_DESIRED_STATE" || !report.invariant_violations.is_empty() {
                all_ok = false;
            }
            if json {
                println!("{}", serde_json::to_string(&report)?);
            } else {
                println!(
                    "== {}: {} after {:.1} simulated s, {} action(s){}",
                    file.display(),
                    report.outcome,
                    report.makespan_s,
                    report.actions.len(),
                    report
                        .rejection
                        .as_ref()
                        .or(report.error.as_ref())
                        .map(|r| format!("\n   reason: {r}"))
                        .unwrap_or_default()
                );
                for v in &report.invariant_violations {
                    println!("   SAFETY RULE BROKEN: {v}");
                }
            }
        }
    }
    Ok(if all_ok {
        ExitCode::SUCCESS
    } else {
        ExitCode::from(3)
    })
}
