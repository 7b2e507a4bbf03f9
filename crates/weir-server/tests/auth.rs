//! API keys, roles and sessions (SPEC §9) over the router, on the store
//! `WEIR_TEST_STORE` names: every route the router serves × {no key, producer,
//! worker, reader, admin, a key for another queue} against this file's own table
//! of who may call what (a route the table lacks fails the test); a key's life
//! (made, used, revoked on every server on the store, expired); secrets kept out
//! of every answer; the dashboard's session and CSRF token; the ingress limit
//! keyed on the key.

use std::collections::BTreeSet;
use std::time::{Duration, Instant};

use axum::body::Body;
use axum::http::{header, HeaderMap, Method, Request, StatusCode};
use serde_json::{json, Value};
use tower::ServiceExt;
use weir_server::auth::key::{KeySpec, Role};
use weir_server::ServeConfig;
use weir_store::conformance::{enqueue_ids, item, task};
use weir_store::testing::{TestStore, TestStoreConfig};
use weir_store::Broker;

mod common;
use common::{router_methods, router_paths};

/// Who calls, in the table's columns.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Who {
    Nobody,
    Producer,
    Worker,
    Reader,
    Admin,
    /// Every role, limited to queues `other*`.
    OtherQueue,
}

const EVERYONE: [Who; 6] = [
    Who::Nobody,
    Who::Producer,
    Who::Worker,
    Who::Reader,
    Who::Admin,
    Who::OtherQueue,
];

/// What a queue-limited key meets on a route.
#[derive(Clone, Copy, Debug, PartialEq)]
enum Scope {
    /// Open, or nothing queue-specific.
    Open,
    /// The route names queue `q` (its path, its task's or group's, its body's):
    /// 403 for a key of other queues.
    Q,
    /// Spans every queue: 403 for any queue-limited key.
    All,
    /// Lists only the key's queues: 2xx.
    Filtered,
    /// Names its queues after the request (the worker channel's hello): a key
    /// of other queues passes the upgrade and is refused its queues there.
    Later,
    /// `GET /v1/session`: 401 without a session cookie, whoever calls.
    Session,
}

/// The roles, written apart from `auth::RULES`: (method, route, the
/// roles that may call it besides admin — P, W, R — and scope; a route with
/// scope `Open` is anyone's).
const TABLE: &[(&str, &str, &str, Scope)] = &[
    ("GET", "/healthz", "", Scope::Open),
    ("GET", "/readyz", "", Scope::Open),
    ("GET", "/metrics", "", Scope::Open),
    ("GET", "/openapi.json", "", Scope::Open),
    ("GET", "/", "", Scope::Open),
    ("GET", "/ui", "", Scope::Open),
    ("GET", "/ui/", "", Scope::Open),
    ("GET", "/ui/queues/{queue}", "", Scope::Open),
    ("GET", "/ui/tasks/{id}", "", Scope::Open),
    ("GET", "/ui/groups/{id}", "", Scope::Open),
    ("GET", "/ui/assets/{version}/{*path}", "", Scope::Open),
    ("POST", "/v1/session", "", Scope::Open),
    ("GET", "/v1/session", "", Scope::Session),
    ("DELETE", "/v1/session", "", Scope::Open),
    ("POST", "/v1/queues/{queue}/tasks", "P", Scope::Q),
    ("POST", "/v1/queues/{queue}/tasks:batch", "P", Scope::Q),
    ("POST", "/v1/groups", "P", Scope::Q),
    ("GET", "/v1/tasks/{id}", "PWR", Scope::Q),
    ("POST", "/v1/tasks/{id}/cancel", "P", Scope::Q),
    ("GET", "/v1/groups/{id}", "PR", Scope::Q),
    ("POST", "/v1/groups/{id}/cancel", "P", Scope::Q),
    ("GET", "/v1/queues", "PR", Scope::Filtered),
    ("GET", "/v1/queues/{queue}", "PR", Scope::Q),
    ("POST", "/v1/queues/{queue}/lease", "W", Scope::Q),
    ("POST", "/v1/tasks/{id}/ack", "W", Scope::Q),
    ("POST", "/v1/tasks/{id}/fail", "W", Scope::Q),
    ("POST", "/v1/tasks/{id}/release", "W", Scope::Q),
    ("POST", "/v1/tasks/{id}/heartbeat", "W", Scope::Q),
    ("POST", "/v1/acks", "W", Scope::Q),
    // The queues are checked in the channel's hello, not at the upgrade.
    ("GET", "/v1/workers/connect", "W", Scope::Later),
    ("GET", "/v1/queues/{queue}/tasks", "R", Scope::Q),
    ("GET", "/v1/schedules", "R", Scope::All),
    ("GET", "/v1/schedules/{name}", "R", Scope::All),
    ("PUT", "/v1/queues/{queue}/config", "", Scope::Q),
    ("DELETE", "/v1/queues/{queue}", "", Scope::Q),
    ("POST", "/v1/tasks/{id}/retry", "", Scope::Q),
    ("DELETE", "/v1/tasks/{id}", "", Scope::Q),
    ("POST", "/v1/queues/{queue}/dead/retry", "", Scope::Q),
    ("DELETE", "/v1/queues/{queue}/dead", "", Scope::Q),
    ("PUT", "/v1/schedules/{name}", "", Scope::All),
    ("DELETE", "/v1/schedules/{name}", "", Scope::All),
    ("POST", "/v1/keys", "", Scope::All),
    ("GET", "/v1/keys", "", Scope::All),
    ("DELETE", "/v1/keys/{id}", "", Scope::All),
];

