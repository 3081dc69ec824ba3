//! Table-driven tests: one valid and one invalid case per rule, asserting the field named.

use super::*;
use proptest::prelude::*;

fn base() -> DesiredState {
    DesiredState::example()
}

fn fields_of(v: &[Violation]) -> Vec<String> {
    v.iter().map(|x| x.field.clone()).collect()
}

type Mutate = fn(&mut DesiredState);

/// (rule, valid mutation, invalid mutation, field the violation must name)
const SINGLE_RULES: &[(&str, Mutate, Mutate, &str)] = &[
    (
        "RonDBRunningSince <= Id",
        |d| {
            d.id = 5;
            d.rondb_running_since = 5
        },
        |d| {
            d.id = 5;
            d.rondb_running_since = 6
        },
        "RonDBRunningSince",
    ),
    (
        "NdbAgentRunningSince <= Id",
        |d| {
            d.id = 5;
            d.ndb_agent_running_since = 5
        },
        |d| {
            d.id = 5;
            d.ndb_agent_running_since = 6
        },
        "NdbAgentRunningSince",
    ),
    (
        "Id >= 1",
        |d| d.id = 1,
        |d| {
            d.id = 0;
            d.rondb_running_since = 0;
            d.ndb_agent_running_since = 0
        },
        "Id",
    ),
    (
        "Active >= 1",
        |d| d.active_replication_factor = 1,
        |d| d.active_replication_factor = 0,
        "ActiveReplicationFactor",
    ),
    (
        "Active <= Max",
        |d| {
            d.max_replication_factor = 2;
            d.active_replication_factor = 2
        },
        |d| {
            d.max_replication_factor = 2;
            d.active_replication_factor = 3
        },
        "ActiveReplicationFactor",
    ),
    (
        "Max <= 3",
        |d| d.max_replication_factor = 3,
        |d| d.max_replication_factor = 4,
        "MaxReplicationFactor",
    ),
    (
        "data nodes <= 144",
        |d| {
            d.num_node_groups = 48;
            d.max_replication_factor = 3;
            d.num_total_mysqld_slots = 100
        },
        |d| {
            d.num_node_groups = 49;
            d.max_replication_factor = 3
        },
        "NumNodeGroups",
    ),
    (
        "all slots <= 255",
        |d| {
            d.num_node_groups = 48;
            d.num_total_mysqld_slots = 100;
            d.num_total_api_slots = 9
        },
        |d| {
            d.num_node_groups = 48;
            d.num_total_mysqld_slots = 100;
            d.num_total_api_slots = 10
        },
        "NumTotalApiSlots",
    ),
    (
        "mysqld slots fit",
        |d| {
            d.num_managed_mysqld_vms = 4;
            d.num_mysqld_slots_per_vm = 2;
            d.num_total_mysqld_slots = 8
        },
        |d| {
            d.num_managed_mysqld_vms = 5;
            d.num_mysqld_slots_per_vm = 2;
            d.num_total_mysqld_slots = 8
        },
        "NumTotalMysqldSlots",
    ),
    (
        "api slots fit with external",
        |d| {
            d.num_managed_api_vms = 7;
            d.externally_managed_nodes = vec![ExternalNode {
                rondb_type: ExternalNodeType::NdbApi,
                ip: String::new(),
                port: 1,
            }]
        },
        |d| {
            d.num_managed_api_vms = 8;
            d.externally_managed_nodes = vec![ExternalNode {
                rondb_type: ExternalNodeType::NdbApi,
                ip: String::new(),
                port: 1,
            }]
        },
        "NumTotalApiSlots",
    ),
    (
        "mgmd slots fit",
        |d| d.num_managed_mgmd_vms = 2,
        |d| d.num_managed_mgmd_vms = 3,
        "NumTotalMgmdSlots",
    ),
    (
        "port range",
        |d| d.default_mysqld_port = 65535,
        |d| d.default_mysqld_port = 65536,
        "DefaultMysqldPort",
    ),
    (
        "ports distinct",
        |d| d.default_ndbd_port = 1187,
        |d| d.default_ndbd_port = 1186,
        "DefaultNdbdPort",
    ),
    (
        "backup ids unique",
        |d| d.single_backups = vec![backup(1), backup(2)],
        |d| d.single_backups = vec![backup(1), backup(1)],
        "SingleBackups[1].Id",
    ),
    (
        "restore listed",
        |d| {
            d.single_backups = vec![backup(7)];
            d.restore_from_backup = Some(backup(7))
        },
        |d| {
            d.single_backups = vec![backup(6)];
            d.restore_from_backup = Some(backup(7))
        },
        "RestoreFromBackup.Id",
    ),
    (
        "version parses",
        |d| d.rondb_version = "24.10.0".into(),
        |d| d.rondb_version = "24.10".into(),
        "RonDBVersion",
    ),
    (
        "agent version parses",
        |d| d.ndb_agent_version = "0.999".into(),
        |d| d.ndb_agent_version = "latest".into(),
        "NdbAgentVersion",
    ),
    (
        "rondb link is http(s)",
        |d| d.rondb_download_link = "https://repo.example/r.tgz".into(),
        |d| d.rondb_download_link = "ftp://repo.example/r.tgz".into(),
        "RonDBDownloadLink",
    ),
    (
        "agent link is http(s)",
        |d| d.ndb_agent_download_link = "http://a/b".into(),
        |d| d.ndb_agent_download_link = "not a url".into(),
        "NdbAgentDownloadLink",
    ),
    (
        "zones non-empty",
        |d| d.availability_zones = vec!["z".into()],
        |d| d.availability_zones = vec![],
        "AvailabilityZones",
    ),
    (
        "zones distinct",
        |d| d.availability_zones = vec!["a".into(), "b".into()],
        |d| d.availability_zones = vec!["a".into(), "a".into()],
        "AvailabilityZones",
    ),
    (
        "memory size",
        |d| d.total_memory_config = "4G".into(),
        |d| d.total_memory_config = "lots".into(),
        "TotalMemoryConfig",
    ),
    (
        "external ndbd refused",
        |d| {
            d.externally_managed_nodes = vec![ExternalNode {
                rondb_type: ExternalNodeType::Mysqld,
                ip: "10.0.0.1".into(),
                port: 3306,
            }]
        },
        |d| {
            d.externally_managed_nodes = vec![ExternalNode {
                rondb_type: ExternalNodeType::NdbNdbd,
                ip: "10.0.0.1".into(),
                port: 11860,
            }]
        },
        "ExternallyManagedNodes[0].RonDBType",
    ),
    (
        "empty Ip only for mysqld/api",
        |d| {
            d.externally_managed_nodes = vec![ExternalNode {
                rondb_type: ExternalNodeType::Mysqld,
                ip: String::new(),
                port: 3306,
            }]
        },
        |d| {
            d.externally_managed_nodes = vec![ExternalNode {
                rondb_type: ExternalNodeType::NdbMgm,
                ip: String::new(),
                port: 1186,
            }]
        },
        "ExternallyManagedNodes[0].Ip",
    ),
    (
        "storage >= 1",
        |d| d.storage_gib_per_ndbd_vm = 1,
        |d| d.storage_gib_per_ndbd_vm = 0,
        "StorageGiBPerNdbdVm",
    ),
    (
        "managed mgmd >= 1",
        |d| d.num_managed_mgmd_vms = 1,
        |d| d.num_managed_mgmd_vms = 0,
        "NumManagedMgmdVms",
    ),
    (
        "restore needs an API slot",
        |d| {
            d.single_backups = vec![backup(3)];
            d.restore_from_backup = Some(backup(3))
        },
        |d| {
            d.single_backups = vec![backup(3)];
            d.restore_from_backup = Some(backup(3));
            d.num_managed_mysqld_vms = 0;
            d.num_managed_api_vms = 0
        },
        "RestoreFromBackup",
    ),
];

