//! The reconcile loop: plan, start every safe action concurrently through the backends,
//! record each result as an event, observe the world for drift, and report
//! `AT_DESIRED_STATE`, `WORKING_TOWARDS_DESIRED_STATE` or `ERROR_STATE`.

use crate::actions::{Action, ActionKind, RestoreStep};
use crate::backend::{
    BackendError, CloudProvider, MgmCommand, OpId, ProcessRuntime, ProgramKind, ProgramSpec,
    ProgramStatus, RestoreRun, VmSpec,
};
use crate::commands;
use crate::desired::{self, BackupSpec, DesiredState, TransitionContext, Violation};
use crate::model::{
    files_for, render_config_ini, ClusterState, Event, Outcome, ReconciliationState,
};
use crate::planner::{diff, plan};
use futures::stream::{FuturesUnordered, StreamExt};
use std::collections::BTreeMap;
use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::time::Duration;
use tracing::{info, warn, Instrument};

/// Knobs of the loop.
#[derive(Debug, Clone)]
pub struct ReconcilerConfig {
    /// Attempts of one action before the reconciliation gives up with `ERROR_STATE`.
    pub max_attempts: u32,
    /// How often the world is observed for drift while working.
    pub observe_every: Duration,
    /// Actions one reconciliation may start before it is declared not to converge.
    pub max_actions: u64,
}

impl Default for ReconcilerConfig {
    fn default() -> Self {
        ReconcilerConfig {
            max_attempts: 3,
            observe_every: Duration::from_secs(30),
            max_actions: 20_000,
        }
    }
}

/// What happened to a submitted desired state.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Submission {
    /// It is now the accepted state and is being reconciled.
    Accepted,
    /// The leader is working; it waits as the pending state (the latest submitted wins).
    Queued,
}

/// Receives every event after it was applied (simulation output, invariant checks, logs).
pub trait EventHook: Send {
    fn on_event(&mut self, state: &ClusterState, event: &Event);
}

type Running = Pin<Box<dyn Future<Output = (u64, Result<Outcome, BackendError>)> + Send>>;

/// Where events become durable before they take effect: the Raft log on a real cluster.
/// An error means this reconciler may no longer write (leadership lost): it stops at once,
/// and the new leader resumes from what was committed.
#[async_trait::async_trait]
pub trait Journal: Send + Sync {
    async fn append(&self, events: Vec<Event>) -> Result<(), JournalError>;
}

/// Why the log did not take a write. Either way this reconciler stops writing.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum JournalError {
    /// Another agent leads now, or none is known yet.
    #[error("this agent no longer leads{}", leader.as_ref().map(|l| format!("; {l} does")).unwrap_or_default())]
    NotLeader { leader: Option<String> },
    /// The log could not take the write (its storage failed, or the Raft node stopped).
    #[error("the replicated log refused the write: {0}")]
    Refused(String),
}

/// A desired state handed to a running reconciler, with where to send the verdict.
pub struct Submit {
    pub desired: DesiredState,
    pub reply: tokio::sync::oneshot::Sender<Result<Submission, Vec<Violation>>>,
}

/// The leader's reconciler over one cluster.
pub struct Reconciler {
    provider: Arc<dyn CloudProvider>,
    runtime: Arc<dyn ProcessRuntime>,
    state: ClusterState,
    config: ReconcilerConfig,
    hooks: Vec<Box<dyn EventHook>>,
    journal: Option<Arc<dyn Journal>>,
    inbox: Option<tokio::sync::mpsc::Receiver<Submit>>,
    /// Set when the journal refused a write: this reconciler must stop.
    halted: Option<JournalError>,
}

impl Reconciler {
    pub fn new(
        provider: Arc<dyn CloudProvider>,
        runtime: Arc<dyn ProcessRuntime>,
        state: ClusterState,
        config: ReconcilerConfig,
    ) -> Self {
        Reconciler {
            provider,
            runtime,
            state,
            config,
            hooks: Vec::new(),
            journal: None,
            inbox: None,
            halted: None,
        }
    }

    /// Makes every event durable through `journal` before it is applied.
    pub fn with_journal(mut self, journal: Arc<dyn Journal>) -> Self {
        self.journal = Some(journal);
        self
    }

