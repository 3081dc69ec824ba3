//! One planner call on the largest cluster (48 node groups x 3 replicas, 100 MySQLds).
//! Goal: < 5 ms. `cargo bench -p integration-tests --bench planner`

#![allow(clippy::expect_used, clippy::unwrap_used)] // test code: a panic is the failure report

use agent_core::desired::DesiredState;
use agent_core::plan;
use criterion::{criterion_group, criterion_main, Criterion};
use ndb_agent::simulation::{SimOptions, Simulation};
use std::hint::black_box;

fn largest() -> DesiredState {
    let mut d = DesiredState::example();
    d.num_node_groups = 48;
    d.max_replication_factor = 3;
    d.active_replication_factor = 3;
    d.num_total_mgmd_slots = 2;
    d.num_total_mysqld_slots = 100;
    d.num_total_api_slots = 9;
    d.num_managed_mysqld_vms = 100;
    d.num_managed_api_vms = 0;
    d
}

fn bench(c: &mut Criterion) {
    let d = largest();
    let state = {
        let mut sim = Simulation::new(&SimOptions::default());
        let r = sim.submit(d.clone());
        assert_eq!(r.outcome, "AT_DESIRED_STATE", "{:?}", r.error);
        sim.state().clone()
    };
    println!(
        "cluster: {} VMs, {} slots",
        state.vms.len(),
        state.slots.len()
    );
    c.bench_function("plan: largest cluster at desired state", |b| {
        b.iter(|| plan(black_box(&d), black_box(&state)))
    });
    let mut restart = d.clone();
    restart.id += 1;
    restart.rondb_running_since = restart.id;
    restart.rondb_version = "22.10.2".into();
    c.bench_function("plan: largest cluster, upgrade requested", |b| {
        b.iter(|| plan(black_box(&restart), black_box(&state)))
    });
    let first = plan(&restart, &state).len();
    println!("upgrade: first planner call proposes {first} actions");
}

criterion_group!(benches, bench);
criterion_main!(benches);