fn backup(id: u64) -> BackupSpec {
    BackupSpec {
        id,
        sink_type: SinkType::Local,
        sink_parameters: Default::default(),
    }
}

#[test]
fn every_single_state_rule_accepts_valid_and_names_field_of_invalid() {
    assert!(validate(&base()).is_empty(), "{:?}", validate(&base()));
    for (rule, ok, bad, field) in SINGLE_RULES {
        let mut d = base();
        ok(&mut d);
        assert!(
            validate(&d).is_empty(),
            "rule {rule}: valid case refused: {:?}",
            validate(&d)
        );
        let mut d = base();
        bad(&mut d);
        let v = validate(&d);
        assert!(
            fields_of(&v).iter().any(|f| f == field),
            "rule {rule}: expected a violation naming {field}, got {v:?}"
        );
        assert!(v.iter().all(|x| !x.rule.is_empty()));
    }
}

type Transition = fn(&DesiredState) -> DesiredState;

const TRANSITION_RULES: &[(&str, Transition, Transition, &str)] = &[
    (
        "Id increases",
        |o| DesiredState {
            id: o.id + 1,
            ..o.clone()
        },
        |o| o.clone(),
        "Id",
    ),
    (
        "RonDBRunningSince never decreases",
        |o| DesiredState {
            id: o.id + 1,
            rondb_running_since: o.rondb_running_since + 1,
            ..o.clone()
        },
        |o| DesiredState {
            id: o.id + 1,
            rondb_running_since: o.rondb_running_since - 1,
            ..o.clone()
        },
        "RonDBRunningSince",
    ),
    (
        "NdbAgentRunningSince never decreases",
        |o| DesiredState {
            id: o.id + 1,
            ..o.clone()
        },
        |o| DesiredState {
            id: o.id + 1,
            ndb_agent_running_since: o.ndb_agent_running_since - 1,
            ..o.clone()
        },
        "NdbAgentRunningSince",
    ),
    (
        "MaxReplicationFactor immutable",
        |o| DesiredState {
            id: o.id + 1,
            active_replication_factor: 3,
            ..o.clone()
        },
        |o| DesiredState {
            id: o.id + 1,
            max_replication_factor: 2,
            ..o.clone()
        },
        "MaxReplicationFactor",
    ),
    (
        "NumNodeGroups immutable",
        |o| DesiredState {
            id: o.id + 1,
            ..o.clone()
        },
        |o| DesiredState {
            id: o.id + 1,
            num_node_groups: 3,
            ..o.clone()
        },
        "NumNodeGroups",
    ),
    (
        "NumTotalMysqldSlots immutable",
        |o| DesiredState {
            id: o.id + 1,
            num_managed_mysqld_vms: 4,
            ..o.clone()
        },
        |o| DesiredState {
            id: o.id + 1,
            num_total_mysqld_slots: 9,
            ..o.clone()
        },
        "NumTotalMysqldSlots",
    ),
    (
        "NumMysqldSlotsPerVm immutable",
        |o| DesiredState {
            id: o.id + 1,
            ..o.clone()
        },
        |o| DesiredState {
            id: o.id + 1,
            num_mysqld_slots_per_vm: 2,
            ..o.clone()
        },
        "NumMysqldSlotsPerVm",
    ),
    (
        "DefaultMgmdPort immutable",
        |o| DesiredState {
            id: o.id + 1,
            ..o.clone()
        },
        |o| DesiredState {
            id: o.id + 1,
            default_mgmd_port: 1187,
            ..o.clone()
        },
        "DefaultMgmdPort",
    ),
    (
        "Region immutable",
        |o| DesiredState {
            id: o.id + 1,
            ..o.clone()
        },
        |o| DesiredState {
            id: o.id + 1,
            region: "eu".into(),
            ..o.clone()
        },
        "Region",
    ),
    (
        "version change with one replica needs temporary VMs",
        |o| DesiredState {
            id: o.id + 1,
            active_replication_factor: 1,
            allow_requesting_temporary_vms: true,
            rondb_version: "22.10.2".into(),
            ..o.clone()
        },
        |o| DesiredState {
            id: o.id + 1,
            active_replication_factor: 1,
            allow_requesting_temporary_vms: false,
            rondb_version: "22.10.2".into(),
            ..o.clone()
        },
        "RonDBVersion",
    ),
    (
        "new backup needs RonDB running",
        |o| DesiredState {
            id: o.id + 1,
            single_backups: vec![backup(9)],
            ..o.clone()
        },
        |o| DesiredState {
            id: o.id + 1,
            rondb_running: false,
            single_backups: vec![backup(9)],
            ..o.clone()
        },
        "SingleBackups[0].Id",
    ),
    (
        "ndbd VM change needs RonDB running",
        |o| DesiredState {
            id: o.id + 1,
            vm_type_ndbds: VmType::Large,
            ..o.clone()
        },
        |o| DesiredState {
            id: o.id + 1,
            rondb_running: false,
            vm_type_ndbds: VmType::Large,
            ..o.clone()
        },
        "VmTypeNdbds/StorageGiBPerNdbdVm/AvailabilityZones",
    ),
    (
        "zone removal moves data nodes, so needs RonDB running",
        |o| DesiredState {
            id: o.id + 1,
            availability_zones: vec!["zone-a".into(), "zone-b".into()],
            ..o.clone()
        },
        |o| DesiredState {
            id: o.id + 1,
            rondb_running: false,
            availability_zones: vec!["zone-a".into(), "zone-b".into()],
            ..o.clone()
        },
        "VmTypeNdbds/StorageGiBPerNdbdVm/AvailabilityZones",
    ),
    (
        "data-node VM change with one replica needs a temporary replica",
        |o| DesiredState {
            id: o.id + 1,
            storage_gib_per_ndbd_vm: 40,
            ..o.clone()
        },
        |o| DesiredState {
            id: o.id + 1,
            allow_requesting_temporary_vms: false,
            storage_gib_per_ndbd_vm: 40,
            ..o.clone()
        },
        "VmTypeNdbds/StorageGiBPerNdbdVm/AvailabilityZones",
    ),
];

