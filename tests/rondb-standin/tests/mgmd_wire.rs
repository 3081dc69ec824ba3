//! The mgm protocol on the wire, byte for byte: raw TCP to `ndb_mgmd`, RonDB's framing and
//! replies (see the worked transcripts RonDB's Services.cpp writers produce).

#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use base64::Engine as _;
use common::Cluster;
use std::io::{BufRead, BufReader, Read, Write};
use std::net::TcpStream;
use std::time::Duration;

struct Session {
    r: BufReader<TcpStream>,
    w: TcpStream,
}

impl Session {
    fn open(c: &Cluster) -> Session {
        let s = TcpStream::connect(c.connectstring()).unwrap();
        s.set_read_timeout(Some(Duration::from_secs(30))).unwrap();
        Session {
            r: BufReader::new(s.try_clone().unwrap()),
            w: s,
        }
    }

    /// Sends raw bytes, returns the reply up to and including its empty line.
    fn call(&mut self, raw: &str) -> String {
        self.w.write_all(raw.as_bytes()).unwrap();
        self.read_block()
    }

    fn read_block(&mut self) -> String {
        let mut out = String::new();
        loop {
            let mut line = String::new();
            assert!(
                self.r.read_line(&mut line).unwrap() > 0,
                "connection closed after {out:?}"
            );
            out.push_str(&line);
            if line == "\n" {
                return out;
            }
        }
    }
}

