//! A regression case: a sequence of desired states (each a JSON merge patch on the previous
//! one, the first on `DesiredState::example()`), with the seed and faults of the world. Cases
//! live in `tests/regressions/*.json` and are replayed by one test forever.

use agent_core::desired::DesiredState;
use ndb_agent::simulation::{SimOptions, Simulation, StepReport};
use serde::{Deserialize, Serialize};
use serde_json::Value;
use sim_world::FaultConfig;

/// One replayable scenario.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Case {
    pub name: String,
    #[serde(default)]
    pub why: String,
    #[serde(default = "one")]
    pub seed: u64,
    #[serde(default)]
    pub fault_rate: f64,
    #[serde(default)]
    pub vm_loss_rate: f64,
    #[serde(default)]
    pub process_death_rate: f64,
    /// VMs stopped (down, disks kept) per action: the agents must start them again.
    #[serde(default, skip_serializing_if = "is_zero")]
    pub vm_down_rate: f64,
    #[serde(default)]
    pub existing_backups: Vec<u64>,
    #[serde(default = "three")]
    pub max_attempts: u32,
    /// Present: the agents' Raft log is simulated (handovers, the leader dying with its VM),
    /// and the leader loses its leadership at any one write with this probability. Absent:
    /// one leader throughout.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub leader_change_rate: Option<f64>,
    pub steps: Vec<Step>,
}

fn is_zero(x: &f64) -> bool {
    *x == 0.0
}

fn one() -> u64 {
    1
}
fn three() -> u32 {
    3
}

/// Submit a desired state (patch), or lose a VM and let the cluster repair itself.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(untagged)]
pub enum Step {
    Submit {
        desired: Value,
        /// `AT_DESIRED_STATE` (default), `REJECTED` or `ERROR_STATE`.
        #[serde(default)]
        expect: Option<String>,
        /// For `REJECTED`: a text the rejection must contain.
        #[serde(default)]
        rejection_contains: Option<String>,
    },
    LoseVm {
        lose_vm: String,
        /// More VMs lost at the same moment.
        #[serde(default)]
        and_lose: Vec<String>,
        /// `AT_DESIRED_STATE` (default) or `ERROR_STATE` after the repair.
        #[serde(default)]
        expect: Option<String>,
        /// A text the reconciliation's error must contain.
        #[serde(default)]
        error_contains: Option<String>,
        /// An action kind the repair must not start (`CreateVm`, ...).
        #[serde(default)]
        forbid_action: Option<String>,
    },
    /// VMs stop at once (a power cut, a host reboot): listed but down, disks kept; the
    /// agents must start them again and replace none.
    StopVms {
        stop_vms: Vec<String>,
        /// `AT_DESIRED_STATE` (default) or `ERROR_STATE` after the repair.
        #[serde(default)]
        expect: Option<String>,
        /// An action kind the repair must not start (`CreateVm`, ...).
        #[serde(default)]
        forbid_action: Option<String>,
    },
    /// The agent on this VM takes the leadership (needs `leader_change_rate`).
    MoveLeader { move_leader_to: String },
    /// During the next steps, the leader loses its leadership right after the next success
    /// of an action of this kind (`DeactivateNode`, ...) is committed.
    CutLeaderAfter { cut_leader_after: String },
}

/// Applies a JSON merge patch (RFC 7386). Generated cases patch with whole documents, most
/// of whose values are already there: a key is copied only when it is new, and a value only
/// when it differs.
fn merge(base: &mut Value, patch: &Value) {
    match (base, patch) {
        (Value::Object(b), Value::Object(p)) => {
            for (k, v) in p {
                if v.is_null() {
                    b.remove(k);
                } else if let Some(old) = b.get_mut(k) {
                    merge(old, v);
                } else {
                    let mut fresh = Value::Null;
                    merge(&mut fresh, v);
                    b.insert(k.clone(), fresh);
                }
            }
        }
        (b, p) => {
            if b != p {
                *b = p.clone();
            }
        }
    }
}

