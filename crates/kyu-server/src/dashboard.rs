//! `GET /`: a read-only dashboard rendered on the server, no JavaScript.
//! Operators act through the API or the CLI; the page shows queues, counts,
//! the dead-letter set and recent jobs, refreshing every few seconds.

use std::fmt::Write;

use axum::extract::{Request, State};
use axum::http::header;
use axum::response::{Html, IntoResponse, Redirect, Response};
use kyu_core::{Job, JobState};
use kyu_store::{JobListParams, Store};

use crate::AppState;
use crate::auth::presented;

fn esc(s: &str) -> String {
    s.replace('&', "&amp;").replace('<', "&lt;").replace('>', "&gt;").replace('"', "&quot;").replace('\'', "&#39;")
}

const STYLE: &str = "body{font:14px/1.4 system-ui,sans-serif;margin:2em;color:#222}table{border-collapse:collapse;margin:1em 0}\
td,th{padding:.3em .8em;border-bottom:1px solid #ddd;text-align:left}th{background:#f4f4f4}.n{text-align:right;font-variant-numeric:tabular-nums}\
.failed{color:#b00}.running{color:#06c}.completed{color:#080}code{font-size:12px}h1{font-size:20px}h2{font-size:16px;margin-top:2em}";

/// The page, or a login form when tokens are configured and none was given.
pub(crate) async fn page<S: Store>(State(app): State<AppState<S>>, req: Request) -> Response {
    if !app.tokens.is_empty() {
        let query_token = req
            .uri()
            .query()
            .and_then(|q| q.split('&').find_map(|kv| kv.strip_prefix("token=")))
            .map(|t| t.replace("%3A", ":").replace("%3a", ":"));
        if let Some(t) = query_token {
            if app.tokens.role_of(&t).is_some() {
                let cookie = format!("kyu_token={t}; HttpOnly; SameSite=Strict; Path=/");
                return ([(header::SET_COOKIE, cookie)], Redirect::to("/")).into_response();
            }
            return login(Some("That token is not valid."));
        }
        if presented(&req).is_none_or(|t| app.tokens.role_of(&t).is_none()) {
            return login(None);
        }
    }
    match render(&app).await {
        Ok(html) => Html(html).into_response(),
        Err(e) => crate::error::ApiError::from(e).into_response(),
    }
}

fn login(problem: Option<&str>) -> Response {
    let note = problem.map(|p| format!("<p class=failed>{}</p>", esc(p))).unwrap_or_default();
    Html(format!(
        "<!doctype html><meta charset=utf-8><title>kyu</title><style>{STYLE}</style><h1>kyu</h1>{note}\
         <form method=get action=/><label>Token <input type=password name=token autofocus></label> <button>Open</button></form>"
    ))
    .into_response()
}

async fn render<S: Store>(app: &AppState<S>) -> Result<String, kyu_store::StoreError> {
    let queues = app.store.queue_list().await?;
    let failed = app.store.job_list(JobListParams { state: Some(JobState::Failed), limit: Some(20), ..Default::default() }).await?;
    let recent = app.store.job_list(JobListParams { limit: Some(30), ..Default::default() }).await?;
    let mut h = String::new();
    let _ = write!(
        h,
        "<!doctype html><meta charset=utf-8><meta http-equiv=refresh content=5><title>kyu</title><style>{STYLE}</style>\
         <h1>kyu <small>{}</small></h1><h2>Queues</h2>",
        env!("CARGO_PKG_VERSION")
    );
    if queues.is_empty() {
        h.push_str("<p>No queues yet: a queue is created by its first job.</p>");
    } else {
        h.push_str("<table><tr><th>queue<th>status");
        for s in JobState::ALL {
            let _ = write!(h, "<th class=n>{s}");
        }
        h.push_str("<th>limits</tr>");
        for q in &queues {
            let _ = write!(h, "<tr><td>{}<td>{}", esc(q.name.as_str()), if q.paused { "paused" } else { "active" });
            for s in JobState::ALL {
                let _ = write!(h, "<td class=n>{}", q.counts.get(s.as_str()).copied().unwrap_or(0));
            }
            let mut limits = Vec::new();
            if let Some(c) = q.concurrency {
                limits.push(format!("concurrency {c}"));
            }
            if let Some(r) = q.rate_limit {
                limits.push(format!("{} per {} ms", r.max, r.per_ms));
            }
            if let Some(g) = q.group_concurrency {
                limits.push(format!("{g} per group"));
            }
            let _ = write!(h, "<td>{}</tr>", esc(&limits.join(", ")));
        }
        h.push_str("</table>");
    }
    h.push_str("<h2>Dead-letter set (failed)</h2>");
    jobs_table(&mut h, &failed.jobs, true);
    h.push_str("<h2>Recent jobs</h2>");
    jobs_table(&mut h, &recent.jobs, false);
    Ok(h)
}

fn jobs_table(h: &mut String, jobs: &[Job], with_error: bool) {
    if jobs.is_empty() {
        h.push_str("<p>None.</p>");
        return;
    }
    h.push_str("<table><tr><th>id<th>queue<th>kind<th>state<th class=n>attempt<th>created");
    if with_error {
        h.push_str("<th>last error");
    }
    h.push_str("</tr>");
    for j in jobs {
        let _ = write!(
            h,
            "<tr><td><code>{}</code><td>{}<td>{}<td class={}>{}<td class=n>{}/{}<td>{}",
            esc(j.id.as_str()),
            esc(j.queue.as_str()),
            esc(&j.kind),
            j.state,
            j.state,
            j.attempt,
            j.max_attempts,
            j.created_at
        );
        if with_error {
            let e = j.errors.last().map_or("", |e| e.message.as_str());
            let _ = write!(h, "<td>{}", esc(&e.chars().take(200).collect::<String>()));
        }
        h.push_str("</tr>");
    }
    h.push_str("</table>");
}
