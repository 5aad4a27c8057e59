//! How values look on the console: times, ages, JSON, charts. Templates
//! get finished strings; they never format anything themselves.

use std::fmt::Write;

use kyu_core::tally::StatsPoint;
use kyu_core::{Job, JobState, Millis};
use serde_json::Value;

/// A point in time: exact on hover, relative on the page.
pub(crate) struct When {
    /// `2026-11-30 06:21:05 UTC`.
    pub exact: String,
    /// RFC 3339, for `<time datetime>`.
    pub iso: String,
    /// `3 min ago`, `in 2 h`.
    pub ago: String,
}

pub(crate) fn when(t: Millis, now: Millis) -> When {
    let iso = t.to_rfc3339();
    let exact = format!("{} UTC", iso.replace('T', " ").trim_end_matches('Z').split('.').next().unwrap_or_default());
    let delta = now.0 - t.0;
    let ago = if delta >= 0 { format!("{} ago", span(delta)) } else { format!("in {}", span(-delta)) };
    When { exact, iso, ago }
}

pub(crate) fn when_opt(t: Option<Millis>, now: Millis) -> Option<When> {
    t.map(|t| when(t, now))
}

/// A duration in the largest unit that keeps it readable.
pub(crate) fn span(ms: i64) -> String {
    let s = ms / 1000;
    match ms {
        ..1_000 => format!("{ms} ms"),
        1_000..60_000 => format!("{s} s"),
        60_000..3_600_000 => format!("{} min", s / 60),
        3_600_000..86_400_000 => format!("{} h {} min", s / 3600, (s % 3600) / 60),
        _ => format!("{} d {} h", s / 86_400, (s % 86_400) / 3600),
    }
}

/// Longest JSON shown on a page; the API has the rest.
const MAX_JSON_CHARS: usize = 100_000;

/// Pretty JSON, cut (with a note) past [`MAX_JSON_CHARS`].
pub(crate) fn json(v: &Value) -> String {
    let mut s = serde_json::to_string_pretty(v).unwrap_or_default();
    if s.len() > MAX_JSON_CHARS {
        let mut end = MAX_JSON_CHARS;
        while !s.is_char_boundary(end) {
            end -= 1;
        }
        s.truncate(end);
        s.push_str("\n… (cut here; GET /v1/jobs/{id} has all of it)");
    }
    s
}

/// The first line of a text, at most `n` characters.
pub(crate) fn gist(s: &str, n: usize) -> String {
    let line = s.lines().next().unwrap_or_default();
    if line.chars().count() > n || s.lines().nth(1).is_some() {
        let cut: String = line.chars().take(n).collect();
        format!("{cut}…")
    } else {
        line.to_owned()
    }
}

/// The states in the order the console lists them.
pub(crate) const STATES: [JobState; 7] = [
    JobState::Queued,
    JobState::Running,
    JobState::Scheduled,
    JobState::Waiting,
    JobState::Completed,
    JobState::Failed,
    JobState::Cancelled,
];

/// One row of a job list.
pub(crate) struct JobRow {
    pub id: String,
    pub href: String,
    pub kind: String,
    pub queue: String,
    pub state: &'static str,
    pub attempt: String,
    pub created: When,
    pub error: Option<String>,
    pub tags: Vec<String>,
}

pub(crate) fn job_row(j: &Job, now: Millis) -> JobRow {
    JobRow {
        id: j.id.to_string(),
        href: job_href(j.id.as_str()),
        kind: j.kind.clone(),
        queue: j.queue.to_string(),
        state: j.state.as_str(),
        attempt: format!("{}/{}", j.attempt, j.max_attempts),
        created: when(j.created_at, now),
        error: j.errors.last().filter(|_| j.state != JobState::Completed).map(|e| gist(&e.message, 140)),
        tags: j.tags.clone(),
    }
}

/// A job id in a path: ids exclude `/ ? # %` and spaces, so only the few
/// characters a path segment may not hold need encoding.
pub(crate) fn job_href(id: &str) -> String {
    format!("/jobs/{}", segment(id))
}

pub(crate) fn queue_href(q: &str) -> String {
    format!("/queues/{}", segment(q))
}

fn segment(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for b in s.bytes() {
        if b.is_ascii_alphanumeric() || b"-._~!$&'()*+,;=:@".contains(&b) {
            out.push(b as char);
        } else {
            let _ = write!(out, "%{b:02X}");
        }
    }
    out
}

/// Query-string encoding of a form value.
pub(crate) fn qs(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for b in s.bytes() {
        if b.is_ascii_alphanumeric() || b"-._~".contains(&b) {
            out.push(b as char);
        } else {
            let _ = write!(out, "%{b:02X}");
        }
    }
    out
}

/// Per-minute totals over all queues (or one), for the charts: the last
/// `minutes` minutes ending at `now`, gaps as zeroes.
pub(crate) struct Series {
    pub completed: Vec<i64>,
    pub failed: Vec<i64>,
    pub wait_p50: Vec<Option<i64>>,
    pub wait_p95: Vec<Option<i64>>,
    pub run_p95: Vec<Option<i64>>,
}