struct Keys {
    producer: String,
    worker: String,
    reader: String,
    admin: String,
    other: String,
}

impl Keys {
    fn of(&self, who: Who) -> Option<&str> {
        match who {
            Who::Nobody => None,
            Who::Producer => Some(&self.producer),
            Who::Worker => Some(&self.worker),
            Who::Reader => Some(&self.reader),
            Who::Admin => Some(&self.admin),
            Who::OtherQueue => Some(&self.other),
        }
    }
}

/// Makes a key on the store, as `weir keys create` does.
async fn make_key(broker: &dyn Broker, roles: &[Role], queues: Option<&[&str]>) -> String {
    let spec = KeySpec {
        name: format!("{roles:?}"),
        roles: roles.to_vec(),
        queues: queues.map(|q| q.iter().map(|s| s.to_string()).collect()),
        expires_at_ms: None,
    };
    weir_server::keys::create(broker, spec).await.unwrap().key
}

async fn make_keys(broker: &dyn Broker) -> Keys {
    Keys {
        producer: make_key(broker, &[Role::Producer], None).await,
        worker: make_key(broker, &[Role::Worker], None).await,
        reader: make_key(broker, &[Role::Reader], None).await,
        admin: make_key(broker, &[Role::Admin], None).await,
        other: make_key(broker, &Role::ALL, Some(&["other*"])).await,
    }
}

struct Answer {
    status: StatusCode,
    headers: HeaderMap,
    body: String,
}

impl Answer {
    fn json(&self) -> Value {
        serde_json::from_str(&self.body).unwrap_or(Value::Null)
    }
}

/// One request through the router: `key` as a bearer token, extra headers, a
/// JSON body.
async fn call(
    app: &axum::Router,
    method: &str,
    uri: &str,
    key: Option<&str>,
    headers: &[(&str, &str)],
    body: Option<Value>,
) -> Answer {
    let mut req = Request::builder()
        .method(Method::from_bytes(method.as_bytes()).unwrap())
        .uri(uri);
    if let Some(k) = key {
        req = req.header(header::AUTHORIZATION, format!("Bearer {k}"));
    }
    for (k, v) in headers {
        req = req.header(*k, *v);
    }
    let req = match body {
        Some(b) => req
            .header(header::CONTENT_TYPE, "application/json")
            .body(Body::from(b.to_string())),
        None => req.body(Body::empty()),
    }
    .unwrap();
    let resp = app.clone().oneshot(req).await.unwrap();
    let status = resp.status();
    let headers = resp.headers().clone();
    let bytes = axum::body::to_bytes(resp.into_body(), 1 << 20)
        .await
        .unwrap();
    Answer {
        status,
        headers,
        body: String::from_utf8_lossy(&bytes).into_owned(),
    }
}

