//! The HTTP API of every agent: `PUT /desired-state`, `GET /status`, `GET /health`.
//! Followers forward a desired state to the leader; status is answered from this agent's
//! replica of the state, which trails the leader's by at most a heartbeat.

use super::AgentShared;
use crate::desired::{self, Violation};
use crate::reconcile::{Submission, Submit};
use axum::body::Bytes;
use axum::extract::State;
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::routing::{get, put};
use axum::{Json, Router};
use serde::{Deserialize, Serialize};
use serde_json::json;
use std::sync::Arc;
use std::time::Duration;

/// The routes of the agent API.
pub fn router(shared: Arc<AgentShared>) -> Router {
    Router::new()
        .route("/desired-state", put(put_desired))
        .route("/status", get(status))
        // Everything above needs the cluster's token; health stays open for probes.
        .route_layer(axum::middleware::from_fn_with_state(
            Arc::clone(&shared),
            crate::api_token::require_token,
        ))
        .route("/health", get(health))
        .with_state(shared)
}

/// One agent in `GET /status`.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct AgentEntry {
    pub vm: String,
    pub role: String,
    pub zone: String,
    pub raft_id: u64,
    pub voter: bool,
    pub http_addr: String,
}

/// The body of `GET /status`.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct Status {
    /// `UNKNOWN` while this agent cannot vouch for a leader, or while a new leader has not
    /// looked at the world yet (see `leader_problem`).
    pub reconciliation_state: String,
    pub accepted_id: Option<u64>,
    pub pending_id: Option<u64>,
    /// The leader, only when a quorum stands behind it as far as this agent can tell.
    pub leader_vm: Option<String>,
    /// Why there is no leader to report (no quorum, which voters do not answer), or why the
    /// leader's reconciliation state is not vouched for yet.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub leader_problem: Option<String>,
    pub last_error: Option<String>,
    pub agents: Vec<AgentEntry>,
    /// VMs of the cluster by name with their role.
    pub vms: Vec<VmEntry>,
    pub actions_in_flight: usize,
    pub actions_completed: u64,
    /// The agent that answered.
    pub answered_by: String,
    /// `host:port` of every started MySQL server: where clients connect.
    #[serde(default)]
    pub mysqld_endpoints: Vec<String>,
    /// How many agents the cluster can lose and still elect a leader (a majority of the
    /// Raft voters must remain): 0 with fewer than three voters.
    #[serde(default)]
    pub agent_losses_survived: usize,
    /// The Raft configuration is joint (a voter change between its two steps): a majority
    /// of each voter set is needed, so `voter` marks the union and the losses survived
    /// count the weaker set. The leader finishes such a change on its next upkeep.
    #[serde(default)]
    pub voters_joint: bool,
}

/// How many voters may be lost with a leader still electable: a majority must remain in
/// every voter set of the configuration (two while it is joint).
pub fn losses_survived(configs: &[std::collections::BTreeSet<u64>]) -> usize {
    configs
        .iter()
        .map(|c| c.len().saturating_sub(1) / 2)
        .min()
        .unwrap_or(0)
}

/// One VM in `GET /status`.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct VmEntry {
    pub name: String,
    pub role: String,
    pub zone: String,
    /// Its RonDB program runs.
    pub running: bool,
    /// The machine itself is down (stopped, its agent dead): it is being started again.
    #[serde(default)]
    pub down: bool,
    /// Where the VM answers (its RonDB servers listen there).
    #[serde(default)]
    pub address: String,
    /// Its program's node ids as RonDB's management server reports them, at the leader's
    /// last look (only the leader has looked: empty in a follower's answer).
    #[serde(default)]
    pub rondb: Vec<agent_core::backend::RonDbNode>,
}

fn error(code: StatusCode, msg: impl Into<String>) -> Response {
    (code, Json(json!({ "errors": [msg.into()] }))).into_response()
}