#[test]
fn every_transition_rule_accepts_valid_and_names_field_of_invalid() {
    let mut old = base();
    old.id = 10;
    old.rondb_running_since = 5;
    old.ndb_agent_running_since = 5;
    old.active_replication_factor = 1;
    let ctx = TransitionContext::default();
    for (rule, ok, bad, field) in TRANSITION_RULES {
        let new = ok(&old);
        let v = validate_transition(&old, &new, ctx);
        assert!(
            v.is_empty() && validate(&new).is_empty(),
            "rule {rule}: valid transition refused: {v:?}"
        );
        let new = bad(&old);
        let v = validate_transition(&old, &new, ctx);
        let hit = v.iter().find(|x| &x.field == field);
        let hit = hit.unwrap_or_else(|| panic!("rule {rule}: expected {field}, got {v:?}"));
        assert!(
            hit.old.is_some() || hit.value.is_some(),
            "rule {rule}: values missing"
        );
    }
}

#[test]
fn restore_cannot_change_after_rondb_ran() {
    let mut old = base();
    old.single_backups = vec![backup(4)];
    let mut new = old.clone();
    new.id += 1;
    new.restore_from_backup = Some(backup(4));
    assert!(validate_transition(
        &old,
        &new,
        TransitionContext {
            rondb_has_run: false
        }
    )
    .is_empty());
    let v = validate_transition(
        &old,
        &new,
        TransitionContext {
            rondb_has_run: true,
        },
    );
    let hit = v
        .iter()
        .find(|x| x.field == "RestoreFromBackup")
        .expect("violation");
    assert_eq!(hit.old.as_deref(), Some("none"));
    assert_eq!(hit.value.as_deref(), Some("backup 4"));
}