    /// Desired states submitted while the reconciler runs ([`Reconciler::serve`]).
    pub fn with_inbox(mut self, inbox: tokio::sync::mpsc::Receiver<Submit>) -> Self {
        self.inbox = Some(inbox);
        self
    }

    /// Records that this reconciler's agent (on `vm`) leads now.
    pub async fn record_leader(&mut self, vm: &str) {
        if self.state.leader_vm.as_deref() != Some(vm) {
            self.commit(Event::LeaderChanged { vm: vm.to_string() })
                .await;
        }
    }

    /// Why the reconciler stopped writing, if it did.
    pub fn halted(&self) -> Option<&JournalError> {
        self.halted.as_ref()
    }

    pub fn add_hook(&mut self, hook: Box<dyn EventHook>) {
        self.hooks.push(hook);
    }

    pub fn state(&self) -> &ClusterState {
        &self.state
    }

    async fn commit(&mut self, ev: Event) {
        self.commit_all(vec![ev]).await;
    }

    /// Journals the events (one Raft entry), then applies them; nothing after a refusal.
    async fn commit_all(&mut self, events: Vec<Event>) {
        if self.halted.is_some() || events.is_empty() {
            return;
        }
        if let Some(j) = &self.journal {
            if let Err(e) = j.append(events.clone()).await {
                warn!(error = %e, "cannot record events; this reconciler stops");
                self.halted = Some(e);
                return;
            }
        }
        for ev in events {
            self.state.apply(&ev);
            for h in &mut self.hooks {
                h.on_event(&self.state, &ev);
            }
        }
    }

    /// Runs as the leader's reconciler until the journal refuses a write: reconciles,
    /// takes submissions from the inbox, and observes for drift while idle.
    pub async fn serve(&mut self) -> JournalError {
        let mut failed_rounds: u32 = 0;
        loop {
            if let Some(h) = &self.halted {
                return h.clone();
            }
            self.reconcile().await;
            if let Some(h) = &self.halted {
                return h.clone();
            }
            // After ERROR_STATE, retry less and less often (up to 64 observation periods):
            // a stuck cluster is reported, not hammered. A new desired state retries at once.
            let pause = if self.state.reconciliation == ReconciliationState::ERROR_STATE {
                failed_rounds += 1;
                self.config.observe_every * 2u32.pow(failed_rounds.min(6))
            } else {
                failed_rounds = 0;
                self.config.observe_every
            };
            let wait = tokio::time::sleep(pause);
            let msg = match self.inbox.as_mut() {
                Some(inbox) => tokio::select! {
                    m = inbox.recv() => m,
                    _ = wait => None,
                },
                None => {
                    wait.await;
                    None
                }
            };
            if let Some(m) = msg {
                failed_rounds = 0;
                let r = self.submit(m.desired).await;
                let _ = m.reply.send(r);
            }
        }
    }

    /// Validates a desired state against its own rules and the transition from the accepted
    /// one. Bad input changes nothing; a good one is accepted now or queued as pending.
    pub async fn submit(&mut self, d: DesiredState) -> Result<Submission, Vec<Violation>> {
        self.submit_checked(d, true).await
    }

    async fn submit_checked(
        &mut self,
        d: DesiredState,
        against_pending: bool,
    ) -> Result<Submission, Vec<Violation>> {
        let mut v = desired::validate(&d);
        match &self.state.accepted {
            Some(old) => v.extend(desired::validate_transition(
                old,
                &d,
                TransitionContext {
                    rondb_has_run: self.state.rondb_has_run,
                },
            )),
            None => v.extend(desired::validate_first(&d)),
        }
        if let Some(p) = self.state.pending.as_ref().filter(|_| against_pending) {
            if d.id <= p.id {
                v.push(Violation {
                    field: "Id".into(),
                    value: Some(d.id.to_string()),
                    old: Some(p.id.to_string()),
                    rule: "must be larger than the pending desired state's Id".into(),
                });
            }
        }
        if !v.is_empty() {
            return Err(v);
        }
        if self.state.reconciliation == ReconciliationState::WORKING_TOWARDS_DESIRED_STATE {
            info!(
                desired_id = d.id,
                "desired state queued until the current one is reached"
            );
            self.commit(Event::Queued(d)).await;
            self.journaled(Submission::Queued)
        } else {
            info!(desired_id = d.id, "desired state accepted");
            self.commit(Event::Accepted(d)).await;
            self.journaled(Submission::Accepted)
        }
    }