/// Runs a case; `Err` says which step failed and why, with every safety-rule violation.
pub fn run_case(case: &Case) -> Result<(), String> {
    run(case, None)
}

/// [`run_case`], showing every step's report to `seen` (step index, report), so that two
/// builds can be compared decision by decision.
pub fn run_case_with(case: &Case, seen: &mut dyn FnMut(usize, &StepReport)) -> Result<(), String> {
    run(case, Some(seen))
}

/// What [`run_case_with`] shows every step's report to (step index, report).
type Seen<'a> = dyn FnMut(usize, &StepReport) + 'a;

/// Runs a case. The reports list their actions only when someone reads them: `seen`, or a
/// step that forbids an action kind.
fn run(case: &Case, mut seen: Option<&mut Seen<'_>>) -> Result<(), String> {
    {
        let opts = SimOptions {
            seed: case.seed,
            faults: FaultConfig {
                action_failure_rate: case.fault_rate,
                vm_loss_rate: case.vm_loss_rate,
                process_death_rate: case.process_death_rate,
                vm_down_rate: case.vm_down_rate,
            },
            existing_backups: case.existing_backups.clone(),
            max_attempts: case.max_attempts,
            leader_change_rate: case.leader_change_rate,
            ..Default::default()
        };
        let mut sim = Simulation::new(&opts);
        sim.set_verbose(std::env::var_os("REPLAY_VERBOSE").is_some());
        let forbids = case.steps.iter().any(|s| {
            matches!(
                s,
                Step::LoseVm {
                    forbid_action: Some(_),
                    ..
                } | Step::StopVms {
                    forbid_action: Some(_),
                    ..
                }
            )
        });
        sim.set_action_records(seen.is_some() || forbids);
        let mut doc = serde_json::to_value(DesiredState::example()).map_err(|e| e.to_string())?;
        for (i, step) in case.steps.iter().enumerate() {
            let report = match step {
                Step::Submit {
                    desired,
                    expect,
                    rejection_contains,
                } => {
                    let mut next = doc.clone();
                    merge(&mut next, desired);
                    // Cases are JSON already; the JSONC parser is tested on its own.
                    // Read from a borrow: the document is kept for the next step's patch.
                    let d = DesiredState::deserialize(&next)
                        .map_err(|e| format!("step {i}: desired state does not parse: {e}"))?;
                    let report = sim.submit(d);
                    let want = expect.as_deref().unwrap_or("AT_DESIRED_STATE");
                    if report.outcome != want {
                        return Err(format!(
                            "step {i} (desired {}): outcome {}, expected {want}; rejection: {:?}; error: {:?}; remaining: {:?}; VMs: {}",
                            report.desired_id, report.outcome, report.rejection, report.error, sim.remaining(), vms(&sim)
                        ));
                    }
                    if let (Some(text), Some(r)) = (rejection_contains, &report.rejection) {
                        if !r.contains(text.as_str()) {
                            return Err(format!("step {i}: rejection {r:?} lacks {text:?}"));
                        }
                    }
                    if report.outcome != "REJECTED" {
                        doc = next;
                    }
                    report
                }
                Step::MoveLeader { move_leader_to } => {
                    if case.leader_change_rate.is_none() {
                        return Err(format!(
                            "step {i}: move_leader_to needs leader_change_rate (0 for none at random)"
                        ));
                    }
                    if !sim_world::lock(&sim.world).vms.contains_key(move_leader_to) {
                        return Err(format!(
                            "step {i}: no VM {move_leader_to} to move the leader to; VMs: {}",
                            vms(&sim)
                        ));
                    }
                    sim.change_leader(Some(move_leader_to));
                    continue;
                }
                Step::CutLeaderAfter { cut_leader_after } => {
                    if !sim.cut_leader_after(cut_leader_after) {
                        return Err(format!(
                            "step {i}: cut_leader_after needs leader_change_rate (0 for none at random)"
                        ));
                    }
                    continue;
                }
                Step::StopVms {
                    stop_vms,
                    expect,
                    forbid_action,
                } => {
                    {
                        let mut w = sim_world::lock(&sim.world);
                        for vm in stop_vms {
                            if !w.vms.contains_key(vm) {
                                return Err(format!(
                                    "step {i}: no VM {vm} to stop; VMs: {:?}",
                                    w.vms.keys().collect::<Vec<_>>()
                                ));
                            }
                            w.take_down(vm);
                        }
                    }
                    let report = sim.repair();
                    let want = expect.as_deref().unwrap_or("AT_DESIRED_STATE");
                    if report.outcome != want {
                        return Err(format!(
                            "step {i} (stop {stop_vms:?}): outcome {}, expected {want}; error: {:?}; remaining: {:?}; VMs: {}",
                            report.outcome, report.error, sim.remaining(), vms(&sim)
                        ));
                    }
                    forbidden(i, &report, forbid_action.as_deref())?;
                    report
                }
                Step::LoseVm {
                    lose_vm,
                    and_lose,
                    expect,
                    error_contains,
                    forbid_action,
                } => {
                    {
                        let mut w = sim_world::lock(&sim.world);
                        w.lose_vm(lose_vm);
                        for vm in and_lose {
                            w.lose_vm(vm);
                        }
                    }
                    let report = sim.repair();
                    let want = expect.as_deref().unwrap_or("AT_DESIRED_STATE");
                    if report.outcome != want {
                        return Err(format!(
                            "step {i} (lose {lose_vm} {and_lose:?}): outcome {}, expected {want}; error: {:?}; remaining: {:?}; VMs: {}",
                            report.outcome, report.error, sim.remaining(), vms(&sim)
                        ));
                    }
                    if let Some(text) = error_contains {
                        let e = report.error.clone().unwrap_or_default();
                        if !e.contains(text.as_str()) {
                            return Err(format!("step {i}: error {e:?} lacks {text:?}"));
                        }
                    }
                    forbidden(i, &report, forbid_action.as_deref())?;
                    report
                }
            };
            if let Some(seen) = seen.as_mut() {
                seen(i, &report);
            }
            if !report.invariant_violations.is_empty() {
                return Err(format!(
                    "step {i}: safety rules broken:\n  {}",
                    report.invariant_violations.join("\n  ")
                ));
            }
            if report.outcome == "AT_DESIRED_STATE" && !sim.remaining().is_empty() {
                return Err(format!(
                    "step {i}: AT_DESIRED_STATE but {:?}",
                    sim.remaining()
                ));
            }
        }
        Ok(())
    }
}

