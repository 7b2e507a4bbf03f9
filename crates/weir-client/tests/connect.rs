//! What `ClientBuilder` sets up, on a real socket: the API key goes out as
//! `Authorization: Bearer <key>` on every request (checked against a stand-in
//! server that records it: weir does not check keys yet), and never shows in an
//! error; a CA given as PEM makes an `https://` weir server trusted (a
//! self-signed certificate as its own CA) for requests and for the worker
//! channel (`wss://`), and without it the client refuses both.

use std::sync::{Arc, Mutex};

use axum::http::HeaderMap;
use axum::routing::{get, post};
use axum::{Json, Router};
use serde_json::json;
use weir_client::{AckItem, Client, EnqueueOptions, Error, Hello, Pushed};

const KEY: &str = "wk_test_s3cr3t";

/// A stand-in server that records each request's `Authorization` header.
async fn recorder() -> (String, Arc<Mutex<Vec<Option<String>>>>) {
    let seen = Arc::new(Mutex::new(Vec::new()));
    let record = |seen: Arc<Mutex<Vec<Option<String>>>>| {
        move |headers: HeaderMap| {
            let auth = headers
                .get("authorization")
                .map(|v| v.to_str().unwrap().to_owned());
            seen.lock().unwrap().push(auth);
        }
    };
    let on_queues = record(seen.clone());
    let on_enqueue = record(seen.clone());
    let app = Router::new()
        .route(
            "/v1/queues",
            get(move |h: HeaderMap| async move {
                on_queues(h);
                Json(json!({"queues": []}))
            }),
        )
        .route(
            "/v1/queues/{queue}/tasks",
            post(move |h: HeaderMap| async move {
                on_enqueue(h);
                (
                    axum::http::StatusCode::FORBIDDEN,
                    [("content-type", "application/problem+json")],
                    Json(json!({
                        "type": "urn:weir:problem:forbidden",
                        "title": "Forbidden",
                        "status": 403,
                        "detail": "this key may not enqueue",
                    })),
                )
            }),
        );
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let base = format!("http://{}", listener.local_addr().unwrap());
    tokio::spawn(async move { axum::serve(listener, app).await });
    (base, seen)
}

#[tokio::test]
async fn every_request_carries_the_api_key_as_a_bearer_token() {
    let (base, seen) = recorder().await;
    let c = Client::builder(&base).api_key(KEY).build().unwrap();
    assert!(c.queues().await.unwrap().is_empty());
    let e = c
        .enqueue("q", &EnqueueOptions::new(json!(1)))
        .await
        .unwrap_err();
    assert!(matches!(e, Error::Invalid { status: 403, .. }), "{e:?}");
    assert!(!format!("{e} {e:?} {c:?}").contains(KEY));
    let bearer = Some(format!("Bearer {KEY}"));
    assert_eq!(*seen.lock().unwrap(), vec![bearer.clone(), bearer]);

    // Without a key, no header.
    let c = Client::new(&base).unwrap();
    c.queues().await.unwrap();
    assert_eq!(seen.lock().unwrap().last(), Some(&None));
}

#[tokio::test]
async fn a_ca_given_as_pem_makes_an_https_server_trusted() {
    let rcgen::CertifiedKey { cert, key_pair } =
        rcgen::generate_simple_self_signed(vec!["127.0.0.1".to_owned(), "localhost".to_owned()])
            .unwrap();
    let dir = tempfile::tempdir().unwrap();
    let (cert_path, key_path) = (dir.path().join("cert.pem"), dir.path().join("key.pem"));
    std::fs::write(&cert_path, cert.pem()).unwrap();
    std::fs::write(&key_path, key_pair.serialize_pem()).unwrap();
    let tls = weir_server::ServerTls::load(weir_server::TlsFiles {
        cert: cert_path.clone(),
        key: key_path,
    })
    .unwrap();
    let mut config = weir_server::ServeConfig::new();
    config.tls = Some(tls);
    let store = weir_store::testing::TestStore::open(Default::default()).await;
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let base = format!("https://{}", listener.local_addr().unwrap());
    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    let server = tokio::spawn(weir_server::serve(
        listener,
        config,
        store.broker.clone(),
        async move {
            let _ = stopped.await;
        },
    ));

    let c = Client::builder(&base)
        .ca_cert_pem(cert.pem())
        .api_key(KEY)
        .build()
        .unwrap();
    let id = c
        .enqueue("q", &EnqueueOptions::new(json!({"over": "tls"})))
        .await
        .unwrap()
        .id;
    assert_eq!(c.get(&id).await.unwrap().payload, json!({"over": "tls"}));

    // The worker channel over the same TLS (`wss://`), trusting the same CA:
    // the task is pushed and its ack settled.
    let queues = ["q".to_owned()];
    let hello = Hello {
        queues: &queues,
        worker: Some("w-tls"),
        credit: 1,
    };
    let (mut tx, mut rx, welcome) = c.open_channel(&hello).await.unwrap();
    assert_eq!(welcome.queues, queues);
    let Some(Ok(Pushed::Tasks(batch))) = rx.next().await else {
        panic!("no push over wss")
    };
    assert_eq!(batch.tasks[0].id, id);
    let ack = AckItem {
        id: id.clone(),
        lease_id: batch.tasks[0].lease_id.clone(),
        result: json!("done over wss"),
    };
    tx.settle(7, &[ack], &[], &[]).await.unwrap();
    let Some(Ok(Pushed::Settled(settled))) = rx.next().await else {
        panic!("no settled over wss")
    };
    assert_eq!(settled.seq, 7);
    assert!(settled.acks[0].ok, "{settled:?}");
    assert_eq!(
        c.get(&id).await.unwrap().result,
        Some(json!("done over wss"))
    );
    // Left open: the server's shutdown below closes it.

    // The same from the file.
    let c = Client::builder(&base)
        .ca_cert_file(&cert_path)
        .build()
        .unwrap();
    assert_eq!(c.queues().await.unwrap().len(), 1);

    // Without it: a transport error whose causes name the certificate.
    let e = Client::new(&base).unwrap().queues().await.unwrap_err();
    let Error::Transport(source) = &e else {
        panic!("{e:?}")
    };
    let mut shown = String::new();
    let mut cause: Option<&(dyn std::error::Error + 'static)> = Some(source);
    while let Some(c) = cause {
        shown.push_str(&format!("{c}; "));
        cause = c.source();
    }
    assert!(shown.contains("certificate"), "{shown}");
    // And no channel either: the TLS error names the certificate.
    let e = Client::new(&base)
        .unwrap()
        .open_channel(&hello)
        .await
        .err()
        .expect("a channel to an untrusted server");
    assert!(format!("{e}").contains("certificate"), "{e}");

    let _ = stop.send(());
    server.await.unwrap().unwrap();
}
