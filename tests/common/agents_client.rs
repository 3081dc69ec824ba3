//! Reading a cluster through its agents' HTTP APIs, shared by the local-process and Docker
//! suites: the status from whichever agent answers (preferring the leader's view, learning
//! every agent's address on the way), waiting for a condition, and submitting desired states.

#![allow(dead_code)]

use agent::http::Status;
use std::cell::RefCell;
use std::time::{Duration, Instant};

pub struct AgentsClient {
    http: reqwest::blocking::Client,
    /// HTTP addresses of agents seen so far, to ask another one when one is dead.
    known: RefCell<Vec<String>>,
}

/// A fresh random API token for a test cluster.
pub fn test_token() -> String {
    use rand::Rng;
    let bytes: [u8; 16] = rand::rng().random();
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

impl AgentsClient {
    /// A client sending the cluster's API `token` with every request.
    pub fn new(token: &str) -> Self {
        let mut auth = reqwest::header::HeaderValue::from_str(&format!("Bearer {token}"))
            .expect("a token is printable ASCII");
        auth.set_sensitive(true);
        AgentsClient {
            http: reqwest::blocking::Client::builder()
                .timeout(Duration::from_secs(5))
                .default_headers(reqwest::header::HeaderMap::from_iter([(
                    reqwest::header::AUTHORIZATION,
                    auth,
                )]))
                .build()
                .expect("http client"),
            known: RefCell::new(vec![]),
        }
    }

    /// A GET of `path` at `addr` without the token, for tests of what it protects.
    pub fn get_without_token(&self, addr: &str, path: &str) -> u16 {
        reqwest::blocking::Client::new()
            .get(format!("http://{addr}{path}"))
            .send()
            .map(|r| r.status().as_u16())
            .unwrap_or(0)
    }

    /// An agent address to start from.
    pub fn learn(&self, addr: &str) {
        let mut k = self.known.borrow_mut();
        if !k.iter().any(|a| a == addr) {
            k.push(addr.to_string());
        }
    }

    /// The status from the agent at `addr`.
    pub fn status_at(&self, addr: &str) -> Option<Status> {
        let r = self.http.get(format!("http://{addr}/status")).send().ok()?;
        r.status().is_success().then(|| r.json().ok()).flatten()
    }

    /// The status from any live agent, preferring the leader's view (the newest).
    pub fn status(&self) -> Option<Status> {
        let known = self.known.borrow().clone();
        for addr in known.iter().rev() {
            if let Some(s) = self.status_at(addr) {
                for a in &s.agents {
                    self.learn(&a.http_addr);
                }
                let leader = s
                    .leader_vm
                    .as_ref()
                    .and_then(|l| s.agents.iter().find(|a| &a.vm == l))
                    .filter(|l| l.http_addr != *addr);
                if let Some(ls) = leader.and_then(|l| self.status_at(&l.http_addr)) {
                    return Some(ls);
                }
                return Some(s);
            }
        }
        None
    }

    /// Polls until `pred` holds: the status and how long it took, or the last status seen.
    pub fn wait_until(
        &self,
        timeout: Duration,
        pred: impl Fn(&Status) -> bool,
    ) -> Result<(Status, Duration), Box<Option<Status>>> {
        let t0 = Instant::now();
        let mut last = None;
        while t0.elapsed() < timeout {
            if let Some(s) = self.status() {
                if pred(&s) {
                    return Ok((s, t0.elapsed()));
                }
                last = Some(s);
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        Err(Box::new(last))
    }

    /// PUT /desired-state at `addr`: the HTTP code and body.
    pub fn put_desired(&self, addr: &str, desired: &str) -> (u16, serde_json::Value) {
        let r = self
            .http
            .put(format!("http://{addr}/desired-state"))
            .body(desired.to_string())
            .send()
            .expect("PUT /desired-state");
        let code = r.status().as_u16();
        (code, r.json().unwrap_or_default())
    }

    /// GET /health at `addr`.
    pub fn health(&self, addr: &str) -> Option<serde_json::Value> {
        self.http
            .get(format!("http://{addr}/health"))
            .send()
            .ok()?
            .json()
            .ok()
    }
}