async fn enqueue(broker: &dyn Broker, queue: &str) -> String {
    enqueue_ids(broker, queue, vec![item(task("k"), "1")]).await[0].to_string()
}

async fn store_and_app(tweak: impl FnOnce(&mut ServeConfig)) -> (TestStore, axum::Router) {
    let store = TestStore::open(TestStoreConfig::default()).await;
    let mut config = ServeConfig::default();
    tweak(&mut config);
    let app = weir_server::app(store.broker.clone(), config);
    (store, app)
}

/// A concrete request for a route template: ids of live things of queue `q`
/// (fresh ones for routes that may change them), and a body that reaches the
/// queue check where the route takes the queue from its body.
async fn request_for(broker: &dyn Broker, method: &str, path: &str) -> (String, Option<Value>) {
    let mut uri = path
        .replace("{queue}", "q")
        .replace("{name}", "s")
        .replace("{version}", "x")
        .replace("{*path}", "app.js");
    if uri.contains("/v1/tasks/{id}") || uri.starts_with("/ui/tasks/") {
        uri = uri.replace("{id}", &enqueue(broker, "q").await);
    }
    if uri.contains("/v1/groups/{id}") || uri.starts_with("/ui/groups/") {
        let g = broker
            .create_group("q", vec![item(task("k"), "1")], false)
            .await
            .unwrap();
        uri = uri.replace("{id}", &g.id.to_string());
    }
    uri = uri.replace("{id}", "0000000000000000");
    let body = match (method, path) {
        ("POST", "/v1/groups") => Some(json!({"queue": "q", "tasks": [{"payload": 1}]})),
        ("POST", "/v1/acks") => Some(json!({"acks": [{
            "id": enqueue(broker, "q").await,
            "lease_id": "0".repeat(32),
            "result": null,
        }]})),
        ("POST" | "PUT", _) => Some(json!({})),
        _ => None,
    };
    (uri, body)
}

#[tokio::test]
async fn every_route_answers_each_principal_as_its_rule_says() {
    let (store, app) = store_and_app(|c| c.require_auth = true).await;
    let broker = store.broker.as_ref();
    let keys = make_keys(broker).await;
    enqueue(broker, "other-1").await;

    // Every route the router serves is in the table, and nothing else is. (The
    // methods are probed with auth off: with it on, a method no route takes is
    // refused like an unlisted route, 401, before the router could say 405.)
    let (_open_store, open_app) = store_and_app(|_| {}).await;
    let mut served = BTreeSet::new();
    for path in router_paths(&open_app) {
        for m in router_methods(&open_app, &path).await {
            served.insert((m.to_ascii_uppercase(), path.clone()));
        }
    }
    assert!(served.len() > 30, "the walk sees the router: {served:?}");
    let listed: BTreeSet<(String, String)> = TABLE
        .iter()
        .map(|(m, p, _, _)| (m.to_string(), p.to_string()))
        .collect();
    let missing: Vec<_> = served.difference(&listed).collect();
    assert!(
        missing.is_empty(),
        "routes without a line in this test's TABLE (and so perhaps in auth::RULES): {missing:?}"
    );
    let extra: Vec<_> = listed.difference(&served).collect();
    assert!(
        extra.is_empty(),
        "TABLE lines for routes not served: {extra:?}"
    );
    for (m, p) in &served {
        assert!(
            weir_server::auth::rule_of(&Method::from_bytes(m.as_bytes()).unwrap(), p).is_some(),
            "{m} {p} has no line in auth::RULES"
        );
    }

    for &(method, path, roles, scope) in TABLE {
        for who in EVERYONE {
            let (uri, body) = request_for(broker, method, path).await;
            let a = call(&app, method, &uri, keys.of(who), &[], body).await;
            let s = a.status;
            let at = format!("{method} {uri} as {who:?}: {s} {}", a.body);
            if scope == Scope::Session {
                assert_eq!(s, StatusCode::UNAUTHORIZED, "{at}");
                continue;
            }
            if scope == Scope::Open {
                assert!(
                    s != StatusCode::UNAUTHORIZED && s != StatusCode::FORBIDDEN,
                    "{at}"
                );
                continue;
            }
            let role_ok = match who {
                Who::Nobody => {
                    assert_eq!(s, StatusCode::UNAUTHORIZED, "{at}");
                    assert!(a.headers[header::WWW_AUTHENTICATE]
                        .to_str()
                        .unwrap()
                        .starts_with("Bearer"));
                    continue;
                }
                Who::Admin | Who::OtherQueue => true,
                Who::Producer => roles.contains('P'),
                Who::Worker => roles.contains('W'),
                Who::Reader => roles.contains('R'),
            };
            let queue_ok =
                who != Who::OtherQueue || scope == Scope::Filtered || scope == Scope::Later;
            if role_ok && queue_ok {
                assert!(
                    s != StatusCode::UNAUTHORIZED && s != StatusCode::FORBIDDEN,
                    "{at}"
                );
            } else {
                assert_eq!(s, StatusCode::FORBIDDEN, "{at}");
                assert_eq!(a.json()["type"], "urn:weir:problem:forbidden", "{at}");
            }
        }
    }

    // A queue-limited key lists only its queues.
    let a = call(&app, "GET", "/v1/queues", Some(&keys.other), &[], None).await;
    let names = |a: Answer| -> Vec<String> {
        let v = a.json();
        let qs = v["queues"].as_array().unwrap();
        qs.iter()
            .map(|q| q["name"].as_str().unwrap().to_owned())
            .collect()
    };
    assert_eq!(names(a), ["other-1"]);
    let all = names(call(&app, "GET", "/v1/queues", Some(&keys.admin), &[], None).await);
    assert!(
        all.contains(&"q".to_owned()) && all.contains(&"other-1".to_owned()),
        "{all:?}"
    );
}