#[test]
fn first_state_of_stopped_cluster_cannot_take_backups() {
    let mut d = base();
    d.rondb_running = false;
    d.single_backups = vec![backup(1)];
    assert_eq!(fields_of(&validate_first(&d)), vec!["SingleBackups[0].Id"]);
    d.restore_from_backup = Some(backup(1));
    assert!(validate_first(&d).is_empty());
}

#[test]
fn example_file_is_valid() {
    let text = include_str!("../../../compose/desired_state.jsonc");
    let d = parse(text.as_bytes()).expect("example parses");
    assert!(validate(&d).is_empty());
    assert!(validate_first(&d).is_empty());
}

#[test]
fn field_list_matches_serde() {
    let mut d = base();
    d.restore_from_backup = Some(backup(1));
    let v = serde_json::to_value(&d).expect("serializes");
    let keys: Vec<&str> = v
        .as_object()
        .expect("object")
        .keys()
        .map(|k| k.as_str())
        .collect();
    assert_eq!(keys, FIELDS);
}

#[test]
fn unknown_fields_get_did_you_mean_hints_and_all_errors_are_reported() {
    let text = r#"{ "Id": 2, "RonDBRuning": true, "MaxReplicationFactor": "two", "NumNodeGroup": 1,
        "SingleBackups": [{"Id": 1, "SinkTyp": "s3"}] }"#;
    let err = parse(text.as_bytes()).expect_err("invalid");
    let p = err.problems().join("\n");
    assert!(
        p.contains("RonDBRuning: unknown field") && p.contains("did you mean `RonDBRunning`"),
        "{p}"
    );
    assert!(
        p.contains("NumNodeGroup: unknown field") && p.contains("`NumNodeGroups`"),
        "{p}"
    );
    assert!(
        p.contains("SingleBackups[0].SinkTyp") && p.contains("`SinkType`"),
        "{p}"
    );
    assert!(p.contains("MaxReplicationFactor = \"two\""), "{p}");
    assert!(p.contains("Region: required field is missing"), "{p}");
}

