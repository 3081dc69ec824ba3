//! Node-id layout (RonDB Helm chart convention): data nodes from 1 with
//! `id = node_group x MaxReplicationFactor + replica + 1`, management servers from 65 (or right
//! after the data nodes when those go past 64), then MySQLd slots, then other API slots.

use super::{Role, Slot};
use crate::desired::{DesiredState, ExternalNodeType};

/// Where each slot type starts; derived only from immutable fields, so it never changes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct SlotLayout {
    pub data_nodes: u32,
    pub mgmd_start: u32,
    pub mysqld_start: u32,
    pub api_start: u32,
    pub end: u32,
}

impl SlotLayout {
    pub fn new(d: &DesiredState) -> Self {
        let data = d.num_node_groups * d.max_replication_factor;
        let rest = d.num_total_mgmd_slots + d.num_total_mysqld_slots + d.num_total_api_slots;
        let mgmd_start = (data + 1).max(65u32.min(256u32.saturating_sub(rest)));
        let mysqld_start = mgmd_start + d.num_total_mgmd_slots;
        let api_start = mysqld_start + d.num_total_mysqld_slots;
        SlotLayout {
            data_nodes: data,
            mgmd_start,
            mysqld_start,
            api_start,
            end: api_start + d.num_total_api_slots,
        }
    }
}

/// Every slot of the cluster, all inactive except those reserved for externally managed
/// nodes, which are the last slots of their type in list order.
pub fn slot_layout(d: &DesiredState) -> Vec<Slot> {
    let l = SlotLayout::new(d);
    let mut out = Vec::new();
    for ng in 0..d.num_node_groups {
        for r in 0..d.max_replication_factor {
            out.push(Slot {
                node_id: ng * d.max_replication_factor + r + 1,
                kind: Role::Ndbd,
                node_group: Some(ng),
                active: false,
                host: None,
                external: false,
            });
        }
    }
    let ranges = [
        (
            Role::Mgmd,
            l.mgmd_start,
            l.mysqld_start,
            ExternalNodeType::NdbMgm,
        ),
        (
            Role::Mysqld,
            l.mysqld_start,
            l.api_start,
            ExternalNodeType::Mysqld,
        ),
        (Role::Api, l.api_start, l.end, ExternalNodeType::NdbApi),
    ];
    for (kind, start, end, ext_type) in ranges {
        let externals: Vec<_> = d
            .externally_managed_nodes
            .iter()
            .filter(|n| n.rondb_type == ext_type)
            .collect();
        for id in start..end {
            let from_end = (end - 1 - id) as usize;
            let ext = externals.get(from_end);
            out.push(Slot {
                node_id: id,
                kind,
                node_group: None,
                active: ext.is_some(),
                host: ext.and_then(|n| (!n.ip.is_empty()).then(|| n.ip.clone())),
                external: ext.is_some(),
            });
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn helm_chart_layout_for_small_clusters() {
        let d = DesiredState::example();
        let slots = slot_layout(&d);
        let ids: Vec<u32> = slots.iter().map(|s| s.node_id).collect();
        assert_eq!(&ids[..6], &[1, 2, 3, 4, 5, 6]);
        assert_eq!(slots[3].node_group, Some(1));
        let mgmd: Vec<u32> = slots
            .iter()
            .filter(|s| s.kind == Role::Mgmd)
            .map(|s| s.node_id)
            .collect();
        assert_eq!(mgmd, vec![65, 66]);
        let first_mysqld = slots
            .iter()
            .find(|s| s.kind == Role::Mysqld)
            .map(|s| s.node_id);
        assert_eq!(first_mysqld, Some(67));
    }

    #[test]
    fn largest_cluster_stays_within_255_and_ids_are_unique() {
        let mut d = DesiredState::example();
        d.num_node_groups = 48;
        d.max_replication_factor = 3;
        d.num_total_mgmd_slots = 2;
        d.num_total_mysqld_slots = 100;
        d.num_total_api_slots = 9;
        let slots = slot_layout(&d);
        let mut ids: Vec<u32> = slots.iter().map(|s| s.node_id).collect();
        assert!(ids.iter().all(|i| (1..=255).contains(i)));
        let n = ids.len();
        ids.dedup();
        assert_eq!(ids.len(), n);
        assert!(slots
            .iter()
            .filter(|s| s.kind == Role::Ndbd)
            .all(|s| s.node_id <= 144));
    }

    #[test]
    fn external_nodes_take_the_last_slots() {
        let mut d = DesiredState::example();
        d.externally_managed_nodes = vec![crate::desired::ExternalNode {
            rondb_type: ExternalNodeType::NdbApi,
            ip: "10.1.1.1".into(),
            port: 0,
        }];
        let slots = slot_layout(&d);
        let last = slots
            .iter()
            .rev()
            .find(|s| s.kind == Role::Api)
            .expect("api slot");
        assert!(last.external && last.active);
        assert_eq!(last.host.as_deref(), Some("10.1.1.1"));
    }
}