/// Fails step `i` if the repair started an action of the forbidden kind.
fn forbidden(i: usize, report: &StepReport, kind: Option<&str>) -> Result<(), String> {
    let Some(kind) = kind else { return Ok(()) };
    let started: Vec<&serde_json::Value> = report
        .actions
        .iter()
        .filter(|a| a.action.get("kind").and_then(|k| k.as_str()) == Some(kind))
        .map(|a| &a.action)
        .collect();
    if started.is_empty() {
        Ok(())
    } else {
        Err(format!("step {i}: {kind} must not run, ran {started:?}"))
    }
}

/// A one-line picture of the VMs, for failure messages.
fn vms(sim: &Simulation) -> String {
    let s = sim.state();
    s.vms
        .values()
        .map(|v| {
            let slots: Vec<u32> = s.active_slots_of(&v.name).map(|x| x.node_id).collect();
            format!(
                "{}[{} {} {}GiB{}{} slots {:?}]",
                v.name,
                v.zone,
                v.vm_type,
                v.storage_gib,
                if v.running { " running" } else { "" },
                if v.temporary { " temp" } else { "" },
                slots
            )
        })
        .collect::<Vec<_>>()
        .join(" ")
        + &format!(
            "; world programs: {:?}",
            sim_world::lock(&sim.world)
                .vms
                .iter()
                .map(|(n, v)| (n.clone(), v.program.as_ref().map(|p| p.kind)))
                .collect::<Vec<_>>()
        )
}