#[test]
fn syntax_errors_give_line_and_column() {
    let err = parse(b"{\n  \"Id\": 1,\n  \"X\": [1,,2]\n}").expect_err("syntax");
    match err {
        ParseError::Syntax { line, column, .. } => assert_eq!((line, column), (3, 11)),
        other => panic!("expected syntax error, got {other:?}"),
    }
}

#[test]
fn deep_large_and_binary_inputs_are_refused_cleanly() {
    let deep = "[".repeat(1_000_000);
    assert!(matches!(
        parse(deep.as_bytes()),
        Err(ParseError::TooDeep { .. })
    ));
    let deep_obj = "{\"a\":".repeat(100_000);
    assert!(matches!(
        parse(deep_obj.as_bytes()),
        Err(ParseError::TooDeep { .. })
    ));
    let big = vec![b' '; MAX_DOCUMENT_BYTES + 1];
    assert!(matches!(parse(&big), Err(ParseError::TooLarge { .. })));
    assert!(matches!(
        parse(&[0xff, 0xfe, 0x00]),
        Err(ParseError::NotUtf8 { .. })
    ));
    assert!(matches!(
        parse(b"[1,2]"),
        Err(ParseError::NotAnObject { .. })
    ));
    // Brackets inside strings and comments do not count as nesting.
    let mut d = serde_json::to_string(&base()).expect("json");
    d.insert_str(1, &format!("// {}\n", "[".repeat(100)));
    d = d.replacen("\"local\"", &format!("\"{}\"", "{".repeat(100)), 1);
    let parsed = parse(d.as_bytes()).expect("strings and comments are not nesting");
    assert_eq!(parsed.region, "{".repeat(100));
}

pub(crate) fn arb_state() -> impl Strategy<Value = DesiredState> {
    (
        (
            1u64..1000,
            any::<bool>(),
            0u64..1000,
            0u64..1000,
            (0u32..30, 0u32..30, 0u32..30),
        ),
        (1u32..=3, 1u32..=3, 1u32..=8),
        (0u32..6, 0u32..6, 1u32..=2, 1u32..=3, 1u32..=2),
        (
            proptest::collection::btree_set(1u64..50, 0..4),
            any::<bool>(),
            any::<bool>(),
        ),
        (
            prop::sample::select(VmType::ALL.to_vec()),
            prop::sample::select(VmType::ALL.to_vec()),
            1u32..500,
            1usize..=3,
        ),
    )
        .prop_map(|(a, b, c, d, e)| {
            let (id, running, rs, ans, (x, y, z)) = a;
            let (maxrf, arf, ng) = b;
            let (mysqlds, apis, mysqld_per, api_per, mgmds) = c;
            let (backups, restore, temp) = d;
            let (t1, t2, storage, zones) = e;
            let mut s = DesiredState::example();
            s.id = id;
            s.rondb_running = running;
            s.rondb_running_since = rs.min(id);
            s.ndb_agent_running_since = ans.min(id);
            s.rondb_version = format!("{x}.{y}.{z}");
            s.max_replication_factor = maxrf;
            s.active_replication_factor = arf.min(maxrf);
            s.num_node_groups = ng;
            s.num_managed_mysqld_vms = mysqlds;
            s.num_managed_api_vms = apis;
            s.num_mysqld_slots_per_vm = mysqld_per;
            s.num_api_slots_per_vm = api_per;
            s.num_managed_mgmd_vms = mgmds;
            s.num_total_mysqld_slots = mysqlds * mysqld_per + 2;
            s.num_total_api_slots = apis * api_per + 1;
            s.num_total_mgmd_slots = 2;
            s.single_backups = backups
                .iter()
                .map(|i| BackupSpec {
                    id: *i,
                    sink_type: SinkType::S3,
                    sink_parameters: [("Bucket".to_string(), serde_json::json!("b"))].into(),
                })
                .collect();
            s.restore_from_backup = if restore && mysqlds + apis > 0 {
                s.single_backups.first().cloned()
            } else {
                None
            };
            s.allow_requesting_temporary_vms = temp;
            s.vm_type_ndbds = t1;
            s.vm_type_mysqlds = t2;
            s.storage_gib_per_ndbd_vm = storage;
            s.availability_zones = ["a", "b", "c"][..zones]
                .iter()
                .map(|z| z.to_string())
                .collect();
            s
        })
}

