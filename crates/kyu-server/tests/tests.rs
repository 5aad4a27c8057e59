//! The router in process (`oneshot`), on a real SQLite store.

use axum::body::Body;
use axum::http::{Method, Request, StatusCode};
use http_body_util::BodyExt;
use kyu_server::{ServerConfig, openapi};
use serde_json::Value;
use tokio_util::sync::CancellationToken;
use tower::ServiceExt;

async fn call(app: &axum::Router, method: &str, path: &str, body: Option<&str>) -> (StatusCode, Value) {
    let mut req = Request::builder().method(Method::from_bytes(method.to_uppercase().as_bytes()).unwrap()).uri(path);
    if body.is_some() {
        req = req.header("content-type", "application/json");
    }
    let req = req.body(body.map_or_else(Body::empty, |b| Body::from(b.to_owned()))).unwrap();
    let resp = app.clone().oneshot(req).await.unwrap();
    let status = resp.status();
    let bytes = resp.into_body().collect().await.unwrap().to_bytes();
    (status, serde_json::from_slice(&bytes).unwrap_or(Value::Null))
}

fn app() -> (axum::Router, kyu_sqlite::testing::Fresh) {
    let (store, dir) = kyu_sqlite::testing::fresh_store();
    (kyu_server::router(store, ServerConfig::default(), CancellationToken::new()), dir)
}

/// Every route in the document is routed, and every routed path is in the
/// document: the spec cannot drift from the server.
#[tokio::test]
async fn openapi_matches_the_routes() {
    let doc = openapi::document();
    let paths = doc["paths"].as_object().unwrap();
    let mut in_doc: Vec<(String, String)> = Vec::new();
    for (path, ops) in paths {
        for method in ops.as_object().unwrap().keys() {
            in_doc.push((method.clone(), path.clone()));
        }
    }
    let mut routed: Vec<(String, String)> = openapi::ROUTES.iter().map(|(m, p)| (m.to_string(), p.to_string())).collect();
    in_doc.sort();
    routed.sort();
    assert_eq!(in_doc, routed, "the document and the route table differ");

    let (app, _g) = app();
    for (method, path) in openapi::ROUTES {
        let concrete = path.replace("{id}", "no-such-job").replace("{queue}", "q").replace("{name}", "nightly");
        if concrete == "/v1/events/stream" {
            // A stream never ends: its head is what can be checked.
            let req = Request::builder().uri(&concrete).body(Body::empty()).unwrap();
            let resp = app.clone().oneshot(req).await.unwrap();
            assert_eq!(resp.status(), StatusCode::OK);
            assert_eq!(resp.headers()["content-type"], "text/event-stream");
            continue;
        }
        let body = if *method == "get" || *method == "delete" { None } else { Some("{}") };
        let (status, v) = call(&app, method, &concrete, body).await;
        let code = v["error"]["code"].as_str().unwrap_or("");
        assert!(code != "no_route" && code != "method_not_allowed", "{method} {path} is not routed: {status} {v}");
        assert!(status.as_u16() < 500, "{method} {path} answered {status} to an empty body: {v}");
    }
}

#[tokio::test]
async fn unknown_routes_and_methods_answer_in_the_error_shape() {
    let (app, _g) = app();
    let (s, v) = call(&app, "get", "/v2/nothing", None).await;
    assert_eq!((s, v["error"]["code"].as_str()), (StatusCode::NOT_FOUND, Some("no_route")));
    let (s, v) = call(&app, "put", "/v1/jobs", Some("{}")).await;
    assert_eq!((s, v["error"]["code"].as_str()), (StatusCode::METHOD_NOT_ALLOWED, Some("method_not_allowed")));
}
