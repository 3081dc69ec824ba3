//! The agent's gRPC contract: calls meant for another VM or Raft id are refused, and an
//! operation id runs once however often it is sent.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use super::*;
use crate::backend::OpId;
use crate::backend::{
    MgmCommand, ProgramKind, ProgramSpec, ProgramStatus, RestoreRun, VmInfo, VmSpec,
};
use crate::desired::BackupSpec;
use crate::model::ConfigFile;
use async_trait::async_trait;
use ndb_proto::v1::raft_client::RaftClient;
use std::sync::atomic::{AtomicU32, Ordering};

#[derive(Default)]
struct Counting {
    starts: AtomicU32,
}

#[async_trait]
impl ProcessRuntime for Counting {
    async fn install_software(
        &self,
        _: OpId,
        _: &str,
        _: &str,
        _: &str,
    ) -> Result<(), BackendError> {
        Ok(())
    }
    async fn write_files(&self, _: OpId, _: &str, _: &[ConfigFile]) -> Result<(), BackendError> {
        Ok(())
    }
    async fn start_program(&self, _: OpId, _: &str, _: &ProgramSpec) -> Result<(), BackendError> {
        tokio::time::sleep(Duration::from_millis(50)).await;
        self.starts.fetch_add(1, Ordering::SeqCst);
        Ok(())
    }
    async fn stop_program(
        &self,
        _: OpId,
        _: &str,
        _: ProgramKind,
        _: bool,
    ) -> Result<(), BackendError> {
        Ok(())
    }
    async fn status(&self, _: &str) -> Result<ProgramStatus, BackendError> {
        Ok(ProgramStatus::default())
    }
    async fn mgm_command(
        &self,
        _: OpId,
        _: &str,
        _: &MgmCommand,
    ) -> Result<Vec<u32>, BackendError> {
        Ok(vec![])
    }
    async fn restore(&self, _: OpId, _: &str, _: &RestoreRun) -> Result<Vec<u32>, BackendError> {
        Ok(vec![])
    }
    async fn delete_backup(&self, _: OpId, _: &str, _: &BackupSpec) -> Result<(), BackendError> {
        Ok(())
    }
    async fn restart_agent(&self, _: OpId, _: &str) -> Result<(), BackendError> {
        Ok(())
    }
    async fn upgrade_agent(&self, _: OpId, _: &str, _: &str, _: &str) -> Result<(), BackendError> {
        Ok(())
    }
}

/// One CA for the tests of this module (making one takes a key generation).
fn test_ca() -> &'static crate::backend::ClusterCa {
    static CA: std::sync::OnceLock<crate::backend::ClusterCa> = std::sync::OnceLock::new();
    CA.get_or_init(|| tls::make_ca().unwrap())
}

/// An agent of VM `vm` over `dir`, with the test CA, quick heartbeats, no token.
fn test_options(vm: &str, role: &str, dir: &std::path::Path) -> AgentOptions {
    AgentOptions {
        vm: vm.into(),
        role: role.into(),
        zone: "z".into(),
        dir: dir.to_path_buf(),
        bootstrap: false,
        agent_version: "test".into(),
        reconciler: ReconcilerConfig::default(),
        heartbeat: Duration::from_millis(100),
        advertise_host: None,
        api_token_sha256: None,
        trust: crate::backend::VmTrust::Ca(test_ca().clone()),
        join: None,
    }
}

/// An agent's two listeners on free loopback ports, and the gRPC one's address.
async fn listeners() -> (TcpListener, TcpListener, String) {
    let grpc = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let http = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = grpc.local_addr().unwrap().to_string();
    (grpc, http, addr)
}

struct NoProvider;

