//! The client's futures against a real server: a task's `wait` resolves when a
//! worker acks it; a group's `wait` returns results in order or the first failure.

use std::time::Duration;

use serde_json::json;
use weir_client::{Client, EnqueueOptions, GroupState, TaskState, WaitError};

const WAIT: Duration = Duration::from_secs(20);

async fn server() -> (
    Client,
    tokio::sync::oneshot::Sender<()>,
    weir_store::testing::TestStore,
) {
    let store = weir_store::testing::TestStore::open(Default::default()).await;
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let (tx, rx) = tokio::sync::oneshot::channel::<()>();
    tokio::spawn(weir_server::serve(
        listener,
        weir_server::ServeConfig::new(),
        store.broker.clone(),
        async move {
            let _ = rx.await;
        },
    ));
    (Client::new(format!("http://{addr}")).unwrap(), tx, store)
}

#[tokio::test]
async fn task_future_resolves_on_ack() {
    let (c, _stop, _dir) = server().await;
    let handle = c
        .submit("f", &EnqueueOptions::new(json!({"x": 1})))
        .await
        .unwrap();
    let waiter = {
        let h = handle.clone();
        tokio::spawn(async move { h.wait(WAIT).await })
    };
    let t = c.lease("f", 1, 5000, None).await.unwrap().tasks.remove(0);
    assert_eq!(t.id, handle.id());
    c.ack(&t.id, &t.lease_id, &json!({"done": true}))
        .await
        .unwrap();
    assert_eq!(waiter.await.unwrap().unwrap(), json!({"done": true}));
    // A short wait on a task nobody works on times out.
    let h2 = c.submit("f", &EnqueueOptions::new(json!(2))).await.unwrap();
    assert!(matches!(
        h2.wait(Duration::from_millis(30)).await,
        Err(WaitError::Timeout)
    ));
    // A canceled task is an error with its state.
    c.cancel(h2.id()).await.unwrap();
    match h2.wait(WAIT).await {
        Err(WaitError::TaskFailed { state, .. }) => assert_eq!(state, TaskState::Canceled),
        other => panic!("{other:?}"),
    }
}

#[tokio::test]
async fn group_future_gives_results_in_order_or_the_first_failure() {
    let (c, _stop, _dir) = server().await;
    let tasks: Vec<EnqueueOptions> = (0..3).map(|i| EnqueueOptions::new(json!(i))).collect();
    let g = c.group("g", &tasks, true).await.unwrap();
    let leased = c.lease("g", 3, 5000, None).await.unwrap().tasks;
    for t in leased.iter().rev() {
        c.ack(&t.id, &t.lease_id, &json!(t.payload.as_i64().unwrap() * 10))
            .await
            .unwrap();
    }
    assert_eq!(
        g.wait(WAIT).await.unwrap(),
        vec![json!(0), json!(10), json!(20)]
    );

    let g = c.group("g2", &tasks, true).await.unwrap();
    let leased = c.lease("g2", 1, 5000, None).await.unwrap().tasks;
    c.fail(&leased[0].id, &leased[0].lease_id, "broken", false)
        .await
        .unwrap();
    match g.wait(WAIT).await {
        Err(WaitError::GroupFailed {
            state,
            task_id,
            error,
            ..
        }) => {
            assert_eq!(state, GroupState::Failed);
            assert_eq!(task_id, leased[0].id);
            assert_eq!(error.as_deref(), Some("broken"));
        }
        other => panic!("{other:?}"),
    }
    let view = c.get_group(g.id()).await.unwrap();
    assert_eq!(view.counts.canceled, 2);
    assert!(matches!(
        g.cancel().await,
        Err(weir_client::Error::Conflict { .. })
    ));
}