pub(crate) fn series(points: &[StatsPoint], now: Millis, minutes: usize) -> Series {
    let last = kyu_core::tally::minute_of(now).0;
    let first = last - (minutes as i64 - 1) * 60_000;
    let mut s = Series {
        completed: vec![0; minutes],
        failed: vec![0; minutes],
        wait_p50: vec![None; minutes],
        wait_p95: vec![None; minutes],
        run_p95: vec![None; minutes],
    };
    let worst = |a: Option<i64>, b: Option<i64>| match (a, b) {
        (Some(x), Some(y)) => Some(x.max(y)),
        (x, y) => x.or(y),
    };
    for p in points {
        if p.minute.0 < first || p.minute.0 > last {
            continue;
        }
        let i = ((p.minute.0 - first) / 60_000) as usize;
        s.completed[i] += p.completed;
        s.failed[i] += p.failed;
        // Across queues, the worst queue's percentile: an operator looks
        // for the slow one.
        s.wait_p50[i] = worst(s.wait_p50[i], p.wait_ms_p50);
        s.wait_p95[i] = worst(s.wait_p95[i], p.wait_ms_p95);
        s.run_p95[i] = worst(s.run_p95[i], p.run_ms_p95);
    }
    s
}

const W: f64 = 600.0;
const H: f64 = 140.0;

/// Completed and failed per minute as stacked bars (an SVG of numbers only).
pub(crate) fn throughput_chart(s: &Series) -> String {
    let n = s.completed.len().max(1);
    let top = s.completed.iter().zip(&s.failed).map(|(c, f)| c + f).max().unwrap_or(0).max(1);
    let bw = W / n as f64;
    let mut svg = svg_open("Jobs completed and failed per minute");
    for i in 0..n {
        let x = i as f64 * bw + 1.0;
        let hc = s.completed[i] as f64 / top as f64 * (H - 20.0);
        let hf = s.failed[i] as f64 / top as f64 * (H - 20.0);
        if hc > 0.0 {
            let _ = write!(svg, r#"<rect class="bar-ok" x="{x:.1}" y="{:.1}" width="{:.1}" height="{hc:.1}"><title>{} completed</title></rect>"#, H - hc, bw - 2.0, s.completed[i]);
        }
        if hf > 0.0 {
            let _ = write!(svg, r#"<rect class="bar-bad" x="{x:.1}" y="{:.1}" width="{:.1}" height="{hf:.1}"><title>{} failed</title></rect>"#, H - hc - hf, bw - 2.0, s.failed[i]);
        }
    }
    axis(&mut svg, &top.to_string(), n);
    svg.push_str("</svg>");
    svg
}

/// Wait (p50, p95) per minute as lines, in ms (an SVG of numbers only).
pub(crate) fn latency_chart(a: &[Option<i64>], b: &[Option<i64>], label: &str) -> String {
    let n = a.len().max(1);
    let top = a.iter().chain(b).flatten().copied().max().unwrap_or(0).max(1);
    let step = W / n as f64;
    let mut svg = svg_open(label);
    for (vals, class) in [(b, "p95"), (a, "p50")] {
        let mut d = String::new();
        let mut dots = String::new();
        let mut pen = false;
        for (i, v) in vals.iter().enumerate() {
            match v {
                Some(v) => {
                    let x = i as f64 * step + step / 2.0;
                    let y = H - (*v as f64 / top as f64) * (H - 20.0);
                    let _ = write!(d, "{}{x:.1},{y:.1} ", if pen { "L" } else { "M" });
                    // A dot per minute, so a lone minute shows too.
                    let _ = write!(dots, r#"<circle class="dot-{class}" cx="{x:.1}" cy="{y:.1}" r="2.5"><title>{}</title></circle>"#, span(*v));
                    pen = true;
                }
                None => pen = false,
            }
        }
        if !d.is_empty() {
            let _ = write!(svg, r#"<path class="line-{class}" d="{d}"/>{dots}"#);
        }
    }
    axis(&mut svg, &span(top), n);
    svg.push_str("</svg>");
    svg
}

fn svg_open(label: &str) -> String {
    // `label` is one of ours, never user text.
    format!(r#"<svg class="chart" viewBox="0 0 {W} {}" preserveAspectRatio="none" role="img" aria-label="{label}">"#, H + 16.0)
}

fn axis(svg: &mut String, top: &str, minutes: usize) {
    let _ = write!(
        svg,
        r#"<line class="axis" x1="0" y1="{H}" x2="{W}" y2="{H}"/><text class="tick" x="2" y="12">{top}</text><text class="tick" x="2" y="{}">-{minutes} min</text><text class="tick" x="{}" y="{}" text-anchor="end">now</text>"#,
        H + 14.0,
        W - 2.0,
        H + 14.0
    );
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn times_and_spans_read_well() {
        assert_eq!(span(450), "450 ms");
        assert_eq!(span(125_000), "2 min");
        assert_eq!(span(3_700_000), "1 h 1 min");
        let w = when(Millis(0), Millis(90_000));
        assert_eq!((w.exact.as_str(), w.ago.as_str()), ("1970-01-01 00:00:00 UTC", "1 min ago"));
        assert_eq!(when(Millis(60_000), Millis(0)).ago, "in 1 min");
    }

    #[test]
    fn ids_are_encoded_in_links() {
        assert_eq!(job_href("a<b>\"c"), "/jobs/a%3Cb%3E%22c");
        assert_eq!(qs("a b&c"), "a%20b%26c");
        assert_eq!(gist("line one\nline two", 100), "line one…");
    }
}
