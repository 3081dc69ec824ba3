//! The RonDB-detached Docker tier: the docker provider (bollard) run by the cluster's cloud
//! front container that `up --provider docker` starts (the only one holding the Docker
//! socket, checked), the dummy runtime, the images built here (compose/images/build.sh),
//! agents talking across containers. A fixed
//! sequence of desired states, each asserted to reach AT_DESIRED_STATE with the containers by
//! role matching it: create 2x2 + 2 MySQLds + 1 API; MySQLds 2 -> 4 -> 1; replicas 2 -> 3;
//! rolling restart; agent 0.999 -> 1.0 -> 0.999 (the version each container runs checked);
//! a backup taken and deleted; a VM-type change replacing containers; every container stopped
//! (`docker stop`, a host restart) and started again, resuming the same containers and Raft
//! ids; the bootstrap container removed and leadership moved; the leader container killed
//! (`docker kill`) in the middle of a change, the change completed and the container started
//! again; the leader cut off the network (`docker network disconnect`) in the middle of a
//! rolling restart, a new leader elected, the old one following once reconnected, no operation
//! run twice; replicas 3 -> 1.
//! Everything it creates carries the label `managed-rondb.cluster=<unique name>` and is removed
//! at the end, also when the test fails. Docker must be running: without it the test fails.

#![allow(clippy::expect_used, clippy::unwrap_used, clippy::panic)]

#[path = "../common/agents_client.rs"]
mod agents_client;
#[path = "../common/docker_cli.rs"]
mod docker_cli;

use agent::http::Status;
use agents_client::AgentsClient;

use bollard::models::HostConfig;
use bollard::models::{
    ContainerCreateBody as Config, EndpointIpamConfig, EndpointSettings, Ipam, IpamConfig,
    NetworkCreateRequest, NetworkingConfig,
};
use bollard::query_parameters::{
    CreateContainerOptionsBuilder, InspectContainerOptions, KillContainerOptions,
    ListContainersOptionsBuilder, RemoveContainerOptionsBuilder, StartContainerOptions,
};
use bollard::Docker;
use std::collections::{BTreeMap, HashMap};
use std::time::{Duration, Instant};

const BIN: &str = env!("CARGO_BIN_EXE_ndb-agent");
const IMAGE: &str = "managed-rondb/ndb-agent:latest";

#[derive(Clone)]
struct Spec {
    id: u64,
    running_since: u64,
    replicas: u32,
    mysqlds: u32,
    agent: &'static str,
    backups: Vec<u64>,
    mysqld_type: &'static str,
}

fn render(s: &Spec, cluster: &str) -> String {
    let backups: Vec<String> = s
        .backups
        .iter()
        .map(|id| format!(r#"{{ "Id": {id}, "SinkType": "local", "SinkParameters": {{ "Directory": "/var/lib/ndb-agent/backups" }} }}"#))
        .collect();
    format!(
        r#"{{
  "Id": {id}, "RonDBRunning": true, "RonDBRunningSince": {rs},
  "RonDBVersion": "22.10.1",
  "RonDBDownloadLink": "http://{cluster}-artifacts:8080/rondb/rondb-22.10.1-linux-glibc2.28-x86_64.tar.gz",
  "NdbAgentRunningSince": 1, "NdbAgentVersion": "{agent}",
  "NdbAgentDownloadLink": "http://{cluster}-artifacts:8080/ndb-agent/ndb-agent-{agent}.tar.gz",
  "SingleBackups": [{backups}],
  "TotalMemoryConfig": "2400M", "MaxReplicationFactor": 3, "ActiveReplicationFactor": {replicas},
  "NumNodeGroups": 2, "NumTotalMgmdSlots": 2, "NumTotalMysqldSlots": 8, "NumTotalApiSlots": 8,
  "NumMysqldSlotsPerVm": 1, "NumApiSlotsPerVm": 1,
  "NumManagedMgmdVms": 1, "NumManagedMysqldVms": {mysqlds}, "NumManagedApiVms": 1,
  "ExternallyManagedNodes": [], "AllowRequestingTemporaryVms": true,
  "Region": "local", "AvailabilityZones": ["zone-a", "zone-b", "zone-c"],
  "VmTypeMgmds": "mini", "VmTypeNdbds": "small", "VmTypeMysqlds": "{mt}", "VmTypeApis": "mini",
  "StorageGiBPerMgmdVm": 5, "StorageGiBPerNdbdVm": 20, "StorageGiBPerMysqldVm": 5, "StorageGiBPerApiVm": 5,
  "DefaultMgmdPort": 1186, "DefaultNdbdPort": 11860, "DefaultMysqldPort": 3306
}}"#,
        id = s.id,
        rs = s.running_since,
        agent = s.agent,
        backups = backups.join(", "),
        replicas = s.replicas,
        mysqlds = s.mysqlds,
        mt = s.mysqld_type,
    )
}