fn arb_json() -> impl Strategy<Value = serde_json::Value> {
    use serde_json::Value;
    let leaf = prop_oneof![
        Just(Value::Null),
        any::<bool>().prop_map(Value::Bool),
        any::<i64>().prop_map(Value::from),
        any::<f64>().prop_map(|f| serde_json::Number::from_f64(f)
            .map(Value::Number)
            .unwrap_or(Value::Null)),
        ".{0,12}".prop_map(Value::String),
        prop::sample::select(FIELDS.to_vec()).prop_map(|s| Value::String(s.to_string())),
    ];
    leaf.prop_recursive(6, 64, 8, |inner| {
        prop_oneof![
            prop::collection::vec(inner.clone(), 0..8).prop_map(serde_json::Value::Array),
            prop::collection::btree_map(
                prop_oneof![
                    prop::sample::select(FIELDS.to_vec()).prop_map(str::to_string),
                    "[A-Za-z]{1,12}"
                ],
                inner,
                0..12
            )
            .prop_map(|m| serde_json::Value::Object(m.into_iter().collect())),
        ]
    })
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(256))]

    #[test]
    fn valid_states_round_trip(d in arb_state()) {
        prop_assert!(validate(&d).is_empty(), "{:?}", validate(&d));
        let text = serde_json::to_string_pretty(&d).expect("serializes");
        let back = parse(text.as_bytes()).expect("parses back");
        prop_assert_eq!(&back, &d);
    }

    #[test]
    fn arbitrary_strings_never_panic(s in "\\PC{0,400}") {
        let _ = parse(s.as_bytes()).map(|d| validate(&d));
    }

    #[test]
    fn arbitrary_bytes_never_panic(b in prop::collection::vec(any::<u8>(), 0..400)) {
        let _ = parse(&b).map(|d| validate(&d));
    }

    #[test]
    fn arbitrary_json_never_panics(v in arb_json(), with_base in any::<bool>()) {
        let doc = if with_base {
            // Mostly valid documents with one field replaced by an arbitrary value.
            let mut base = serde_json::to_value(DesiredState::example()).expect("json");
            if let (Some(m), serde_json::Value::Object(extra)) = (base.as_object_mut(), &v) {
                for (k, x) in extra { m.insert(k.clone(), x.clone()); }
            }
            base
        } else { v };
        let text = doc.to_string();
        if let Ok(d) = parse(text.as_bytes()) {
            let _ = validate(&d);
            let _ = validate_transition(&DesiredState::example(), &d, TransitionContext::default());
        }
    }
}

/// The one-pass version parser accepts exactly what `split('.')` and `str::parse` did.
#[test]
fn version_parser_agrees_with_split_and_parse() {
    fn reference(s: &str) -> Option<RonDbVersion> {
        let num = |p: &str| {
            if p.is_empty() || p.len() > 9 || !p.bytes().all(|b| b.is_ascii_digit()) {
                return None;
            }
            p.parse::<u32>().ok()
        };
        let mut parts = s.split('.');
        let a = num(parts.next()?)?;
        let b = num(parts.next()?)?;
        let c = num(parts.next()?)?;
        if parts.next().is_some() {
            return None;
        }
        Some(RonDbVersion(a, b, c))
    }
    for s in [
        "",
        ".",
        "..",
        "1",
        "1.2",
        "1.2.3",
        "1.2.3.",
        ".1.2.3",
        "1..3",
        "01.002.0003",
        "22.10.1",
        "24.10.0-rc",
        "+1.2.3",
        "1.2.-3",
        "1.2. 3",
        "999999999.0.0",
        "1000000000.0.0",
        "1.2.3.4",
        "a.b.c",
        "1.2.3a",
        "١.2.3",
        "4294967295.1.1",
    ] {
        assert_eq!(RonDbVersion::parse(s), reference(s), "{s:?}");
    }
}
