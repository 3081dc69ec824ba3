//! The `front` provider: a client of the cloud front (`ndb-agent cloud-front`), the one
//! service of an installation that holds the cloud's keys (the Docker socket, Terraform's
//! state and credentials) and creates VMs when a cluster's leader asks. Any agent may lead,
//! so every VM carries the front's address and the cluster's credential in its `vm.json`
//! (0600), and none holds the keys to the cloud.
//!
//! The VM API, scoped to one cluster and authenticated with the cluster's credential
//! (`Authorization: Bearer`), JSON both ways:
//!
//! | call | body | answer |
//! |---|---|---|
//! | `POST /v1/clusters/{cluster}/vms` | [`CreateVm`] | `VmInfo` |
//! | `DELETE /v1/clusters/{cluster}/vms/{vm}?op=N` | | 204 |
//! | `GET /v1/clusters/{cluster}/vms` | | `[VmInfo]` |
//! | `POST /v1/clusters/{cluster}/vms/{vm}/start?op=N` | | `VmInfo` |
//! | `DELETE /v1/clusters/{cluster}` | | 204: every VM deleted, none made again |
//!
//! Creating is idempotent by VM name: a new leader repeating a call never makes a second VM.
//! A refusal comes back as an [`ErrorBody`], so the leader sees the backend's own error kind
//! and words.

use agent_core::backend::{BackendError, CloudProvider, ErrorKind, OpId, VmInfo, VmSpec};
use async_trait::async_trait;
use serde::{Deserialize, Serialize};
use std::time::Duration;

/// How the VMs of a cluster reach the cloud front. The credential is a secret: `vm.json`
/// is 0600 and `Debug` does not print it.
#[derive(Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct FrontConfig {
    /// The front's base URL as the VMs reach it (`https://10.213.0.1:9090`; `http://` only
    /// for a front on loopback).
    pub url: String,
    pub cluster: String,
    pub credential: String,
}

impl std::fmt::Debug for FrontConfig {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("FrontConfig")
            .field("url", &self.url)
            .field("cluster", &self.cluster)
            .field("credential", &"<redacted>")
            .finish()
    }
}

/// The body of a VM creation.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct CreateVm {
    pub op: OpId,
    pub spec: VmSpec,
}

/// A failed call, as the front answers it (any status but 2xx).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ErrorBody {
    pub kind: ErrorKind,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub vm: Option<String>,
    pub message: String,
}

impl From<&BackendError> for ErrorBody {
    fn from(e: &BackendError) -> Self {
        ErrorBody {
            kind: e.kind,
            vm: e.vm.clone(),
            message: e.message.clone(),
        }
    }
}

/// How long one call may take: a creation waits for a Terraform apply and the new agent.
const CALL_TIMEOUT: Duration = Duration::from_secs(15 * 60);

/// The `front` CloudProvider.
pub struct FrontProvider {
    cfg: FrontConfig,
    client: reqwest::Client,
}

impl FrontProvider {
    /// `http` decides whom the client trusts: a front beyond loopback serves HTTPS with a
    /// certificate of the cluster CA, so the caller (the binary, which knows the CA) hands
    /// in a client that checks it. The calls' time limits are added here.
    pub fn new(cfg: FrontConfig, http: reqwest::ClientBuilder) -> Result<Self, BackendError> {
        let client = http
            .timeout(CALL_TIMEOUT)
            .connect_timeout(Duration::from_secs(5))
            .build()
            .map_err(|e| BackendError::refused(format!("cannot make an HTTP client: {e}")))?;
        Ok(FrontProvider { cfg, client })
    }

    fn url(&self, path: &str) -> String {
        format!(
            "{}/v1/clusters/{}/vms{path}",
            self.cfg.url.trim_end_matches('/'),
            self.cfg.cluster
        )
    }

    async fn call<T: serde::de::DeserializeOwned>(
        &self,
        what: &str,
        req: reqwest::RequestBuilder,
    ) -> Result<Option<T>, BackendError> {
        let resp = req
            .bearer_auth(&self.cfg.credential)
            .send()
            .await
            .map_err(|e| {
                BackendError::transient(format!(
                    "cloud front at {} did not answer {what}: {e}",
                    self.cfg.url
                ))
                .caused_by(e)
            })?;
        let status = resp.status();
        if status == reqwest::StatusCode::NO_CONTENT {
            return Ok(None);
        }
        let bytes = resp.bytes().await.map_err(|e| {
            BackendError::transient(format!("cloud front answer to {what} was cut short: {e}"))
        })?;
        if status.is_success() {
            return serde_json::from_slice(&bytes).map(Some).map_err(|e| {
                BackendError::refused(format!(
                    "cloud front answered {what} with JSON this agent cannot read ({e}); are the front and the agents the same version?"
                ))
            });
        }
        let body: ErrorBody = serde_json::from_slice(&bytes).unwrap_or_else(|_| ErrorBody {
            kind: if status.is_server_error() {
                ErrorKind::Transient
            } else {
                ErrorKind::Refused
            },
            vm: None,
            message: format!(
                "cloud front answered {what} with {status}: {}",
                String::from_utf8_lossy(&bytes).trim()
            ),
        });
        let mut e = BackendError::new(body.kind, body.message);
        if let Some(vm) = body.vm {
            e = e.on(vm);
        }
        Err(e)
    }
}

