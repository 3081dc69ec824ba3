//! `ndb-agent simulate`: the real reconciler with the `mock` provider and `dummy` runtime in
//! simulated time (tokio's paused clock), starting from an empty world.
//!
//! With leader changes on, the simulation also plays the part of Raft: every event goes
//! through a journal that holds the committed state, and the leader can lose its leadership
//! between any two writes (at random, when its VM is lost, or when it hands the leadership
//! over before its own VM is deleted or its agent restarted). The next leader starts from the
//! committed state on a VM chosen at random, observes the world and resumes the actions in
//! flight under their operation ids, which the mock world runs once each, as agents do.

use agent::{EventHook, Reconciler, ReconcilerConfig};
use agent::{Journal, JournalError};
use agent_core::actions::ActionKind;
use agent_core::backend::OpId;
use agent_core::backend::{
    BackendError, CloudProvider, MgmCommand, ProcessRuntime, ProgramKind, ProgramSpec,
    ProgramStatus, RestoreRun, VmInfo, VmSpec,
};
use agent_core::cost::CostModel;
use agent_core::desired::BackupSpec;
use agent_core::desired::DesiredState;
use agent_core::diff;
use agent_core::invariants::{check_settled, InvariantChecker};
use agent_core::model::ConfigFile;
use agent_core::model::{ClusterState, Event, ReconciliationState};
use async_trait::async_trait;
use providers::mock::MockProvider;
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;
use runtime_backends::DummyRuntime;
use serde::Serialize;
use sim_world::{lock, FaultConfig, SharedWorld, SinkBackup, World};
use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

/// Settings of one simulation run.
#[derive(Debug, Clone)]
pub struct SimOptions {
    pub seed: u64,
    pub faults: FaultConfig,
    /// Backups of another cluster already in the sink (for `RestoreFromBackup`).
    pub existing_backups: Vec<u64>,
    pub cost: CostModel,
    pub max_attempts: u32,
    /// `Some(p)` turns on the Raft part (a journal, handovers before the leader's own VM is
    /// deleted or its agent restarted, the leader dying with its VM), and the leader also
    /// loses its leadership at any one write to the log with probability `p`. `None`: one
    /// leader throughout, events applied as they come.
    pub leader_change_rate: Option<f64>,
}

impl Default for SimOptions {
    fn default() -> Self {
        SimOptions {
            seed: 1,
            faults: FaultConfig::default(),
            existing_backups: vec![],
            cost: CostModel::default(),
            max_attempts: 3,
            leader_change_rate: None,
        }
    }
}

/// Leader changes per reconciliation beyond which the simulation stops: a leader that keeps
/// losing its leadership before doing anything is a bug of the simulation or the handover.
const MAX_LEADER_CHANGES: u32 = 10_000;

/// How long handing the leadership over takes (the membership change and an election);
/// the old leader's writes still commit meanwhile.
const HANDOVER: Duration = Duration::from_millis(1500);

/// The Raft log of the simulation: committed events, and the leader losing its leadership.
struct SimJournal {
    world: SharedWorld,
    inner: Mutex<JournalState>,
}

struct JournalState {
    committed: ClusterState,
    /// Random leadership loss only while reconciling (a submission is never cut).
    armed: bool,
    rate: f64,
    rng: ChaCha8Rng,
    /// The leader loses its leadership right after the success of an action of this kind
    /// (`DeactivateNode`, ...) is committed: a deterministic cut for regression cases.
    cut_after: Option<String>,
    cut_next: bool,
}

impl SimJournal {
    fn state(&self) -> std::sync::MutexGuard<'_, JournalState> {
        self.inner.lock().unwrap_or_else(|e| e.into_inner())
    }
}

#[async_trait]
impl Journal for SimJournal {
    async fn append(&self, events: Vec<Event>) -> Result<(), JournalError> {
        let gone = lock(&self.world).leader_gone;
        let mut j = self.state();
        if gone {
            return Err(JournalError::NotLeader { leader: None });
        }
        if std::mem::take(&mut j.cut_next) {
            return Err(JournalError::NotLeader { leader: None });
        }
        let rate = j.rate;
        if j.armed && rate > 0.0 && j.rng.gen_bool(rate.min(1.0)) {
            return Err(JournalError::NotLeader { leader: None });
        }
        for ev in &events {
            if let (Event::ActionSucceeded { op_id, .. }, Some(kind)) = (ev, &j.cut_after) {
                let hit = j
                    .committed
                    .in_flight
                    .get(op_id)
                    .is_some_and(|a| a.kind.name() == kind);
                if hit {
                    j.cut_after = None;
                    j.cut_next = true;
                }
            }
            j.committed.apply(ev);
        }
        Ok(())
    }
}

