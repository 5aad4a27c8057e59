//! The OpenAPI 3 document served at `/v1/openapi.json`. A test checks that
//! every route here is routed and every routed path is here, and the test
//! script fuzzes the server from this document (schemathesis).

use serde_json::{Value, json};

/// Every `(method, path)` the server routes.
pub const ROUTES: &[(&str, &str)] = &[
    ("post", "/v1/jobs"),
    ("get", "/v1/jobs"),
    ("post", "/v1/jobs/batch"),
    ("post", "/v1/flows"),
    ("get", "/v1/jobs/{id}"),
    ("delete", "/v1/jobs/{id}"),
    ("get", "/v1/jobs/{id}/result"),
    ("post", "/v1/jobs/{id}/cancel"),
    ("post", "/v1/jobs/{id}/retry"),
    ("get", "/v1/jobs/{id}/log"),
    ("post", "/v1/jobs/{id}/log"),
    ("post", "/v1/jobs/retry"),
    ("post", "/v1/jobs/delete"),
    ("post", "/v1/claim"),
    ("post", "/v1/reports"),
    ("post", "/v1/heartbeats"),
    ("post", "/v1/jobs/{id}/heartbeat"),
    ("post", "/v1/jobs/{id}/complete"),
    ("post", "/v1/jobs/{id}/fail"),
    ("post", "/v1/jobs/{id}/snooze"),
    ("post", "/v1/jobs/{id}/checkpoint"),
    ("post", "/v1/jobs/{id}/progress"),
    ("post", "/v1/jobs/{id}/children"),
    ("get", "/v1/queues"),
    ("patch", "/v1/queues/{queue}"),
    ("post", "/v1/queues/{queue}/pause"),
    ("post", "/v1/queues/{queue}/resume"),
    ("put", "/v1/schedules/{name}"),
    ("get", "/v1/schedules"),
    ("get", "/v1/schedules/{name}"),
    ("delete", "/v1/schedules/{name}"),
    ("get", "/v1/jobs/{id}/events"),
    ("get", "/v1/workers"),
    ("post", "/v1/workers"),
    ("get", "/v1/stats"),
    ("get", "/v1/events/stream"),
    ("post", "/v1/schedules/{name}/run"),
    ("get", "/v1/openapi.json"),
    ("get", "/metrics"),
    ("get", "/healthz"),
    ("get", "/"),
];

fn r(name: &str) -> Value {
    json!({"$ref": format!("#/components/schemas/{name}")})
}

fn body(schema: Value) -> Value {
    json!({"required": true, "content": {"application/json": {"schema": schema}}})
}

fn ok(code: &str, description: &str, schema: Option<Value>) -> (String, Value) {
    let mut resp = json!({"description": description});
    if let Some(s) = schema {
        resp["content"] = json!({"application/json": {"schema": s}});
    }
    (code.to_owned(), resp)
}

fn errors(codes: &[&str]) -> Vec<(String, Value)> {
    codes
        .iter()
        .map(|c| ((*c).to_owned(), json!({"description": "error", "content": {"application/json": {"schema": r("Error")}}})))
        .collect()
}

fn op(summary: &str, params: Value, request: Option<Value>, mut responses: Vec<(String, Value)>, errs: &[&str]) -> Value {
    responses.extend(errors(errs));
    let mut o = json!({"summary": summary, "parameters": params, "responses": responses.into_iter().collect::<serde_json::Map<_, _>>()});
    if let Some(b) = request {
        o["requestBody"] = b;
    }
    o
}

/// Job ids: printable ASCII without spaces, `/`, `?`, `#` or `%`.
const ID_PATTERN: &str = "^[!\"$&-.0->@-~]{1,255}$";
/// Queue names and kinds.
const NAME_PATTERN: &str = "^[A-Za-z0-9_.:-]{1,128}$";
/// Tags, groups, unique keys: no control characters.
const LABEL_PATTERN: &str = "^[^\\u0000-\\u001F\\u007F-\\u009F]{1,128}$";

/// A duration in milliseconds, as the validators bound it.
fn duration() -> Value {
    json!({"type": "integer", "minimum": 0, "maximum": kyu_core::validate::MAX_DURATION_MS})
}

/// A positive duration (time limits).
fn positive_duration() -> Value {
    json!({"type": "integer", "minimum": 1, "maximum": kyu_core::validate::MAX_DURATION_MS})
}

/// RFC 3339 with a year the store can hold whatever the offset (1971-9998).
const TIME_PATTERN: &str = "^(197[1-9]|19[89][0-9]|[2-8][0-9]{3}|9[0-8][0-9]{2}|99[0-8][0-9]|999[0-8])-";

