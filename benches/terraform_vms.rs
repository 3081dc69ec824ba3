//! VM creation and deletion through Terraform (`local-docker` target) against the docker
//! provider, on this machine's Docker engine with the agent image.
//!
//! `cargo bench --bench terraform_vms` (VMS=N, default 8; TERRAFORM as for the tests):
//! 1. docker provider: N VMs created one after the other, then deleted one after the other;
//! 2. terraform provider: the same, one apply per VM;
//! 3. terraform provider: N VMs asked for at once (one apply), then deleted at once.
//!
//! A creation returns when the VM's agent accepts connections, as the cluster waits for it.
//! Prints the mean time per VM of each and the ratios.

#![allow(clippy::expect_used, clippy::unwrap_used, clippy::panic)]

#[path = "../tests/common/docker_cli.rs"]
mod docker_cli;

use agent_core::backend::{CloudProvider, OpId, VmSpec};
use agent_core::desired::VmType;
use agent_core::model::Role;
use docker_cli::docker;
use providers::{DockerConfig, DockerProvider, ProviderConfig, RuntimeKind};
use providers::{TerraformProvider, TerraformSettings, TerraformTarget};
use std::time::Instant;

const BIN: &str = env!("CARGO_BIN_EXE_ndb-agent");
const IMAGE: &str = "managed-rondb/ndb-agent:latest";

fn spec(name: String) -> VmSpec {
    VmSpec {
        name,
        role: Role::Mysqld,
        zone: "a".into(),
        vm_type: VmType::Mini,
        storage_gib: 5,
        temporary: false,
        agent_version: "0.999".into(),
        join: None,
    }
}

/// Seconds per VM: creating `names` one by one, then deleting them one by one.
async fn one_by_one(p: &dyn CloudProvider, names: &[String]) -> (f64, f64) {
    let t = Instant::now();
    for n in names {
        p.create_vm(OpId(1), &spec(n.clone())).await.unwrap();
    }
    let create = t.elapsed().as_secs_f64() / names.len() as f64;
    let t = Instant::now();
    for n in names {
        p.delete_vm(OpId(2), n).await.unwrap();
    }
    (create, t.elapsed().as_secs_f64() / names.len() as f64)
}

struct Cleanup(String);

impl Drop for Cleanup {
    fn drop(&mut self) {
        let label = format!("label=managed-rondb.cluster={}", self.0);
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
        run(&["network", "rm", &self.0]);
    }
}

fn main() {
    let n: usize = std::env::var("VMS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(8);
    let terraform = std::env::var("TERRAFORM").unwrap_or_else(|_| "terraform".into());
    let built = std::process::Command::new(concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/compose/images/build.sh"
    ))
    .env("NDB_AGENT_BIN", BIN)
    .status()
    .expect("run compose/images/build.sh");
    assert!(built.success(), "building the images failed");
    let cluster = format!("mrdb-bench{}", std::process::id());
    let _cleanup = Cleanup(cluster.clone());
    let net = 1 + (std::process::id() + 201) % 250;
    let subnet = format!("10.214.{net}.0/24");
    docker(&[
        "network",
        "create",
        "--subnet",
        &subnet,
        "--label",
        &format!("managed-rondb.cluster={cluster}"),
        &cluster,
    ]);
    let ca = agent::tls::make_ca().unwrap();
    let cfg = DockerConfig {
        cluster: cluster.clone(),
        network: cluster.clone(),
        image: IMAGE.into(),
        env: Default::default(),
    };
    let work = tempfile::tempdir().unwrap();
    let names = |prefix: &str| -> Vec<String> { (0..n).map(|i| format!("{prefix}-{i}")).collect() };
    let rt = tokio::runtime::Runtime::new().unwrap();
    // The agents never lead here: the front they would ask need not exist.
    let vm_provider = ProviderConfig::Front(providers::FrontConfig {
        url: "https://front.invalid:9090".into(),
        cluster: cluster.clone(),
        credential: "bench".into(),
    });
    rt.block_on(async {
        let d = DockerProvider::new(
            cfg.clone(),
            RuntimeKind::Dummy,
            ca.cert_pem.clone(),
            vm_provider.clone(),
        )
        .unwrap();
        let (d_create, d_delete) = one_by_one(&d, &names("dk")).await;

        let t = TerraformProvider::open(
            TerraformSettings {
                terraform: terraform.into(),
                work_dir: work.path().join("terraform"),
                target: TerraformTarget::LocalDocker {
                    cluster: cluster.clone(),
                    network: cluster.clone(),
                    subnet,
                    image: IMAGE.into(),
                    env: Default::default(),
                },
            },
            RuntimeKind::Dummy,
            ca,
            vm_provider,
        )
        .await
        .unwrap();
        let (t_create, t_delete) = one_by_one(&t, &names("tf")).await;

        let batch = names("tfb");
        let applies = t.applies();
        let start = Instant::now();
        let specs: Vec<VmSpec> = batch.iter().map(|b| spec(b.clone())).collect();
        let made = futures::future::join_all(specs.iter().map(|s| t.create_vm(OpId(3), s))).await;
        assert!(made.iter().all(Result::is_ok), "{made:?}");
        let b_create = start.elapsed().as_secs_f64();
        let create_applies = t.applies() - applies;
        let start = Instant::now();
        let gone = futures::future::join_all(batch.iter().map(|b| t.delete_vm(OpId(4), b))).await;
        assert!(gone.iter().all(Result::is_ok), "{gone:?}");
        let b_delete = start.elapsed().as_secs_f64();

        println!("{n} VMs, agent image, dummy runtime; seconds");
        println!("{:<44} {:>8} {:>8}", "", "create", "delete");
        println!(
            "{:<44} {d_create:>8.2} {d_delete:>8.2}",
            "docker provider, per VM (one at a time)"
        );
        println!(
            "{:<44} {t_create:>8.2} {t_delete:>8.2}",
            "terraform, per VM (one apply per VM)"
        );
        println!(
            "{:<44} {:>8.2} {:>8.2}",
            "terraform / docker",
            t_create / d_create,
            t_delete / d_delete
        );
        println!(
            "{:<44} {b_create:>8.2} {b_delete:>8.2}",
            format!("terraform, {n} VMs at once ({create_applies} apply), total")
        );
        println!(
            "{:<44} {:>8.2} {:>8.2}",
            format!("terraform, {n} applies / one apply of {n}"),
            t_create * n as f64 / b_create,
            t_delete * n as f64 / b_delete
        );
    });
}