/// The leader's VM is special to its own agent: deleting it, or restarting or upgrading its
/// agent, first hands the leadership over (the next leader does it), as the agents do.
fn leads(world: &SharedWorld, vm: &str) -> bool {
    lock(world).leader.as_deref() == Some(vm)
}

async fn hand_over(world: &SharedWorld, vm: &str) -> BackendError {
    tokio::time::sleep(HANDOVER).await;
    lock(world).leader_gone = true;
    BackendError::Transient(format!(
        "{vm} runs the leader; leadership was handed over and the next leader does this"
    ))
}

struct LeaderAwareProvider {
    inner: MockProvider,
    world: SharedWorld,
}

#[async_trait]
impl CloudProvider for LeaderAwareProvider {
    async fn create_vm(&self, op: OpId, spec: &VmSpec) -> Result<VmInfo, BackendError> {
        self.inner.create_vm(op, spec).await
    }
    async fn delete_vm(&self, op: OpId, name: &str) -> Result<(), BackendError> {
        if leads(&self.world, name) {
            return Err(hand_over(&self.world, name).await);
        }
        self.inner.delete_vm(op, name).await
    }
    async fn list_vms(&self) -> Result<Vec<VmInfo>, BackendError> {
        self.inner.list_vms().await
    }
}

struct LeaderAwareRuntime {
    inner: DummyRuntime,
    world: SharedWorld,
}

#[async_trait]
impl ProcessRuntime for LeaderAwareRuntime {
    async fn install_software(
        &self,
        op: OpId,
        vm: &str,
        v: &str,
        url: &str,
    ) -> Result<(), BackendError> {
        self.inner.install_software(op, vm, v, url).await
    }
    async fn write_files(
        &self,
        op: OpId,
        vm: &str,
        files: &[ConfigFile],
    ) -> Result<(), BackendError> {
        self.inner.write_files(op, vm, files).await
    }
    async fn start_program(
        &self,
        op: OpId,
        vm: &str,
        spec: &ProgramSpec,
    ) -> Result<(), BackendError> {
        self.inner.start_program(op, vm, spec).await
    }
    async fn stop_program(
        &self,
        op: OpId,
        vm: &str,
        kind: ProgramKind,
        cluster_shutdown: bool,
    ) -> Result<(), BackendError> {
        self.inner
            .stop_program(op, vm, kind, cluster_shutdown)
            .await
    }
    async fn status(&self, vm: &str) -> Result<ProgramStatus, BackendError> {
        self.inner.status(vm).await
    }
    async fn mgm_command(
        &self,
        op: OpId,
        vm: &str,
        cmd: &MgmCommand,
    ) -> Result<Vec<u32>, BackendError> {
        self.inner.mgm_command(op, vm, cmd).await
    }
    async fn restore(
        &self,
        op: OpId,
        vm: &str,
        run: &RestoreRun,
    ) -> Result<Vec<u32>, BackendError> {
        self.inner.restore(op, vm, run).await
    }
    async fn delete_backup(
        &self,
        op: OpId,
        vm: &str,
        backup: &BackupSpec,
    ) -> Result<(), BackendError> {
        self.inner.delete_backup(op, vm, backup).await
    }
    async fn restart_agent(&self, op: OpId, vm: &str) -> Result<(), BackendError> {
        if leads(&self.world, vm) {
            return Err(hand_over(&self.world, vm).await);
        }
        self.inner.restart_agent(op, vm).await
    }
    async fn upgrade_agent(
        &self,
        op: OpId,
        vm: &str,
        version: &str,
        url: &str,
    ) -> Result<(), BackendError> {
        if leads(&self.world, vm) {
            return Err(hand_over(&self.world, vm).await);
        }
        self.inner.upgrade_agent(op, vm, version, url).await
    }
}

/// One action as the simulation saw it.
#[derive(Debug, Clone, Serialize)]
pub struct ActionRecord {
    #[serde(flatten)]
    pub action: serde_json::Value,
    pub start_s: f64,
    pub end_s: f64,
    #[serde(skip_serializing_if = "std::ops::Not::not")]
    pub failed: bool,
}