#[tokio::test]
async fn metrics_need_a_reader_key_with_metrics_auth() {
    let (store, app) = store_and_app(|c| {
        c.require_auth = true;
        c.metrics_auth = true;
    })
    .await;
    let keys = make_keys(store.broker.as_ref()).await;
    let status = |a: Answer| a.status;
    assert_eq!(
        status(call(&app, "GET", "/metrics", None, &[], None).await),
        StatusCode::UNAUTHORIZED
    );
    assert_eq!(
        status(call(&app, "GET", "/metrics", Some(&keys.producer), &[], None).await),
        StatusCode::FORBIDDEN
    );
    let a = call(&app, "GET", "/metrics", Some(&keys.reader), &[], None).await;
    assert_eq!(a.status, StatusCode::OK);
    // The refusals above were counted by reason.
    assert!(
        a.body
            .contains("weir_auth_failures_total{reason=\"missing\"} 1"),
        "{}",
        a.body
    );
    assert!(
        a.body
            .contains("weir_auth_failures_total{reason=\"forbidden\"} 1"),
        "{}",
        a.body
    );
    // The probes stay open.
    assert_eq!(
        status(call(&app, "GET", "/healthz", None, &[], None).await),
        StatusCode::OK
    );
}

#[tokio::test]
async fn auth_turns_on_with_the_first_key_and_a_revoked_key_fails_on_every_server() {
    let store = TestStore::open(TestStoreConfig::default()).await;
    let peers = store.peers(2).await;
    let a = weir_server::app(peers[0].clone(), ServeConfig::default());
    let b = weir_server::app(peers[1].clone(), ServeConfig::default());
    // No key in the store: auth is off, and so anyone may make the first one.
    assert_eq!(
        call(&a, "GET", "/v1/queues", None, &[], None).await.status,
        StatusCode::OK
    );
    let made = call(
        &a,
        "POST",
        "/v1/keys",
        None,
        &[],
        Some(json!({"name": "ops", "roles": ["admin"]})),
    )
    .await;
    assert_eq!(made.status, StatusCode::CREATED, "{}", made.body);
    let admin = made.json()["key"].as_str().unwrap().to_owned();
    // On at once on the server that made it.
    assert_eq!(
        call(&a, "GET", "/v1/queues", None, &[], None).await.status,
        StatusCode::UNAUTHORIZED
    );
    let made = call(
        &a,
        "POST",
        "/v1/keys",
        Some(&admin),
        &[],
        Some(json!({"name": "mailer", "roles": ["producer"], "queues": ["emails*"], "expires_at": null})),
    )
    .await;
    assert_eq!(made.status, StatusCode::CREATED, "{}", made.body);
    let v = made.json();
    let (key, id) = (
        v["key"].as_str().unwrap().to_owned(),
        v["id"].as_str().unwrap().to_owned(),
    );
    assert_eq!(v["roles"], json!(["producer"]));
    assert_eq!(v["queues"], json!(["emails*"]));
    // Used on both servers.
    for app in [&a, &b] {
        let r = call(
            app,
            "POST",
            "/v1/queues/emails.eu/tasks",
            Some(&key),
            &[],
            Some(json!({"payload": 1})),
        )
        .await;
        assert_eq!(r.status, StatusCode::CREATED, "{}", r.body);
        let r = call(
            app,
            "POST",
            "/v1/queues/sms/tasks",
            Some(&key),
            &[],
            Some(json!({"payload": 1})),
        )
        .await;
        assert_eq!(r.status, StatusCode::FORBIDDEN, "{}", r.body);
    }
    // Revoked on one server: refused there at once, and on the other within a
    // second (its cache's bound, KEY_CACHE_TTL_MS, is half of that).
    let revoke = || {
        let uri = format!("/v1/keys/{id}");
        let (a, admin) = (&a, admin.clone());
        async move {
            call(a, "DELETE", &uri, Some(&admin), &[], None)
                .await
                .status
        }
    };
    assert_eq!(revoke().await, StatusCode::NO_CONTENT);
    let revoked = Instant::now();
    let enqueue = |app| {
        call(
            app,
            "POST",
            "/v1/queues/emails/tasks",
            Some(&key),
            &[],
            Some(json!({"payload": 1})),
        )
    };
    assert_eq!(enqueue(&a).await.status, StatusCode::UNAUTHORIZED);
    loop {
        let s = enqueue(&b).await.status;
        if s == StatusCode::UNAUTHORIZED {
            break;
        }
        assert_eq!(s, StatusCode::CREATED);
        assert!(
            revoked.elapsed() < Duration::from_secs(1),
            "the revoked key still works on the other server after 1 s"
        );
        tokio::task::yield_now().await;
    }
    assert_eq!(revoke().await, StatusCode::NOT_FOUND);
    let listed = call(&b, "GET", "/v1/keys", Some(&admin), &[], None).await;
    assert_eq!(
        listed.json()["keys"].as_array().unwrap().len(),
        1,
        "{}",
        listed.body
    );
}