    fn journaled(&self, s: Submission) -> Result<Submission, Vec<Violation>> {
        match &self.halted {
            None => Ok(s),
            Some(e) => Err(vec![Violation {
                field: "Id".into(),
                value: None,
                old: None,
                rule: format!("not recorded, submit it again: {e}"),
            }]),
        }
    }

    /// Observes the world and records drift (lost VMs, dead programs).
    pub async fn observe(&mut self) {
        let vms = match self.provider.list_vms().await {
            Ok(v) => v,
            Err(e) => {
                warn!(error = %e, "cannot list VMs; keeping what is known");
                return;
            }
        };
        let mut programs = BTreeMap::new();
        // All VMs at once: one slow or dead agent must not delay the others.
        let queries = vms
            .iter()
            .filter(|vm| self.state.vms.contains_key(&vm.name))
            .map(|vm| {
                let runtime = Arc::clone(&self.runtime);
                async move { (vm.name.clone(), runtime.status(&vm.name).await) }
            });
        for (name, r) in futures::future::join_all(queries).await {
            match r {
                Ok(st) => {
                    programs.insert(name, st);
                }
                Err(BackendError::VmGone(_)) => {}
                Err(e) => warn!(vm = %name, error = %e, "cannot query program status"),
            }
        }
        let changed = self.observation_changes(&vms, &programs);
        if changed {
            self.commit(Event::Observed { vms, programs }).await;
        }
    }

    fn observation_changes(
        &self,
        vms: &[crate::backend::VmInfo],
        programs: &BTreeMap<String, ProgramStatus>,
    ) -> bool {
        let present: std::collections::BTreeSet<&str> =
            vms.iter().map(|v| v.name.as_str()).collect();
        self.state.vms.values().any(|v| {
            !present.contains(v.name.as_str())
                || programs
                    .get(&v.name)
                    .is_some_and(|p| p.running != v.running)
        })
    }

    /// Runs the reconciliation until the cluster is at the accepted desired state (then takes
    /// the pending one, if any) or gives up. Returns the final state.
    pub async fn reconcile(&mut self) -> ReconciliationState {
        loop {
            let Some(d) = self.state.accepted.clone() else {
                return self.state.reconciliation;
            };
            if self.halted.is_some() {
                return self.state.reconciliation;
            }
            self.observe().await;
            if self.state.reconciliation != ReconciliationState::WORKING_TOWARDS_DESIRED_STATE {
                if diff(&d, &self.state).is_empty() {
                    return self.state.reconciliation;
                }
                // Drift, or a retry from ERROR_STATE: work again.
                self.commit(Event::ReconciliationChanged {
                    state: ReconciliationState::WORKING_TOWARDS_DESIRED_STATE,
                    error: None,
                })
                .await;
            }
            let span = tracing::info_span!("reconcile", desired_id = d.id);
            let outcome = self.run_once(&d).instrument(span).await;
            let pending = self.state.pending.clone();
            match pending {
                Some(p) if outcome != ReconciliationState::WORKING_TOWARDS_DESIRED_STATE => {
                    // Validated again: the rules may depend on what the cluster did meanwhile.
                    if self.halted.is_some() {
                        return outcome;
                    }
                    if let Err(v) = self.submit_checked(p.clone(), false).await {
                        let reason = v
                            .iter()
                            .map(|x| x.to_string())
                            .collect::<Vec<_>>()
                            .join("; ");
                        warn!(desired_id = p.id, %reason, "pending desired state no longer valid; dropped");
                        self.commit(Event::PendingDropped { id: p.id, reason })
                            .await;
                        return outcome;
                    }
                }
                _ => return outcome,
            }
        }
    }