/// The result of submitting one desired state: one JSON line of `simulate --json`.
#[derive(Debug, Clone, Serialize)]
pub struct StepReport {
    pub desired_id: u64,
    pub outcome: String,
    pub rejection: Option<String>,
    pub makespan_s: f64,
    pub actions: Vec<ActionRecord>,
    pub invariant_violations: Vec<String>,
    pub cluster: serde_json::Value,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
}

#[derive(Default)]
struct Recorder {
    started: BTreeMap<u64, (serde_json::Value, f64)>,
    done: Vec<ActionRecord>,
    checker: InvariantChecker,
    epoch: Option<tokio::time::Instant>,
    /// Print progress lines as actions start and finish (human mode).
    verbose: bool,
}

impl Recorder {
    fn now(&self) -> f64 {
        self.epoch
            .map(|e| e.elapsed().as_secs_f64())
            .unwrap_or_default()
    }
}

#[derive(Clone, Default)]
struct SharedRecorder(Arc<Mutex<Recorder>>);

impl SharedRecorder {
    fn lock(&self) -> std::sync::MutexGuard<'_, Recorder> {
        self.0.lock().unwrap_or_else(|e| e.into_inner())
    }
}

fn action_json(s: &ClusterState, k: &ActionKind) -> serde_json::Value {
    let mut v = serde_json::to_value(k).unwrap_or(serde_json::Value::Null);
    if let serde_json::Value::Object(m) = &mut v {
        if !m.contains_key("role") {
            if let Some(role) = k.vm().and_then(|vm| s.vms.get(vm)).map(|vm| vm.role) {
                m.insert("role".into(), serde_json::json!(role));
            }
        }
    }
    v
}

impl EventHook for SharedRecorder {
    fn on_event(&mut self, state: &ClusterState, event: &Event) {
        let mut r = self.lock();
        let t = r.now();
        match event {
            Event::ActionStarted(a) => {
                if r.verbose {
                    println!("[{t:>7.1}s] start {a}");
                }
                r.started.insert(a.op_id, (action_json(state, &a.kind), t));
            }
            Event::ActionSucceeded { op_id, .. } | Event::ActionFailed { op_id, .. } => {
                let failed = matches!(event, Event::ActionFailed { .. });
                if let Some((action, start_s)) = r.started.remove(op_id) {
                    if r.verbose {
                        let name = action
                            .get("kind")
                            .and_then(|k| k.as_str())
                            .unwrap_or("?")
                            .to_string();
                        let vm = action
                            .get("vm")
                            .and_then(|k| k.as_str())
                            .unwrap_or("")
                            .to_string();
                        let what = if failed { "FAILED" } else { "done " };
                        println!("[{t:>7.1}s] {what} #{op_id} {name} {vm}");
                    }
                    r.done.push(ActionRecord {
                        action,
                        start_s,
                        end_s: t,
                        failed,
                    });
                }
            }
            Event::Observed { vms, programs } if r.verbose => {
                let lost: Vec<&String> = state
                    .vms
                    .keys()
                    .filter(|n| !vms.iter().any(|v| &&v.name == n))
                    .collect();
                let stopped: Vec<&String> = programs
                    .iter()
                    .filter(|(_, p)| !p.running)
                    .map(|(n, _)| n)
                    .collect();
                println!(
                    "[{t:>7.1}s] observed drift; lost VMs {lost:?}; programs not running {stopped:?}; repairing"
                );
            }
            _ => {}
        }
        r.checker.check(state, event);
    }
}

/// A simulated cluster: the world, and the reconciler acting on it.
pub struct Simulation {
    pub world: SharedWorld,
    reconciler: Reconciler,
    recorder: SharedRecorder,
    provider: Arc<dyn CloudProvider>,
    runtime: Arc<dyn ProcessRuntime>,
    config: ReconcilerConfig,
    /// The Raft part, with leader changes on.
    journal: Option<Arc<SimJournal>>,
    leader_rng: ChaCha8Rng,
    /// Leaders so far (the bootstrap agent first).
    pub leader_changes: u64,
}

