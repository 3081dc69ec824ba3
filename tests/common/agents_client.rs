//! Reading a cluster through its agents' HTTP APIs, shared by the local-process and Docker
//! suites: the status from whichever agent answers (preferring the leader's view, learning
//! every agent's address on the way), waiting for a condition, and submitting desired states.

#![allow(dead_code)]

use agent::http::Status;
use std::cell::RefCell;
use std::time::{Duration, Instant};

pub struct AgentsClient {
    token: String,
    /// Rebuilt by [`AgentsClient::trust`]: agents beyond loopback serve HTTPS, checked
    /// against the cluster CA.
    http: RefCell<reqwest::blocking::Client>,
    ca: RefCell<Option<String>>,
    /// HTTP addresses of agents seen so far, to ask another one when one is dead.
    known: RefCell<Vec<String>>,
}

/// A fresh random API token for a test cluster.
pub fn test_token() -> String {
    use rand::Rng;
    let bytes: [u8; 16] = rand::rng().random();
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

fn client(token: Option<&str>, ca: Option<&str>) -> reqwest::blocking::Client {
    let mut headers = reqwest::header::HeaderMap::new();
    if let Some(token) = token {
        let mut auth = reqwest::header::HeaderValue::from_str(&format!("Bearer {token}"))
            .expect("a token is printable ASCII");
        auth.set_sensitive(true);
        headers.insert(reqwest::header::AUTHORIZATION, auth);
    }
    let mut b = reqwest::blocking::Client::builder()
        .timeout(Duration::from_secs(5))
        .tls_built_in_root_certs(false)
        .default_headers(headers);
    if let Some(ca) = ca {
        b = b.use_preconfigured_tls(agent::https::client_config(ca).expect("the cluster CA"));
    }
    b.build().expect("http client")
}

impl AgentsClient {
    /// A client sending the cluster's API `token` with every request.
    pub fn new(token: &str) -> Self {
        AgentsClient {
            token: token.to_string(),
            http: RefCell::new(client(Some(token), None)),
            ca: RefCell::new(None),
            known: RefCell::new(vec![]),
        }
    }

    /// From now on, agents serving HTTPS are checked against the cluster CA `ca_cert_pem`.
    pub fn trust(&self, ca_cert_pem: &str) {
        *self.http.borrow_mut() = client(Some(&self.token), Some(ca_cert_pem));
        *self.ca.borrow_mut() = Some(ca_cert_pem.to_string());
    }

    fn url(addr: &str, path: &str) -> String {
        agent::https::api_url(addr, path)
    }

    /// A GET of `path` at `addr` without the token, for tests of what it protects.
    pub fn get_without_token(&self, addr: &str, path: &str) -> u16 {
        client(None, self.ca.borrow().as_deref())
            .get(Self::url(addr, path))
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
        let r = self
            .http
            .borrow()
            .get(Self::url(addr, "/status"))
            .send()
            .ok()?;
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
            .borrow()
            .put(Self::url(addr, "/desired-state"))
            .body(desired.to_string())
            .send()
            .expect("PUT /desired-state");
        let code = r.status().as_u16();
        (code, r.json().unwrap_or_default())
    }

    /// GET /health at `addr`.
    pub fn health(&self, addr: &str) -> Option<serde_json::Value> {
        self.http
            .borrow()
            .get(Self::url(addr, "/health"))
            .send()
            .ok()?
            .json()
            .ok()
    }
}
