//! Random desired states and random valid transitions between them, covering every live
//! operation: create, stop/start, rolling restart, replication factor up and down, scaling
//! MySQLds and APIs (to zero too), RonDB upgrade and downgrade, agent upgrade and restart,
//! VM replacement, zones, backups and restore.

use crate::case::{Case, Step};
use agent_core::desired::{self, BackupSpec, DesiredState, SinkType, TransitionContext, VmType};
use rand::seq::IndexedRandom;
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;

/// Desired states per generated case.
pub const STEPS_PER_CASE: usize = 10;

pub const VERSIONS: [&str; 4] = ["22.10.1", "22.10.2", "22.10.3", "24.10.0"];
pub const AGENT_VERSIONS: [&str; 2] = ["0.999", "1.0"];
/// A backup of another cluster that the generated cases may restore.
pub const FOREIGN_BACKUP: u64 = 900;
const ZONES: [&str; 3] = ["zone-a", "zone-b", "zone-c"];

fn backup(id: u64) -> BackupSpec {
    BackupSpec {
        id,
        sink_type: SinkType::Docker,
        sink_parameters: [("Directory".to_string(), serde_json::json!("/backups"))].into(),
    }
}

/// A random first desired state.
pub fn first(rng: &mut impl Rng) -> DesiredState {
    let mut d = DesiredState::example();
    d.id = 1;
    d.rondb_running_since = 1;
    d.ndb_agent_running_since = 1;
    d.max_replication_factor = rng.random_range(1..=3);
    d.active_replication_factor = rng.random_range(1..=d.max_replication_factor);
    d.num_node_groups = rng.random_range(1..=3);
    d.num_mysqld_slots_per_vm = rng.random_range(1..=2);
    d.num_api_slots_per_vm = rng.random_range(1..=2);
    d.num_total_mgmd_slots = 3;
    d.num_total_mysqld_slots = 4 * d.num_mysqld_slots_per_vm + 1;
    d.num_total_api_slots = 3 * d.num_api_slots_per_vm + 1;
    d.num_managed_mgmd_vms = rng.random_range(1..=2);
    d.num_managed_mysqld_vms = rng.random_range(0..=3);
    d.num_managed_api_vms = rng.random_range(0..=2);
    d.allow_requesting_temporary_vms = rng.random_bool(0.6);
    d.rondb_running = rng.random_bool(0.9);
    d.rondb_version = VERSIONS[rng.random_range(0..VERSIONS.len())].to_string();
    d.ndb_agent_version = AGENT_VERSIONS[rng.random_range(0..2)].to_string();
    let nz = rng.random_range(1..=3);
    d.availability_zones = ZONES[..nz].iter().map(|z| z.to_string()).collect();
    if d.rondb_running
        && rng.random_bool(0.2)
        && d.num_managed_mysqld_vms + d.num_managed_api_vms > 0
    {
        d.single_backups = vec![backup(FOREIGN_BACKUP)];
        d.restore_from_backup = Some(backup(FOREIGN_BACKUP));
    } else if d.rondb_running && rng.random_bool(0.2) {
        d.single_backups = vec![backup(1)];
    }
    d
}

/// A random valid successor of `prev` (1-3 changes), or a plain re-submission if none of
/// the tries is valid.
pub fn next(rng: &mut impl Rng, prev: &DesiredState, rondb_has_run: bool) -> DesiredState {
    for _ in 0..30 {
        let mut d = prev.clone();
        d.id = prev.id + 1;
        let changes = rng.random_range(1..=3);
        for _ in 0..changes {
            mutate(rng, &mut d);
        }
        let ok = desired::validate(&d).is_empty()
            && desired::validate_transition(prev, &d, TransitionContext { rondb_has_run })
                .is_empty();
        if ok {
            return d;
        }
    }
    let mut d = prev.clone();
    d.id = prev.id + 1;
    d
}

