//! The OpenAPI document (`GET /openapi.json`) against the router that serves the
//! API: every route the router serves (method and path template) is in the
//! document and every operation of the document is served, so a route added with
//! a bare `.route` instead of `routes!` fails here; every `$ref` resolves; every
//! problem type the code answers is in the document.

use std::collections::BTreeSet;

use axum::body::Body;
use axum::http::{Request, StatusCode};
use serde_json::Value;
use tower::ServiceExt;
use weir_server::openapi::PROBLEM_TYPES;
use weir_server::ServeConfig;
use weir_store::testing::{TestStore, TestStoreConfig};

mod common;
use common::{router_methods, router_paths, METHODS};

/// `(method, path)` of every operation the document holds.
fn documented(doc: &Value) -> BTreeSet<(String, String)> {
    let mut ops = BTreeSet::new();
    for (path, item) in doc["paths"].as_object().expect("paths") {
        for m in METHODS {
            if item.get(m).is_some() {
                ops.insert((m.to_owned(), path.clone()));
            }
        }
    }
    ops
}

/// A path template as OpenAPI writes it: axum's wildcard `{*rest}` is `{rest}`.
fn openapi_path(axum_path: &str) -> String {
    axum_path.replace("{*", "{")
}

async fn app() -> (TestStore, axum::Router) {
    let store = TestStore::open(TestStoreConfig::default()).await;
    let router = weir_server::app(store.broker.clone(), ServeConfig::default());
    (store, router)
}

#[tokio::test]
async fn every_route_the_router_serves_is_documented_and_back() {
    let (_store, router) = app().await;
    let paths = router_paths(&router);
    // The walk must see the router (a change in axum's Debug text fails here,
    // never passes vacuously).
    assert!(paths.contains("/healthz") && paths.contains("/v1/queues/{queue}/tasks"));
    let mut served = BTreeSet::new();
    for path in &paths {
        for m in router_methods(&router, path).await {
            served.insert((m, openapi_path(path)));
        }
    }
    let doc = weir_server::openapi::document(&Default::default());
    let documented = documented(&doc);
    let missing: Vec<_> = served.difference(&documented).collect();
    assert!(
        missing.is_empty(),
        "routes the router serves that /openapi.json lacks (add them with routes! in api::routes): {missing:?}"
    );
    let unserved: Vec<_> = documented.difference(&served).collect();
    assert!(
        unserved.is_empty(),
        "operations /openapi.json documents that the router does not serve: {unserved:?}"
    );
}

#[tokio::test]
async fn the_server_serves_its_document() {
    let (_store, router) = app().await;
    let resp = router
        .oneshot(Request::get("/openapi.json").body(Body::empty()).unwrap())
        .await
        .unwrap();
    assert_eq!(resp.status(), StatusCode::OK);
    assert_eq!(resp.headers()["content-type"], "application/json");
    let body = axum::body::to_bytes(resp.into_body(), usize::MAX)
        .await
        .unwrap();
    let doc: Value = serde_json::from_slice(&body).unwrap();
    assert_eq!(doc["openapi"], "3.1.0");
    assert_eq!(doc, weir_server::openapi::document(&Default::default()));
}

/// Every `$ref` in `v` points at a component that exists.
fn check_refs(doc: &Value, v: &Value) {
    match v {
        Value::Object(map) => {
            if let Some(Value::String(r)) = map.get("$ref") {
                let pointer = r.strip_prefix('#').expect("a local $ref");
                assert!(
                    doc.pointer(pointer).is_some(),
                    "$ref {r} resolves to nothing"
                );
            }
            map.values().for_each(|v| check_refs(doc, v));
        }
        Value::Array(items) => items.iter().for_each(|v| check_refs(doc, v)),
        _ => {}
    }
}

#[test]
fn every_ref_resolves() {
    let doc = weir_server::openapi::document(&Default::default());
    check_refs(&doc, &doc);
}

#[test]
fn the_document_states_the_servers_limits() {
    let mut limits = weir_core::Limits::default();
    let doc = weir_server::openapi::document(&limits);
    let wait = "/paths/~1v1~1tasks~1{id}/get/parameters";
    let max_of = |doc: &Value| {
        doc.pointer(wait)
            .unwrap()
            .as_array()
            .unwrap()
            .iter()
            .find(|p| p["name"] == "wait_ms")
            .unwrap()["schema"]["maximum"]
            .clone()
    };
    assert_eq!(max_of(&doc), limits.wait_ms_max);
    limits.wait_ms_max = 250;
    let doc = weir_server::openapi::document(&limits);
    assert_eq!(max_of(&doc), 250);
    assert_eq!(
        doc.pointer("/components/schemas/LeaseBody/properties/wait_ms/maximum"),
        Some(&Value::from(250))
    );
}

/// Every slug the server's code gives `ApiError::new` (or the connection layer's
/// `Refusal::new`), and every outage's, is a documented problem type (and each
/// documented one is used).
#[test]
fn every_problem_type_is_documented() {
    let sources = [
        include_str!("../src/api.rs"),
        include_str!("../src/error.rs"),
        include_str!("../src/extract.rs"),
        include_str!("../src/ingress.rs"),
        include_str!("../src/conn.rs"),
        include_str!("../src/http1.rs"),
        include_str!("../src/channel.rs"),
        include_str!("../src/schedule.rs"),
        include_str!("../src/auth/mod.rs"),
        include_str!("../src/keys.rs"),
    ];
    let mut used = BTreeSet::new();
    for src in sources {
        for marker in ["ApiError::new(", "Refusal::new("] {
            for call in src.split(marker).skip(1) {
                // ApiError::new(status, "slug", "Title", detail)
                let args: Vec<&str> = call.splitn(3, ',').collect();
                let slug = args[1].trim();
                if let Some(slug) = slug.strip_prefix('"').and_then(|s| s.strip_suffix('"')) {
                    used.insert(slug.to_owned());
                }
            }
        }
    }
    for outage in outages() {
        used.insert(outage.as_str().to_owned());
    }
    let documented: BTreeSet<String> = PROBLEM_TYPES
        .iter()
        .map(|(s, _, _)| s.to_string())
        .collect();
    assert!(used.len() > 10, "the scan found the slugs: {used:?}");
    assert_eq!(used, documented);
}

/// Every outage (a new variant fails to compile here until it is listed).
fn outages() -> [weir_store::Outage; 4] {
    use weir_store::Outage;
    let all = [
        Outage::DiskFull,
        Outage::TooManyOpenFiles,
        Outage::Io,
        Outage::Unreachable,
    ];
    for o in all {
        match o {
            Outage::DiskFull | Outage::TooManyOpenFiles | Outage::Io | Outage::Unreachable => {}
        }
    }
    all
}
