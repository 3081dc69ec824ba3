//! What still differs between the cluster and the desired state. Empty means
//! `AT_DESIRED_STATE`; when the planner has nothing left to do but this is not empty, the
//! reconciliation is stuck and the text says why.

use crate::desired::DesiredState;
use crate::model::{config_fingerprint, machine_spec, target_vms, ClusterState, Role};
use std::collections::BTreeSet;

pub fn diff(d: &DesiredState, s: &ClusterState) -> Vec<String> {
    let mut out = Vec::new();
    // A node group that held data and has no running data node left cannot be recovered
    // by the agents (nothing to copy from): say so first, with what to do.
    if d.rondb_running && s.vms_of(Role::Ndbd).any(|v| v.running) {
        for g in &s.started_groups {
            let alive = s
                .vms_of(Role::Ndbd)
                .any(|v| v.running && v.node_group == Some(*g));
            if !alive {
                out.push(format!(
                    "node group {g} lost every replica that held its data; the agents cannot rebuild it: restore a backup into a new cluster (RestoreFromBackup), and keep ActiveReplicationFactor >= 2 to survive a VM loss"
                ));
            }
        }
    }
    for (role, k) in [
        (Role::Mgmd, 1usize),
        (Role::Mysqld, d.num_mysqld_slots_per_vm as usize),
        (Role::Api, d.num_api_slots_per_vm as usize),
    ] {
        let target = target_vms(d, role);
        let n = s.vms_of(role).count();
        if n != target {
            out.push(format!("{role}: {n} VM(s), want {target}"));
        }
        for v in s.vms_of(role) {
            let held = s.active_slots_of(&v.name).count();
            if held != k {
                out.push(format!("{}: holds {held} active slot(s), want {k}", v.name));
            }
        }
    }
    for g in 0..d.num_node_groups {
        let members: Vec<_> = s
            .vms_of(Role::Ndbd)
            .filter(|v| v.node_group == Some(g))
            .collect();
        let want = target_vms(d, Role::Ndbd);
        if members.len() != want {
            out.push(format!(
                "node group {g}: {} VM(s), want {want}",
                members.len()
            ));
        }
        let active = s
            .slots
            .values()
            .filter(|x| x.node_group == Some(g) && x.active)
            .count();
        if active != want {
            out.push(format!(
                "node group {g}: {active} active slot(s), want {want}"
            ));
        }
        if d.rondb_running {
            let mut zones: Vec<&str> = members.iter().map(|v| v.zone.as_str()).collect();
            zones.sort();
            zones.dedup();
            if zones.len() < members.len().min(d.availability_zones.len()) {
                out.push(format!(
                    "node group {g}: replicas share a zone while another zone has none"
                ));
            }
        }
        for v in &members {
            if s.active_slots_of(&v.name).count() != 1 {
                out.push(format!("{}: holds no active slot", v.name));
            }
        }
    }
    for x in s.slots.values().filter(|x| x.active && !x.external) {
        if x.host.as_ref().is_none_or(|h| !s.vms.contains_key(h)) {
            out.push(format!("slot {}: active without a VM", x.node_id));
        }
    }
    for v in s.vms.values() {
        let (t, st) = machine_spec(d, v.role);
        if v.vm_type != t || v.storage_gib != st || !d.availability_zones.contains(&v.zone) {
            out.push(format!(
                "{}: {} {} GiB in {}, want {t} {st} GiB in one of the zones",
                v.name, v.vm_type, v.storage_gib, v.zone
            ));
        }
        if v.temporary {
            out.push(format!("{}: temporary VM still exists", v.name));
        }
        if !v.installed.contains(&d.rondb_version) {
            out.push(format!(
                "{}: RonDB {} not installed",
                v.name, d.rondb_version
            ));
        }
        if matches!(v.role, Role::Mgmd | Role::Mysqld | Role::Api)
            && v.config_hash != Some(config_fingerprint(d, s, v))
        {
            out.push(format!("{}: configuration files out of date", v.name));
        }
        if d.rondb_running {
            if !v.running {
                out.push(format!("{}: {} not running", v.name, v.role));
            } else if v.version.as_deref() != Some(d.rondb_version.as_str()) {
                out.push(format!(
                    "{}: runs {}, want {}",
                    v.name,
                    v.version.as_deref().unwrap_or("?"),
                    d.rondb_version
                ));
            } else if v.clock < d.rondb_running_since {
                out.push(format!(
                    "{}: not restarted since {}",
                    v.name, d.rondb_running_since
                ));
            }
        } else if v.running {
            out.push(format!("{}: {} still running", v.name, v.role));
        }
        if v.agent_version != d.ndb_agent_version || v.agent_clock < d.ndb_agent_running_since {
            out.push(format!(
                "{}: agent {} (clock {}), want {} (clock {})",
                v.name,
                v.agent_version,
                v.agent_clock,
                d.ndb_agent_version,
                d.ndb_agent_running_since
            ));
        }
    }
    let restore_pending = d.restore_from_backup.is_some() && !s.restore.done;
    if restore_pending && d.rondb_running {
        out.push("restore from backup not finished".into());
    }
    let restore_id = d.restore_from_backup.as_ref().map(|r| r.id);
    let want: BTreeSet<u64> = d
        .single_backups
        .iter()
        .map(|b| b.id)
        .filter(|id| !(restore_pending && Some(*id) == restore_id))
        .collect();
    let have: BTreeSet<u64> = s.backups.keys().copied().collect();
    for id in want.difference(&have) {
        out.push(format!("backup {id} not taken"));
    }
    for id in have.difference(&want) {
        out.push(format!("backup {id} not deleted"));
    }
    out
}