/// Everything the test created, removed on drop.
struct Cluster {
    docker: Docker,
    rt: tokio::runtime::Runtime,
    name: String,
    dir: tempfile::TempDir,
    agents: AgentsClient,
}

impl Drop for Cluster {
    fn drop(&mut self) {
        let label = format!("managed-rondb.cluster={}", self.name);
        for (what, args) in [
            ("containers", vec!["ps", "-aq", "--filter"]),
            ("volumes", vec!["volume", "ls", "-q", "--filter"]),
            ("networks", vec!["network", "ls", "-q", "--filter"]),
        ] {
            let out = std::process::Command::new("docker")
                .args(&args)
                .arg(format!("label={label}"))
                .output();
            let ids: Vec<String> = out
                .map(|o| {
                    String::from_utf8_lossy(&o.stdout)
                        .split_whitespace()
                        .map(str::to_string)
                        .collect()
                })
                .unwrap_or_default();
            if ids.is_empty() {
                continue;
            }
            let rm: Vec<&str> = match what {
                "containers" => vec!["rm", "-f", "-v"],
                "volumes" => vec!["volume", "rm", "-f"],
                _ => vec!["network", "rm"],
            };
            let _ = std::process::Command::new("docker")
                .args(&rm)
                .args(&ids)
                .output();
        }
    }
}

impl Cluster {
    /// The cluster's running containers.
    fn list(&self) -> Vec<bollard::models::ContainerSummary> {
        self.containers(false)
    }

    /// The cluster's containers; `all`: stopped ones too.
    fn containers(&self, all: bool) -> Vec<bollard::models::ContainerSummary> {
        let filters = HashMap::from([(
            "label".to_string(),
            vec![format!("managed-rondb.cluster={}", self.name)],
        )]);
        self.rt
            .block_on(
                self.docker.list_containers(Some(
                    ListContainersOptionsBuilder::new()
                        .all(all)
                        .filters(&filters)
                        .build(),
                )),
            )
            .expect("docker ps")
    }

    /// Every container of the cluster, running or not: (name, id).
    fn all_containers(&self) -> Vec<(String, String)> {
        self.containers(true)
            .into_iter()
            .map(|c| {
                let name = c
                    .names
                    .unwrap_or_default()
                    .first()
                    .cloned()
                    .unwrap_or_default()
                    .trim_start_matches('/')
                    .to_string();
                (name, c.id.unwrap_or_default())
            })
            .collect()
    }

    /// Running VM containers per role (bootstrap and artifact server excluded).
    fn roles(&self) -> BTreeMap<String, usize> {
        let mut out = BTreeMap::new();
        for c in self.list() {
            let role = c
                .labels
                .unwrap_or_default()
                .get("managed-rondb.role")
                .cloned()
                .unwrap_or_default();
            if ["mgmd", "ndbd", "mysqld", "api"].contains(&role.as_str()) {
                *out.entry(role).or_insert(0) += 1;
            }
        }
        out
    }

    fn vm_containers(&self) -> Vec<(String, String)> {
        self.list()
            .into_iter()
            .filter_map(|c| {
                let l = c.labels.unwrap_or_default();
                let role = l.get("managed-rondb.role")?.clone();
                ["mgmd", "ndbd", "mysqld", "api"]
                    .contains(&role.as_str())
                    .then(|| {
                        (
                            c.names
                                .unwrap_or_default()
                                .first()
                                .cloned()
                                .unwrap_or_default()
                                .trim_start_matches('/')
                                .to_string(),
                            role,
                        )
                    })
            })
            .collect()
    }

