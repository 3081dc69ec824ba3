//! The Terraform tier: `ndb-agent cloud-front` running the `terraform` provider with the
//! `local-docker` target for real (Terraform from `TERRAFORM` or PATH:
//! `scripts/install-terraform.sh`; the agent image built here by compose/images/build.sh),
//! called as a cluster's leader calls it (`providers::FrontProvider`). VMs are created, several
//! at once in one apply; created again (no second VM); deleted; a VM type changed (Terraform
//! replaces the container); the front SIGKILLed with its Terraform in the middle of an apply
//! and started again on the same directory; finally every VM deleted. After each step:
//! Terraform's state, the front's list and the containers of the cluster name the same VMs
//! (no container outside the state, no state entry without its container) and no VM holds
//! the Docker socket. Calls without the cluster's credential are refused. A whole cluster is
//! then taken through five desired states from a bootstrap container without the Docker
//! socket: one submitted through the front's forwarded `PUT /desired-state`, two saved in a
//! file the front follows. Each step prints its time.
//! Everything carries the label `managed-rondb.cluster=<unique name>` and is removed at the
//! end, also when the test fails.

#![allow(clippy::expect_used, clippy::unwrap_used, clippy::panic)]

#[path = "../common/agents_client.rs"]
mod agents_client;
#[path = "../common/docker_cli.rs"]
mod docker_cli;

use agent_core::backend::{CloudProvider, OpId, VmSpec};
use agent_core::desired::VmType;
use agent_core::model::Role;
use agents_client::AgentsClient;
use docker_cli::docker;
use providers::{FrontConfig, FrontProvider};
use std::collections::BTreeSet;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

const BIN: &str = env!("CARGO_BIN_EXE_ndb-agent");
const IMAGE: &str = "managed-rondb/ndb-agent:latest";

/// The two tests share the images and the machine's two cores: one at a time.
static SERIAL: std::sync::Mutex<()> = std::sync::Mutex::new(());

/// Builds the images once per run (compose/images/build.sh caches them by tag).
fn build_images() {
    static BUILT: std::sync::OnceLock<bool> = std::sync::OnceLock::new();
    let ok = BUILT.get_or_init(|| {
        std::process::Command::new(concat!(
            env!("CARGO_MANIFEST_DIR"),
            "/compose/images/build.sh"
        ))
        .env("NDB_AGENT_BIN", BIN)
        .status()
        .expect("run compose/images/build.sh")
        .success()
    });
    assert!(*ok, "building the images failed");
}

fn terraform() -> PathBuf {
    let bin = std::env::var("TERRAFORM").unwrap_or_else(|_| "terraform".into());
    match std::process::Command::new(&bin).arg("version").output() {
        Ok(o) if o.status.success() => PathBuf::from(bin),
        other => panic!(
            "no working Terraform ({bin}: {other:?}); run scripts/install-terraform.sh and set TERRAFORM to the path it prints"
        ),
    }
}

/// A VM as a leader asks for one: with a join ticket. No cluster honours it here (this
/// tier tests the provider), so its agent waits to enrol; the ticket must reach the VM and
/// the CA's key must not.
fn spec(name: &str, role: Role, zone: &str, vm_type: VmType) -> VmSpec {
    VmSpec {
        name: name.into(),
        role,
        zone: zone.into(),
        vm_type,
        storage_gib: 5,
        temporary: false,
        agent_version: "0.999".into(),
        join: Some(Box::new(agent_core::backend::JoinTicket {
            secret: format!("ticket-of-{name}"),
            agents: vec!["127.0.0.1:9".into()],
            expires_unix_ms: u64::MAX,
        })),
    }
}

/// Removes everything of the cluster when the test ends, passed or failed.
struct Cleanup {
    cluster: String,
}

impl Drop for Cleanup {
    fn drop(&mut self) {
        let label = format!("label=managed-rondb.cluster={}", self.cluster);
        let run = |args: &[&str]| {
            std::process::Command::new("docker")
                .args(args)
                .output()
                .map(|o| String::from_utf8_lossy(&o.stdout).into_owned())
                .unwrap_or_default()
        };
        for c in run(&["ps", "-aq", "--filter", &label]).split_whitespace() {
            run(&["rm", "-f", "-v", c]);
        }
        for v in run(&["volume", "ls", "-q", "--filter", &label]).split_whitespace() {
            run(&["volume", "rm", "-f", v]);
        }
        run(&["network", "rm", &self.cluster]);
    }
}

/// The cloud front under test: a real `ndb-agent cloud-front` process in a process group of
/// its own (so SIGKILL takes its Terraform with it, as a dying container would).
struct Front {
    child: std::process::Child,
    log: PathBuf,
}