#[test]
fn replies_are_framed_as_rondb_frames_them() {
    let mut c = Cluster::new(1, 2);
    let ini = c.config_ini(&[(2, true)].into());
    std::fs::write(c.config_path(), ini).unwrap();
    c.start_mgmd(&[]);
    c.start_data_node(1, true, &[]);
    c.wait_started(&[1]);
    let mut s = Session::open(&c);

    // Unknown commands have no header; an empty line alone is ignored.
    assert_eq!(
        s.call("\nget time\n\n"),
        "result: Unknown command, 'get time'\n\n"
    );
    assert_eq!(
        s.call("get mgmd nodeid\n\n"),
        "get mgmd nodeid reply\nnodeid:65\n\n"
    );
    assert_eq!(
        s.call("get version\n\n"),
        "version\nid: 1575425\nmajor: 24\nminor: 10\nbuild: 1\nstring: RonDB-24.10.1\nmysql_major: 8\nmysql_minor: 0\nmysql_build: 37\n\n"
    );
    assert_eq!(
        s.call("stop v2\nnode: 1\n\n"),
        "result: Missing arg., 'abort'\n\n"
    );
    assert_eq!(
        s.call("stop v2\nnode: 1\nabort: 0\nbogus: 1\n\n"),
        "result: Unknown argument, 'bogus'\n\n"
    );
    assert_eq!(
        s.call("check connection\n\n"),
        "check connection reply\nresult: Ok\n\n"
    );

    let status = s.call("get status\n\n");
    let ip1 = c.ip(1);
    assert!(status.starts_with("node status\nnodes: 9\nnode.1.type: NDB\nnode.1.status: STARTED\nnode.1.version: 1575425\nnode.1.mysql_version: 524325\nnode.1.startphase: 0\n"), "{status}");
    assert!(
        status.contains(&format!(
            "node.1.node_group: 0\nnode.1.connect_count: 1\nnode.1.address: {ip1}\n"
        )),
        "{status}"
    );
    assert!(
        status.contains("node.2.type: NDB\nnode.2.status: NO_CONTACT\nnode.2.version: 0\nnode.2.mysql_version: 0\nnode.2.startphase: 0\nnode.2.dynamic_id: 0\nnode.2.node_group: 0\nnode.2.connect_count: 0\nnode.2.address: \n"),
        "{status}"
    );
    assert!(
        status.contains("node.65.type: MGM\nnode.65.status: CONNECTED\n"),
        "{status}"
    );
    assert!(
        status.contains("node.67.type: API\nnode.67.status: NO_CONTACT\n"),
        "{status}"
    );
    assert!(status.ends_with("\n\n"));

    // Node id allocation: a deactivated slot, a node of another type, a taken id.
    let nodeid = |id: u32, t: u32| {
        format!("get nodeid\nversion: 0\nnodetype: {t}\nnodeid: {id}\ntimeout: 1\nuser: \npassword: \npublic key: \n\n")
    };
    assert_eq!(s.call(&nodeid(2, 0)), "get nodeid reply\nresult: Unable to allocate nodeid 2 as node is currently deactivated\n\n");
    assert_eq!(s.call(&nodeid(65, 1)), "get nodeid reply\nresult: Id 65 configured as ndb_mgmd(MGM), connect attempted as mysqld(API).\n\n");
    assert_eq!(
        s.call(&nodeid(1, 0)),
        "get nodeid reply\nresult: Id 1 already allocated by another node.\n\n"
    );
    assert_eq!(
        s.call(&nodeid(68, 1)),
        "get nodeid reply\nnodeid: 68\nresult: Ok\n\n"
    );
    // An API node newer than the data nodes is refused (management servers, then data
    // nodes, then API nodes are upgraded).
    let newer = 1575425 + 1;
    assert_eq!(
        s.call(&format!("get nodeid\nversion: {newer}\nnodetype: 1\nnodeid: 69\nuser: \npassword: \npublic key: \n\n")),
        "get nodeid reply\nresult: Node 69: version RonDB-24.10.2 is newer than data node version RonDB-24.10.1: upgrade data nodes before API nodes\n\n"
    );

    // The configuration as RonDB's client reads it: headers, then a base64 body.
    let head = s.call("get config\nversion: 1575425\nnode: 65\n\n");
    let len: usize = head
        .lines()
        .find_map(|l| l.strip_prefix("Content-Length: "))
        .unwrap()
        .parse()
        .unwrap();
    assert!(
        head.starts_with("get config reply\nresult: Ok\nContent-Length: "),
        "{head}"
    );
    assert!(
        head.contains("Content-Type: ndbconfig/octet-stream\nContent-Transfer-Encoding: base64\n")
    );
    let mut body = vec![0u8; len + 1];
    s.r.read_exact(&mut body).unwrap();
    let text = String::from_utf8(
        base64::engine::general_purpose::STANDARD
            .decode(&body[..len])
            .unwrap(),
    )
    .unwrap();
    assert!(text.contains("ConfigGenerationNumber=1"), "{text}");

    // RonDB's activate flow: the client flips NodeActive with set config_v2, then activates.
    let flipped = text.replace(
        &format!("HostName={}\nNodeActive=0", c.ip(2)),
        &format!("HostName={}\nNodeActive=1", c.ip(2)),
    );
    assert_ne!(flipped, text);
    let b64 = base64::engine::general_purpose::STANDARD.encode(flipped.as_bytes());
    let set = format!(
        "set config_v2\nContent-Length: {}\nContent-Type: ndbconfig/octet-stream\nContent-Transfer-Encoding: base64\n\n{b64}\n",
        b64.len()
    );
    assert_eq!(s.call(&set), "set config reply\nresult: Ok\n\n");
    // The same change again was made to generation 1, which is gone: one change at a time.
    let stale = s.call(&set);
    assert!(
        stale.starts_with("set config reply\nresult: Config change failed: the configuration database can only run one change at a time"),
        "{stale}"
    );
    assert_eq!(
        s.call("activate\nnode: 2\n\n"),
        "activate reply\nresult: Ok\n\n"
    );
    assert_eq!(
        s.call(&nodeid(2, 0)),
        "get nodeid reply\nnodeid: 2\nresult: Ok\n\n"
    );
    assert_eq!(
        s.call("set_hostname\nnode: 1\nnew_hostname: x\n\n"),
        "set_hostname reply\nresult: Data nodes failed to set new hostname\n\n"
    );
    assert_eq!(
        s.call("abort backup\nid: 9\n\n"),
        "abort backup reply\nresult: Ok\n\n"
    );
}

#[test]
fn backup_events_reach_listeners_in_parsable_form() {
    let mut c = Cluster::new(1, 1);
    c.start_mgmd(&[]);
    c.start_all_data_nodes();
    let mut events = Session::open(&c);
    assert_eq!(
        events.call("listen event\nfilter: BACKUP=15\nparsable: 1\n\n"),
        "listen event\nresult: 0\n\n"
    );
    let mut s = Session::open(&c);
    assert_eq!(
        s.call("start backup\ncompleted: 2\nbackupid: 7\nbackuppoint: 0\n\n"),
        "start backup reply\nresult: Ok\nid: 7\n\n"
    );
    let mut seen = String::new();
    while !seen.contains("type=56") {
        let mut line = String::new();
        assert!(events.r.read_line(&mut line).unwrap() > 0);
        if line != "<PING>\n" {
            seen.push_str(&line);
        }
    }
    assert!(seen.contains("log event reply\ntype=54\n"), "{seen}");
    assert!(
        seen.contains("source_nodeid=1\nstarting_node=65\nbackup_id=7\n"),
        "{seen}"
    );
    assert!(seen.contains("type=56\n"), "{seen}");
}