    fn status(&self) -> Option<Status> {
        self.agents.status()
    }

    fn wait(&self, what: &str, pred: impl Fn(&Status, &Cluster) -> bool) -> Status {
        let last = match self
            .agents
            .wait_until(Duration::from_secs(240), |s| pred(s, self))
        {
            Ok((s, took)) => {
                eprintln!("  {what}: {:.1} s", took.as_secs_f64());
                return s;
            }
            Err(last) => *last,
        };
        let logs_of = |vm: &str, lines: &str| {
            std::process::Command::new("docker")
                .args(["logs", "--tail", lines, &format!("{}-{vm}", self.name)])
                .output()
                .map(|o| {
                    String::from_utf8_lossy(&o.stdout).to_string()
                        + &String::from_utf8_lossy(&o.stderr)
                })
                .unwrap_or_default()
        };
        let logs = logs_of("bootstrap", "40");
        // Each agent's own view: which ones hear a leader, and what the others say.
        let views: Vec<String> = last
            .as_ref()
            .map(|s| {
                s.agents
                    .iter()
                    .map(|a| match self.agents.status_at(&a.http_addr) {
                        Some(own) => format!(
                            "{} (voter {}): leader {:?}, {:?}",
                            a.vm, a.voter, own.leader_vm, own.leader_problem
                        ),
                        None => format!("{} (voter {}): no answer", a.vm, a.voter),
                    })
                    .collect()
            })
            .unwrap_or_default();
        // The voters' own last words: why they do (not) elect.
        let voter_logs: Vec<String> = last
            .as_ref()
            .map(|s| {
                s.agents
                    .iter()
                    .filter(|a| a.voter && a.vm != "bootstrap")
                    .map(|a| format!("--- {} (last 25 lines)\n{}", a.vm, logs_of(&a.vm, "25")))
                    .collect()
            })
            .unwrap_or_default();
        panic!(
            "timed out waiting for {what}\nlast status: {}\neach agent's view:\n  {}\ncontainers: {:?}\nbootstrap log:\n{logs}\nvoters' logs:\n{}",
            serde_json::to_string_pretty(&last).unwrap_or_default(),
            views.join("\n  "),
            self.vm_containers(),
            voter_logs.join("\n")
        );
    }

    /// Submits desired state `s`; a 503 (no leader right now, or leadership moving while
    /// it was recorded) is retried for up to 30 s, as the API asks every client to.
    fn apply(&self, s: &Spec) {
        let body = render(s, &self.name);
        let t = Instant::now();
        let mut retried = false;
        loop {
            let st = self.status().expect("a live agent");
            if retried && (st.accepted_id == Some(s.id) || st.pending_id == Some(s.id)) {
                // The attempt that answered 503 was recorded after all.
                return;
            }
            let addr = st
                .agents
                .iter()
                .find(|a| a.vm == st.answered_by)
                .map(|a| a.http_addr.clone())
                .unwrap();
            let (code, answer) = self.agents.put_desired(&addr, &body);
            if code == 503 && t.elapsed() < Duration::from_secs(30) {
                eprintln!("  desired state {}: {answer}; retrying", s.id);
                std::thread::sleep(Duration::from_millis(500));
                retried = true;
                continue;
            }
            assert_eq!(code, 202, "desired state {} refused: {answer}", s.id);
            return;
        }
    }

    fn agent_versions(&self) -> Vec<String> {
        let st = self.status().expect("status");
        st.agents
            .iter()
            .filter(|a| a.role != "bootstrap")
            .filter_map(|a| {
                let v = self.agents.health(&a.http_addr)?;
                v["agent_version"].as_str().map(str::to_string)
            })
            .collect()
    }