impl Front {
    fn kill(&mut self) {
        let pgid = nix::unistd::Pid::from_raw(self.child.id() as i32);
        let _ = nix::sys::signal::killpg(pgid, nix::sys::signal::SIGKILL);
        let _ = self.child.wait();
    }
}

impl Drop for Front {
    fn drop(&mut self) {
        self.kill();
    }
}

struct Tier {
    cluster: String,
    data_dir: PathBuf,
    terraform: PathBuf,
    subnet: String,
    gateway: String,
    port: u16,
    /// A desired-state file the front follows, with the cluster's API token.
    follow: Option<(PathBuf, String)>,
}

impl Tier {
    fn work_dir(&self) -> PathBuf {
        self.cluster_dir().join("terraform")
    }

    fn start_front(&self, run: u32) -> Front {
        use std::os::unix::process::CommandExt;
        let log = self.data_dir.join(format!("front-{run}.log"));
        let child =
            std::process::Command::new(BIN)
                .args([
                    "cloud-front",
                    "--provider=terraform",
                    "--cluster",
                    &self.cluster,
                ])
                .arg("--data-dir")
                .arg(&self.data_dir)
                .args(["--listen", &format!("0.0.0.0:{}", self.port)])
                .args(["--url", &format!("https://{}:{}", self.gateway, self.port)])
                .args(["--docker-network", &self.cluster, "--subnet", &self.subnet])
                .args(["--agent-image", IMAGE])
                .arg("--terraform")
                .arg(&self.terraform)
                .args(self.follow.iter().flat_map(|(file, _)| {
                    [std::ffi::OsStr::new("--desired-state"), file.as_os_str()]
                }))
                .envs(
                    self.follow
                        .iter()
                        .map(|(_, token)| ("NDB_AGENT_TOKEN", token.as_str())),
                )
                .stderr(std::fs::File::create(&log).unwrap())
                .process_group(0)
                .spawn()
                .expect("start ndb-agent cloud-front");
        let front = Front { child, log };
        let deadline = Instant::now() + Duration::from_secs(300);
        // It listens beyond loopback: HTTPS only, with a certificate of the CA it made.
        let url = format!("https://127.0.0.1:{}/health", self.port);
        let answers = |url: &str| {
            let Some(ca) = self.ca() else { return false };
            let client = reqwest::blocking::Client::builder()
                .use_preconfigured_tls(agent::https::client_config(&ca).unwrap())
                .build()
                .unwrap();
            client
                .get(url)
                .send()
                .is_ok_and(|r| r.status().is_success())
        };
        while !answers(&url) {
            assert!(
                Instant::now() < deadline,
                "the cloud front did not answer on {url}:\n{}",
                std::fs::read_to_string(&front.log).unwrap_or_default()
            );
            std::thread::sleep(Duration::from_millis(100));
        }
        // Plain HTTP gets no answer from it.
        assert!(
            reqwest::blocking::get(format!("http://127.0.0.1:{}/health", self.port)).is_err(),
            "the cloud front answered plain HTTP beyond loopback"
        );
        front
    }

    /// The cluster CA the front made (its HTTPS certificate is of it), once written.
    fn ca(&self) -> Option<String> {
        std::fs::read_to_string(self.cluster_dir().join("tls").join("ca.pem"))
            .ok()
            .filter(|pem| pem.contains("END CERTIFICATE"))
    }

    fn cluster_dir(&self) -> PathBuf {
        self.data_dir.join("clusters").join(&self.cluster)
    }

    fn client(&self, credential: Option<&str>, cluster: Option<&str>) -> FrontProvider {
        let credential = match credential {
            Some(c) => c.to_string(),
            None => std::fs::read_to_string(
                self.data_dir
                    .join("clusters")
                    .join(&self.cluster)
                    .join("credential"),
            )
            .unwrap()
            .trim()
            .to_string(),
        };
        let ca = self.ca().expect("the front's cluster CA");
        FrontProvider::new(
            FrontConfig {
                url: format!("https://127.0.0.1:{}", self.port),
                cluster: cluster.unwrap_or(&self.cluster).to_string(),
                credential,
            },
            agent::https::client_builder(Some(&ca)).unwrap(),
        )
        .unwrap()
    }

    /// Applies the front logged (in every run so far).
    fn applies(&self) -> usize {
        let mut n = 0;
        for e in std::fs::read_dir(&self.data_dir).unwrap().flatten() {
            if e.file_name().to_string_lossy().starts_with("front-") {
                n += std::fs::read_to_string(e.path())
                    .unwrap_or_default()
                    .matches("terraform apply done")
                    .count();
            }
        }
        n
    }

