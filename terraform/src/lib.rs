//! Terraform root modules for a cluster's VMs, rendered from tera templates, one set of
//! templates per target:
//!
//! - `aws`: an EC2 instance per VM with a data volume, in the subnet of its zone, behind a
//!   security group that opens only the agent, RonDB and MySQL ports inside the cluster;
//!   cloud-init installs the agent build (checked against its SHA-256) under supervisord.
//! - `local-docker`: a `terraform_data` resource per VM whose `local-exec` provisioners start
//!   and remove the VM's container, so it needs no Terraform provider and runs offline. It is
//!   the target the tests apply.
//!
//! Every module keys its VMs by name in one map (`local.vms`) used with `for_each`, so adding
//! or removing a VM touches only that VM's resources, and has one output, `vms`: each VM's
//! address and agent endpoint. This crate only renders text; running Terraform is the
//! provider's job.

use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;

/// Where a rendered module creates VMs, with the target's own settings.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "target", rename_all = "kebab-case")]
pub enum Target {
    Aws(AwsTarget),
    LocalDocker(LocalDockerTarget),
}

impl Target {
    pub fn name(&self) -> &'static str {
        match self {
            Target::Aws(_) => "aws",
            Target::LocalDocker(_) => "local-docker",
        }
    }

    fn cluster(&self) -> &str {
        match self {
            Target::Aws(t) => &t.cluster,
            Target::LocalDocker(t) => &t.cluster,
        }
    }
}

/// An AWS cluster. What only a user can know (region, VPC, subnets, AMI, the agent build's
/// URL and hash) are Terraform variables the user sets; see `variables.tf`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct AwsTarget {
    pub cluster: String,
    pub agent_grpc_port: u16,
    /// The ports VMs of the cluster open to each other (name, port).
    pub ports: Vec<Port>,
}

/// A named TCP port.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Port {
    /// An HCL identifier (letters, digits, `_`).
    pub name: String,
    pub port: u16,
}

/// VM containers on this machine's Docker engine, as the docker provider makes them.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct LocalDockerTarget {
    pub cluster: String,
    /// A user-defined network with a subnet (VMs get fixed addresses in it).
    pub network: String,
    pub image: String,
    pub agent_grpc_port: u16,
    /// Container limits of each VM type.
    pub limits: Vec<Limits>,
}

/// Memory and CPUs of a container of one VM type.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Limits {
    /// The VM type as the desired state spells it (`small`).
    pub vm_type: String,
    pub memory_bytes: i64,
    /// As `docker run --cpus` takes it (`0.5`).
    pub cpus: String,
}

/// One VM of the cluster, as the module creates it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Vm {
    pub name: String,
    pub role: String,
    pub zone: String,
    pub vm_type: String,
    pub storage_gib: u32,
    /// The VM's fixed address (local-docker); empty where the cloud assigns it (aws).
    #[serde(default)]
    pub address: String,
}

/// A rendered root module: file name → content, to be written into one directory.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Module {
    pub files: BTreeMap<String, String>,
}

/// Why a module could not be rendered.
#[derive(Debug, thiserror::Error)]
pub enum RenderError {
    #[error(
        "VM name {0:?} is not a Terraform map key this module can use (letters, digits, '-', '_')"
    )]
    BadVmName(String),
    #[error("VM {vm}: the {target} target needs {what}")]
    Missing {
        vm: String,
        target: &'static str,
        what: &'static str,
    },
    #[error("{field} {value:?} must be an HCL identifier (letters, digits, '_', not starting with a digit)")]
    BadIdentifier { field: &'static str, value: String },
    #[error("VM type {vm_type:?} of VM {vm} has no container limits in the local-docker target")]
    NoLimits { vm: String, vm_type: String },
    #[error("template {template} of the {target} target: {source}")]
    Template {
        target: &'static str,
        template: &'static str,
        #[source]
        source: Box<tera::Error>,
    },
}

/// A template: the file it renders to, its text.
type Template = (&'static str, &'static str);

