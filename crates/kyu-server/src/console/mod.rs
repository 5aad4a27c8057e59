//! The operator console: server-rendered pages (askama, escaping on), a
//! little plain JavaScript for actions and live updates from
//! `/v1/events/stream`, and its own sign-in.
//!
//! With tokens configured, a token is asked for once on a form sent by
//! POST and kept in an HttpOnly, SameSite=Strict cookie (Secure under TLS).
//! Every action is a POST that needs the admin role, a CSRF token bound to
//! the session, and (when the browser says) a same-origin request.

mod actions;
mod pages;
mod view;

use askama::Template;
use axum::Router;
use axum::http::{HeaderMap, HeaderValue, StatusCode, header};
use axum::response::{Html, IntoResponse, Redirect, Response};
use axum::routing::{get, post};
use kyu_store::Store;
use sha2::{Digest, Sha256};
use subtle::ConstantTimeEq;

use crate::AppState;
use crate::auth::Role;

/// The console's routes (the auth middleware lets them through: each
/// checks the session itself).
pub(crate) fn routes<S: Store>() -> Router<AppState<S>> {
    Router::new()
        .route("/", get(pages::overview::<S>))
        .route("/queues/{queue}", get(pages::queue::<S>))
        .route("/jobs/{id}", get(pages::job::<S>))
        .route("/workers", get(pages::workers::<S>))
        .route("/schedules", get(pages::schedules::<S>))
        .route("/flows", get(pages::flows::<S>))
        .route("/search", get(pages::search::<S>))
        .route("/login", get(login_page::<S>).post(login::<S>))
        .route("/logout", post(logout::<S>))
        .route("/ui/jobs/{id}/{action}", post(actions::job::<S>))
        .route("/ui/queues/{queue}/{action}", post(actions::queue::<S>))
        .route("/ui/schedules/{name}/{action}", post(actions::schedule::<S>))
        .route("/assets/console.css", get(css))
        .route("/assets/console.js", get(js))
}

/// Whether the auth middleware leaves `path` to the console.
pub(crate) fn is_console_path(path: &str) -> bool {
    path == "/"
        || ["/queues/", "/jobs/", "/ui/", "/assets/"].iter().any(|p| path.starts_with(p))
        || matches!(path, "/workers" | "/schedules" | "/flows" | "/search" | "/login" | "/logout")
}

const COOKIE: &str = "kyu_session";

/// Who is looking, as far as the console cares.
pub(crate) struct Viewer {
    /// Tokens are configured (so there is a sign-in and a sign-out).
    pub auth: bool,
    /// May act (pause, retry, delete...).
    pub admin: bool,
    /// This session's CSRF token, for forms and the `X-Kyu-Csrf` header.
    pub csrf: String,
}

/// The token a session cookie carries (hex, so any secret fits in a cookie).
pub(crate) fn cookie_token(headers: &HeaderMap) -> Option<String> {
    let cookies = headers.get_all(header::COOKIE);
    for value in cookies {
        let Ok(v) = value.to_str() else { continue };
        for c in v.split(';') {
            if let Some(hex) = c.trim().strip_prefix(COOKIE).and_then(|r| r.strip_prefix('=')) {
                return unhex(hex);
            }
        }
    }
    None
}