impl FrontProvider {
    /// The cluster CA the front hands its VMs: a bootstrap agent must trust the same one.
    /// Served only to callers holding the cluster's credential, which can read it from any
    /// VM they have the front make anyway.
    pub async fn cluster_ca(&self) -> Result<agent_core::backend::ClusterCa, BackendError> {
        let url = format!(
            "{}/v1/clusters/{}/ca",
            self.cfg.url.trim_end_matches('/'),
            self.cfg.cluster
        );
        self.call("get the cluster CA", self.client.get(url))
            .await?
            .ok_or_else(|| no_answer("get the cluster CA"))
    }

    /// Waits until the front answers `/health` (it is starting beside this agent), at most
    /// `patience`.
    pub async fn wait_ready(&self, patience: Duration) -> Result<(), BackendError> {
        let url = format!("{}/health", self.cfg.url.trim_end_matches('/'));
        let deadline = tokio::time::Instant::now() + patience;
        loop {
            let last = match self.client.get(&url).send().await {
                Ok(r) if r.status().is_success() => return Ok(()),
                Ok(r) => format!("it answered {}", r.status()),
                Err(e) => e.to_string(),
            };
            if tokio::time::Instant::now() >= deadline {
                return Err(BackendError::transient(format!(
                    "the cloud front at {} did not answer /health within {} s ({last}); is it running?",
                    self.cfg.url,
                    patience.as_secs()
                )));
            }
            tokio::time::sleep(Duration::from_millis(250)).await;
        }
    }

    /// Deletes every VM of the cluster; the front makes none for it from then on.
    pub async fn delete_cluster(&self) -> Result<(), BackendError> {
        let url = format!(
            "{}/v1/clusters/{}",
            self.cfg.url.trim_end_matches('/'),
            self.cfg.cluster
        );
        self.call::<serde_json::Value>("delete cluster", self.client.delete(url))
            .await
            .map(|_| ())
    }
}

fn no_answer(what: &str) -> BackendError {
    BackendError::refused(format!("cloud front answered {what} with no body"))
}

#[async_trait]
impl CloudProvider for FrontProvider {
    async fn create_vm(&self, op: OpId, spec: &VmSpec) -> Result<VmInfo, BackendError> {
        let body = CreateVm {
            op,
            spec: spec.clone(),
        };
        self.call("create VM", self.client.post(self.url("")).json(&body))
            .await
            .and_then(|v| v.ok_or_else(|| no_answer("create VM")))
            .map_err(|e| e.on(&spec.name).in_op(op))
    }

    async fn delete_vm(&self, op: OpId, name: &str) -> Result<(), BackendError> {
        self.call::<serde_json::Value>(
            "delete VM",
            self.client
                .delete(self.url(&format!("/{name}")))
                .query(&[("op", op.0)]),
        )
        .await
        .map(|_| ())
        .map_err(|e| e.on(name).in_op(op))
    }

    async fn list_vms(&self) -> Result<Vec<VmInfo>, BackendError> {
        self.call("list VMs", self.client.get(self.url("")))
            .await
            .and_then(|v| v.ok_or_else(|| no_answer("list VMs")))
    }

    async fn start_vm(&self, op: OpId, name: &str) -> Result<VmInfo, BackendError> {
        self.call(
            "start VM",
            self.client
                .post(self.url(&format!("/{name}/start")))
                .query(&[("op", op.0)]),
        )
        .await
        .and_then(|v| v.ok_or_else(|| no_answer("start VM")))
        .map_err(|e| e.on(name).in_op(op))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_credential_is_never_printed() {
        let cfg = FrontConfig {
            url: "https://front:9090".into(),
            cluster: "c".into(),
            credential: "s3cret".into(),
        };
        let shown = format!("{cfg:?}");
        assert!(
            !shown.contains("s3cret") && shown.contains("redacted"),
            "{shown}"
        );
    }

    #[test]
    fn errors_keep_their_kind_and_vm_across_the_wire() {
        let e = BackendError::vm_gone("ndbd-0-1");
        let body: ErrorBody =
            serde_json::from_str(&serde_json::to_string(&ErrorBody::from(&e)).unwrap()).unwrap();
        assert_eq!(body.kind, ErrorKind::VmGone);
        assert_eq!(body.vm.as_deref(), Some("ndbd-0-1"));
    }
}