const VMS_TF: &str = include_str!("../templates/vms.tf");
const LOCAL_DOCKER: &[Template] = &[
    ("main.tf", include_str!("../templates/local-docker/main.tf")),
    (
        "outputs.tf",
        include_str!("../templates/local-docker/outputs.tf"),
    ),
];
const AWS: &[Template] = &[
    ("versions.tf", include_str!("../templates/aws/versions.tf")),
    (
        "variables.tf",
        include_str!("../templates/aws/variables.tf"),
    ),
    ("main.tf", include_str!("../templates/aws/main.tf")),
    ("outputs.tf", include_str!("../templates/aws/outputs.tf")),
];
/// Terraform's own template (`templatefile`), copied as it is.
const AWS_CLOUD_INIT: &str = include_str!("../templates/aws/cloud-init.yaml.tftpl");

/// `s` as an HCL quoted string: quotes and backslashes escaped, and `${` / `%{` doubled so
/// that no value is ever read as an interpolation or directive.
pub fn hcl_string(s: &str) -> String {
    let mut out = String::with_capacity(s.len() + 2);
    out.push('"');
    let mut chars = s.chars().peekable();
    while let Some(c) = chars.next() {
        match c {
            '"' => out.push_str("\\\""),
            '\\' => out.push_str("\\\\"),
            '\n' => out.push_str("\\n"),
            '\r' => out.push_str("\\r"),
            '\t' => out.push_str("\\t"),
            '$' | '%' if chars.peek() == Some(&'{') => {
                out.push(c);
                out.push(c);
            }
            c => out.push(c),
        }
    }
    out.push('"');
    out
}

fn is_identifier(s: &str) -> bool {
    let mut chars = s.chars();
    chars
        .next()
        .is_some_and(|c| c.is_ascii_alphabetic() || c == '_')
        && chars.all(|c| c.is_ascii_alphanumeric() || c == '_')
}

/// Entries of a map rendered one per line, each with its key padded (`key`) so that the
/// `=` signs line up as `terraform fmt` wants them.
fn aligned<'a, T: Serialize + 'a>(
    entries: impl Iterator<Item = (&'a str, &'a T)> + Clone,
) -> Vec<serde_json::Value> {
    let width = entries.clone().map(|(k, _)| k.len()).max().unwrap_or(0);
    entries
        .map(|(k, v)| {
            let mut value = serde_json::to_value(v).unwrap_or(serde_json::Value::Null);
            if let Some(o) = value.as_object_mut() {
                o.insert("key".into(), format!("{k:<width$}").into());
            }
            value
        })
        .collect()
}

fn engine() -> tera::Tera {
    let mut t = tera::Tera::new();
    t.autoescape_on(Vec::<&str>::new());
    t.register_filter("hcl", |s: &str, _: tera::Kwargs, _: &tera::State| {
        hcl_string(s)
    });
    t
}

