//! Plan quality: a rolling restart or upgrade of G node groups x R replicas takes R data-node
//! waves (node groups in parallel), and its simulated makespan is within 10% of the critical
//! path of the cost model.

#![allow(clippy::expect_used, clippy::unwrap_used)] // test code: a panic is the failure report

use agent_core::cost::CostModel;
use agent_core::desired::DesiredState;
use ndb_agent::simulation::{SimOptions, Simulation, StepReport};
use std::collections::BTreeSet;

fn cluster(groups: u32, replicas: u32, mgmds: u32, mysqlds: u32, apis: u32) -> DesiredState {
    let mut d = DesiredState::example();
    d.num_node_groups = groups;
    d.max_replication_factor = replicas;
    d.active_replication_factor = replicas;
    d.num_managed_mgmd_vms = mgmds;
    d.num_total_mgmd_slots = mgmds.max(2);
    d.num_managed_mysqld_vms = mysqlds;
    d.num_total_mysqld_slots = mysqlds + 2;
    d.num_managed_api_vms = apis;
    d.num_total_api_slots = apis + 2;
    d.allow_requesting_temporary_vms = false;
    d
}

/// Shortest possible duration under the safety rules: management servers one at a time,
/// R data-node waves, MySQLds in two waves (all but one, then the last), APIs likewise.
fn critical_path(c: &CostModel, d: &DesiredState, install: bool) -> f64 {
    let waves = |n: u32| if n >= 2 { 2.0 } else { f64::from(n) };
    let mgmd = f64::from(d.num_managed_mgmd_vms) * (c.stop_mgmd + c.start_mgmd);
    let data = f64::from(d.active_replication_factor) * (c.stop_data_node + c.start_data_node);
    let sql = waves(d.num_managed_mysqld_vms) * (c.stop_mysqld + c.start_mysqld);
    let api = waves(d.num_managed_api_vms) * (c.stop_api + c.start_api);
    (if install { c.install_software } else { 0.0 }) + mgmd + data + sql.max(api)
}

fn data_node_waves(r: &StepReport) -> usize {
    let starts: BTreeSet<u64> = r
        .actions
        .iter()
        .filter(|a| a.action.get("kind").and_then(|k| k.as_str()) == Some("StopDataNode"))
        .map(|a| (a.start_s * 1000.0) as u64)
        .collect();
    starts.len()
}

fn check(groups: u32, replicas: u32, mgmds: u32, mysqlds: u32, apis: u32) {
    {
        let opts = SimOptions::default();
        let mut sim = Simulation::new(&opts);
        let mut d = cluster(groups, replicas, mgmds, mysqlds, apis);
        let created = sim.submit(d.clone());
        assert_eq!(created.outcome, "AT_DESIRED_STATE", "{:?}", created.error);
        for (what, upgrade) in [("rolling restart", false), ("upgrade", true)] {
            d.id += 1;
            if upgrade {
                d.rondb_version = "22.10.2".into();
            } else {
                d.rondb_running_since = d.id;
            }
            let r = sim.submit(d.clone());
            let label = format!(
                "{what} of {groups} x {replicas} ({mgmds} mgmd, {mysqlds} mysqld, {apis} api)"
            );
            assert_eq!(r.outcome, "AT_DESIRED_STATE", "{label}: {:?}", r.error);
            assert!(
                r.invariant_violations.is_empty(),
                "{label}: {:?}",
                r.invariant_violations
            );
            assert_eq!(
                data_node_waves(&r),
                replicas as usize,
                "{label}: data-node waves"
            );
            let cp = critical_path(&opts.cost, &d, upgrade);
            assert!(
                r.makespan_s >= cp - 1e-6 && r.makespan_s <= cp * 1.10,
                "{label}: makespan {} s, critical path {cp} s",
                r.makespan_s
            );
        }
    }
}

#[test]
fn two_groups_two_replicas() {
    check(2, 2, 1, 2, 1);
}

#[test]
fn four_groups_three_replicas_two_mgmds() {
    check(4, 3, 2, 3, 2);
}

#[test]
fn twelve_groups_two_replicas_many_mysqlds() {
    check(12, 2, 1, 10, 0);
}