fn unhex(s: &str) -> Option<String> {
    if !s.len().is_multiple_of(2) || s.len() > 2048 {
        return None;
    }
    let bytes: Option<Vec<u8>> = (0..s.len()).step_by(2).map(|i| u8::from_str_radix(s.get(i..i + 2)?, 16).ok()).collect();
    String::from_utf8(bytes?).ok()
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

impl<S: Store> AppState<S> {
    /// The viewer of a request, or `None` when tokens are configured and
    /// the request carries no valid session.
    pub(crate) fn viewer(&self, headers: &HeaderMap) -> Option<Viewer> {
        if self.tokens.is_empty() {
            return Some(Viewer { auth: false, admin: true, csrf: self.csrf_for("") });
        }
        let token = cookie_token(headers)?;
        let role = self.tokens.role_of(&token)?;
        Some(Viewer { auth: true, admin: role == Role::Admin, csrf: self.csrf_for(&token) })
    }

    /// CSRF token of a session: a keyed hash of its token under this
    /// process's random key, so it cannot be guessed from outside and
    /// changes with the session.
    fn csrf_for(&self, token: &str) -> String {
        let inner = Sha256::new().chain_update(self.console_key).chain_update(token.as_bytes()).finalize();
        hex(&Sha256::new().chain_update(self.console_key).chain_update(inner).finalize()[..16])
    }
}

/// Checks a POST's CSRF token (form field or header) and, when the browser
/// says where it came from, that it came from this site.
pub(crate) fn same_site(headers: &HeaderMap, viewer: &Viewer, form_token: Option<&str>) -> Result<(), &'static str> {
    if let Some(site) = headers.get("sec-fetch-site").and_then(|v| v.to_str().ok())
        && !matches!(site, "same-origin" | "none")
    {
        return Err("a request from another site was refused");
    }
    if let (Some(origin), Some(host)) = (
        headers.get(header::ORIGIN).and_then(|v| v.to_str().ok()),
        headers.get(header::HOST).and_then(|v| v.to_str().ok()),
    ) {
        let bare = origin.split_once("://").map_or(origin, |(_, rest)| rest);
        if bare != host {
            return Err("a request from another origin was refused");
        }
    }
    let given = form_token.map(str::to_owned).or_else(|| headers.get("x-kyu-csrf").and_then(|v| v.to_str().ok()).map(str::to_owned));
    match given {
        Some(t) if bool::from(t.as_bytes().ct_eq(viewer.csrf.as_bytes())) => Ok(()),
        _ => Err("the form is out of date or came from elsewhere; reload the page and try again"),
    }
}

/// Sends an unsigned visitor to the sign-in form, back here afterwards.
pub(crate) fn to_login(path_and_query: &str) -> Response {
    Redirect::to(&format!("/login?next={}", view::qs(path_and_query))).into_response()
}

/// An HTML page with the security headers every console page carries.
pub(crate) fn html(status: StatusCode, body: String) -> Response {
    let mut resp = (status, Html(body)).into_response();
    let h = resp.headers_mut();
    h.insert(
        header::CONTENT_SECURITY_POLICY,
        HeaderValue::from_static("default-src 'self'; img-src 'self' data:; style-src 'self'; script-src 'self'; frame-ancestors 'none'; form-action 'self'"),
    );
    h.insert(header::X_FRAME_OPTIONS, HeaderValue::from_static("DENY"));
    h.insert(header::X_CONTENT_TYPE_OPTIONS, HeaderValue::from_static("nosniff"));
    h.insert(header::REFERRER_POLICY, HeaderValue::from_static("same-origin"));
    h.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
    resp
}

pub(crate) fn render(status: StatusCode, t: &impl Template) -> Response {
    match t.render() {
        Ok(body) => html(status, body),
        Err(e) => {
            tracing::error!(error = %e, "a console template failed to render");
            (StatusCode::INTERNAL_SERVER_ERROR, "the page could not be rendered").into_response()
        }
    }
}

/// What every page's frame shows.
pub(crate) struct Chrome {
    pub title: String,
    pub nav: &'static str,
    pub auth: bool,
    pub admin: bool,
    pub csrf: String,
    /// What the live view listens for: a queue, a job, or everything.
    pub watch: String,
    pub version: &'static str,
}

impl Chrome {
    pub(crate) fn new(v: &Viewer, title: impl Into<String>, nav: &'static str, watch: impl Into<String>) -> Chrome {
        Chrome {
            title: title.into(),
            nav,
            auth: v.auth,
            admin: v.admin,
            csrf: v.csrf.clone(),
            watch: watch.into(),
            version: env!("CARGO_PKG_VERSION"),
        }
    }
}

