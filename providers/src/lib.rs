//! `CloudProvider` implementations: `mock`, over the simulated world of the `sim-world` crate
//! (used by `simulate` and the generative tests); `local`, where each VM is an
//! agent process on this machine (the embedded default); `docker`, where each VM is a
//! container on a user-defined network; `terraform`, where each VM is a resource of one
//! Terraform root module (run by the one process that holds the Terraform state).

pub mod docker;
pub mod front;
pub mod local;
pub mod mock;
pub mod terraform;

pub use docker::{DockerConfig, DockerProvider};
pub use front::{FrontConfig, FrontProvider};
pub use local::LocalProvider;
pub use mock::MockProvider;
pub use terraform::{TerraformProvider, TerraformSettings, TerraformTarget};

use agent_core::backend::VmSpec;
use serde::{Deserialize, Serialize};
use std::path::PathBuf;

/// Which provider a cluster uses, with its settings. Every agent carries it, so whichever
/// agent leads creates and deletes VMs the same way.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(tag = "kind", rename_all = "lowercase")]
pub enum ProviderConfig {
    /// VMs are agent processes under `data_dir/vms/`.
    Local { data_dir: PathBuf },
    /// VMs are made by the cloud front (containers or cloud VMs); the leader asks it.
    Front(FrontConfig),
}

impl ProviderConfig {
    /// Whether a VM is a machine of its own (a container or a cloud VM): its agent listens
    /// on fixed ports of all interfaces and RonDB lives where the commands expect it.
    pub fn is_machine_of_its_own(&self) -> bool {
        !matches!(self, ProviderConfig::Local { .. })
    }
}

/// The `ProcessRuntime` a cluster's agents run RonDB programs with. Every agent carries it
/// (in `vm.json` or its container's environment), spelled in lower case.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, Default)]
#[serde(rename_all = "lowercase")]
pub enum RuntimeKind {
    /// Programs are pretended: real files and command lines, no RonDB process.
    #[default]
    Dummy,
    /// RonDB's programs run as processes of the agent, from an installed RonDB tarball.
    Direct,
    /// RonDB's programs run under supervisord (as on the seed's containers), from an
    /// installed RonDB tarball. Containers only: supervisord runs the agent there too.
    Supervisord,
}

impl RuntimeKind {
    /// Whether RonDB's programs really run (a tarball installed, processes started).
    pub fn runs_rondb(self) -> bool {
        !matches!(self, RuntimeKind::Dummy)
    }
}

impl std::fmt::Display for RuntimeKind {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            RuntimeKind::Dummy => "dummy",
            RuntimeKind::Direct => "direct",
            RuntimeKind::Supervisord => "supervisord",
        })
    }
}

/// What a VM is, handed to its agent at creation (`vm.json`, or the `NDB_AGENT_VM`
/// environment variable of a container).
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct VmConfig {
    pub spec: VmSpec,
    /// The `ProcessRuntime` the agent uses.
    pub runtime: RuntimeKind,
    pub provider: ProviderConfig,
    /// A local VM that runs RonDB gets a loopback address of its own (127.x.y.z), so every
    /// program listens on RonDB's default ports as on a machine of its own.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub address: Option<String>,
    /// Where the VM's runtime fetches tarballs whose links name another server (a local
    /// cluster gets the Docker demo's artifact-server links from a directory).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub artifact_mirrors: Vec<agent_core::artifacts::ArtifactMirror>,
    /// The cluster CA the VM's agent trusts. Only the bootstrap agent's holds the CA's key;
    /// a VM a leader creates gets the certificate and enrols with the join ticket in its
    /// spec (vm.json is 0600 all the same).
    pub ca: agent_core::backend::VmTrust,
}

impl VmConfig {
    /// Where backups of the dummy runtime go and local VMs live (None for containers).
    pub fn local_data_dir(&self) -> Option<&std::path::Path> {
        match &self.provider {
            ProviderConfig::Local { data_dir } => Some(data_dir),
            ProviderConfig::Front(_) => None,
        }
    }
}