    /// Every VM container's calls.log (the dummy runtime's record of what it was asked to
    /// do, one line per call with its operation id), by container.
    fn calls(&self) -> BTreeMap<String, Vec<String>> {
        self.vm_containers()
            .into_iter()
            .map(|(name, _)| {
                let out = std::process::Command::new("docker")
                    .args(["exec", &name, "cat", "/var/lib/ndb-agent/runtime/calls.log"])
                    .output()
                    .map(|o| String::from_utf8_lossy(&o.stdout).to_string())
                    .unwrap_or_default();
                (name, out.lines().map(str::to_string).collect())
            })
            .collect()
    }

    fn docker_exec_grep(&self, role: &str, pattern: &str) -> bool {
        self.vm_containers()
            .iter()
            .filter(|(_, r)| r == role)
            .any(|(name, _)| {
                std::process::Command::new("docker")
                    .args([
                        "exec",
                        name,
                        "grep",
                        "-q",
                        pattern,
                        "/var/lib/ndb-agent/runtime/calls.log",
                    ])
                    .status()
                    .map(|s| s.success())
                    .unwrap_or(false)
            })
    }
}

fn reached(id: u64, roles: &'static [(&'static str, usize)]) -> impl Fn(&Status, &Cluster) -> bool {
    move |s, c| {
        let want: BTreeMap<String, usize> =
            roles.iter().map(|(r, n)| (r.to_string(), *n)).collect();
        s.accepted_id == Some(id)
            && s.pending_id.is_none()
            && s.reconciliation_state == "AT_DESIRED_STATE"
            && c.roles() == want
    }
}

/// Desired state `id` is being worked on: actions completed since `base`.
fn under_way(id: u64, base: u64) -> impl Fn(&Status, &Cluster) -> bool {
    move |s, _| {
        s.accepted_id == Some(id)
            && s.reconciliation_state == "WORKING_TOWARDS_DESIRED_STATE"
            && s.actions_completed > base
    }
}