#[derive(Template)]
#[template(path = "login.html")]
struct LoginPage {
    error: Option<String>,
    next: String,
}

#[derive(serde::Deserialize)]
pub(crate) struct NextQuery {
    #[serde(default)]
    next: Option<String>,
}

/// Only paths on this site: `/x`, never `//host` or a full URL.
fn safe_next(next: Option<&str>) -> String {
    match next {
        Some(n) if n.starts_with('/') && !n.starts_with("//") && !n.contains('\\') && n.len() < 2000 => n.to_owned(),
        _ => "/".to_owned(),
    }
}

async fn login_page<S: Store>(
    axum::extract::State(app): axum::extract::State<AppState<S>>,
    headers: HeaderMap,
    axum::extract::Query(q): axum::extract::Query<NextQuery>,
) -> Response {
    let next = safe_next(q.next.as_deref());
    if app.tokens.is_empty() || app.viewer(&headers).is_some() {
        return Redirect::to(&next).into_response();
    }
    render(StatusCode::OK, &LoginPage { error: None, next })
}

#[derive(serde::Deserialize)]
pub(crate) struct LoginForm {
    #[serde(default)]
    token: String,
    #[serde(default)]
    next: Option<String>,
}

async fn login<S: Store>(
    axum::extract::State(app): axum::extract::State<AppState<S>>,
    form: Result<axum::Form<LoginForm>, axum::extract::rejection::FormRejection>,
) -> Response {
    let Ok(axum::Form(form)) = form else {
        return render(StatusCode::BAD_REQUEST, &LoginPage { error: Some("Send the form from this page.".into()), next: "/".into() });
    };
    let next = safe_next(form.next.as_deref());
    if app.tokens.is_empty() {
        return Redirect::to(&next).into_response();
    }
    let token = form.token.trim();
    if app.tokens.role_of(token).is_none() {
        let error = if token.is_empty() { "Give a token." } else { "That token is not valid. Ask whoever runs this kyu for one." };
        return render(StatusCode::UNAUTHORIZED, &LoginPage { error: Some(error.into()), next });
    }
    let secure = if app.config.tls.is_some() { "; Secure" } else { "" };
    let cookie = format!("{COOKIE}={}; Path=/; HttpOnly; SameSite=Strict; Max-Age=43200{secure}", hex(token.as_bytes()));
    let mut resp = Redirect::to(&next).into_response();
    resp.headers_mut().insert(header::SET_COOKIE, HeaderValue::from_str(&cookie).expect("hex is a valid header"));
    resp
}

async fn logout<S: Store>(axum::extract::State(app): axum::extract::State<AppState<S>>, headers: HeaderMap) -> Response {
    // Signing out needs no CSRF token (it only ends a session), but must
    // come from this site, or another site could sign people out.
    if headers.get("sec-fetch-site").and_then(|v| v.to_str().ok()).is_some_and(|s| !matches!(s, "same-origin" | "none")) {
        return (StatusCode::FORBIDDEN, "a request from another site was refused").into_response();
    }
    let secure = if app.config.tls.is_some() { "; Secure" } else { "" };
    let mut resp = Redirect::to("/login").into_response();
    let cookie = format!("{COOKIE}=; Path=/; HttpOnly; SameSite=Strict; Max-Age=0{secure}");
    resp.headers_mut().insert(header::SET_COOKIE, HeaderValue::from_str(&cookie).expect("a valid header"));
    resp
}

const CSS: &str = include_str!("../../assets/console.css");
const JS: &str = include_str!("../../assets/console.js");

async fn css() -> Response {
    ([(header::CONTENT_TYPE, "text/css; charset=utf-8"), (header::CACHE_CONTROL, "max-age=300")], CSS).into_response()
}

async fn js() -> Response {
    ([(header::CONTENT_TYPE, "text/javascript; charset=utf-8"), (header::CACHE_CONTROL, "max-age=300")], JS).into_response()
}