    /// The VMs in Terraform's state.
    fn state(&self) -> BTreeSet<String> {
        let dir = self.work_dir();
        let out = std::process::Command::new(&self.terraform)
            .args(["state", "list"])
            .current_dir(&dir)
            .env("TF_CLI_CONFIG_FILE", dir.join("terraformrc"))
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "terraform state list: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8_lossy(&out.stdout)
            .lines()
            .filter_map(|l| {
                l.strip_prefix("terraform_data.vm[\"")
                    .and_then(|l| l.strip_suffix("\"]"))
            })
            .map(str::to_string)
            .collect()
    }

    /// The VM containers of the cluster, running or not.
    fn containers(&self) -> BTreeSet<String> {
        docker(&[
            "ps",
            "-a",
            "--filter",
            &format!("label=managed-rondb.cluster={}", self.cluster),
            "--filter",
            "label=managed-rondb.vm",
            "--format",
            "{{.Label \"managed-rondb.vm\"}}",
        ])
        .lines()
        .map(str::to_string)
        .collect()
    }

    /// State, containers and the front's list agree, and hold exactly `want`.
    async fn check(&self, p: &FrontProvider, want: &[&str], step: &str) {
        let want: BTreeSet<String> = want.iter().map(|s| s.to_string()).collect();
        let listed: BTreeSet<String> = p
            .list_vms()
            .await
            .unwrap()
            .into_iter()
            .map(|v| v.name)
            .collect();
        assert_eq!(self.state(), want, "{step}: Terraform's state");
        assert_eq!(self.containers(), want, "{step}: the cluster's containers");
        assert_eq!(listed, want, "{step}: the front's list");
        for vm in &want {
            let mounts = docker(&[
                "inspect",
                "-f",
                "{{range .Mounts}}{{.Source}} {{end}}",
                &format!("{}-{vm}", self.cluster),
            ]);
            assert!(
                !mounts.contains("docker.sock"),
                "{vm} holds the Docker socket: {mounts}"
            );
        }
        println!("{step}: state, containers and list all hold {want:?}");
    }
}

fn container_id(cluster: &str, vm: &str) -> String {
    docker(&["inspect", "-f", "{{.Id}}", &format!("{cluster}-{vm}")])
}