#[test]
fn docker_tier_sequence() {
    let docker = Docker::connect_with_local_defaults()
        .expect("Docker must be running for the Docker tier tests");
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    rt.block_on(docker.ping())
        .expect("Docker must be running for the Docker tier tests");
    let build = std::process::Command::new(concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/compose/images/build.sh"
    ))
    .env("NDB_AGENT_BIN", BIN)
    .status()
    .expect("run compose/images/build.sh");
    assert!(build.success(), "building the images failed");

    let name = format!("mrdb-t{}", std::process::id());
    let token = agents_client::test_token();
    let c = Cluster {
        docker,
        rt,
        name: name.clone(),
        dir: tempfile::tempdir().unwrap(),
        agents: AgentsClient::new(&token),
    };
    let labels = |role: &str| {
        HashMap::from([
            ("managed-rondb.cluster".to_string(), name.clone()),
            ("managed-rondb.role".to_string(), role.to_string()),
        ])
    };
    // A subnet of its own: every container keeps its address across stop and start.
    let net = 1 + std::process::id() % 250;
    let subnet = format!("10.213.{net}.0/24");
    let fixed = |host: u32| format!("10.213.{net}.{host}");
    c.rt.block_on(c.docker.create_network(NetworkCreateRequest {
        name: name.clone(),
        labels: Some(labels("network")),
        ipam: Some(Ipam {
            config: Some(vec![IpamConfig {
                subnet: Some(subnet.clone()),
                ..Default::default()
            }]),
            ..Default::default()
        }),
        ..Default::default()
    }))
    .unwrap_or_else(|e| panic!("docker network create --subnet {subnet}: {e}"));
    let run = |cname: String,
               ip: String,
               image: &str,
               cmd: Option<Vec<String>>,
               binds: Vec<String>,
               env: Vec<String>,
               role: &str| {
        c.rt.block_on(c.docker.create_container(
            Some(CreateContainerOptionsBuilder::new().name(&cname).build()),
            Config {
                image: Some(image.to_string()),
                hostname: Some(cname.clone()),
                cmd,
                env: Some(env),
                labels: Some(labels(role)),
                host_config: Some(HostConfig {
                    network_mode: Some(name.clone()),
                    binds: Some(binds),
                    ..Default::default()
                }),
                networking_config: Some(NetworkingConfig {
                    endpoints_config: Some(HashMap::from([(
                        name.clone(),
                        EndpointSettings {
                            ipam_config: Some(EndpointIpamConfig {
                                ipv4_address: Some(ip),
                                ..Default::default()
                            }),
                            ..Default::default()
                        },
                    )])),
                }),
                ..Default::default()
            },
        ))
        .expect("docker create");
        c.rt.block_on(
            c.docker
                .start_container(&cname, None::<StartContainerOptions>),
        )
        .expect("docker start");
    };
    run(
        format!("{name}-artifacts"),
        fixed(2),
        "managed-rondb/artifacts:latest",
        None,
        vec![],
        vec![],
        "artifacts",
    );

    let mut spec = Spec {
        id: 1,
        running_since: 1,
        replicas: 2,
        mysqlds: 2,
        agent: "0.999",
        backups: vec![],
        mysqld_type: "mini",
    };
    std::fs::write(
        c.dir.path().join("desired_state.jsonc"),
        render(&spec, &name),
    )
    .unwrap();
    let t0 = Instant::now();
    run(
        format!("{name}-bootstrap"),
        fixed(3),
        IMAGE,
        Some(
            [
                "ndb-agent",
                "up",
                "--provider=docker",
                "--desired-state=/config/desired_state.jsonc",
                "--data-dir=/var/lib/ndb-agent",
                "--http=0.0.0.0:8181",
            ]
            .iter()
            .map(|s| s.to_string())
            .chain([
                format!("--cluster-name={name}"),
                format!("--docker-network={name}"),
                format!("--agent-image={IMAGE}"),
            ])
            .collect(),
        ),
        vec![
            format!("{}:/config:ro", c.dir.path().display()),
            "/var/run/docker.sock:/var/run/docker.sock".into(),
        ],
        vec![
            "NDB_DUMMY_PROGRAM_DELAY_MS=100".into(),
            // Elections in every agent's log: a timeout prints the voters' last lines.
            "RUST_LOG=info,openraft=info,h2=warn,tower=warn,hyper=warn".into(),
            format!("NDB_AGENT_TOKEN={token}"),
        ],
        "bootstrap",
    );
    let ip =
        c.rt.block_on(c.docker.inspect_container(
            &format!("{name}-bootstrap"),
            None::<InspectContainerOptions>,
        ))
        .unwrap()
        .network_settings
        .and_then(|n| n.networks)
        .and_then(|n| n.get(&name).cloned())
        .and_then(|n| n.ip_address)
        .expect("bootstrap address");
    c.agents.learn(&format!("{ip}:8181"));
    // The agents in containers serve their API over HTTPS, checked against the cluster CA.
    c.agents
        .trust(&docker_cli::bootstrap_ca(&format!("{name}-bootstrap")));

    // 1. Create: 2 node groups x 2 replicas, 2 MySQLds, 1 API.
    c.wait(
        "create 2x2 + 2 MySQLds + 1 API",
        reached(1, &[("api", 1), ("mgmd", 1), ("mysqld", 2), ("ndbd", 4)]),
    );
    eprintln!(
        "cluster created from a cold bootstrap container in {:.1} s",
        t0.elapsed().as_secs_f64()
    );
    assert!(
        c.agent_versions().iter().all(|v| v == "0.999"),
        "{:?}",
        c.agent_versions()
    );
    // `up --provider docker` started the cluster's cloud front container; it alone (and the
    // bootstrap container that started it) holds the Docker socket, no VM does.
    let with_socket: Vec<String> = c
        .all_containers()
        .into_iter()
        .filter(|(_, id)| {
            let mounts = std::process::Command::new("docker")
                .args(["inspect", "-f", "{{range .Mounts}}{{.Source}} {{end}}", id])
                .output()
                .expect("docker inspect");
            String::from_utf8_lossy(&mounts.stdout).contains("docker.sock")
        })
        .map(|(n, _)| n)
        .collect::<std::collections::BTreeSet<_>>()
        .into_iter()
        .collect();
    assert_eq!(
        with_socket,
        vec![format!("{name}-bootstrap"), format!("{name}-front")],
        "containers holding the Docker socket"
    );

    // 2. MySQLds 2 -> 4 -> 1.
    spec = Spec {
        id: 2,
        mysqlds: 4,
        ..spec
    };
    c.apply(&spec);
    c.wait(
        "MySQLds 2 -> 4",
        reached(2, &[("api", 1), ("mgmd", 1), ("mysqld", 4), ("ndbd", 4)]),
    );
    spec = Spec {
        id: 3,
        mysqlds: 1,
        ..spec
    };
    c.apply(&spec);
    c.wait(
        "MySQLds 4 -> 1",
        reached(3, &[("api", 1), ("mgmd", 1), ("mysqld", 1), ("ndbd", 4)]),
    );

    // 3. Replicas 2 -> 3.
    spec = Spec {
        id: 4,
        replicas: 3,
        ..spec
    };
    c.apply(&spec);
    c.wait(
        "replicas 2 -> 3",
        reached(4, &[("api", 1), ("mgmd", 1), ("mysqld", 1), ("ndbd", 6)]),
    );

    // 4. Rolling restart: every data node restarted.
    spec = Spec {
        id: 5,
        running_since: 5,
        ..spec
    };
    c.apply(&spec);
    c.wait(
        "rolling restart",
        reached(5, &[("api", 1), ("mgmd", 1), ("mysqld", 1), ("ndbd", 6)]),
    );

    // 5. Agent 0.999 -> 1.0 -> 0.999, downloaded from the artifact server.
    for (id, v) in [(6, "1.0"), (7, "0.999")] {
        spec = Spec {
            id,
            agent: v,
            ..spec.clone()
        };
        c.apply(&spec);
        c.wait(&format!("agents on {v}"), move |s, c| {
            reached(id, &[("api", 1), ("mgmd", 1), ("mysqld", 1), ("ndbd", 6)])(s, c) && {
                let vs = c.agent_versions();
                vs.len() == 9 && vs.iter().all(|x| x == v)
            }
        });
    }

    // 6. A backup taken and deleted.
    spec = Spec {
        id: 8,
        backups: vec![42],
        ..spec.clone()
    };
    c.apply(&spec);
    c.wait(
        "backup 42 taken",
        reached(8, &[("api", 1), ("mgmd", 1), ("mysqld", 1), ("ndbd", 6)]),
    );
    assert!(
        c.docker_exec_grep("mgmd", "START BACKUP 42"),
        "no START BACKUP 42 on the management server"
    );
    spec = Spec {
        id: 9,
        backups: vec![],
        ..spec.clone()
    };
    c.apply(&spec);
    c.wait(
        "backup 42 deleted",
        reached(9, &[("api", 1), ("mgmd", 1), ("mysqld", 1), ("ndbd", 6)]),
    );
    assert!(
        ["mgmd", "ndbd", "mysqld", "api"]
            .iter()
            .any(|r| c.docker_exec_grep(r, "delete backup 42")),
        "backup 42 was not deleted"
    );

    // 7. A VM-type change replaces the MySQLd container (mini 256 MiB -> small 512 MiB).
    let before: Vec<String> = c
        .vm_containers()
        .into_iter()
        .filter(|(_, r)| r == "mysqld")
        .map(|(n, _)| n)
        .collect();
    spec = Spec {
        id: 10,
        mysqld_type: "small",
        ..spec.clone()
    };
    c.apply(&spec);
    c.wait(
        "MySQLd VM type mini -> small",
        reached(10, &[("api", 1), ("mgmd", 1), ("mysqld", 1), ("ndbd", 6)]),
    );
    let after: Vec<String> = c
        .vm_containers()
        .into_iter()
        .filter(|(_, r)| r == "mysqld")
        .map(|(n, _)| n)
        .collect();
    assert!(
        before.iter().all(|b| !after.contains(b)),
        "MySQLd containers not replaced: {before:?} -> {after:?}"
    );
    let mem =
        c.rt.block_on(
            c.docker
                .inspect_container(&after[0], None::<InspectContainerOptions>),
        )
        .unwrap()
        .host_config
        .and_then(|h| h.memory);
    assert_eq!(mem, Some(512 * 1024 * 1024));

    // 8. A host restart: every container stopped, the bootstrap agent's included. Started
    // again (one data node left to the agents: `up` in the bootstrap container starts the VMs
    // that are down), the same containers resume: same Raft ids, nothing created.
    let identity = |s: &Status| {
        let mut agents: Vec<(String, u64)> =
            s.agents.iter().map(|a| (a.vm.clone(), a.raft_id)).collect();
        agents.sort();
        agents
    };
    let before_ids = identity(&c.status().expect("status"));
    let containers = |c: &Cluster| {
        let mut v: Vec<String> = c
            .all_containers()
            .into_iter()
            .filter(|(n, _)| !n.ends_with("-artifacts"))
            .map(|(n, id)| format!("{n}={id}"))
            .collect();
        v.sort();
        v
    };
    let before_containers = containers(&c);
    let names: Vec<String> = before_containers
        .iter()
        .filter_map(|x| x.split_once('=').map(|(n, _)| n.to_string()))
        .collect();
    let t = Instant::now();
    let stop = std::process::Command::new("docker")
        .args(["stop", "-t", "5"])
        .args(&names)
        .output()
        .expect("docker stop");
    assert!(stop.status.success(), "{stop:?}");
    assert!(
        c.roles().is_empty(),
        "containers still running: {:?}",
        c.roles()
    );
    let left = names
        .iter()
        .find(|n| n.contains("-ndbd-"))
        .cloned()
        .expect("a data-node container");
    let start = std::process::Command::new("docker")
        .arg("start")
        .args(names.iter().filter(|n| **n != left))
        .output()
        .expect("docker start");
    assert!(start.status.success(), "{start:?}");
    c.wait(
        "the same cluster back after stopping every container",
        |s, c| {
            reached(10, &[("api", 1), ("mgmd", 1), ("mysqld", 1), ("ndbd", 6)])(s, c)
                && identity(s) == before_ids
        },
    );
    assert_eq!(
        containers(&c),
        before_containers,
        "containers were replaced"
    );
    eprintln!(
        "  every container stopped and started again: back at desired state 10 after {:.1} s, {left} started by the agents",
        t.elapsed().as_secs_f64()
    );

    // Every voter's own status names the leader (its Raft node runs and hears from it)
    // before the bootstrap agent goes: after a whole restart a voter may still be catching up.
    c.wait("every voter following the leader", |s, c| {
        s.agents
            .iter()
            .filter(|a| a.voter && a.vm != "bootstrap")
            .all(|a| {
                c.agents
                    .status_at(&a.http_addr)
                    .is_some_and(|own| own.leader_vm.as_deref() == Some("bootstrap"))
            })
    });

    // 10. The bootstrap container removed: another agent leads, and changes still work.
    c.rt.block_on(c.docker.remove_container(
        &format!("{name}-bootstrap"),
        Some(RemoveContainerOptionsBuilder::new().force(true).build()),
    ))
    .unwrap();
    c.wait(
        "leadership moved off the removed bootstrap agent",
        |s, _| {
            s.leader_vm.as_deref().is_some_and(|l| l != "bootstrap")
                && !s.agents.iter().any(|a| a.vm == "bootstrap")
        },
    );
    spec = Spec {
        id: 11,
        mysqlds: 2,
        ..spec.clone()
    };
    c.apply(&spec);
    c.wait(
        "MySQLds 1 -> 2 without the bootstrap agent",
        reached(11, &[("api", 1), ("mgmd", 1), ("mysqld", 2), ("ndbd", 6)]),
    );

    // 11. The leader container killed in the middle of a change: a new leader completes the
    // change and starts the killed container again (down, not gone: nothing is replaced).
    spec = Spec {
        id: 12,
        mysqlds: 4,
        ..spec.clone()
    };
    let base = c.status().unwrap().actions_completed;
    c.apply(&spec);
    let s = c.wait("the change under way", under_way(12, base));
    let leader = s.leader_vm.clone().unwrap();
    c.rt.block_on(
        c.docker
            .kill_container(&format!("{name}-{leader}"), None::<KillContainerOptions>),
    )
    .unwrap();
    let s = c.wait("the change completed by a new leader", move |s, c| {
        s.leader_vm.as_deref().is_some_and(|l| l != leader)
            && reached(12, &[("api", 1), ("mgmd", 1), ("mysqld", 4), ("ndbd", 6)])(s, c)
    });
    eprintln!(
        "leader after the kill {:?}, {} agents",
        s.leader_vm,
        s.agents.len()
    );

    // 12. The leader cut off the network (`docker network disconnect`) in the middle of a
    // rolling restart: the others elect a leader; the cut-off one cannot act (no quorum
    // behind it); reconnected, it follows and the rolling restart completes. No operation ran
    // twice: the dummy runtime logs every call with its operation id.
    let calls_before = c.calls();
    spec = Spec {
        id: 13,
        running_since: spec.running_since + 1,
        ..spec.clone()
    };
    let base = c.status().unwrap().actions_completed;
    c.apply(&spec);
    let s = c.wait("the rolling restart under way", under_way(13, base));
    let old = s.leader_vm.clone().unwrap();
    let http_of = |vm: &str| {
        s.agents
            .iter()
            .find(|a| a.vm == vm)
            .map(|a| a.http_addr.clone())
            .unwrap()
    };
    let old_http = http_of(&old);
    // A voter that stays connected: the cluster as its members see it.
    let witness = s
        .agents
        .iter()
        .find(|a| a.voter && a.vm != old)
        .map(|a| a.http_addr.clone())
        .expect("another voter");
    let container = format!("{name}-{old}");
    let ip = docker_cli::docker(&[
        "inspect",
        "-f",
        &format!("{{{{(index .NetworkSettings.Networks \"{name}\").IPAddress}}}}"),
        &container,
    ]);
    let t = Instant::now();
    docker_cli::docker(&["network", "disconnect", &name, &container]);
    let mut elected = None;
    while t.elapsed() < Duration::from_secs(60) {
        if let Some(l) = c
            .agents
            .status_at(&witness)
            .and_then(|s| s.leader_vm)
            .filter(|l| *l != old)
        {
            elected = Some((l, t.elapsed()));
            break;
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    let (new_leader, elected_after) = elected.expect("no new leader within 60 s of the partition");
    // The cut-off agent sits partitioned while the new leader works.
    std::thread::sleep(Duration::from_secs(3));
    docker_cli::docker(&["network", "connect", "--ip", &ip, &name, &container]);
    let reconnected = t.elapsed();
    c.wait(
        "the rolling restart completed after the partition",
        reached(13, &[("api", 1), ("mgmd", 1), ("mysqld", 4), ("ndbd", 6)]),
    );
    let done_after = t.elapsed();
    let follows = c.agents.wait_until(Duration::from_secs(60), |_| {
        c.agents.status_at(&old_http).is_some_and(|s| {
            s.leader_vm.as_deref().is_some_and(|l| l != old) && s.answered_by == old
        })
    });
    assert!(
        follows.is_ok(),
        "{old}, reconnected, does not follow the new leader"
    );
    let calls_after = c.calls();
    for (vm, lines) in &calls_after {
        let earlier = calls_before.get(vm).map_or(0, Vec::len);
        let mut seen = std::collections::BTreeSet::new();
        for line in lines.iter().skip(earlier) {
            assert!(
                seen.insert(line.clone()),
                "{vm} ran one operation twice after the partition: {line}"
            );
        }
    }
    eprintln!(
        "  partition: {old} cut off mid rolling restart; {new_leader} elected after {:.2} s, {old} reconnected at {:.1} s, desired state 13 reached {:.1} s after the cut, {old} follows; no operation ran twice",
        elected_after.as_secs_f64(),
        reconnected.as_secs_f64(),
        done_after.as_secs_f64()
    );

    // 13. Replicas 3 -> 1.
    spec = Spec {
        id: 14,
        replicas: 1,
        ..spec.clone()
    };
    c.apply(&spec);
    c.wait(
        "replicas 3 -> 1",
        reached(14, &[("api", 1), ("mgmd", 1), ("mysqld", 4), ("ndbd", 2)]),
    );
}
