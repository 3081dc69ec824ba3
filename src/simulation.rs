//! `ndb-agent simulate`: the real reconciler with the `mock` provider and `dummy` runtime in
//! simulated time (tokio's paused clock), starting from an empty world.

use agent_core::actions::ActionKind;
use agent_core::cost::CostModel;
use agent_core::desired::DesiredState;
use agent_core::invariants::{check_settled, InvariantChecker};
use agent_core::model::{ClusterState, Event, ReconciliationState};
use agent_core::{diff, EventHook, Reconciler, ReconcilerConfig};
use providers::mock::{lock, FaultConfig, MockProvider, SharedWorld, SinkBackup, World};
use runtime_backends::DummyRuntime;
use serde::Serialize;
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
}

impl Default for SimOptions {
    fn default() -> Self {
        SimOptions {
            seed: 1,
            faults: FaultConfig::default(),
            existing_backups: vec![],
            cost: CostModel::default(),
            max_attempts: 3,
        }
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
        let provider = Arc::new(MockProvider::new(world.clone()));
        let runtime = Arc::new(DummyRuntime::new(world.clone()));
        let config = ReconcilerConfig {
            max_attempts: opts.max_attempts,
            observe_every: Duration::from_secs(30),
            ..Default::default()
        };
        let mut reconciler = Reconciler::new(provider, runtime, ClusterState::default(), config);
        let recorder = SharedRecorder::default();
        recorder.lock().epoch = Some(tokio::time::Instant::now());
        reconciler.add_hook(Box::new(recorder.clone()));
        Simulation {
            world,
            reconciler,
            recorder,
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
        let outcome = self.reconciler.reconcile().await;
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

    /// What still differs from the accepted desired state (empty when reached).
    pub fn remaining(&self) -> Vec<String> {
        match &self.state().accepted {
            Some(d) => diff(d, self.state()),
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