/// Builds the status from this agent's replica.
pub fn build_status(shared: &AgentShared) -> Option<Status> {
    let rep = shared.replicated()?;
    let view = shared.leader_view();
    let m = rep.membership.membership();
    let voters: std::collections::BTreeSet<u64> = m.voter_ids().collect();
    let agents: Vec<AgentEntry> = m
        .nodes()
        .map(|(id, n)| AgentEntry {
            vm: n.vm.clone(),
            role: n.role.clone(),
            zone: n.zone.clone(),
            raft_id: *id,
            voter: voters.contains(id),
            http_addr: n.http_addr.clone(),
        })
        .collect();
    let (leader_vm, leader_problem) = match view {
        super::LeaderView::Confirmed(l) => (
            agents.iter().find(|a| a.raft_id == l).map(|a| a.vm.clone()),
            None,
        ),
        super::LeaderView::Unknown(why) => (None, Some(why)),
    };
    let c = &rep.cluster;
    let current_term = shared
        .raft()
        .map(|(_, r)| r.metrics().borrow().current_term)
        .unwrap_or_default();
    let mut seen = shared.programs_seen();
    // What this replica says is only as true as the quorum behind it, and as fresh as the
    // leader's last look at the world.
    let (reconciliation_state, leader_problem) = match (&leader_vm, leader_problem) {
        (None, why) => ("UNKNOWN".to_string(), why),
        (Some(l), _) if (!c.world_seen || rep.looked_in_term < current_term) && c.accepted.is_some() => (
            "UNKNOWN".to_string(),
            Some(format!(
                "{l} took over the leadership and has not looked at the VMs yet; the state on record may be stale"
            )),
        ),
        (Some(_), why) => (format!("{:?}", c.reconciliation), why),
    };
    Some(Status {
        reconciliation_state,
        leader_problem,
        accepted_id: c.accepted.as_ref().map(|d| d.id),
        pending_id: c.pending.as_ref().map(|d| d.id),
        leader_vm,
        last_error: c.last_error.clone(),
        agents,
        vms: c
            .vms
            .values()
            .map(|v| VmEntry {
                name: v.name.clone(),
                role: format!("{:?}", v.role).to_lowercase(),
                zone: v.zone.clone(),
                running: v.running,
                down: v.down,
                address: v.address.clone(),
                rondb: seen.remove(&v.name).map(|p| p.rondb).unwrap_or_default(),
            })
            .collect(),
        mysqld_endpoints: {
            let port = c
                .accepted
                .as_ref()
                .map(|d| d.default_mysqld_port)
                .unwrap_or(3306);
            c.vms
                .values()
                .filter(|v| v.role == agent_core::model::Role::Mysqld && v.running && !v.down)
                .map(|v| format!("{}:{port}", v.address))
                .collect()
        },
        agent_losses_survived: losses_survived(m.get_joint_config()),
        voters_joint: m.get_joint_config().len() > 1,
        actions_in_flight: c.in_flight.len(),
        actions_completed: c.completed_actions,
        answered_by: shared.vm.clone(),
    })
}

async fn status(State(shared): State<Arc<AgentShared>>) -> Response {
    match build_status(&shared) {
        Some(s) => Json(s).into_response(),
        None => error(
            StatusCode::SERVICE_UNAVAILABLE,
            format!(
                "the agent of {} has not joined the cluster yet; ask another agent or retry",
                shared.vm
            ),
        ),
    }
}

async fn health(State(shared): State<Arc<AgentShared>>) -> Response {
    let leader = shared.leader_inbox().is_some();
    Json(json!({
        "vm": shared.vm,
        "raft_id": shared.raft_id(),
        "leader": leader,
        "agent_version": shared.agent_version(),
    }))
    .into_response()
}

fn violations(v: &[Violation]) -> Response {
    let list: Vec<String> = v.iter().map(|x| x.to_string()).collect();
    (StatusCode::BAD_REQUEST, Json(json!({ "errors": list }))).into_response()
}