#[tokio::test]
async fn an_expired_key_is_refused() {
    let (store, app) = store_and_app(|_| {}).await;
    let now = weir_store::Clock::now_ms(&weir_store::SystemClock);
    // Made as if a while ago, with an expiry that has passed since.
    let spec = KeySpec {
        name: "old".into(),
        roles: vec![Role::Reader],
        queues: None,
        expires_at_ms: Some(now - 1),
    };
    let made = spec.clone().make(now - 10_000).unwrap();
    store
        .broker
        .create_key(&made.id, &made.record.to_text())
        .await
        .unwrap();
    let a = call(&app, "GET", "/v1/queues", Some(&made.key), &[], None).await;
    assert_eq!(a.status, StatusCode::UNAUTHORIZED);
    assert!(a.body.contains("expired"), "{}", a.body);
    // And one that expires later works.
    let live = KeySpec {
        expires_at_ms: Some(now + 3_600_000),
        ..spec
    };
    let made = live.make(now).unwrap();
    store
        .broker
        .create_key(&made.id, &made.record.to_text())
        .await
        .unwrap();
    assert_eq!(
        call(&app, "GET", "/v1/queues", Some(&made.key), &[], None)
            .await
            .status,
        StatusCode::OK
    );
}

#[tokio::test]
async fn secrets_never_appear_in_answers() {
    let (store, app) = store_and_app(|_| {}).await;
    let admin = make_key(store.broker.as_ref(), &[Role::Admin], None).await;
    let secret = admin.rsplit('_').next().unwrap().to_owned();
    let made = call(
        &app,
        "POST",
        "/v1/keys",
        Some(&admin),
        &[],
        Some(json!({"name": "w", "roles": ["worker"]})),
    )
    .await;
    let worker = made.json()["key"].as_str().unwrap().to_owned();
    let worker_secret = worker.rsplit('_').next().unwrap().to_owned();
    // The answer that makes a key holds its text once.
    assert_eq!(made.body.matches(&worker_secret).count(), 1);
    let listed = call(&app, "GET", "/v1/keys", Some(&admin), &[], None).await;
    assert_eq!(listed.json()["keys"].as_array().unwrap().len(), 2);
    // A wrong secret for a real id, a role refusal, a malformed key: none echoes.
    let wrong = format!(
        "{}{}",
        &admin[..admin.len() - 1],
        if admin.ends_with('0') { '1' } else { '0' }
    );
    let answers = [
        listed,
        call(&app, "GET", "/v1/keys", Some(&wrong), &[], None).await,
        call(&app, "GET", "/v1/keys", Some(&worker), &[], None).await,
        call(
            &app,
            "GET",
            "/v1/keys",
            Some(&format!("{admin}x")),
            &[],
            None,
        )
        .await,
        call(
            &app,
            "POST",
            "/v1/session",
            None,
            &[],
            Some(json!({"key": wrong})),
        )
        .await,
    ];
    assert_eq!(answers[1].status, StatusCode::UNAUTHORIZED);
    assert_eq!(answers[2].status, StatusCode::FORBIDDEN);
    assert_eq!(answers[3].status, StatusCode::UNAUTHORIZED);
    assert_eq!(answers[4].status, StatusCode::UNAUTHORIZED);
    for a in &answers {
        for s in [
            &secret,
            &worker_secret,
            &wrong[wrong.len() - 64..].to_owned(),
        ] {
            assert!(!a.body.contains(s.as_str()), "{}", a.body);
            assert!(!format!("{:?}", a.headers).contains(s.as_str()));
        }
    }
}