fn mutate(rng: &mut impl Rng, d: &mut DesiredState) {
    match rng.random_range(0..16) {
        0 => d.rondb_running = !d.rondb_running,
        1 => d.rondb_running_since = d.id,
        2 | 3 => {
            let i = VERSIONS
                .iter()
                .position(|v| *v == d.rondb_version)
                .unwrap_or(0);
            let j = if rng.random_bool(0.5) {
                (i + 1).min(3)
            } else {
                i.saturating_sub(1)
            };
            d.rondb_version = VERSIONS[j].to_string();
        }
        4 => {
            d.ndb_agent_version = AGENT_VERSIONS
                .choose(rng)
                .copied()
                .unwrap_or("1.0")
                .to_string()
        }
        5 => d.ndb_agent_running_since = d.id,
        6 | 7 => d.active_replication_factor = rng.random_range(1..=d.max_replication_factor),
        8 => d.num_managed_mysqld_vms = rng.random_range(0..=4),
        9 => d.num_managed_api_vms = rng.random_range(0..=3),
        10 => d.num_managed_mgmd_vms = rng.random_range(1..=2),
        11 => {
            let t = *VmType::ALL[..4].choose(rng).unwrap_or(&VmType::Small);
            match rng.random_range(0..4) {
                0 => d.vm_type_ndbds = t,
                1 => d.vm_type_mysqlds = t,
                2 => d.vm_type_apis = t,
                _ => d.vm_type_mgmds = t,
            }
        }
        12 => match rng.random_range(0..4) {
            0 => d.storage_gib_per_ndbd_vm += 10,
            1 => d.storage_gib_per_mysqld_vm += 1,
            2 => d.storage_gib_per_api_vm += 1,
            _ => d.storage_gib_per_mgmd_vm += 1,
        },
        13 => {
            if rng.random_bool(0.5) || d.single_backups.is_empty() {
                let id = d.id + 1000;
                d.single_backups.push(backup(id));
            } else {
                let keep = d.restore_from_backup.as_ref().map(|r| r.id);
                let i = rng.random_range(0..d.single_backups.len());
                if Some(d.single_backups[i].id) != keep {
                    d.single_backups.remove(i);
                }
            }
        }
        14 => {
            let nz = rng.random_range(1..=3);
            let start = rng.random_range(0..=3 - nz);
            d.availability_zones = ZONES[start..start + nz]
                .iter()
                .map(|z| z.to_string())
                .collect();
        }
        _ => d.allow_requesting_temporary_vms = !d.allow_requesting_temporary_vms,
    }
}

/// Builds the case a seed stands for: the desired states are fixed up front, so a failure
/// replays exactly from the saved JSON.
pub fn case_for(seed: u64, faults: bool) -> Case {
    case_with(seed, faults, false)
}

/// [`case_for`], and with `leader_changes` the leader also moves at random: it loses its
/// leadership between any two writes of the log (rate drawn per case), hands it over before
/// its own VM is deleted or its agent restarted, and dies with its VM.
pub fn case_with(seed: u64, faults: bool, leader_changes: bool) -> Case {
    let mut rng = ChaCha8Rng::seed_from_u64(seed);
    let mut states: Vec<DesiredState> = vec![first(&mut rng)];
    // rondb_has_run is known only by running; assume it has run once RonDB was running in
    // an earlier state, which is what the reconciler reaches.
    let mut has_run = states[0].rondb_running;
    for _ in 1..STEPS_PER_CASE {
        let prev = states.last().cloned().unwrap_or_else(DesiredState::example);
        let d = next(&mut rng, &prev, has_run);
        has_run |= d.rondb_running;
        states.push(d);
    }
    Case {
        name: format!(
            "generated seed {seed}{}{}",
            if faults { " with faults" } else { "" },
            if leader_changes {
                " and leader changes"
            } else {
                ""
            }
        ),
        why: "saved by the generative test".into(),
        seed,
        fault_rate: if faults {
            rng.random_range(0.0..0.15)
        } else {
            0.0
        },
        vm_loss_rate: if faults {
            rng.random_range(0.0..0.02)
        } else {
            0.0
        },
        process_death_rate: if faults {
            rng.random_range(0.0..0.02)
        } else {
            0.0
        },
        existing_backups: vec![FOREIGN_BACKUP],
        // With faults, a run of failures of one action is expected now and then; the
        // generative check is that the reconciler gets there, not the retry limit.
        max_attempts: if faults { 25 } else { 3 },
        // Drawn last, so the desired states and faults of a seed stay what they were.
        leader_change_rate: leader_changes.then(|| rng.random_range(0.002..0.05)),
        vm_down_rate: if faults {
            rng.random_range(0.0..0.02)
        } else {
            0.0
        },
        steps: states
            .into_iter()
            .map(|d| Step::Submit {
                desired: serde_json::to_value(d).unwrap_or_default(),
                expect: None,
                rejection_contains: None,
            })
            .collect(),
    }
}