impl Simulation {
    /// Must be created inside a tokio runtime with paused time (see [`runtime`]).
    pub fn new(opts: &SimOptions) -> Self {
        let mut world = World::new(opts.seed, opts.faults, opts.cost.clone());
        for id in &opts.existing_backups {
            world.sink.insert(
                *id,
                SinkBackup {
                    data_nodes: vec![1, 2],
                },
            );
        }
        let world = world.shared();
        let (provider, runtime): (Arc<dyn CloudProvider>, Arc<dyn ProcessRuntime>) =
            if opts.leader_change_rate.is_some() {
                (
                    Arc::new(LeaderAwareProvider {
                        inner: MockProvider::new(world.clone()),
                        world: world.clone(),
                    }),
                    Arc::new(LeaderAwareRuntime {
                        inner: DummyRuntime::new(world.clone()),
                        world: world.clone(),
                    }),
                )
            } else {
                (
                    Arc::new(MockProvider::new(world.clone())),
                    Arc::new(DummyRuntime::new(world.clone())),
                )
            };
        let config = ReconcilerConfig {
            max_attempts: opts.max_attempts,
            observe_every: Duration::from_secs(30),
            ..Default::default()
        };
        // Its own stream, so that turning leader changes on leaves the world's draws alone.
        let mut leader_rng = ChaCha8Rng::seed_from_u64(opts.seed ^ 0x1ead_e7c4_a46e);
        let journal = opts.leader_change_rate.map(|rate| {
            Arc::new(SimJournal {
                world: world.clone(),
                inner: Mutex::new(JournalState {
                    committed: ClusterState::default(),
                    armed: false,
                    rate,
                    rng: ChaCha8Rng::seed_from_u64(leader_rng.gen()),
                    cut_after: None,
                    cut_next: false,
                }),
            })
        });
        let recorder = SharedRecorder::default();
        recorder.lock().epoch = Some(tokio::time::Instant::now());
        let reconciler = Self::reconciler_for(
            &provider,
            &runtime,
            &config,
            &journal,
            &recorder,
            ClusterState::default(),
        );
        Simulation {
            world,
            reconciler,
            recorder,
            provider,
            runtime,
            config,
            journal,
            leader_rng,
            leader_changes: 0,
        }
    }

    fn reconciler_for(
        provider: &Arc<dyn CloudProvider>,
        runtime: &Arc<dyn ProcessRuntime>,
        config: &ReconcilerConfig,
        journal: &Option<Arc<SimJournal>>,
        recorder: &SharedRecorder,
        state: ClusterState,
    ) -> Reconciler {
        let mut r = Reconciler::new(
            Arc::clone(provider),
            Arc::clone(runtime),
            state,
            config.clone(),
        );
        if let Some(j) = journal {
            r = r.with_journal(Arc::clone(j) as Arc<dyn Journal>);
        }
        r.add_hook(Box::new(recorder.clone()));
        r
    }

    /// The leader's agent is gone or stepped down: another agent, on a VM chosen at random
    /// (any VM may lead), takes over from what was committed. With `to`, that VM leads.
    pub async fn change_leader(&mut self, to: Option<&str>) {
        let Some(journal) = self.journal.clone() else {
            return;
        };
        let committed = journal.state().committed.clone();
        let leader = match to {
            Some(vm) => Some(vm.to_string()),
            None => {
                let w = lock(&self.world);
                let candidates: Vec<&String> = w.vms.keys().collect();
                (!candidates.is_empty())
                    .then(|| candidates[self.leader_rng.gen_range(0..candidates.len())].clone())
            }
        };
        {
            let mut w = lock(&self.world);
            w.leader = leader.clone();
            w.leader_gone = false;
        }
        self.leader_changes += 1;
        if self.recorder.lock().verbose {
            let t = self.recorder.lock().now();
            println!(
                "[{t:>7.1}s] leader change: {} takes over",
                leader.as_deref().unwrap_or("the bootstrap agent")
            );
        }
        self.reconciler = Self::reconciler_for(
            &self.provider,
            &self.runtime,
            &self.config,
            &self.journal,
            &self.recorder,
            committed,
        );
        if let Some(vm) = &leader {
            self.reconciler.record_leader(vm).await;
        }
    }

    /// The leader will lose its leadership right after the next success of an action of
    /// `kind` is committed (needs leader changes on).
    pub fn cut_leader_after(&self, kind: &str) -> bool {
        match &self.journal {
            Some(j) => {
                j.state().cut_after = Some(kind.to_string());
                true
            }
            None => false,
        }
    }

    fn arm(&self, on: bool) {
        if let Some(j) = &self.journal {
            j.state().armed = on;
        }
    }

