//! Bearer tokens with roles. Secrets are kept as SHA-256 digests and
//! compared in constant time; with no tokens configured every request is
//! allowed, which is why the server then binds only to loopback.

use std::str::FromStr;

use axum::extract::{Request, State};
use axum::http::{Method, StatusCode, header};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use sha2::{Digest, Sha256};
use subtle::ConstantTimeEq;

use crate::error::ApiError;

/// What a token may do.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Role {
    /// Everything.
    Admin,
    /// Enqueue and read.
    Producer,
    /// Claim and report, and read.
    Worker,
}

impl FromStr for Role {
    type Err = String;
    fn from_str(s: &str) -> Result<Role, String> {
        match s {
            "admin" => Ok(Role::Admin),
            "producer" => Ok(Role::Producer),
            "worker" => Ok(Role::Worker),
            _ => Err(format!("unknown role `{s}` (admin, producer or worker)")),
        }
    }
}

/// The configured tokens.
#[derive(Clone, Default)]
pub struct Tokens {
    digests: Vec<(Role, [u8; 32])>,
}

impl Tokens {
    /// Parses `ROLE:SECRET` items (from `--token` or `KYU_TOKENS`).
    pub fn parse<'a>(items: impl IntoIterator<Item = &'a str>) -> Result<Tokens, String> {
        let mut digests = Vec::new();
        for item in items {
            let item = item.trim();
            if item.is_empty() {
                continue;
            }
            let (role, secret) = item.split_once(':').ok_or_else(|| format!("token `{}` is not ROLE:SECRET", mask(item)))?;
            if secret.len() < 8 {
                return Err(format!("the {role} token is shorter than 8 characters"));
            }
            digests.push((role.parse()?, digest(secret)));
        }
        Ok(Tokens { digests })
    }

    /// Whether any token is configured.
    pub fn is_empty(&self) -> bool {
        self.digests.is_empty()
    }

    /// The role of `secret`, checking every token in constant time.
    pub fn role_of(&self, secret: &str) -> Option<Role> {
        let d = digest(secret);
        let mut found = None;
        for (role, known) in &self.digests {
            if bool::from(known.ct_eq(&d)) {
                found = Some(*role);
            }
        }
        found
    }
}

fn digest(secret: &str) -> [u8; 32] {
    Sha256::digest(secret.as_bytes()).into()
}

fn mask(s: &str) -> String {
    s.chars().take(3).chain("...".chars()).collect()
}

/// What a route needs.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Need {
    Public,
    Read,
    Enqueue,
    Work,
    Admin,
}

pub(crate) fn need(method: &Method, path: &str) -> Need {
    if path == "/healthz" || path == "/v1/openapi.json" || crate::console::is_console_path(path) {
        return Need::Public; // the console checks its own sign-in
    }
    if method == Method::GET {
        return Need::Read;
    }
    if method == Method::POST && matches!(path, "/v1/jobs" | "/v1/jobs/batch" | "/v1/flows") {
        return Need::Enqueue;
    }
    if method == Method::POST
        && (path == "/v1/claim"
            || path == "/v1/reports"
            || path == "/v1/heartbeats"
            || path == "/v1/workers"
            || (path.starts_with("/v1/jobs/")
                && ["/heartbeat", "/complete", "/fail", "/snooze", "/checkpoint", "/progress", "/children", "/log"]
                    .iter()
                    .any(|s| path.ends_with(s))))
    {
        return Need::Work;
    }
    Need::Admin
}

fn allows(role: Role, need: Need) -> bool {
    match need {
        Need::Public | Need::Read => true,
        Need::Enqueue => matches!(role, Role::Admin | Role::Producer),
        Need::Work => matches!(role, Role::Admin | Role::Worker),
        Need::Admin => role == Role::Admin,
    }
}

/// The bearer token of a request, or for GET requests the dashboard cookie.
pub(crate) fn presented(req: &Request) -> Option<String> {
    if let Some(v) = req.headers().get(header::AUTHORIZATION).and_then(|v| v.to_str().ok()) {
        // The scheme is case-insensitive (RFC 7235): `bearer` works too.
        let (scheme, secret) = v.trim().split_once(' ')?;
        return scheme.eq_ignore_ascii_case("bearer").then(|| secret.trim().to_owned());
    }
    if req.method() != Method::GET {
        return None; // cookies only for reads: no cross-site writes
    }
    // The console's session, for the reads its pages make (the live stream).
    crate::console::cookie_token(req.headers())
}

/// Middleware: 401 without a valid token, 403 for a role that may not.
pub(crate) async fn check(State(tokens): State<std::sync::Arc<Tokens>>, req: Request, next: Next) -> Response {
    if tokens.is_empty() {
        return next.run(req).await;
    }
    let need = need(req.method(), req.uri().path());
    if need == Need::Public {
        return next.run(req).await;
    }
    let Some(role) = presented(&req).and_then(|s| tokens.role_of(&s)) else {
        let mut resp = ApiError::new(StatusCode::UNAUTHORIZED, "unauthorized", "send Authorization: Bearer TOKEN").into_response();
        resp.headers_mut().insert(header::WWW_AUTHENTICATE, header::HeaderValue::from_static("Bearer"));
        return resp;
    };
    if !allows(role, need) {
        return ApiError::new(StatusCode::FORBIDDEN, "forbidden", format!("the {role:?} role may not do this").to_lowercase())
            .into_response();
    }
    next.run(req).await
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn roles_and_routes() {
        let t = Tokens::parse(["admin:a-secret-1", "producer:p-secret-1", "worker:w-secret-1"]).unwrap();
        assert_eq!(t.role_of("p-secret-1"), Some(Role::Producer));
        assert_eq!(t.role_of("nope-nope"), None);
        assert!(Tokens::parse(["root:abcdefgh"]).is_err());
        assert!(Tokens::parse(["admin:short"]).is_err());
        assert_eq!(need(&Method::POST, "/v1/jobs"), Need::Enqueue);
        assert_eq!(need(&Method::POST, "/v1/jobs/x/complete"), Need::Work);
        assert_eq!(need(&Method::POST, "/v1/jobs/x/cancel"), Need::Admin);
        assert_eq!(need(&Method::GET, "/v1/jobs/x"), Need::Read);
        assert!(allows(Role::Worker, Need::Work) && !allows(Role::Worker, Need::Enqueue));
        assert!(allows(Role::Producer, Need::Enqueue) && !allows(Role::Producer, Need::Admin));
    }
}
