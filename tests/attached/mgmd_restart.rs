//! The direct runtime never vouches for a management server that serves an older config.ini
//! than the one on its VM. A start that timed out can leave `ndb_mgmd` running with the file
//! of then; a leader that saw no server running activates slots in config.ini meanwhile and
//! starts it again. Reusing the running server there made the data nodes of those slots
//! fail to get their node ids ("node is currently deactivated") until the start gave up
//! (seen in CI, Docker demo through Terraform).

use agent_core::backend::{OpId, ProcessRuntime, ProgramKind, ProgramSpec};
use agent_core::model::ConfigFile;
use runtime_backends::direct::Timeouts;
use runtime_backends::mgm::MgmSession;
use runtime_backends::DirectRuntime;
use std::path::Path;
use std::time::Duration;

const VM: &str = "mgmd-0";
/// A loopback address of its own: the attached suite beside it uses 127.190.x.y.
const ADDRESS: &str = "127.61.0.2";

/// A port free on [`ADDRESS`] now: a management server left by another run cannot answer
/// in this one's place.
fn free_port() -> u16 {
    std::net::TcpListener::bind((ADDRESS, 0))
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .expect("a free port on the test's loopback address")
}

/// Kills every process working in RonDB's home of the test, also when the test fails.
struct KillOnDrop(std::path::PathBuf);

impl Drop for KillOnDrop {
    fn drop(&mut self) {
        providers::local::kill_vm_processes(&self.0);
    }
}

fn config_ini(home: &Path, port: u16, data_node_4_active: bool) -> String {
    let active = |on: bool| if on { 1 } else { 0 };
    format!(
        "[ndbd default]\nNoOfReplicas=2\nDataDir={home}/data\n\n\
         [ndb_mgmd]\nNodeId=65\nHostName={ADDRESS}\nPortNumber={port}\nDataDir={home}/mgmd\nNodeActive=1\n\n\
         [ndbd]\nNodeId=1\nNodeGroup=0\nHostName=127.61.0.3\nNodeActive=1\n\n\
         [ndbd]\nNodeId=2\nNodeGroup=0\nHostName=127.61.0.4\nNodeActive=1\n\n\
         [ndbd]\nNodeId=3\nNodeGroup=1\nHostName=127.61.0.5\nNodeActive=1\n\n\
         [ndbd]\nNodeId=4\nNodeGroup=1\n{}NodeActive={}\n\n",
        if data_node_4_active {
            "HostName=127.61.0.6\n"
        } else {
            ""
        },
        active(data_node_4_active),
        home = home.display(),
    )
}

/// What the management server answers a data node asking for node id 4.
async fn allocate_node_4(port: u16) -> String {
    let mut s = MgmSession::connect(&format!("{ADDRESS}:{port}"), Duration::from_secs(5))
        .await
        .expect("the management server answers");
    let reply = s
        .call(
            "get nodeid",
            &[
                ("version", "0".into()),
                ("nodetype", "0".into()),
                ("nodeid", "4".into()),
                ("timeout", "1".into()),
                ("user", String::new()),
                ("password", String::new()),
                ("public key", String::new()),
            ],
            Duration::from_secs(5),
        )
        .await
        .expect("get nodeid answered");
    reply.get("result").unwrap_or_default().to_string()
}

#[test]
fn a_repeated_start_makes_the_management_server_load_a_changed_config_ini() {
    let tarballs = crate::tarballs();
    let dir = tempfile::tempdir().unwrap();
    let home = dir.path().join("rondb");
    std::fs::create_dir_all(&home).unwrap();
    let _kill = KillOnDrop(home.clone());
    let port = free_port();
    let rt = DirectRuntime::new(
        VM,
        &home,
        &dir.path().join("backups"),
        ADDRESS,
        Timeouts::default(),
    );
    let tokio = tokio::runtime::Runtime::new().unwrap();
    tokio.block_on(async {
        let url = format!(
            "file://{}/rondb-22.10.1-linux-glibc2.28-x86_64.tar.gz",
            tarballs.display()
        );
        rt.install_software(OpId(1), VM, "22.10.1", &url)
            .await
            .expect("the stand-in installs");
        let home_str = home.to_str().unwrap();
        let write = |active: bool| ConfigFile {
            path: format!("{home_str}/mgmd/config.ini"),
            content: config_ini(&home, port, active),
        };
        let spec = ProgramSpec {
            kind: ProgramKind::Mgmd,
            version: "22.10.1".into(),
            node_ids: vec![65],
            initial: true,
            command: agent_core::commands::ndb_mgmd(home_str, "22.10.1", 65, true),
        };
        rt.write_files(OpId(2), VM, &[write(false)]).await.unwrap();
        rt.start_program(OpId(3), VM, &spec)
            .await
            .expect("ndb_mgmd starts");
        assert!(
            allocate_node_4(port)
                .await
                .contains("currently deactivated"),
            "node 4 is inactive in the first file"
        );

        // The same start again with the same file: the running server is the answer.
        rt.start_program(OpId(4), VM, &spec).await.unwrap();
        let pid_before = rt.status(VM).await.unwrap();
        assert!(pid_before.running);

        // Node 4 activated in config.ini while the server runs, then the start repeated.
        rt.write_files(OpId(5), VM, &[write(true)]).await.unwrap();
        rt.start_program(OpId(6), VM, &spec)
            .await
            .expect("the repeated start succeeds");
        let answer = allocate_node_4(port).await;
        assert_eq!(
            answer, "Ok",
            "the management server serves the new config.ini after the repeated start"
        );
        rt.stop_program(OpId(7), VM, ProgramKind::Mgmd, true)
            .await
            .unwrap();
    });
}