    async fn run_once(&mut self, d: &DesiredState) -> ReconciliationState {
        let mut running: FuturesUnordered<Running> = FuturesUnordered::new();
        let mut error: Option<String> = None;
        let mut next_observe = tokio::time::Instant::now() + self.config.observe_every;
        let mut started: u64 = 0;
        // Actions a previous leader started and did not record: run them again under the
        // same operation id (agents answer a repeated id with its first result).
        let resumed: Vec<Action> = self.state.in_flight.values().cloned().collect();
        for action in resumed {
            info!(op_id = action.op_id, desired_id = d.id, "resume {action}");
            running.push(self.prepare(d, &action));
        }
        loop {
            if self.halted.is_some() {
                return self.state.reconciliation;
            }
            if started > self.config.max_actions && error.is_none() {
                error = Some(format!(
                    "the reconciliation does not converge: {started} actions started; this is a planner bug, please report it with the desired state"
                ));
            }
            if error.is_none() {
                let mut batch = Vec::new();
                let mut jobs = Vec::new();
                for kind in plan(d, &self.state) {
                    let action = Action {
                        op_id: self.state.next_op_id,
                        kind,
                    };
                    started += 1;
                    jobs.push(self.prepare(d, &action));
                    info!(op_id = action.op_id, desired_id = d.id, "start {action}");
                    let ev = Event::ActionStarted(action);
                    self.state.apply(&ev);
                    batch.push(ev);
                }
                // Journaled (one entry) before any of them runs, so a new leader knows what
                // may have started. On a refusal this reconciler and its state are discarded.
                if !batch.is_empty() {
                    if let Some(j) = &self.journal {
                        if let Err(e) = j.append(batch.clone()).await {
                            warn!(error = %e, "cannot record started actions; this reconciler stops");
                            self.halted = Some(e);
                            return self.state.reconciliation;
                        }
                    }
                    for ev in &batch {
                        for h in &mut self.hooks {
                            h.on_event(&self.state, ev);
                        }
                    }
                }
                running.extend(jobs);
            }
            if running.is_empty() {
                let (state, err) = match error.take() {
                    Some(e) => (ReconciliationState::ERROR_STATE, Some(e)),
                    None => {
                        let left = diff(d, &self.state);
                        if left.is_empty() {
                            (ReconciliationState::AT_DESIRED_STATE, None)
                        } else {
                            let e = format!(
                                "no safe action is left but the cluster still differs: {}",
                                left.iter()
                                    .map(ToString::to_string)
                                    .collect::<Vec<_>>()
                                    .join("; ")
                            );
                            (ReconciliationState::ERROR_STATE, Some(e))
                        }
                    }
                };
                match &err {
                    Some(e) => warn!(desired_id = d.id, error = %e, "reconciliation failed"),
                    None => info!(desired_id = d.id, "at desired state"),
                }
                self.commit(Event::ReconciliationChanged { state, error: err })
                    .await;
                return state;
            }
            tokio::select! {
                Some((op_id, result)) = running.next() => {
                    self.record(d, op_id, result, &mut error).await;
                }
                _ = tokio::time::sleep_until(next_observe) => {
                    next_observe += self.config.observe_every;
                    self.observe().await;
                }
                Some(m) = recv(&mut self.inbox) => {
                    let r = self.submit(m.desired).await;
                    let _ = m.reply.send(r);
                }
            }
        }
    }

    async fn record(
        &mut self,
        d: &DesiredState,
        op_id: u64,
        result: Result<Outcome, BackendError>,
        error: &mut Option<String>,
    ) {
        let action = self.state.in_flight.get(&op_id).cloned();
        match result {
            Ok(outcome) => {
                if let Some(a) = &action {
                    info!(op_id, desired_id = d.id, "done {a}");
                }
                self.commit(Event::ActionSucceeded { op_id, outcome }).await;
            }
            Err(e) => {
                let drift = matches!(e, BackendError::VmGone(_));
                if let Some(a) = &action {
                    warn!(op_id, desired_id = d.id, error = %e, "failed {a}");
                }
                self.commit(Event::ActionFailed {
                    op_id,
                    error: e.to_string(),
                    drift,
                })
                .await;
                if drift {
                    // Not an attempt that failed: the world changed. Look and replan.
                    self.observe().await;
                } else if let Some(a) = action {
                    // A failure may come from drift (a program died): look before retrying.
                    self.observe().await;
                    let n = self
                        .state
                        .failures
                        .get(&a.kind.retry_key())
                        .copied()
                        .unwrap_or(0);
                    if n >= self.config.max_attempts && error.is_none() {
                        *error = Some(format!(
                            "{a} failed {n} time(s) (limit {}): {e}",
                            self.config.max_attempts
                        ));
                    }
                }
            }
        }
    }