#[test]
fn the_front_keeps_terraform_state_and_containers_in_line() {
    let _serial = SERIAL.lock().unwrap_or_else(|e| e.into_inner());
    let terraform = terraform();
    build_images();

    let cluster = format!("mrdb-tf{}", std::process::id());
    let _cleanup = Cleanup {
        cluster: cluster.clone(),
    };
    let net = 1 + (std::process::id() + 101) % 250;
    let subnet = format!("10.214.{net}.0/24");
    let gateway = format!("10.214.{net}.1");
    docker(&[
        "network",
        "create",
        "--subnet",
        &subnet,
        "--gateway",
        &gateway,
        "--label",
        &format!("managed-rondb.cluster={cluster}"),
        &cluster,
    ]);
    let work = tempfile::tempdir().unwrap();
    let port = std::net::TcpListener::bind("0.0.0.0:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let tier = Tier {
        cluster: cluster.clone(),
        data_dir: work.path().to_path_buf(),
        terraform,
        subnet,
        gateway,
        port,
        follow: None,
    };
    let rt = tokio::runtime::Runtime::new().unwrap();

    let mut front = tier.start_front(1);
    rt.block_on(async {
        let p = tier.client(None, None);
        tier.check(&p, &[], "front started").await;
        assert_eq!(tier.applies(), 1, "opening an empty directory applies once");

        // Nothing without the cluster's credential, nothing of another cluster.
        let e = tier.client(Some("not-the-credential"), None).list_vms().await.unwrap_err();
        assert!(e.message.contains("wrong credential"), "{e}");
        let e = tier.client(None, Some("other")).list_vms().await.unwrap_err();
        assert!(e.message.contains("serves cluster"), "{e}");
        // The VMs' credential (what Terraform hands every VM) opens the VM calls a leader
        // makes, not the CA nor deleting the cluster.
        let vm_credential = std::fs::read_to_string(tier.work_dir().parent().unwrap().join("vm-credential")).unwrap();
        let as_vm = tier.client(Some(vm_credential.trim()), None);
        as_vm.list_vms().await.unwrap();
        let e = as_vm.cluster_ca().await.unwrap_err();
        assert!(e.message.contains("needs the cluster's credential"), "{e}");
        tier.client(None, None).cluster_ca().await.expect("the owner reads the CA");

        // Three VMs asked for at once: one apply.
        let t = Instant::now();
        let vms = [
            spec("mgmd-0", Role::Mgmd, "a", VmType::Mini),
            spec("ndbd-0-1", Role::Ndbd, "a", VmType::Small),
            spec("ndbd-0-2", Role::Ndbd, "b", VmType::Small),
        ];
        let made = futures::future::join_all(vms.iter().map(|s| p.create_vm(OpId(1), s))).await;
        for m in &made {
            let info = m.as_ref().unwrap();
            assert!(info.agent_endpoint.ends_with(":7100"), "{info:?}");
        }
        println!(
            "3 VMs created in one apply, agents answering: {:.1} s",
            t.elapsed().as_secs_f64()
        );
        assert_eq!(tier.applies(), 2, "the three creations were batched into one apply");
        tier.check(&p, &["mgmd-0", "ndbd-0-1", "ndbd-0-2"], "3 VMs created")
            .await;
        // What Terraform hands a VM holds its one-time ticket and the CA's certificate,
        // never the CA's key.
        let env = std::fs::read_to_string(tier.work_dir().join("env/ndbd-0-1.env")).unwrap();
        assert!(env.contains("ticket-of-ndbd-0-1"), "no join ticket in the VM's config");
        assert!(env.contains("BEGIN CERTIFICATE"), "no CA certificate in the VM's config");
        assert!(!env.contains("PRIVATE KEY"), "the VM's config holds a private key");
        // Same labels and limits as the docker provider's containers.
        let small = providers::docker::limits(VmType::Small).0.to_string();
        assert_eq!(
            docker(&[
                "inspect",
                "-f",
                "{{.HostConfig.Memory}} {{index .Config.Labels \"managed-rondb.role\"}} {{index .Config.Labels \"managed-rondb.zone\"}}",
                &format!("{cluster}-ndbd-0-2")
            ]),
            format!("{small} ndbd b")
        );

        // Creating a VM again is a no-op (a new leader repeating the call).
        let id = container_id(&cluster, "ndbd-0-1");
        p.create_vm(OpId(2), &vms[1]).await.unwrap();
        assert_eq!(
            container_id(&cluster, "ndbd-0-1"),
            id,
            "a repeated create made a new container"
        );

        // One VM created and deleted alone.
        let t = Instant::now();
        p.create_vm(OpId(3), &spec("mysqld-3", Role::Mysqld, "a", VmType::Mini))
            .await
            .unwrap();
        let created = t.elapsed();
        let t = Instant::now();
        p.delete_vm(OpId(4), "mysqld-3").await.unwrap();
        println!(
            "one VM through the front and Terraform: create {:.1} s, delete {:.1} s",
            created.as_secs_f64(),
            t.elapsed().as_secs_f64()
        );
        tier.check(&p, &["mgmd-0", "ndbd-0-1", "ndbd-0-2"], "mysqld-3 deleted")
            .await;
        // Deleting a VM that is gone succeeds.
        p.delete_vm(OpId(5), "mysqld-3").await.unwrap();

        // A VM's container removed behind Terraform's back: the VM is gone (not listed, not
        // startable), and the front drops it from Terraform's state by itself.
        p.create_vm(OpId(50), &spec("api-9", Role::Api, "a", VmType::Mini))
            .await
            .unwrap();
        docker(&["rm", "-f", &format!("{cluster}-api-9")]);
        let t = Instant::now();
        loop {
            let listed = p.list_vms().await.unwrap();
            if !listed.iter().any(|v| v.name == "api-9") && !tier.state().contains("api-9") {
                break;
            }
            assert!(
                t.elapsed() < Duration::from_secs(60),
                "a VM whose container was removed is still listed or in the state: {:?}",
                tier.state()
            );
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
        let e = p.start_vm(OpId(51), "api-9").await.unwrap_err();
        assert_eq!(e.kind, agent_core::backend::ErrorKind::VmGone, "{e}");
        tier.check(&p, &["mgmd-0", "ndbd-0-1", "ndbd-0-2"], "api-9's container removed by hand")
            .await;

        // A new VM type: Terraform replaces the container (same address, new limits).
        let before = container_id(&cluster, "ndbd-0-2");
        let ip_before = p
            .list_vms()
            .await
            .unwrap()
            .into_iter()
            .find(|v| v.name == "ndbd-0-2")
            .unwrap()
            .address;
        let t = Instant::now();
        let info = p
            .create_vm(OpId(6), &spec("ndbd-0-2", Role::Ndbd, "b", VmType::Medium))
            .await
            .unwrap();
        println!(
            "VM type changed (container replaced): {:.1} s",
            t.elapsed().as_secs_f64()
        );
        assert_ne!(
            container_id(&cluster, "ndbd-0-2"),
            before,
            "the container was not replaced"
        );
        assert_eq!(info.address, ip_before);
        assert_eq!(
            docker(&[
                "inspect",
                "-f",
                "{{.HostConfig.Memory}}",
                &format!("{cluster}-ndbd-0-2")
            ]),
            providers::docker::limits(VmType::Medium).0.to_string()
        );
        tier.check(&p, &["mgmd-0", "ndbd-0-1", "ndbd-0-2"], "VM type changed")
            .await;

        // The front killed (SIGKILL, its Terraform with it) in the middle of an apply: once
        // the first new container exists, before Terraform has recorded it.
        let asked: Vec<_> = ["mysqld-4", "mysqld-5"]
            .iter()
            .map(|vm| {
                let p = tier.client(None, None);
                let s = spec(vm, Role::Mysqld, "a", VmType::Mini);
                tokio::spawn(async move { p.create_vm(OpId(7), &s).await })
            })
            .collect();
        let deadline = Instant::now() + Duration::from_secs(120);
        while !tier.containers().iter().any(|c| c.starts_with("mysqld-")) {
            assert!(Instant::now() < deadline, "no container of the apply appeared");
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        front.kill();
        println!(
            "front killed mid-apply; containers then: {:?}, state: {:?}",
            tier.containers(),
            tier.state()
        );
        for a in asked {
            let r = a.await.unwrap();
            assert!(r.is_err(), "a creation cut off by the kill reported success: {r:?}");
        }
    });

    let t = Instant::now();
    let _front = tier.start_front(2);
    println!(
        "front restarted, state converged in {:.1} s",
        t.elapsed().as_secs_f64()
    );
    rt.block_on(async {
        let p = tier.client(None, None);
        // The requests it had accepted are finished, not lost and not doubled.
        let all = ["mgmd-0", "mysqld-4", "mysqld-5", "ndbd-0-1", "ndbd-0-2"];
        tier.check(&p, &all, "after the kill mid-apply").await;
        // The leader's retry finds its VM made, and makes no second one.
        let id = container_id(&cluster, "mysqld-4");
        p.create_vm(OpId(8), &spec("mysqld-4", Role::Mysqld, "a", VmType::Mini))
            .await
            .unwrap();
        assert_eq!(container_id(&cluster, "mysqld-4"), id);

        // Everything deleted: no container, an empty state.
        let t = Instant::now();
        let gone = futures::future::join_all(all.iter().map(|vm| p.delete_vm(OpId(9), vm))).await;
        assert!(gone.iter().all(Result::is_ok), "{gone:?}");
        println!(
            "5 VMs deleted in one apply: {:.1} s",
            t.elapsed().as_secs_f64()
        );
        tier.check(&p, &[], "all deleted").await;
        let volumes = docker(&[
            "volume",
            "ls",
            "-q",
            "--filter",
            "label=managed-rondb.vm",
            "--filter",
            &format!("label=managed-rondb.cluster={cluster}"),
        ]);
        assert!(volumes.is_empty(), "VM volumes left: {volumes}");
        // The secrets of deleted VMs are gone with them; the directories are private.
        let dir = tier.work_dir();
        let env_files = std::fs::read_dir(dir.join("env")).unwrap().count();
        assert_eq!(env_files, 0, "env files of deleted VMs left");
        use std::os::unix::fs::PermissionsExt;
        let mode = |p: &Path| std::fs::metadata(p).unwrap().permissions().mode() & 0o777;
        assert_eq!(mode(&dir), 0o700, "the Terraform directory holds secrets");
        let cdir = dir.parent().unwrap();
        assert_eq!(mode(&cdir.join("credential")), 0o600);
        assert_eq!(mode(&cdir.join("tls/ca-key.pem")), 0o600);
    });
}

/// A desired state of the cluster test: one node group, `replicas` data nodes, `mysqlds`
/// MySQL servers of `mysqld_type`.
fn desired(id: u64, replicas: u32, mysqlds: u32, mysqld_type: &str) -> String {
    format!(
        r#"{{
  "Id": {id}, "RonDBRunning": true, "RonDBRunningSince": 1,
  "RonDBVersion": "22.10.1",
  "RonDBDownloadLink": "http://artifacts.invalid/rondb/rondb-22.10.1-linux-glibc2.28-x86_64.tar.gz",
  "NdbAgentRunningSince": 1, "NdbAgentVersion": "0.999",
  "NdbAgentDownloadLink": "http://artifacts.invalid/ndb-agent/ndb-agent-0.999.tar.gz",
  "SingleBackups": [],
  "TotalMemoryConfig": "2400M", "MaxReplicationFactor": 3, "ActiveReplicationFactor": {replicas},
  "NumNodeGroups": 1, "NumTotalMgmdSlots": 2, "NumTotalMysqldSlots": 8, "NumTotalApiSlots": 8,
  "NumMysqldSlotsPerVm": 1, "NumApiSlotsPerVm": 1,
  "NumManagedMgmdVms": 1, "NumManagedMysqldVms": {mysqlds}, "NumManagedApiVms": 0,
  "ExternallyManagedNodes": [], "AllowRequestingTemporaryVms": true,
  "Region": "local", "AvailabilityZones": ["zone-a", "zone-b", "zone-c"],
  "VmTypeMgmds": "mini", "VmTypeNdbds": "small", "VmTypeMysqlds": "{mysqld_type}", "VmTypeApis": "mini",
  "StorageGiBPerMgmdVm": 5, "StorageGiBPerNdbdVm": 20, "StorageGiBPerMysqldVm": 5, "StorageGiBPerApiVm": 5,
  "DefaultMgmdPort": 1186, "DefaultNdbdPort": 11860, "DefaultMysqldPort": 3306
}}"#
    )
}

