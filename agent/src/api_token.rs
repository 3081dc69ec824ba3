//! The HTTP API's bearer token. The bootstrap agent is given the token's SHA-256 and records
//! it in the Raft log, so every agent of the cluster checks callers against the same hash
//! and a new leader needs nothing but its replica. No agent stores the token itself: whoever
//! reads an agent's disk or the Raft log learns nothing that opens the API.

use super::AgentShared;
use axum::extract::{Request, State};
use axum::http::{header, StatusCode};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use axum::Json;
use serde_json::json;
use sha2::{Digest, Sha256};
use std::sync::Arc;

/// The environment variable clients and `ndb-agent up` read the token from.
pub const TOKEN_ENV: &str = "NDB_AGENT_TOKEN";
/// The token's file in the data directory of `ndb-agent up` (mode 0600).
pub const TOKEN_FILE: &str = "api-token";

/// SHA-256 of `token`, lowercase hex: what agents store and compare.
pub fn token_sha256(token: &str) -> String {
    Sha256::digest(token.trim().as_bytes())
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect()
}

/// Equal without an early exit: how long a comparison takes says nothing about the hash.
fn same(a: &str, b: &str) -> bool {
    a.len() == b.len()
        && a.bytes()
            .zip(b.bytes())
            .fold(0u8, |acc, (x, y)| acc | (x ^ y))
            == 0
}

/// Why a request was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum Refusal {
    #[error("this API needs the cluster's token: send `Authorization: Bearer <token>` (`ndb-agent up` wrote it to DATA_DIR/{TOKEN_FILE}; the CLI reads it from --token, {TOKEN_ENV} or --token-file)")]
    Missing,
    #[error("the Authorization header is not `Bearer <token>`")]
    Malformed,
    #[error("wrong token: it is not this cluster's (see DATA_DIR/{TOKEN_FILE} of `ndb-agent up`)")]
    Wrong,
    #[error("this agent has not joined a cluster yet, so it knows no token to check; ask an agent of the cluster")]
    NotJoined,
}

/// Checks an `Authorization` header value against the cluster's token hash.
pub fn check(expected_sha256: Option<&str>, authorization: Option<&str>) -> Result<(), Refusal> {
    let given = authorization.ok_or(Refusal::Missing)?;
    let token = given
        .strip_prefix("Bearer ")
        .map(str::trim)
        .filter(|t| !t.is_empty())
        .ok_or(Refusal::Malformed)?;
    let expected = expected_sha256.ok_or(Refusal::NotJoined)?;
    if same(&token_sha256(token), expected) {
        Ok(())
    } else {
        Err(Refusal::Wrong)
    }
}

impl AgentShared {
    /// The hash callers are checked against: the cluster's, or before it is replicated here
    /// (the bootstrap agent's first moments) the one this agent was started with.
    pub fn api_token_sha256(&self) -> Option<String> {
        self.replicated()
            .and_then(|r| r.api_token_sha256)
            .or_else(|| self.opts.api_token_sha256.clone())
    }
}

/// Axum middleware: 401 with the reason for a request without the cluster's token.
pub async fn require_token(
    State(shared): State<Arc<AgentShared>>,
    req: Request,
    next: Next,
) -> Response {
    let header = req
        .headers()
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok());
    match check(shared.api_token_sha256().as_deref(), header) {
        Ok(()) => next.run(req).await,
        Err(why) => {
            tracing::info!(path = %req.uri().path(), refused = ?why, "HTTP request without the cluster's token");
            let code = if why == Refusal::NotJoined {
                StatusCode::SERVICE_UNAVAILABLE
            } else {
                StatusCode::UNAUTHORIZED
            };
            (
                code,
                [(header::WWW_AUTHENTICATE, "Bearer")],
                Json(json!({ "errors": [why.to_string()] })),
            )
                .into_response()
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_right_token_passes_and_everything_else_is_refused_with_its_reason() {
        let h = token_sha256("s3cret");
        assert_eq!(check(Some(&h), Some("Bearer s3cret")), Ok(()));
        assert_eq!(check(Some(&h), None), Err(Refusal::Missing));
        assert_eq!(
            check(Some(&h), Some("Basic czNjcmV0")),
            Err(Refusal::Malformed)
        );
        assert_eq!(check(Some(&h), Some("Bearer ")), Err(Refusal::Malformed));
        assert_eq!(check(Some(&h), Some("Bearer s3cre")), Err(Refusal::Wrong));
        assert_eq!(check(Some(&h), Some("Bearer s3cret2")), Err(Refusal::Wrong));
        assert_eq!(check(None, Some("Bearer s3cret")), Err(Refusal::NotJoined));
    }

    #[test]
    fn the_hash_is_sha256_in_lowercase_hex_of_the_trimmed_token() {
        assert_eq!(
            token_sha256("abc\n"),
            "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad"
        );
    }
}