    /// Prints progress lines while reconciling (the human-readable mode of `simulate`).
    pub fn set_verbose(&mut self, verbose: bool) {
        self.recorder.lock().verbose = verbose;
    }

    pub fn state(&self) -> &ClusterState {
        self.reconciler.state()
    }

    /// Submits a desired state and reconciles until it is reached or given up.
    pub async fn submit(&mut self, d: DesiredState) -> StepReport {
        let t0 = self.recorder.lock().now();
        {
            let mut r = self.recorder.lock();
            r.done.clear();
        }
        let desired_id = d.id;
        if self.reconciler.halted().is_some() || lock(&self.world).leader_gone {
            self.change_leader(None).await;
        }
        if let Err(v) = self.reconciler.submit(d).await {
            let text = v
                .iter()
                .map(|x| x.to_string())
                .collect::<Vec<_>>()
                .join("; ");
            return StepReport {
                desired_id,
                outcome: "REJECTED".into(),
                rejection: Some(text),
                makespan_s: 0.0,
                actions: vec![],
                invariant_violations: vec![],
                cluster: self.cluster_json(),
                error: None,
            };
        }
        self.settle(t0, desired_id).await
    }

    /// Reconciles again without a new desired state (after injected drift).
    pub async fn repair(&mut self) -> StepReport {
        let t0 = self.recorder.lock().now();
        self.recorder.lock().done.clear();
        let id = self.state().accepted.as_ref().map(|d| d.id).unwrap_or(0);
        self.settle(t0, id).await
    }

    async fn settle(&mut self, t0: f64, desired_id: u64) -> StepReport {
        let mut changes = 0;
        let outcome = loop {
            self.arm(true);
            let outcome = self.reconciler.reconcile().await;
            self.arm(false);
            if self.reconciler.halted().is_none() {
                break outcome;
            }
            changes += 1;
            if changes > MAX_LEADER_CHANGES {
                break ReconciliationState::ERROR_STATE;
            }
            self.change_leader(None).await;
        };
        let mut r = self.recorder.lock();
        let t1 = r.now();
        let mut actions = std::mem::take(&mut r.done);
        actions.sort_by(|a, b| a.start_s.total_cmp(&b.start_s));
        let mut violations = std::mem::take(&mut r.checker.violations);
        drop(r);
        if outcome == ReconciliationState::AT_DESIRED_STATE {
            violations.extend(check_settled(self.state()));
        }
        for a in &mut actions {
            a.start_s -= t0;
            a.end_s -= t0;
        }
        StepReport {
            desired_id,
            outcome: outcome.to_string(),
            rejection: None,
            makespan_s: t1 - t0,
            actions,
            invariant_violations: violations,
            cluster: self.cluster_json(),
            error: self.state().last_error.clone(),
        }
    }

    /// What still differs from the accepted desired state, as people read it (empty when
    /// reached).
    pub fn remaining(&self) -> Vec<String> {
        match &self.state().accepted {
            Some(d) => diff(d, self.state())
                .iter()
                .map(ToString::to_string)
                .collect(),
            None => vec![],
        }
    }

    fn cluster_json(&self) -> serde_json::Value {
        let s = self.state();
        let vms: Vec<serde_json::Value> = s
            .vms
            .values()
            .map(|v| {
                serde_json::json!({
                    "vm": v.name, "role": v.role, "zone": v.zone, "vm_type": v.vm_type,
                    "storage_gib": v.storage_gib, "address": v.address, "temporary": v.temporary,
                    "node_group": v.node_group, "running": v.running, "version": v.version,
                    "node_ids": s.active_slots_of(&v.name).map(|x| x.node_id).collect::<Vec<_>>(),
                    "agent_version": v.agent_version,
                })
            })
            .collect();
        serde_json::json!({
            "reconciliation_state": s.reconciliation,
            "accepted_id": s.accepted.as_ref().map(|d| d.id),
            "rondb_has_run": s.rondb_has_run,
            "vms": vms,
            "backups": s.backups.keys().collect::<Vec<_>>(),
            "restore_done": s.restore.done,
            "world_lost_vms": lock(&self.world).lost_vms.clone(),
        })
    }
}

/// A single-threaded runtime with paused time: simulated seconds pass instantly and runs
/// are deterministic for a seed.
pub fn runtime() -> std::io::Result<tokio::runtime::Runtime> {
    tokio::runtime::Builder::new_current_thread()
        .enable_time()
        .start_paused(true)
        .build()
}