impl Tier {
    /// The VM containers of the cluster by role.
    fn roles(&self) -> std::collections::BTreeMap<String, usize> {
        let mut out = std::collections::BTreeMap::new();
        for role in docker(&[
            "ps",
            "-a",
            "--filter",
            &format!("label=managed-rondb.cluster={}", self.cluster),
            "--filter",
            "label=managed-rondb.created-by=terraform",
            "--format",
            "{{.Label \"managed-rondb.role\"}}",
        ])
        .lines()
        {
            *out.entry(role.to_string()).or_insert(0) += 1;
        }
        out
    }

    /// How many applies the front has started and finished (every run so far).
    fn applies_started(&self) -> usize {
        let mut n = 0;
        for e in std::fs::read_dir(&self.data_dir).unwrap().flatten() {
            if e.file_name().to_string_lossy().starts_with("front-") {
                n += std::fs::read_to_string(e.path())
                    .unwrap_or_default()
                    .lines()
                    .filter(|l| {
                        l.contains("terraform apply")
                            && !l.contains("done")
                            && !l.contains("failed")
                    })
                    .count();
            }
        }
        n
    }

    /// Waits until desired state `id` is reached with `roles` (role, count) and Terraform's
    /// state, the front's list and the containers agree.
    fn wait_reached(&self, agents: &AgentsClient, id: u64, roles: &[(&str, usize)], what: &str) {
        let want: std::collections::BTreeMap<String, usize> =
            roles.iter().map(|(r, n)| (r.to_string(), *n)).collect();
        let t = Instant::now();
        let r = agents.wait_until(Duration::from_secs(300), |s| {
            s.accepted_id == Some(id)
                && s.pending_id.is_none()
                && s.reconciliation_state == "AT_DESIRED_STATE"
                && self.roles() == want
        });
        if let Err(last) = r {
            panic!(
                "timed out waiting for {what}: containers {:?}, state {:?}\nlast status: {}\nfront log:\n{}",
                self.roles(),
                self.state(),
                serde_json::to_string_pretty(&*last).unwrap_or_default(),
                self.front_logs()
            );
        }
        let vms = self.containers();
        assert_eq!(
            self.state(),
            vms,
            "{what}: Terraform's state and the containers"
        );
        println!(
            "{what}: {:.1} s ({} VMs, state and containers agree)",
            t.elapsed().as_secs_f64(),
            vms.len()
        );
    }