    /// Gathers everything the action needs from the state now, so it runs without it; every
    /// backend call carries the action's operation id.
    fn prepare(&self, d: &DesiredState, action: &Action) -> Running {
        let provider = Arc::clone(&self.provider);
        let runtime = Arc::clone(&self.runtime);
        let s = &self.state;
        let op_id = action.op_id;
        let connect = s.mgmd_addresses(d.default_mgmd_port).join(",");
        use ActionKind::*;
        match action.kind.clone() {
            CreateVm {
                vm,
                role,
                zone,
                vm_type,
                storage_gib,
                temporary,
                agent_version,
                ..
            } => {
                let spec = VmSpec {
                    name: vm,
                    role,
                    zone,
                    vm_type,
                    storage_gib,
                    temporary,
                    agent_version,
                };
                Box::pin(async move {
                    (
                        op_id,
                        provider
                            .create_vm(OpId(op_id), &spec)
                            .await
                            .map(Outcome::VmCreated),
                    )
                })
            }
            DeleteVm { vm, .. } => {
                done(
                    op_id,
                    async move { provider.delete_vm(OpId(op_id), &vm).await },
                )
            }
            InstallSoftware { vm, version, .. } => {
                // Another version than the desired one (a bridge during a downgrade) comes
                // from the same place, with its own version in the name.
                let url = d.rondb_download_link.replace(&d.rondb_version, &version);
                done(op_id, async move {
                    runtime
                        .install_software(OpId(op_id), &vm, &version, &url)
                        .await
                })
            }
            WriteConfig { vm, .. } => {
                let files = s
                    .vms
                    .get(&vm)
                    .map(|v| files_for(d, s, v, &render_config_ini(d, s)))
                    .unwrap_or_default();
                done(op_id, async move {
                    runtime.write_files(OpId(op_id), &vm, &files).await
                })
            }
            StartMgmd {
                vm,
                node_id,
                version,
                initial,
                ..
            } => start(
                runtime,
                op_id,
                vm,
                ProgramSpec {
                    kind: ProgramKind::Mgmd,
                    command: commands::ndb_mgmd(&version, node_id, initial),
                    version,
                    node_ids: vec![node_id],
                    initial,
                },
            ),
            StartDataNode {
                vm,
                node_id,
                version,
                initial,
                ..
            } => start(
                runtime,
                op_id,
                vm,
                ProgramSpec {
                    kind: ProgramKind::DataNode,
                    command: commands::ndbmtd(&version, &connect, node_id, initial),
                    version,
                    node_ids: vec![node_id],
                    initial,
                },
            ),
            StartMysqld {
                vm,
                node_ids,
                version,
                ..
            } => start(
                runtime,
                op_id,
                vm,
                ProgramSpec {
                    kind: ProgramKind::Mysqld,
                    command: commands::mysqld(&version),
                    version,
                    node_ids,
                    initial: false,
                },
            ),
            StartApi {
                vm,
                node_ids,
                version,
                ..
            } => start(
                runtime,
                op_id,
                vm,
                ProgramSpec {
                    kind: ProgramKind::Api,
                    command: commands::api(&version, &connect, &node_ids),
                    version,
                    node_ids,
                    initial: false,
                },
            ),
            StopMgmd { vm, .. } => stop(runtime, op_id, vm, ProgramKind::Mgmd, !d.rondb_running),
            StopDataNode { vm, .. } => {
                stop(runtime, op_id, vm, ProgramKind::DataNode, !d.rondb_running)
            }
            StopMysqld { vm } => stop(runtime, op_id, vm, ProgramKind::Mysqld, !d.rondb_running),
            StopApi { vm } => stop(runtime, op_id, vm, ProgramKind::Api, !d.rondb_running),
            ActivateNode { node_id, via, .. } => {
                mgm(runtime, op_id, via, MgmCommand::Activate { node_id })
            }
            DeactivateNode { node_id, via, .. } => {
                mgm(runtime, op_id, via, MgmCommand::Deactivate { node_id })
            }
            SetHostname {
                node_id, vm, via, ..
            } => {
                let host = s.vms.get(&vm).map(|v| v.address.clone()).unwrap_or(vm);
                mgm(runtime, op_id, via, MgmCommand::Hostname { node_id, host })
            }
            CreateBackup { backup_id, via } => Box::pin(async move {
                let r = runtime
                    .mgm_command(OpId(op_id), &via, &MgmCommand::StartBackup { backup_id })
                    .await;
                (
                    op_id,
                    r.map(|data_nodes| Outcome::BackupTaken { data_nodes }),
                )
            }),
            DeleteBackup { backup_id, via } => {
                let spec = s
                    .backups
                    .get(&backup_id)
                    .map(|b| b.sink.clone())
                    .unwrap_or_else(|| BackupSpec {
                        id: backup_id,
                        sink_type: crate::desired::SinkType::Local,
                        sink_parameters: Default::default(),
                    });
                done(op_id, async move {
                    runtime.delete_backup(OpId(op_id), &via, &spec).await
                })
            }
            RestoreBackup {
                backup_id,
                vm,
                step,
                api_node_id,
                node_id,
            } => {
                let backup = d.restore_from_backup.clone().unwrap_or(BackupSpec {
                    id: backup_id,
                    sink_type: crate::desired::SinkType::Local,
                    sink_parameters: Default::default(),
                });
                let dir = backup
                    .sink_parameters
                    .get("Directory")
                    .and_then(|v| v.as_str())
                    .unwrap_or("/srv/rondb/backups")
                    .to_string();
                let run = RestoreRun {
                    command: commands::ndb_restore(
                        &d.rondb_version,
                        &connect,
                        api_node_id,
                        backup_id,
                        &dir,
                        step,
                        node_id,
                    ),
                    backup,
                    step,
                    api_node_id,
                    original_node: node_id,
                };
                Box::pin(async move {
                    let r = runtime.restore(OpId(op_id), &vm, &run).await;
                    (
                        op_id,
                        r.map(|nodes| match step {
                            RestoreStep::Meta => Outcome::RestoreMetaRead {
                                original_nodes: nodes,
                            },
                            _ => Outcome::Done,
                        }),
                    )
                })
            }
            RestartAgent { vm, .. } => done(op_id, async move {
                runtime.restart_agent(OpId(op_id), &vm).await
            }),
            UpgradeAgent { vm, version, .. } => {
                let url = d.ndb_agent_download_link.clone();
                done(op_id, async move {
                    runtime
                        .upgrade_agent(OpId(op_id), &vm, &version, &url)
                        .await
                })
            }
        }
    }
}