fn path_param(name: &str) -> Value {
    let pattern = if name == "id" { ID_PATTERN } else { NAME_PATTERN };
    json!({"name": name, "in": "path", "required": true, "schema": {"type": "string", "pattern": pattern}})
}

fn query(name: &str, schema: Value) -> Value {
    json!({"name": name, "in": "query", "required": false, "schema": schema})
}

/// The whole document.
pub fn document() -> Value {
    let id = json!([path_param("id")]);
    let q = json!([path_param("queue")]);
    let none = json!([]);
    let name = json!({"type": "string", "pattern": NAME_PATTERN});
    let report_errs = &["400", "401", "403", "404", "409", "413", "415", "422"];
    let mut paths = serde_json::Map::new();
    let mut add = |path: &str, method: &str, o: Value| {
        paths.entry(path.to_owned()).or_insert_with(|| json!({}))[method] = o;
    };
    add("/v1/jobs", "post", op("Enqueue a job", none.clone(), Some(body(r("JobSpec"))),
        vec![ok("201", "created", Some(r("Job"))), ok("200", "duplicate: nothing created", Some(r("Job")))],
        &["400", "401", "403", "404", "413", "415", "422"]));
    add("/v1/jobs", "get", op("List jobs, newest first",
        json!([query("queue", name.clone()), query("state", r("State")), query("kind", name.clone()),
               query("tag", json!({"type": "string", "pattern": LABEL_PATTERN})),
               query("error", json!({"type": "string", "pattern": "^[^\\u0000]{0,1000}$"})), query("since", r("Time")), query("until", r("Time")),
               query("limit", json!({"type": "integer", "minimum": 1, "maximum": 1000})),
               query("cursor", json!({"type": "string", "pattern": "^[0-9]{1,18}$"}))]),
        None, vec![ok("200", "a page", Some(r("JobPage")))], &["400", "401", "403", "422"]));
    add("/v1/jobs/batch", "post", op("Enqueue jobs atomically", none.clone(),
        Some(body(json!({"type": "object", "required": ["jobs"], "additionalProperties": false,
            "properties": {"jobs": {"type": "array", "items": r("JobSpec"), "minItems": 1}}}))),
        vec![ok("201", "created", Some(r("BatchResult")))], &["400", "401", "403", "404", "413", "415", "422"]));
    add("/v1/flows", "post", op("Enqueue a tree of jobs; each parent depends on its children", none.clone(),
        Some(body(r("Flow"))), vec![ok("201", "created", Some(r("BatchResult")))], &["400", "401", "403", "404", "413", "415", "422"]));
    add("/v1/jobs/{id}", "get", op("A job", id.clone(), None, vec![ok("200", "the job", Some(r("Job")))], &["400", "401", "403", "404"]));
    add("/v1/jobs/{id}", "delete", op("Delete a job that is not running", id.clone(), None, vec![ok("204", "deleted", None)],
        &["400", "401", "403", "404", "409"]));
    add("/v1/jobs/{id}/result", "get", op("Long-poll until the job is terminal or wait_ms pass",
        json!([path_param("id"), query("wait_ms", json!({"type": "integer", "minimum": 0, "maximum": 60000}))]),
        None, vec![ok("200", "the job", Some(r("Job")))], &["400", "401", "403", "404", "422"]));
    add("/v1/jobs/{id}/cancel", "post", op("Cancel (a running job is asked to stop)", id.clone(), None,
        vec![ok("200", "the job", Some(r("Job")))], &["400", "401", "403", "404", "409"]));
    let mut retry_body = body(json!({"type": "object", "additionalProperties": false, "properties": {
        "dependents": {"type": "boolean", "description": "also revive the jobs that failed only because this one did"}}}));
    retry_body["required"] = json!(false);
    add("/v1/jobs/{id}/retry", "post", op("Retry a failed or cancelled job (with dependents: the jobs that failed because of it too)", id.clone(),
        Some(retry_body), vec![ok("200", "the job", Some(r("Job")))], &["400", "401", "403", "404", "409", "415", "422"]));
    add("/v1/jobs/{id}/log", "get", op("The job's log lines, oldest first",
        json!([path_param("id"), query("attempt", json!({"type": "integer", "minimum": -2147483648i64, "maximum": 2147483647}))]), None,
        vec![ok("200", "log lines", Some(json!({"type": "object", "required": ["lines"], "properties": {
            "lines": {"type": "array", "items": {"type": "object", "required": ["at", "attempt", "line"], "properties": {
                "at": r("Time"), "attempt": {"type": "integer"}, "line": {"type": "string"}}}}}})))],
        &["400", "401", "403", "404"]));
    add("/v1/jobs/{id}/log", "post", op("Append lines to a running job's log (fenced by the token)", id.clone(),
        Some(body(json!({"type": "object", "required": ["token", "lines"], "additionalProperties": false, "properties": {
            "token": {"type": "string"}, "lines": {"type": "array", "items": {"type": "string"}, "maxItems": 10000}}}))),
        vec![ok("204", "appended", None)], &["400", "401", "403", "404", "409", "413", "415", "422"]));
    add("/v1/jobs/retry", "post", op("Bulk redrive of the dead-letter set", none.clone(),
        Some(body(json!({"type": "object", "additionalProperties": false, "properties": {
            "queue": name.clone(), "kind": name.clone(), "state": {"enum": ["failed", "cancelled"]},
            "since": r("Time"), "until": r("Time"), "error": {"type": "string", "pattern": "^[^\\u0000]{0,1000}$"}}}))),
        vec![ok("200", "how many", Some(json!({"type": "object", "required": ["retried"], "properties": {"retried": {"type": "integer"}}})))],
        &["400", "401", "403", "415", "422"]));
    add("/v1/jobs/delete", "post", op("Bulk delete of the dead-letter set (failed or cancelled jobs) by filter", none.clone(),
        Some(body(json!({"type": "object", "additionalProperties": false, "properties": {
            "queue": name.clone(), "kind": name.clone(), "state": {"enum": ["failed", "cancelled"]},
            "since": r("Time"), "until": r("Time"), "error": {"type": "string", "pattern": "^[^\\u0000]{0,1000}$"}}}))),
        vec![ok("200", "how many", Some(json!({"type": "object", "required": ["deleted"], "properties": {"deleted": {"type": "integer"}}})))],
        &["400", "401", "403", "415", "422"]));
    let report_item = |outcome: &str, extra: Value, required: &[&str]| {
        let mut props = json!({"outcome": {"const": outcome}, "id": {"type": "string", "pattern": ID_PATTERN}, "token": {"type": "string"}});
        for (k, v) in extra.as_object().expect("object") {
            props[k] = v.clone();
        }
        let mut req = vec!["outcome".to_owned(), "id".to_owned(), "token".to_owned()];
        req.extend(required.iter().map(|s| s.to_string()));
        json!({"type": "object", "required": req, "additionalProperties": false, "properties": props})
    };
    let report_items = json!({"oneOf": [
        // Content a store cannot hold (a NUL in a result, a delay past
        // 100 years) is answered in its own slot, so one bad report
        // never holds back the rest: the items take any value here.
        report_item("complete", json!({"result": {}}), &[]),
        report_item("fail", json!({"error": {"type": "string"}, "retry_in_ms": {"anyOf": [{"type": "integer", "minimum": 0, "maximum": 9223372036854775807i64}, {"type": "null"}]},
            "retry": {"anyOf": [{"type": "boolean"}, {"type": "null"}]}}), &["error"]),
        report_item("snooze", json!({"delay_ms": {"type": "integer", "minimum": 0, "maximum": 9223372036854775807i64}}), &["delay_ms"])]});
    let report_answers = json!({"type": "array", "items": {"type": "object", "required": ["id"], "properties": {
        "id": {"type": "string"}, "state": r("State"), "error": {"type": "object"}}}});
    add("/v1/claim", "post", op("Apply the reports given, then claim up to max jobs under a lease; long-polls up to wait_ms", none.clone(),
        Some(body(json!({"type": "object", "required": ["queues", "worker"], "additionalProperties": false, "properties": {
            "queues": {"type": "array", "items": name.clone(), "minItems": 1, "maxItems": 100},
            "worker": {"type": "string", "pattern": LABEL_PATTERN},
            "max": {"type": "integer", "minimum": 1, "maximum": 1000},
            "lease_ms": {"type": "integer", "minimum": 100, "maximum": 3600000},
            "wait_ms": {"type": "integer", "minimum": 0, "maximum": 60000},
            "reports": {"type": "array", "maxItems": 1000, "items": report_items.clone()}}}))),
        vec![ok("200", "claimed jobs (maybe none), and an answer per report given", Some(json!({"type": "object", "required": ["jobs"],
            "properties": {"jobs": {"type": "array", "items": r("ClaimedJob")},
                "next_run_at": {"anyOf": [r("Time"), {"type": "null"}]},
                "reports": report_answers.clone()}})))],
        &["400", "401", "403", "413", "415", "422"]));
    add("/v1/reports", "post", op("Many reports in one request; each answered in its own slot", none.clone(),
        Some(body(json!({"type": "object", "required": ["reports"], "additionalProperties": false, "properties": {
            "reports": {"type": "array", "minItems": 1, "maxItems": 1000, "items": report_items.clone()}}}))),
        vec![ok("200", "one answer per report", Some(json!({"type": "object", "required": ["results"], "properties": {
            "results": report_answers.clone()}})))],
        &["400", "401", "403", "413", "415", "422"]));
    add("/v1/heartbeats", "post", op("Many heartbeats in one request; each answered in its own slot", none.clone(),
        Some(body(json!({"type": "object", "required": ["heartbeats"], "additionalProperties": false, "properties": {
            "heartbeats": {"type": "array", "minItems": 1, "maxItems": 1000, "items": {"type": "object", "required": ["id", "token"],
                "additionalProperties": false, "properties": {"id": {"type": "string", "pattern": ID_PATTERN}, "token": {"type": "string"},
                "lease_ms": {"anyOf": [{"type": "integer", "minimum": 100, "maximum": 3600000}, {"type": "null"}]}}}}}}))),
        vec![ok("200", "one answer per heartbeat", Some(json!({"type": "object", "required": ["results"], "properties": {
            "results": {"type": "array", "items": {"type": "object", "required": ["id"], "properties": {
                "id": {"type": "string"}, "lease_expires_at": r("Time"), "cancel_requested": {"type": "boolean"},
                "error": {"type": "object"}}}}}})))],
        &["400", "401", "403", "413", "415", "422"]));
    let token_body = |extra: Value, required: &[&str]| {
        let mut props = json!({"token": {"type": "string"}});
        for (k, v) in extra.as_object().expect("object") {
            props[k] = v.clone();
        }
        let mut req = vec!["token".to_owned()];
        req.extend(required.iter().map(|s| s.to_string()));
        body(json!({"type": "object", "required": req, "additionalProperties": false, "properties": props}))
    };
    add("/v1/jobs/{id}/heartbeat", "post", op("Extend the lease; learn of a cancel request", id.clone(),
        Some(token_body(json!({"lease_ms": {"type": "integer", "minimum": 100, "maximum": 3600000}}), &[])),
        vec![ok("200", "new lease", Some(json!({"type": "object", "required": ["lease_expires_at", "cancel_requested"],
            "properties": {"lease_expires_at": r("Time"), "cancel_requested": {"type": "boolean"}}})))], report_errs));
    add("/v1/jobs/{id}/complete", "post", op("Complete with a result", id.clone(),
        Some(token_body(json!({"result": r("Json")}), &[])), vec![ok("200", "the job", Some(r("Job")))], report_errs));
    add("/v1/jobs/{id}/fail", "post", op("Fail this attempt; retried per policy unless retry is false", id.clone(),
        Some(token_body(json!({"error": {"type": "string"}, "retry_in_ms": duration(), "retry": {"type": "boolean"}}), &["error"])),
        vec![ok("200", "the job", Some(r("Job")))], report_errs));
    add("/v1/jobs/{id}/snooze", "post", op("Run again after delay_ms; the attempt is not counted", id.clone(),
        Some(token_body(json!({"delay_ms": duration()}), &["delay_ms"])),
        vec![ok("200", "the job", Some(r("Job")))], report_errs));
    add("/v1/jobs/{id}/checkpoint", "post", op("Save the checkpoint (fenced by the token)", id.clone(),
        Some(token_body(json!({"checkpoint": r("Json")}), &["checkpoint"])), vec![ok("204", "saved", None)], report_errs));
    add("/v1/jobs/{id}/progress", "post", op("Report progress (fenced by the token)", id.clone(),
        Some(token_body(json!({"progress": r("Json")}), &["progress"])), vec![ok("204", "saved", None)], report_errs));
    add("/v1/jobs/{id}/children", "post", op("Add children; with wait, the job waits for them (lease released)", id.clone(),
        Some(token_body(json!({"jobs": {"type": "array", "items": r("JobSpec"), "minItems": 1}, "wait": {"type": "boolean"}}), &["jobs"])),
        vec![ok("200", "added", Some(json!({"type": "object", "required": ["children", "waiting"], "properties": {
            "children": {"type": "array", "items": {"type": "object"}}, "waiting": {"type": "boolean"}}})))], report_errs));
    add("/v1/queues", "get", op("Queues with settings and counts", none.clone(), None,
        vec![ok("200", "queues", Some(json!({"type": "object", "required": ["queues"], "properties": {"queues": {"type": "array", "items": r("Queue")}}})))],
        &["401", "403"]));
    add("/v1/queues/{queue}", "patch", op("Change a queue's limits (null clears one)", q.clone(),
        Some(body(json!({"type": "object", "additionalProperties": false, "properties": {
            "concurrency": {"type": ["integer", "null"], "minimum": 0, "maximum": 2147483647},
            "rate_limit": {"oneOf": [r("RateLimit"), {"type": "null"}]},
            "group_concurrency": {"type": ["integer", "null"], "minimum": 1, "maximum": 2147483647},
            "timeout_ms": {"anyOf": [positive_duration(), {"type": "null"}]},
            "paused": {"type": "boolean"}}}))),
        vec![ok("200", "the queue", Some(r("Queue")))], &["400", "401", "403", "415", "422"]));
    add("/v1/queues/{queue}/pause", "post", op("Pause a queue", q.clone(), None, vec![ok("200", "the queue", Some(r("Queue")))], &["400", "401", "403"]));
    add("/v1/queues/{queue}/resume", "post", op("Resume a queue", q.clone(), None, vec![ok("200", "the queue", Some(r("Queue")))], &["400", "401", "403"]));
    let sched = json!([path_param("name")]);
    add("/v1/schedules/{name}", "put", op("Create or replace a schedule", sched.clone(), Some(body(r("ScheduleSpec"))),
        vec![ok("200", "the schedule", Some(r("Schedule")))], &["400", "401", "403", "413", "415", "422"]));
    add("/v1/schedules/{name}", "get", op("A schedule", sched.clone(), None, vec![ok("200", "the schedule", Some(r("Schedule")))],
        &["400", "401", "403", "404"]));
    add("/v1/schedules/{name}", "delete", op("Delete a schedule (its jobs stay)", sched.clone(), None,
        vec![ok("204", "deleted", None)], &["400", "401", "403", "404"]));
    add("/v1/schedules", "get", op("Every schedule", none.clone(), None,
        vec![ok("200", "schedules", Some(json!({"type": "object", "required": ["schedules"],
            "properties": {"schedules": {"type": "array", "items": r("Schedule")}}})))], &["401", "403"]));
    add("/v1/schedules/{name}/run", "post", op("Enqueue the schedule's job now, outside its ticks", sched.clone(), None,
        vec![ok("201", "the job", Some(r("Job")))], &["400", "401", "403", "404", "422"]));
    add("/v1/jobs/{id}/events", "get", op("The job's timeline, oldest first", id.clone(), None,
        vec![ok("200", "events", Some(json!({"type": "object", "required": ["events"], "properties": {
            "events": {"type": "array", "items": r("JobEvent")}}})))], &["400", "401", "403", "404"]));
    add("/v1/workers", "get", op("Workers seen in the last few minutes", none.clone(), None,
        vec![ok("200", "workers", Some(json!({"type": "object", "required": ["workers"], "properties": {
            "workers": {"type": "array", "items": r("Worker")}}})))], &["401", "403"]));
    add("/v1/workers", "post", op("A worker says who it is and that it is alive", none.clone(),
        Some(body(json!({"type": "object", "required": ["name"], "additionalProperties": false, "properties": {
            "name": {"type": "string", "pattern": LABEL_PATTERN},
            "host": {"type": ["string", "null"], "pattern": "^[^\\u0000]{0,1000}$"},
            "pid": {"type": ["integer", "null"], "minimum": 0, "maximum": 9223372036854775807i64},
            "queues": {"type": ["array", "null"], "items": name.clone(), "maxItems": 1000},
            "concurrency": {"type": ["integer", "null"], "minimum": 0, "maximum": 9223372036854775807i64},
            "runs": {"type": ["string", "null"], "pattern": "^[^\\u0000]{0,1000}$"}}}))),
        vec![ok("204", "recorded", None)], &["400", "401", "403", "413", "415", "422"]));
    add("/v1/stats", "get", op("Throughput and latency per minute and queue, cluster-wide (the last hour unless since says)",
        json!([query("queue", name.clone()), query("since", r("Time"))]), None,
        vec![ok("200", "series", Some(json!({"type": "object", "required": ["series"], "properties": {
            "series": {"type": "array", "items": r("StatsPoint")}}})))], &["400", "401", "403"]));
    add("/v1/events/stream", "get", json!({"summary": "Server-sent events, one per state change (event: change; event: lagged when the client fell behind)",
        "parameters": [query("queue", name.clone())],
        "responses": {"200": {"description": "an event stream", "content": {"text/event-stream": {"schema": {"type": "string"}}}},
            "400": {"description": "error", "content": {"application/json": {"schema": r("Error")}}},
            "401": {"description": "error", "content": {"application/json": {"schema": r("Error")}}}}}));
    let mut doc_op = op("This document", none.clone(), None, vec![ok("200", "OpenAPI 3", Some(json!({"type": "object"})))], &[]);
    doc_op["security"] = json!([]);
    add("/v1/openapi.json", "get", doc_op);
    add("/metrics", "get", json!({"summary": "Prometheus metrics", "responses": {"200": {"description": "text format",
        "content": {"application/openmetrics-text": {"schema": {"type": "string"}}}}, "401": {"description": "error", "content": {"application/json": {"schema": r("Error")}}}}}));
    add("/healthz", "get", json!({"summary": "Liveness and store reachability", "security": [], "responses": {
        "200": {"description": "ok", "content": {"application/json": {"schema": {"type": "object"}}}},
        "503": {"description": "store unreachable", "content": {"application/json": {"schema": {"type": "object"}}}}}}));
    add("/", "get", json!({"summary": "The dashboard (asks for a token itself)", "security": [], "responses": {"200": {"description": "HTML", "content": {"text/html": {"schema": {"type": "string"}}}}}}));

    // Request bodies take `null` for any optional field, meaning "absent".
    for item in paths.values_mut() {
        for o in item.as_object_mut().expect("path item").values_mut() {
            if let Some(schema) = o.pointer_mut("/requestBody/content/application~1json/schema") {
                nullable_optionals(schema);
            }
        }
    }
    let mut schemas = schemas();
    for name in ["JobSpec", "RateLimit", "Backoff", "ScheduleSpec", "Flow"] {
        nullable_optionals(&mut schemas[name]);
    }
    json!({
        "openapi": "3.1.0",
        "info": {"title": "kyu", "version": env!("CARGO_PKG_VERSION"), "description": "A durable job queue. See DESIGN.md for the contract."},
        "components": {
            "securitySchemes": {"bearer": {"type": "http", "scheme": "bearer"}},
            "schemas": schemas,
        },
        "security": [{"bearer": []}],
        "paths": paths,
    })
}