    fn front_logs(&self) -> String {
        let mut out = String::new();
        for e in std::fs::read_dir(&self.data_dir).unwrap().flatten() {
            if e.file_name().to_string_lossy().starts_with("front-") {
                let text = std::fs::read_to_string(e.path()).unwrap_or_default();
                let tail: Vec<&str> = text.lines().rev().take(30).collect();
                out += &format!("--- {}\n", e.file_name().to_string_lossy());
                out += &tail.into_iter().rev().collect::<Vec<_>>().join("\n");
                out += "\n";
            }
        }
        out
    }

    fn wait_apply_started(&self, base: usize) {
        let deadline = Instant::now() + Duration::from_secs(120);
        while self.applies_started() <= base {
            assert!(
                Instant::now() < deadline,
                "no Terraform apply started:\n{}",
                self.front_logs()
            );
            std::thread::sleep(Duration::from_millis(20));
        }
    }
}

#[test]
fn a_cluster_reaches_its_desired_states_through_the_front_and_terraform() {
    let _serial = SERIAL.lock().unwrap_or_else(|e| e.into_inner());
    let terraform = terraform();
    build_images();
    let cluster = format!("mrdb-tfc{}", std::process::id());
    let _cleanup = Cleanup {
        cluster: cluster.clone(),
    };
    let net = 1 + (std::process::id() + 151) % 250;
    let subnet = format!("10.214.{net}.0/24");
    let gateway = format!("10.214.{net}.1");
    docker(&[
        "network",
        "create",
        "--subnet",
        &subnet,
        "--gateway",
        &gateway,
        "--label",
        &format!("managed-rondb.cluster={cluster}"),
        &cluster,
    ]);
    let work = tempfile::tempdir().unwrap();
    let port = std::net::TcpListener::bind("0.0.0.0:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    // The front follows a desired-state file of its own (steps 4 and 5 are saved there).
    let token = agents_client::test_token();
    let followed = work
        .path()
        .join("front-desired")
        .join("desired_state.jsonc");
    std::fs::create_dir_all(followed.parent().unwrap()).unwrap();
    let tier = Tier {
        cluster: cluster.clone(),
        data_dir: work.path().join("front"),
        terraform,
        subnet,
        gateway: gateway.clone(),
        port,
        follow: Some((followed.clone(), token.clone())),
    };
    std::fs::create_dir_all(&tier.data_dir).unwrap();
    let mut front = tier.start_front(1);
    let agents = AgentsClient::new(&token);
    // The front and the agents in containers serve HTTPS, checked against the cluster CA
    // (the front's, which the bootstrap agent adopts).
    agents.trust(&tier.ca().expect("the front's cluster CA"));
    let via_front = format!("https://127.0.0.1:{port}");
    // Before any VM exists, the front has no agent to forward the users' API to.
    assert!(
        agents.status_at(&via_front).is_none(),
        "GET /status through a front with no VM"
    );

    // The bootstrap agent: a container holding no Docker socket, given the front's URL and
    // the cluster's credential; it gets the cluster CA from the front.
    let config = work.path().join("config");
    let boot = work.path().join("bootstrap");
    std::fs::create_dir_all(&config).unwrap();
    std::fs::create_dir_all(&boot).unwrap();
    let cdir = tier.data_dir.join("clusters").join(&cluster);
    let credential = std::fs::read_to_string(cdir.join("credential")).unwrap();
    std::fs::write(config.join("desired_state.jsonc"), desired(1, 2, 1, "mini")).unwrap();
    let bootstrap_ip = format!("10.214.{net}.3");
    let t0 = Instant::now();
    docker(&[
        "run",
        "-d",
        "--name",
        &format!("{cluster}-bootstrap"),
        "--hostname",
        &format!("{cluster}-bootstrap"),
        "--network",
        &cluster,
        "--ip",
        &bootstrap_ip,
        "--label",
        &format!("managed-rondb.cluster={cluster}"),
        "--label",
        "managed-rondb.role=bootstrap",
        "-v",
        &format!("{}:/config:ro", config.display()),
        "-v",
        &format!("{}:/var/lib/ndb-agent", boot.display()),
        "-v",
        &format!(
            "{}:/front-ca.pem:ro",
            cdir.join("tls").join("ca.pem").display()
        ),
        "-e",
        &format!("NDB_AGENT_TOKEN={token}"),
        "-e",
        &format!("NDB_FRONT_CREDENTIAL={}", credential.trim()),
        "-e",
        "NDB_DUMMY_PROGRAM_DELAY_MS=100",
        IMAGE,
        "ndb-agent",
        "up",
        "--provider=front",
        &format!("--front-url=https://{gateway}:{port}"),
        // The CA the front's HTTPS is checked against, before the agent adopts it whole.
        "--front-ca-file=/front-ca.pem",
        &format!("--cluster-name={cluster}"),
        "--desired-state=/config/desired_state.jsonc",
        "--data-dir=/var/lib/ndb-agent",
        "--http=0.0.0.0:8181",
    ]);
    agents.learn(&format!("{bootstrap_ip}:8181"));

    // 1. Created through the front: 1 management server, 2 data nodes, 1 MySQL server.
    tier.wait_reached(
        &agents,
        1,
        &[("mgmd", 1), ("mysqld", 1), ("ndbd", 2)],
        "created through Terraform",
    );
    println!(
        "cluster created from a cold bootstrap container in {:.1} s",
        t0.elapsed().as_secs_f64()
    );
    // The bootstrap agent adopted the front's CA (it made none of its own).
    for f in ["ca.pem", "ca-key.pem"] {
        assert_eq!(
            std::fs::read(boot.join("tls").join(f)).unwrap(),
            std::fs::read(cdir.join("tls").join(f)).unwrap(),
            "the bootstrap agent's {f} is not the front's"
        );
    }

    // 2. MySQLds 1 -> 2, submitted through the front (PUT /desired-state forwarded to an
    // agent, which forwards it to the leader), its status read through the front too.
    let (code, reply) = agents.put_desired(&via_front, &desired(2, 2, 2, "mini"));
    assert_eq!(code, 202, "PUT /desired-state through the front: {reply}");
    tier.wait_reached(
        &agents,
        2,
        &[("mgmd", 1), ("mysqld", 2), ("ndbd", 2)],
        "MySQLds 1 -> 2 (through the front)",
    );
    let s = agents
        .status_at(&via_front)
        .expect("GET /status through the front");
    assert_eq!(s.accepted_id, Some(2), "{s:?}");
    let put = |id: u64, body: String| {
        let s = agents.status().expect("a live agent");
        let leader = s
            .leader_vm
            .as_ref()
            .and_then(|l| s.agents.iter().find(|a| &a.vm == l))
            .expect("a leader");
        let (code, reply) = agents.put_desired(&leader.http_addr, &body);
        assert!(
            code == 200 || code == 202,
            "desired state {id}: {code} {reply}"
        );
    };

    // 3. Replicas 2 -> 3, the leader killed (SIGKILL) while its Terraform apply runs.
    let base = tier.applies_started();
    put(3, desired(3, 3, 2, "mini"));
    tier.wait_apply_started(base);
    let leader = agents.status().and_then(|s| s.leader_vm).expect("a leader");
    docker(&["kill", &format!("{cluster}-{leader}")]);
    println!("leader {leader} killed while an apply ran");
    tier.wait_reached(
        &agents,
        3,
        &[("mgmd", 1), ("mysqld", 2), ("ndbd", 3)],
        "replicas 2 -> 3 with the leader killed",
    );
    if leader != "bootstrap" {
        docker(&["start", &format!("{cluster}-{leader}")]);
    }

    // 4. MySQL servers' VM type mini -> small: new containers through Terraform; saved in
    // the file the front follows.
    std::fs::write(&followed, desired(4, 3, 2, "small")).unwrap();
    tier.wait_reached(
        &agents,
        4,
        &[("mgmd", 1), ("mysqld", 2), ("ndbd", 3)],
        "MySQLd VM type mini -> small",
    );
    let small = providers::docker::limits(VmType::Small).0.to_string();
    for vm in tier.containers().iter().filter(|v| v.starts_with("mysqld")) {
        assert_eq!(
            docker(&[
                "inspect",
                "-f",
                "{{.HostConfig.Memory}}",
                &format!("{cluster}-{vm}")
            ]),
            small,
            "{vm}"
        );
    }

    // 5. MySQLds 2 -> 3 (saved in the followed file) with the front killed mid-apply and
    // started again.
    let base = tier.applies_started();
    std::fs::write(&followed, desired(5, 3, 3, "small")).unwrap();
    tier.wait_apply_started(base);
    front.kill();
    println!("front killed mid-apply");
    let _front = tier.start_front(2);
    tier.wait_reached(
        &agents,
        5,
        &[("mgmd", 1), ("mysqld", 3), ("ndbd", 3)],
        "MySQLds 2 -> 3 with the front killed",
    );

    // 6. `ndb-agent down --provider front --remove`: every VM deleted, an empty state, and
    // no VM made again for the cluster (twice: the second finds nothing to do).
    for round in 1..=2 {
        let t = Instant::now();
        let out = std::process::Command::new(BIN)
            .args([
                "down",
                "--provider",
                "front",
                "--remove",
                "--cluster-name",
                &cluster,
            ])
            .args(["--front-url", &format!("https://127.0.0.1:{port}")])
            .arg("--front-ca-file")
            .arg(cdir.join("tls").join("ca.pem"))
            .env("NDB_FRONT_CREDENTIAL", credential.trim())
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "down --provider front (round {round}): {}",
            String::from_utf8_lossy(&out.stderr)
        );
        println!(
            "down --remove (round {round}): {:.1} s",
            t.elapsed().as_secs_f64()
        );
    }
    let rt = tokio::runtime::Runtime::new().unwrap();
    rt.block_on(async {
        let p = tier.client(None, None);
        tier.check(&p, &[], "cluster deleted").await;
        let e = p
            .create_vm(OpId(1), &spec("mysqld-99", Role::Mysqld, "a", VmType::Mini))
            .await
            .unwrap_err();
        assert!(e.message.contains("was deleted"), "{e}");
    });
}