/// The next submission, or never when there is no inbox.
async fn recv(inbox: &mut Option<tokio::sync::mpsc::Receiver<Submit>>) -> Option<Submit> {
    match inbox {
        Some(i) => i.recv().await,
        None => std::future::pending().await,
    }
}

fn start(runtime: Arc<dyn ProcessRuntime>, op_id: u64, vm: String, spec: ProgramSpec) -> Running {
    done(op_id, async move {
        runtime.start_program(OpId(op_id), &vm, &spec).await
    })
}

fn stop(
    runtime: Arc<dyn ProcessRuntime>,
    op_id: u64,
    vm: String,
    kind: ProgramKind,
    cluster_shutdown: bool,
) -> Running {
    done(op_id, async move {
        runtime
            .stop_program(OpId(op_id), &vm, kind, cluster_shutdown)
            .await
    })
}

/// A slot change: through a management server when one runs, otherwise only into the
/// configuration (config.ini is rewritten before the next start).
fn mgm(
    runtime: Arc<dyn ProcessRuntime>,
    op_id: u64,
    via: Option<String>,
    cmd: MgmCommand,
) -> Running {
    done(op_id, async move {
        match via {
            Some(m) => runtime.mgm_command(OpId(op_id), &m, &cmd).await.map(|_| ()),
            None => Ok(()),
        }
    })
}

/// An action whose only result is success or failure.
fn done<F>(op_id: u64, f: F) -> Running
where
    F: Future<Output = Result<(), BackendError>> + Send + 'static,
{
    Box::pin(async move { (op_id, f.await.map(|_| Outcome::Done)) })
}