#[async_trait]
impl CloudProvider for NoProvider {
    async fn create_vm(&self, _: OpId, _: &VmSpec) -> Result<VmInfo, BackendError> {
        Err(BackendError::refused("no provider in this test"))
    }
    async fn delete_vm(&self, _: OpId, _: &str) -> Result<(), BackendError> {
        Ok(())
    }
    async fn list_vms(&self) -> Result<Vec<VmInfo>, BackendError> {
        Ok(vec![])
    }
    async fn start_vm(&self, _: OpId, name: &str) -> Result<VmInfo, BackendError> {
        Err(BackendError::vm_gone(name))
    }
}

fn start_request(vm: &str, op_id: u64) -> pb::StartProgramRequest {
    pb::StartProgramRequest {
        target: Some(pb::Target {
            vm: vm.into(),
            op_id,
        }),
        kind: pb::ProgramKind::DataNode as i32,
        version: "22.10.1".into(),
        node_ids: vec![1],
        initial: false,
        command: vec!["ndbmtd".into()],
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn refuses_other_targets_and_runs_an_operation_once() {
    let dir = tempfile::tempdir().unwrap();
    let (grpc, http, addr) = listeners().await;
    let runtime = Arc::new(Counting::default());
    let opts = test_options("vm-a", "ndbd", dir.path());
    let rt: Arc<dyn ProcessRuntime> = runtime.clone();
    tokio::spawn(run(opts, grpc, http, Arc::new(NoProvider), rt));
    let caller = tls::AgentTls::issue(test_ca(), "bootstrap").unwrap();
    let ch = endpoint(&addr, &caller).unwrap().connect_lazy();
    let mut agent = AgentClient::new(ch.clone());
    let mut raft = RaftClient::new(ch);

    // Wait for the server.
    let mut ident = None;
    for _ in 0..100 {
        if let Ok(r) = agent.get_identity(pb::IdentityRequest {}).await {
            ident = Some(r.into_inner());
            break;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let ident = ident.expect("the agent answers");
    assert_eq!((ident.vm.as_str(), ident.raft_id), ("vm-a", 0));

    // Another VM's call is refused and does nothing.
    let e = agent
        .start_program(start_request("vm-b", 1))
        .await
        .unwrap_err();
    assert_eq!(e.code(), tonic::Code::PermissionDenied, "{e}");
    assert_eq!(runtime.starts.load(Ordering::SeqCst), 0);

    // One operation id, sent three times (two at once): one start.
    let (mut c1, mut c2) = (agent.clone(), agent.clone());
    let (a, b) = tokio::join!(
        c1.start_program(start_request("vm-a", 7)),
        c2.start_program(start_request("vm-a", 7)),
    );
    a.unwrap();
    b.unwrap();
    agent.start_program(start_request("vm-a", 7)).await.unwrap();
    assert_eq!(runtime.starts.load(Ordering::SeqCst), 1);
    // Another id is another start.
    agent.start_program(start_request("vm-a", 8)).await.unwrap();
    assert_eq!(runtime.starts.load(Ordering::SeqCst), 2);

    // Raft messages before joining, for another id after joining, and a second id: refused.
    let msg = |target| pb::RaftRequest {
        target_raft_id: target,
        json: b"{}".to_vec(),
    };
    let e = raft.vote(msg(5)).await.unwrap_err();
    assert_eq!(e.code(), tonic::Code::Unavailable, "{e}");
    agent
        .join(pb::JoinRequest {
            target: Some(pb::Target {
                vm: "vm-a".into(),
                op_id: 0,
            }),
            raft_id: 5,
        })
        .await
        .unwrap();
    let e = raft.vote(msg(6)).await.unwrap_err();
    assert_eq!(e.code(), tonic::Code::PermissionDenied, "{e}");
    let e = agent
        .join(pb::JoinRequest {
            target: Some(pb::Target {
                vm: "vm-a".into(),
                op_id: 0,
            }),
            raft_id: 6,
        })
        .await
        .unwrap_err();
    assert_eq!(e.code(), tonic::Code::FailedPrecondition, "{e}");
    // The id is durable: it is what a restart rejoins with.
    let stored = std::fs::read_to_string(dir.path().join(RAFT_ID_FILE)).unwrap();
    assert_eq!(stored.trim(), "5");
}

/// Sink parameters and failures cross the wire as protobuf types, not JSON text or message
/// prefixes, and come back equal.
#[test]
fn backups_and_failures_cross_the_wire_typed() {
    let b = BackupSpec {
        id: 7,
        sink_type: crate::desired::SinkType::S3,
        sink_parameters: [
            ("Bucket".to_string(), serde_json::json!("backups")),
            ("Port".to_string(), serde_json::json!(9000)),
            ("Tls".to_string(), serde_json::json!(true)),
            ("Tags".to_string(), serde_json::json!(["a", {"b": null}])),
        ]
        .into_iter()
        .collect(),
    };
    assert_eq!(
        grpc::backup_from_pb(Some(grpc::backup_to_pb(&b))).unwrap(),
        b
    );
    let e = BackendError::refused("RonDB refuses to stop the last node of node group 0")
        .on("ndbd-0-1")
        .in_op(OpId(5));
    let back = grpc::failure_from_pb("ndbd-0-1", grpc::failure_to_pb(&e));
    assert_eq!(back, e);
    assert!(!back.is_drift());
    let gone = BackendError::vm_gone("ndbd-0-2");
    assert!(grpc::failure_from_pb("ndbd-0-2", grpc::failure_to_pb(&gone)).is_drift());
}

/// A bootstrap agent over `dir` whose API needs the token `right-token`, serving on `http`.
fn spawn_bootstrap_with_token(dir: &std::path::Path, grpc: TcpListener, http: TcpListener) {
    let opts = AgentOptions {
        bootstrap: true,
        api_token_sha256: Some(api_token::token_sha256("right-token")),
        ..test_options("bootstrap", "bootstrap", dir)
    };
    tokio::spawn(run(
        opts,
        grpc,
        http,
        Arc::new(NoProvider),
        Arc::new(Counting::default()),
    ));
}

/// An agent listening beyond loopback serves its API over HTTPS only: a client that checks
/// it against the cluster CA gets through (by an address its certificate does not name,
/// as a published port is reached), with the token still required; plain HTTP and a client
/// trusting another CA get nothing.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_http_api_is_https_beyond_loopback() {
    let dir = tempfile::tempdir().unwrap();
    let grpc = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let http = TcpListener::bind("0.0.0.0:0").await.unwrap();
    let port = http.local_addr().unwrap().port();
    spawn_bootstrap_with_token(dir.path(), grpc, http);
    let url = format!("https://127.0.0.1:{port}/status");
    let trusting = crate::https::client(Some(&test_ca().cert_pem)).unwrap();
    let mut answered = None;
    for _ in 0..200 {
        if let Ok(r) = trusting.get(&url).bearer_auth("right-token").send().await {
            if r.status() == 200 {
                answered = Some(r);
                break;
            }
        }
        tokio::time::sleep(Duration::from_millis(25)).await;
    }
    let status: serde_json::Value = answered
        .expect("the agent never answered over HTTPS")
        .json()
        .await
        .unwrap();
    assert_eq!(status["answered_by"], "bootstrap");
    let without = trusting.get(&url).send().await.unwrap();
    assert_eq!(without.status(), 401, "HTTPS does not replace the token");

    let plain = reqwest::Client::new()
        .get(format!("http://127.0.0.1:{port}/status"))
        .bearer_auth("right-token")
        .send()
        .await;
    assert!(
        plain.as_ref().map_or(true, |r| !r.status().is_success()),
        "plain HTTP beyond loopback answered {:?}",
        plain.map(|r| r.status())
    );
    let other_ca = tls::make_ca().unwrap();
    let foreign = crate::https::client(Some(&other_ca.cert_pem)).unwrap();
    let e = foreign
        .get(&url)
        .bearer_auth("right-token")
        .send()
        .await
        .expect_err("a client trusting another CA got an answer");
    assert!(e.is_connect(), "{e:?}");
    let untrusting = crate::https::client(None).unwrap();
    assert!(
        untrusting.get(&url).send().await.is_err(),
        "a client without the cluster CA got an answer"
    );
}

/// The HTTP API answers only callers with the cluster's token; health stays open. The
/// bootstrap agent records the token's hash in the Raft log, where every agent reads it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_http_api_needs_the_clusters_token() {
    let dir = tempfile::tempdir().unwrap();
    let (grpc, http, _) = listeners().await;
    let base = format!("http://{}", http.local_addr().unwrap());
    let shared_dir = dir.path().to_path_buf();
    spawn_bootstrap_with_token(dir.path(), grpc, http);
    let client = reqwest::Client::new();
    let get = |path: &str, token: Option<&str>| {
        let mut r = client.get(format!("{base}{path}"));
        if let Some(t) = token {
            r = r.bearer_auth(t);
        }
        r.send()
    };
    // The bootstrap agent answers once its one-node Raft group runs.
    let mut recorded = false;
    for _ in 0..200 {
        if get("/status", Some("right-token"))
            .await
            .is_ok_and(|r| r.status() == 200)
        {
            recorded = true;
            break;
        }
        tokio::time::sleep(Duration::from_millis(25)).await;
    }
    assert!(
        recorded,
        "the bootstrap agent never answered with its token"
    );

    let health = get("/health", None).await.unwrap();
    assert_eq!(health.status(), 200, "health is open to probes");
    for token in [None, Some("wrong-token"), Some("right-token ")] {
        let r = get("/status", token).await.unwrap();
        if token == Some("right-token ") {
            // Surrounding blanks (a file read with its newline) are not part of a token.
            assert_eq!(r.status(), 200);
            continue;
        }
        assert_eq!(r.status(), 401, "{token:?}");
        let body: serde_json::Value = r.json().await.unwrap();
        let msg = body["errors"][0].as_str().unwrap().to_string();
        assert!(msg.contains("token"), "{msg}");
    }
    let put = client
        .put(format!("{base}/desired-state"))
        .body("{}")
        .send()
        .await
        .unwrap();
    assert_eq!(put.status(), 401, "a desired state without the token");
    // What agents store is the hash: the token itself is nowhere in the agent's directory.
    for entry in std::fs::read_dir(&shared_dir).unwrap() {
        let path = entry.unwrap().path();
        if path.is_file() {
            let bytes = std::fs::read(&path).unwrap();
            assert!(
                !bytes.windows(11).any(|w| w == b"right-token"),
                "{} holds the token",
                path.display()
            );
        }
    }
    let rep = get("/status", Some("right-token")).await.unwrap();
    assert_eq!(rep.status(), 200);
}

/// Agents talk over mutual TLS only: a plain-text caller and a caller with a certificate of
/// another CA are refused in the handshake; a certificate of the cluster CA is let in.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn only_callers_with_a_certificate_of_the_cluster_ca_get_in() {
    let dir = tempfile::tempdir().unwrap();
    let (grpc, http, addr) = listeners().await;
    let opts = test_options("vm-a", "ndbd", dir.path());
    tokio::spawn(run(
        opts,
        grpc,
        http,
        Arc::new(NoProvider),
        Arc::new(Counting::default()),
    ));
    let ask = |ep: tonic::transport::Endpoint| async move {
        let mut c = AgentClient::new(ep.connect_lazy());
        c.get_identity(pb::IdentityRequest {}).await
    };
    // The cluster's CA: in (once the server listens).
    assert_eq!(identity_as_member(&addr).await.vm, "vm-a");
    // Plain text: no TLS handshake, no answer.
    let plain = tonic::transport::Endpoint::from_shared(format!("http://{addr}")).unwrap();
    assert!(ask(plain).await.is_err(), "a plain-text caller got in");
    // Another CA's certificate (a stranger's cluster, or a forged one): refused.
    let stranger_ca = tls::make_ca().unwrap();
    let stranger = tls::AgentTls::issue(&stranger_ca, "bootstrap").unwrap();
    assert!(
        ask(endpoint(&addr, &stranger).unwrap()).await.is_err(),
        "a foreign-CA caller got in"
    );
}

/// An agent whose certificate is two thirds through its validity makes itself a new one
/// with the CA key it holds, keeps it (0600) and restarts to serve it; peers accept it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_agent_renews_its_certificate_before_it_expires_and_restarts_to_serve_it() {
    let dir = tempfile::tempdir().unwrap();
    let tls_dir = dir.path().join(tls::TLS_DIR);
    let short = tls::AgentTls::issue_for(test_ca(), "vm-r", Duration::from_secs(3)).unwrap();
    short.save(&tls_dir).unwrap();
    let old_cert = std::fs::read_to_string(tls_dir.join("cert.pem")).unwrap();
    let (grpc, http, _) = listeners().await;
    let opts = test_options("vm-r", "ndbd", dir.path());
    let exit = tokio::time::timeout(
        Duration::from_secs(20),
        run(
            opts.clone(),
            grpc,
            http,
            Arc::new(NoProvider),
            Arc::new(Counting::default()),
        ),
    )
    .await
    .expect("the agent restarts within 20 s of a certificate due for renewal")
    .unwrap();
    assert_eq!(exit, Exit::Restart);
    let new_cert = std::fs::read_to_string(tls_dir.join("cert.pem")).unwrap();
    assert_ne!(new_cert, old_cert);
    assert_eq!(mode(&tls_dir.join("cert.pem")), 0o600);
    assert_eq!(mode(&tls_dir.join("key.pem")), 0o600);
    let renewed = tls::AgentTls::load(&tls_dir, &test_ca().cert_pem)
        .unwrap()
        .unwrap();
    let (_, until) = renewed.validity().unwrap();
    let left = until.duration_since(std::time::SystemTime::now()).unwrap();
    assert!(left > Duration::from_secs(364 * 24 * 3600), "{left:?}");

    // Started again on its directory, it serves the new certificate: a member gets in.
    let (grpc, http, addr) = listeners().await;
    tokio::spawn(run(
        opts,
        grpc,
        http,
        Arc::new(NoProvider),
        Arc::new(Counting::default()),
    ));
    assert_eq!(identity_as_member(&addr).await.vm, "vm-r");
}