/// The cookie's `name=value` from a `Set-Cookie`.
fn cookie(a: &Answer) -> String {
    let set = a.headers[header::SET_COOKIE].to_str().unwrap();
    for attr in ["HttpOnly", "Secure", "SameSite=Strict", "Path=/"] {
        assert!(set.contains(attr), "{set}");
    }
    set.split(';').next().unwrap().to_owned()
}

#[tokio::test]
async fn the_dashboards_session_needs_its_csrf_token_to_write() {
    let (store, app) = store_and_app(|_| {}).await;
    let admin = make_key(store.broker.as_ref(), &[Role::Admin], None).await;
    let reader = make_key(store.broker.as_ref(), &[Role::Reader], None).await;
    enqueue(store.broker.as_ref(), "q").await;

    let signed = call(
        &app,
        "POST",
        "/v1/session",
        None,
        &[],
        Some(json!({"key": admin})),
    )
    .await;
    assert_eq!(signed.status, StatusCode::OK, "{}", signed.body);
    let c = cookie(&signed);
    let v = signed.json();
    let csrf = v["csrf"].as_str().unwrap().to_owned();
    assert_eq!(v["roles"], json!(["admin"]));
    let pause = json!({"paused": true});
    // Reads with the cookie alone.
    let a = call(&app, "GET", "/v1/queues", None, &[("cookie", &c)], None).await;
    assert_eq!(a.status, StatusCode::OK);
    let a = call(&app, "GET", "/v1/session", None, &[("cookie", &c)], None).await;
    assert_eq!(a.json()["csrf"], csrf.as_str());
    // A write without the token, or with another's, is refused and changes nothing.
    let a = call(
        &app,
        "PUT",
        "/v1/queues/q/config",
        None,
        &[("cookie", &c)],
        Some(pause.clone()),
    )
    .await;
    assert_eq!(a.status, StatusCode::FORBIDDEN);
    assert_eq!(a.json()["type"], "urn:weir:problem:csrf");
    let a = call(
        &app,
        "PUT",
        "/v1/queues/q/config",
        None,
        &[("cookie", &c), ("x-csrf-token", &"0".repeat(64))],
        Some(pause.clone()),
    )
    .await;
    assert_eq!(a.status, StatusCode::FORBIDDEN);
    let q = call(&app, "GET", "/v1/queues/q", Some(&admin), &[], None).await;
    assert_eq!(q.json()["config"]["paused"], false, "{}", q.body);
    // Without a session (none, or a forged one), a write is 401.
    let a = call(
        &app,
        "PUT",
        "/v1/queues/q/config",
        None,
        &[("x-csrf-token", &csrf)],
        Some(pause.clone()),
    )
    .await;
    assert_eq!(a.status, StatusCode::UNAUTHORIZED);
    let forged = format!("{}0", &c[..c.len() - 1]);
    let forged = if forged == c {
        format!("{}1", &c[..c.len() - 1])
    } else {
        forged
    };
    let a = call(
        &app,
        "PUT",
        "/v1/queues/q/config",
        None,
        &[("cookie", &forged), ("x-csrf-token", &csrf)],
        Some(pause.clone()),
    )
    .await;
    assert_eq!(a.status, StatusCode::UNAUTHORIZED);
    // With both, it goes through.
    let a = call(
        &app,
        "PUT",
        "/v1/queues/q/config",
        None,
        &[("cookie", &c), ("x-csrf-token", &csrf)],
        Some(pause.clone()),
    )
    .await;
    assert_eq!(a.status, StatusCode::OK, "{}", a.body);
    // A reader's session reads but may not write, token or not.
    let r = call(
        &app,
        "POST",
        "/v1/session",
        None,
        &[],
        Some(json!({"key": reader})),
    )
    .await;
    let rc = cookie(&r);
    let rcsrf = r.json()["csrf"].as_str().unwrap().to_owned();
    let a = call(
        &app,
        "PUT",
        "/v1/queues/q/config",
        None,
        &[("cookie", &rc), ("x-csrf-token", &rcsrf)],
        Some(pause),
    )
    .await;
    assert_eq!(a.status, StatusCode::FORBIDDEN);
    assert_eq!(a.json()["type"], "urn:weir:problem:forbidden");
    // Signing out clears the cookie.
    let out = call(&app, "DELETE", "/v1/session", None, &[("cookie", &c)], None).await;
    assert_eq!(out.status, StatusCode::NO_CONTENT);
    assert!(out.headers[header::SET_COOKIE]
        .to_str()
        .unwrap()
        .contains("Max-Age=0"));
    // With auth off, the session says so.
    let (_s2, open_app) = store_and_app(|_| {}).await;
    let a = call(&open_app, "GET", "/v1/session", None, &[], None).await;
    assert_eq!(a.json(), json!({"auth": false}));
}

#[tokio::test]
async fn the_ingress_limit_counts_each_key_apart() {
    let limit = weir_server::IngressLimit::new(1, Duration::from_secs(3600), Some(1)).unwrap();
    let (store, app) = store_and_app(|c| c.ingress = Some(limit)).await;
    let a = make_key(store.broker.as_ref(), &[Role::Reader], None).await;
    let b = make_key(store.broker.as_ref(), &[Role::Reader], None).await;
    // All these requests come from one (unknown) address.
    assert_eq!(
        call(&app, "GET", "/v1/queues", Some(&a), &[], None)
            .await
            .status,
        StatusCode::OK
    );
    assert_eq!(
        call(&app, "GET", "/v1/queues", Some(&a), &[], None)
            .await
            .status,
        StatusCode::TOO_MANY_REQUESTS
    );
    assert_eq!(
        call(&app, "GET", "/v1/queues", Some(&b), &[], None)
            .await
            .status,
        StatusCode::OK
    );
}