/// Renders the root module of `target` for `vms` (in any order; the module lists them by
/// name).
pub fn render(target: &Target, vms: &[Vm]) -> Result<Module, RenderError> {
    let mut vms: Vec<&Vm> = vms.iter().collect();
    vms.sort_by(|a, b| a.name.cmp(&b.name));
    for vm in &vms {
        let ok = !vm.name.is_empty()
            && vm
                .name
                .chars()
                .all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '_');
        if !ok {
            return Err(RenderError::BadVmName(vm.name.clone()));
        }
    }
    let mut ctx = tera::Context::new();
    ctx.insert("cluster", target.cluster());
    ctx.insert("vms", &vms);
    let (templates, extra): (&[Template], Option<Template>) = match target {
        Target::LocalDocker(t) => {
            for vm in &vms {
                if vm.address.is_empty() {
                    return Err(RenderError::Missing {
                        vm: vm.name.clone(),
                        target: "local-docker",
                        what: "a fixed address",
                    });
                }
                if !t.limits.iter().any(|l| l.vm_type == vm.vm_type) {
                    return Err(RenderError::NoLimits {
                        vm: vm.name.clone(),
                        vm_type: vm.vm_type.clone(),
                    });
                }
            }
            for l in &t.limits {
                if !is_identifier(&l.vm_type) {
                    return Err(RenderError::BadIdentifier {
                        field: "VM type",
                        value: l.vm_type.clone(),
                    });
                }
            }
            ctx.insert("network", &t.network);
            ctx.insert("image", &t.image);
            ctx.insert("agent_grpc_port", &t.agent_grpc_port);
            ctx.insert(
                "limits",
                &aligned(t.limits.iter().map(|l| (l.vm_type.as_str(), l))),
            );
            (LOCAL_DOCKER, None)
        }
        Target::Aws(t) => {
            for p in &t.ports {
                if !is_identifier(&p.name) {
                    return Err(RenderError::BadIdentifier {
                        field: "port name",
                        value: p.name.clone(),
                    });
                }
            }
            ctx.insert("agent_grpc_port", &t.agent_grpc_port);
            ctx.insert(
                "ports",
                &aligned(t.ports.iter().map(|p| (p.name.as_str(), p))),
            );
            (AWS, Some(("cloud-init.yaml.tftpl", AWS_CLOUD_INIT)))
        }
    };
    let mut tera = engine();
    let mut files = BTreeMap::new();
    let target_name = target.name();
    for (name, text) in std::iter::once(&("vms.tf", VMS_TF)).chain(templates) {
        let fail = |source: tera::Error| RenderError::Template {
            target: target_name,
            template: name,
            source: Box::new(source),
        };
        tera.add_raw_template(name, text).map_err(fail)?;
        let mut out = tera.render(name, &ctx).map_err(fail)?;
        if !out.ends_with('\n') {
            out.push('\n');
        }
        files.insert(name.to_string(), out);
    }
    if let Some((name, text)) = extra {
        files.insert(name.to_string(), text.to_string());
    }
    Ok(Module { files })
}

/// One VM as the module's `vms` output reports it.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
pub struct VmOutput {
    pub address: String,
    pub agent_endpoint: String,
}

/// Why `terraform output -json` could not be read.
#[derive(Debug, thiserror::Error)]
pub enum OutputError {
    #[error("terraform output is not the JSON this module writes: {0}")]
    Json(#[from] serde_json::Error),
}

/// The `vms` output of `terraform output -json`; no VM when the module has not been
/// applied yet (the output is absent).
pub fn parse_outputs(json: &str) -> Result<BTreeMap<String, VmOutput>, OutputError> {
    #[derive(Deserialize)]
    struct Outputs {
        vms: Option<Output>,
    }
    #[derive(Deserialize)]
    struct Output {
        value: BTreeMap<String, VmOutput>,
    }
    let o: Outputs = serde_json::from_str(json)?;
    Ok(o.vms.map(|v| v.value).unwrap_or_default())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hcl_strings_never_interpolate() {
        assert_eq!(hcl_string("a"), "\"a\"");
        assert_eq!(hcl_string("${x}"), "\"$${x}\"");
        assert_eq!(hcl_string("%{if}"), "\"%%{if}\"");
        assert_eq!(hcl_string("$5 and 100%"), "\"$5 and 100%\"");
        assert_eq!(hcl_string("q\"\\\n"), "\"q\\\"\\\\\\n\"");
    }

    #[test]
    fn a_vm_name_that_is_no_map_key_is_refused() {
        let t = Target::Aws(AwsTarget {
            cluster: "c".into(),
            agent_grpc_port: 7100,
            ports: vec![],
        });
        let vm = Vm {
            name: "a b".into(),
            role: "mysqld".into(),
            zone: "a".into(),
            vm_type: "small".into(),
            storage_gib: 10,
            address: String::new(),
        };
        assert!(matches!(render(&t, &[vm]), Err(RenderError::BadVmName(_))));
    }

    #[test]
    fn outputs_are_read_and_an_unapplied_module_has_none() {
        let json = r#"{"vms":{"sensitive":false,"type":["object",{}],"value":{"mysqld-1":{"address":"10.0.0.5","agent_endpoint":"10.0.0.5:7100"}}}}"#;
        let out = parse_outputs(json).unwrap();
        assert_eq!(out["mysqld-1"].agent_endpoint, "10.0.0.5:7100");
        assert!(parse_outputs("{}").unwrap().is_empty());
        assert!(parse_outputs("not json").is_err());
    }
}