/// The identity of the agent at `addr`, asked with a certificate of the cluster CA, once its
/// server listens (at most 2 s).
async fn identity_as_member(addr: &str) -> pb::Identity {
    let member = tls::AgentTls::issue(test_ca(), "bootstrap").unwrap();
    for _ in 0..100 {
        let mut c = AgentClient::new(endpoint(addr, &member).unwrap().connect_lazy());
        if let Ok(r) = c.get_identity(pb::IdentityRequest {}).await {
            return r.into_inner();
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    panic!("the agent at {addr} did not let a member in within 2 s");
}

/// Waits (at most 10 s) until the agent of `shared` leads its one-node group.
async fn leading(shared: &AgentShared) -> Raft {
    for _ in 0..200 {
        if let Some((id, raft)) = shared.raft() {
            if raft.metrics().borrow().current_leader == Some(id) {
                return raft;
            }
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    panic!("the bootstrap agent did not become leader within 10 s");
}

fn mode(path: &std::path::Path) -> u32 {
    use std::os::unix::fs::PermissionsExt;
    std::fs::metadata(path).unwrap().permissions().mode() & 0o777
}

/// The agent of a VM a leader creates gets in with its one-time join ticket only: once, for
/// its own VM. The certificate it gets is kept (0600) for its restarts. A caller without a
/// certificate reaches nothing but the enrolment call.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_new_vm_enrols_once_with_its_join_ticket() {
    use crate::backend::{JoinTicket, VmTrust};
    use crate::enrolment::{credentials, EnrolError};
    let dir_a = tempfile::tempdir().unwrap();
    let (grpc, http, leader_addr) = listeners().await;
    let mut opts = test_options("bootstrap", "bootstrap", dir_a.path());
    opts.bootstrap = true;
    let rt: Arc<dyn ProcessRuntime> = Arc::new(Counting::default());
    let shared = start(opts, grpc, http, Arc::new(NoProvider), Arc::clone(&rt))
        .await
        .unwrap();
    let raft = leading(&shared).await;
    let membership = membership::Membership::new(Arc::clone(&shared), raft);
    let ticket = membership.mint_ticket("vm-b").await.unwrap();
    assert_eq!(
        ticket.agents.first(),
        Some(&leader_addr),
        "the leader first"
    );
    let rep = shared.replicated().unwrap();
    let on_record = serde_json::to_string(&rep.join_tickets).unwrap();
    assert!(
        !on_record.contains(&ticket.secret),
        "the secret itself is in the log"
    );
    assert!(
        format!("{ticket:?}").contains("<secret>")
            && !format!("{ticket:?}").contains(&ticket.secret)
    );

    // Without a certificate: the agent and Raft services refuse, after the handshake.
    let ca_cert_pem = test_ca().cert_pem.clone();
    let bare = tonic::transport::Endpoint::from_shared(format!("https://{leader_addr}"))
        .unwrap()
        .tls_config(tls::AgentTls::enrolment_client_config(&ca_cert_pem))
        .unwrap()
        .connect_lazy();
    let e = AgentClient::new(bare.clone())
        .get_identity(pb::IdentityRequest {})
        .await
        .unwrap_err();
    assert_eq!(e.code(), tonic::Code::Unauthenticated, "{e}");
    let e = RaftClient::new(bare)
        .vote(pb::RaftRequest {
            target_raft_id: BOOTSTRAP_ID,
            json: b"{}".to_vec(),
        })
        .await
        .unwrap_err();
    assert_eq!(e.code(), tonic::Code::Unauthenticated, "{e}");

    let with_ticket = |vm: &str, dir: &std::path::Path, t: &JoinTicket| AgentOptions {
        trust: VmTrust::CaCert {
            cert_pem: ca_cert_pem.clone(),
        },
        join: Some(t.clone()),
        ..test_options(vm, "ndbd", dir)
    };
    // vm-b's ticket shown for another VM: refused, and vm-b's ticket stays good.
    let dir_c = tempfile::tempdir().unwrap();
    let e = credentials(&with_ticket("vm-c", dir_c.path(), &ticket))
        .await
        .unwrap_err();
    assert!(matches!(e, EnrolError::Refused { .. }), "{e}");
    assert!(!dir_c.path().join(tls::TLS_DIR).exists());

    // vm-b's agent: in, and the leader reaches it with its own certificate.
    let dir_b = tempfile::tempdir().unwrap();
    let (grpc_b, http_b, addr_b) = listeners().await;
    let opts_b = with_ticket("vm-b", dir_b.path(), &ticket);
    tokio::spawn(run(
        opts_b.clone(),
        grpc_b,
        http_b,
        Arc::new(NoProvider),
        Arc::clone(&rt),
    ));
    let mut ident = None;
    for _ in 0..100 {
        if let Ok(i) = shared.identity_of(&addr_b, Duration::from_secs(1)).await {
            ident = Some(i);
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert_eq!(ident.expect("vm-b's agent answers").vm, "vm-b");
    let kept = dir_b.path().join(tls::TLS_DIR);
    for f in ["cert.pem", "key.pem", "ca-key.pem"] {
        assert_eq!(mode(&kept.join(f)), 0o600, "{f}");
    }
    let pem = std::fs::read_to_string(kept.join("cert.pem")).unwrap();
    let (_, pem) = x509_parser::pem::parse_x509_pem(pem.as_bytes()).unwrap();
    let der = tonic::transport::CertificateDer::from(pem.contents);
    assert_eq!(tls::peer_vm(&[der]).as_deref(), Some("vm-b"));
    assert!(
        shared.replicated().unwrap().join_tickets["vm-b"]
            .iter()
            .all(|t| t.used_by_key.is_some()),
        "used up"
    );
    assert!(
        !dir_b.path().join(tls::ENROLLING_DIR).exists(),
        "the key enrolled with is kept as the agent's own, not twice"
    );

    // The same ticket again (a copy read from the VM's metadata): refused.
    let dir_d = tempfile::tempdir().unwrap();
    let e = credentials(&with_ticket("vm-b", dir_d.path(), &ticket))
        .await
        .unwrap_err();
    assert!(
        e.to_string().contains("refused the join ticket of VM vm-b"),
        "{e}"
    );

    assert!(
        !dir_d.path().join(tls::ENROLLING_DIR).exists(),
        "a refused agent keeps no key"
    );

    // vm-f's agent asks, the leader uses the ticket and answers, and the answer is lost (the
    // connection broke, the agent restarted): asking again with the key it kept gets its
    // certificate. Another key with the same ticket still gets nothing.
    let ticket_f = membership.mint_ticket("vm-f").await.unwrap();
    let dir_f = tempfile::tempdir().unwrap();
    let kept_request =
        tls::KeyRequest::pending(&dir_f.path().join(tls::ENROLLING_DIR), "vm-f").unwrap();
    let bare = tonic::transport::Endpoint::from_shared(format!("https://{leader_addr}"))
        .unwrap()
        .tls_config(tls::AgentTls::enrolment_client_config(&ca_cert_pem))
        .unwrap()
        .connect_lazy();
    ndb_proto::v1::enrolment_client::EnrolmentClient::new(bare)
        .enrol(pb::EnrolRequest {
            vm: "vm-f".into(),
            ticket: ticket_f.secret.clone(),
            csr_pem: kept_request.csr_pem.clone(),
        })
        .await
        .expect("the first answer (lost on its way)");
    let dir_g = tempfile::tempdir().unwrap();
    let e = credentials(&with_ticket("vm-f", dir_g.path(), &ticket_f))
        .await
        .unwrap_err();
    assert!(matches!(e, EnrolError::Refused { .. }), "another key: {e}");
    let tls_f = credentials(&with_ticket("vm-f", dir_f.path(), &ticket_f))
        .await
        .expect("the agent that used the ticket asks again with its kept key");
    assert_eq!(tls_f.identity_pem().1, kept_request.key_pem);
    let (_, pem) = x509_parser::pem::parse_x509_pem(tls_f.identity_pem().0.as_bytes()).unwrap();
    let der = tonic::transport::CertificateDer::from(pem.contents);
    assert_eq!(tls::peer_vm(&[der]).as_deref(), Some("vm-f"));

    // vm-b's agent restarting finds its certificate: no ticket is needed any more.
    let gone = JoinTicket {
        agents: vec!["127.0.0.1:9".into()],
        ..ticket.clone()
    };
    credentials(&with_ticket("vm-b", dir_b.path(), &gone))
        .await
        .expect("a restart uses the kept certificate");

    // Neither a certificate nor a ticket: a clear error.
    let e = credentials(&AgentOptions {
        join: None,
        ..with_ticket("vm-e", dir_d.path(), &ticket)
    })
    .await
    .unwrap_err();
    assert!(e.to_string().contains("holds no join ticket"), "{e}");
}

/// A follower that knows a leader waits openraft's lease (the maximum election timeout)
/// plus a random timeout before it stands: under a second in all, so that a new leader is
/// elected within a second of a kill, and never after fewer than seven lost heartbeats.
#[test]
fn a_follower_stands_for_election_within_a_second_but_not_after_a_few_lost_heartbeats() {
    let hb = Duration::from_millis(100);
    let c = raft_config(hb).unwrap();
    let (min, max) = (c.election_timeout_min, c.election_timeout_max);
    assert!(max + max < 1000, "waits up to {} ms", max + max);
    assert!(max + min >= 7 * 100, "stands after only {} ms", max + min);
}