async fn put_desired(
    State(shared): State<Arc<AgentShared>>,
    headers: axum::http::HeaderMap,
    body: Bytes,
) -> Response {
    // Parse errors are answered here; everything else needs the leader's view.
    let d = match desired::parse(&body) {
        Ok(d) => d,
        Err(e) => {
            return (
                StatusCode::BAD_REQUEST,
                Json(json!({ "errors": e.problems() })),
            )
                .into_response()
        }
    };
    let v = desired::validate(&d);
    if !v.is_empty() {
        return violations(&v);
    }
    if let Some(inbox) = shared.leader_inbox() {
        let (tx, rx) = tokio::sync::oneshot::channel();
        let id = d.id;
        if inbox
            .send(Submit {
                desired: d,
                reply: tx,
            })
            .await
            .is_err()
        {
            return error(
                StatusCode::SERVICE_UNAVAILABLE,
                "leadership is changing; retry",
            );
        }
        return match rx.await {
            Ok(Ok(s)) => (
                StatusCode::ACCEPTED,
                Json(json!({
                    "id": id,
                    "result": match s { Submission::Accepted => "accepted", Submission::Queued => "queued" },
                })),
            )
                .into_response(),
            Ok(Err(v)) => violations(&v),
            Err(_) => error(StatusCode::SERVICE_UNAVAILABLE, "leadership changed before the desired state was recorded; retry"),
        };
    }
    // The caller's token goes along: the leader checks it as any agent does.
    let auth = headers.get(axum::http::header::AUTHORIZATION).cloned();
    forward(&shared, auth, body).await
}

/// Sends the body to the leader's HTTP API and relays its answer.
async fn forward(
    shared: &AgentShared,
    auth: Option<axum::http::HeaderValue>,
    body: Bytes,
) -> Response {
    let Some(status) = build_status(shared) else {
        return error(
            StatusCode::SERVICE_UNAVAILABLE,
            "this agent has not joined the cluster yet",
        );
    };
    let Some(addr) = status
        .leader_vm
        .as_ref()
        .and_then(|l| status.agents.iter().find(|a| &a.vm == l))
        .map(|a| a.http_addr.clone())
        .filter(|a| *a != shared.http_addr)
    else {
        return error(
            StatusCode::SERVICE_UNAVAILABLE,
            "no leader is elected right now; retry in a few seconds",
        );
    };
    let client = match crate::https::client(Some(shared.tls.ca_cert_pem())) {
        Ok(c) => c,
        Err(e) => return error(StatusCode::INTERNAL_SERVER_ERROR, e.to_string()),
    };
    let mut request = client
        .put(crate::https::api_url(&addr, "/desired-state"))
        .timeout(Duration::from_secs(30))
        .body(body);
    if let Some(auth) = auth.as_ref().and_then(|a| a.to_str().ok()) {
        request = request.header(reqwest::header::AUTHORIZATION, auth);
    }
    match request.send().await {
        Ok(r) => {
            let code = StatusCode::from_u16(r.status().as_u16()).unwrap_or(StatusCode::BAD_GATEWAY);
            let bytes = r.bytes().await.unwrap_or_default();
            (code, [("content-type", "application/json")], bytes).into_response()
        }
        Err(e) => error(
            StatusCode::BAD_GATEWAY,
            format!("cannot reach the leader at {addr}: {e}"),
        ),
    }
}

#[cfg(test)]
mod tests {
    use super::losses_survived;
    use std::collections::BTreeSet;

    fn set(ids: &[u64]) -> BTreeSet<u64> {
        ids.iter().copied().collect()
    }

    #[test]
    fn a_joint_configuration_survives_only_what_its_weaker_set_survives() {
        // The bootstrap agent alone in the old set: losing it stops every election, though
        // the union counts five voters.
        assert_eq!(losses_survived(&[set(&[1]), set(&[2, 4, 5, 6, 7])]), 0);
        assert_eq!(
            losses_survived(&[set(&[1, 2, 3]), set(&[2, 3, 4, 5, 6])]),
            1
        );
        assert_eq!(losses_survived(&[set(&[2, 4, 5, 6, 7])]), 2);
        assert_eq!(losses_survived(&[set(&[1, 2])]), 0);
        assert_eq!(losses_survived(&[]), 0);
    }
}