/// Wraps each optional property of an object schema as `anyOf: [it, null]`.
fn nullable_optionals(schema: &mut Value) {
    let required: Vec<String> = schema["required"].as_array().map(|r| r.iter().filter_map(|v| v.as_str().map(String::from)).collect()).unwrap_or_default();
    if let Some(props) = schema.get_mut("properties").and_then(Value::as_object_mut) {
        for (k, v) in props.iter_mut() {
            if !required.contains(k) && v.get("anyOf").is_none() {
                *v = json!({"anyOf": [v.clone(), {"type": "null"}]});
            }
        }
    }
}

/// A cron expression the scheduler accepts: 5 fields, or 6 with seconds
/// first; each field `*` (with an optional `/step`) or a list of values.
/// The server also takes ranges (`1-5`), names (`MON`)
/// and days 29-31; they are left out here because a pattern cannot say that
/// a range must not run backwards, or that a day must exist in its month.
const CRON_PATTERN: &str = concat!(
    "^((\\*(/[1-9][0-9]?)?|[0-5]?[0-9](,[0-5]?[0-9])*) )?",
    "(\\*(/[1-9][0-9]?)?|[0-5]?[0-9](,[0-5]?[0-9])*) ",
    "(\\*(/[1-9][0-9]?)?|([01]?[0-9]|2[0-3])(,([01]?[0-9]|2[0-3]))*) ",
    "(\\*(/[1-9][0-9]?)?|(0?[1-9]|1[0-9]|2[0-8])(,(0?[1-9]|1[0-9]|2[0-8]))*) ",
    "(\\*(/[1-9][0-9]?)?|(0?[1-9]|1[0-2])(,(0?[1-9]|1[0-2]))*) ",
    "(\\*(/[1-9][0-9]?)?|[0-7](,[0-7])*)$"
);

fn time_zones() -> Vec<String> {
    kyu_core::schedule::time_zone_names()
}

fn schemas() -> Value {
    let name = json!({"type": "string", "pattern": NAME_PATTERN});
    let label = json!({"type": "string", "pattern": LABEL_PATTERN});
    let id = json!({"type": "string", "pattern": ID_PATTERN});
    json!({
        "Time": {"type": "string", "format": "date-time", "pattern": TIME_PATTERN},
        "Json": {"description": "Any JSON without a NUL character in its strings or keys (PostgreSQL cannot store one)",
            "anyOf": [
            {"type": "string", "pattern": "^[^\\u0000]*$"},
            {"type": ["number", "boolean", "null"]},
            {"type": "array", "items": {"$ref": "#/components/schemas/Json"}},
            {"type": "object", "propertyNames": {"pattern": "^[^\\u0000]*$"}, "additionalProperties": {"$ref": "#/components/schemas/Json"}}]},
        "State": {"enum": ["scheduled", "queued", "waiting", "running", "completed", "failed", "cancelled"]},
        "Error": {"type": "object", "required": ["error"], "properties": {"error": {"type": "object", "required": ["code", "message"],
            "properties": {"code": {"type": "string"}, "message": {"type": "string"}}}}},
        "Backoff": {"oneOf": [
            {"type": "object", "required": ["kind", "base_ms", "max_ms"], "additionalProperties": false,
             "properties": {"kind": {"const": "exponential"}, "base_ms": duration(), "max_ms": duration()}},
            {"type": "object", "required": ["kind", "delay_ms"], "additionalProperties": false,
             "properties": {"kind": {"const": "fixed"}, "delay_ms": duration()}}]},
        "RateLimit": {"type": "object", "required": ["max", "per_ms"], "additionalProperties": false,
            "properties": {"max": {"type": "integer", "minimum": 1, "maximum": 9223372036854775807i64}, "per_ms": positive_duration()}},
        "JobSpec": {"type": "object", "required": ["kind"], "additionalProperties": false,
            // Both given is refused; a null one is absent (see nullable_optionals).
            "not": {"required": ["run_at", "delay_ms"],
                "properties": {"run_at": {"type": "string"}, "delay_ms": {"type": "integer"}}},
            "if": {"required": ["unique_for_ms"], "properties": {"unique_for_ms": {"type": "integer"}}},
            "then": {"required": ["unique_key"], "properties": {"unique_key": {"type": "string"}}},
            "properties": {
            "id": id.clone(),
            "queue": name.clone(), "kind": name.clone(), "payload": {"$ref": "#/components/schemas/Json"},
            "priority": {"type": "integer", "minimum": -2147483648i64, "maximum": 2147483647},
            "run_at": {"$ref": "#/components/schemas/Time"}, "delay_ms": duration(),
            "max_attempts": {"type": "integer", "minimum": 1, "maximum": 10000},
            "backoff": {"$ref": "#/components/schemas/Backoff"},
            "timeout_ms": positive_duration(),
            "unique_key": label.clone(),
            "unique_for_ms": duration(),
            "depends_on": {"type": "array", "items": id.clone(), "maxItems": 10000},
            "continue_on_failure": {"type": "boolean"},
            "keep_result_ms": duration(),
            "keep_failed_ms": duration(),
            "tags": {"type": "array", "items": label.clone(), "maxItems": 32},
            "group": label.clone()}},
        "ScheduleSpec": {"type": "object", "required": ["cron", "job"], "additionalProperties": false, "properties": {
            "cron": {"type": "string", "pattern": CRON_PATTERN,
                "description": "5 fields (minute hour day month weekday), or 6 with seconds first"},
            "timezone": {"enum": time_zones(), "description": "IANA name, default UTC"},
            "job": {"description": "The job each tick enqueues; its id is derived from the schedule's name and the tick",
                "allOf": [{"$ref": "#/components/schemas/JobSpec"}, {"properties": {"id": {"type": "null"}}}]},
            "catchup": {"type": "boolean"}, "enabled": {"type": "boolean"}}},
        "Schedule": {"type": "object", "required": ["name", "cron", "timezone", "job", "catchup", "enabled", "created_at", "updated_at"],
            "properties": {
            "name": {"type": "string"}, "cron": {"type": "string"}, "timezone": {"type": "string"},
            "job": {"type": "object"}, "catchup": {"type": "boolean"}, "enabled": {"type": "boolean"},
            "next_run_at": {"type": ["string", "null"]}, "last_run_at": {"type": ["string", "null"]},
            "created_at": {"$ref": "#/components/schemas/Time"}, "updated_at": {"$ref": "#/components/schemas/Time"}}},
        "Flow": {"type": "object", "required": ["job"], "additionalProperties": false, "properties": {
            "job": {"$ref": "#/components/schemas/JobSpec"},
            "children": {"type": "array", "items": {"$ref": "#/components/schemas/Flow"}}}},
        "Job": {"type": "object", "required": ["id", "queue", "kind", "payload", "state", "priority", "run_at", "attempt",
            "max_attempts", "backoff", "errors", "tags", "created_at", "depends_on", "pending_dependencies", "cancel_requested"],
            "properties": {
            "id": {"type": "string"}, "queue": {"type": "string"}, "kind": {"type": "string"}, "payload": {},
            "checkpoint": {}, "state": {"$ref": "#/components/schemas/State"}, "priority": {"type": "integer"},
            "run_at": {"$ref": "#/components/schemas/Time"}, "attempt": {"type": "integer"}, "max_attempts": {"type": "integer"},
            "backoff": {"$ref": "#/components/schemas/Backoff"}, "timeout_ms": {"type": ["integer", "null"]},
            "unique_key": {"type": ["string", "null"]}, "unique_for_ms": {"type": ["integer", "null"]},
            "depends_on": {"type": "array", "items": {"type": "string"}}, "pending_dependencies": {"type": "integer"},
            "continue_on_failure": {"type": "boolean"}, "result": {}, "keep_result_ms": {"type": ["integer", "null"]},
            "keep_failed_ms": {"type": ["integer", "null"]},
            "errors": {"type": "array", "items": {"type": "object", "required": ["attempt", "at", "message"],
                "properties": {"attempt": {"type": "integer"}, "at": {"$ref": "#/components/schemas/Time"}, "message": {"type": "string"}}}},
            "progress": {}, "tags": {"type": "array", "items": {"type": "string"}}, "group": {"type": ["string", "null"]},
            "cancel_requested": {"type": "boolean"}, "created_at": {"$ref": "#/components/schemas/Time"},
            "started_at": {"type": ["string", "null"]}, "finished_at": {"type": ["string", "null"]},
            "lease_expires_at": {"type": ["string", "null"]}, "worker": {"type": ["string", "null"]},
            "duplicate": {"type": "boolean"}}},
        "JobPage": {"type": "object", "required": ["jobs", "next_cursor"], "properties": {
            "jobs": {"type": "array", "items": {"$ref": "#/components/schemas/Job"}}, "next_cursor": {"type": ["string", "null"]}}},
        "BatchResult": {"type": "object", "required": ["ids", "jobs"], "properties": {
            "root": {"type": "string"}, "ids": {"type": "array", "items": {"type": "string"}},
            "jobs": {"type": "array", "items": {"type": "object", "required": ["id", "state", "duplicate"], "properties": {
                "id": {"type": "string"}, "state": {"$ref": "#/components/schemas/State"}, "duplicate": {"type": "boolean"}}}}}},
        "ClaimedJob": {"type": "object", "required": ["id", "queue", "kind", "payload", "attempt", "max_attempts", "token",
            "lease_expires_at", "dependency_results"], "properties": {
            "id": {"type": "string"}, "queue": {"type": "string"}, "kind": {"type": "string"}, "payload": {}, "checkpoint": {},
            "attempt": {"type": "integer"}, "max_attempts": {"type": "integer"}, "timeout_ms": {"type": ["integer", "null"]},
            "token": {"type": "string"}, "lease_expires_at": {"$ref": "#/components/schemas/Time"},
            "dependency_results": {"type": "object"}}},
        "Queue": {"type": "object", "required": ["name", "paused", "counts"], "properties": {
            "name": {"type": "string"}, "paused": {"type": "boolean"}, "concurrency": {"type": ["integer", "null"]},
            "rate_limit": {"oneOf": [{"$ref": "#/components/schemas/RateLimit"}, {"type": "null"}]},
            "group_concurrency": {"type": ["integer", "null"]},
            "timeout_ms": {"type": ["integer", "null"]},
            "oldest_ready_at": {"anyOf": [{"$ref": "#/components/schemas/Time"}, {"type": "null"}]},
            "counts": {"type": "object", "additionalProperties": {"type": "integer"}}}},
        "JobEvent": {"type": "object", "required": ["at", "type"], "properties": {
            "at": {"$ref": "#/components/schemas/Time"},
            "type": {"enum": ["enqueued", "claimed", "progress", "checkpoint", "snoozed", "released", "retry_scheduled", "failed",
                "completed", "cancel_requested", "cancelled", "lease_expired", "timeout", "waiting", "ready", "retried"]},
            "attempt": {"type": ["integer", "null"]}, "worker": {"type": ["string", "null"]}, "message": {"type": ["string", "null"]}}},
        "Worker": {"type": "object", "required": ["name", "queues", "running", "started_at", "last_seen_at"], "properties": {
            "name": {"type": "string"}, "host": {"type": ["string", "null"]}, "pid": {"type": ["integer", "null"]},
            "queues": {"type": "array", "items": {"type": "string"}}, "concurrency": {"type": ["integer", "null"]},
            "runs": {"type": ["string", "null"]}, "running": {"type": "array", "items": {"type": "string"}},
            "started_at": {"$ref": "#/components/schemas/Time"}, "last_seen_at": {"$ref": "#/components/schemas/Time"}}},
        "StatsPoint": {"type": "object", "required": ["minute", "queue", "enqueued", "completed", "failed", "retried"], "properties": {
            "minute": {"$ref": "#/components/schemas/Time"}, "queue": {"type": "string"},
            "enqueued": {"type": "integer"}, "completed": {"type": "integer"}, "failed": {"type": "integer"}, "retried": {"type": "integer"},
            "wait_ms_p50": {"type": ["integer", "null"]}, "wait_ms_p95": {"type": ["integer", "null"]},
            "run_ms_p50": {"type": ["integer", "null"]}, "run_ms_p95": {"type": ["integer", "null"]}}},
    })
}
