//! The Redis store on a real Redis Cluster: three `redis-server --cluster-enabled`
//! processes on free ports, joined by `redis-cli --cluster create`, then the
//! conformance suite (a fresh prefix per case) and queue names that would break
//! a naive hash tag. The processes are killed when the test ends (`Cluster`'s
//! Drop). It needs `redis-server` and `redis-cli` on PATH; without them it fails.

use std::net::TcpListener;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use rand::Rng;
use weir_core::{Backoff, Limits, TaskState};
use weir_store::conformance::{self as c, item, task, WAIT};
use weir_store::redis::keys;
use weir_store::{Broker, Checked, RedisBroker, RedisConfig, RedisTarget};

/// Three cluster nodes, killed on drop.
struct Cluster {
    nodes: Vec<Child>,
    ports: Vec<u16>,
    _dir: tempfile::TempDir,
}

impl Drop for Cluster {
    fn drop(&mut self) {
        for n in &mut self.nodes {
            let _ = n.kill();
            let _ = n.wait();
        }
    }
}

/// A port below 55000 whose cluster bus port (port + 10000) is free too.
fn free_port(taken: &[u16]) -> u16 {
    loop {
        let l = TcpListener::bind("127.0.0.1:0").unwrap();
        let p = l.local_addr().unwrap().port();
        if p >= 55000 || taken.contains(&p) {
            continue;
        }
        if TcpListener::bind(("127.0.0.1", p + 10000)).is_ok() {
            return p;
        }
    }
}

fn cli(port: u16, args: &[&str]) -> String {
    let out = Command::new("redis-cli")
        .args(["-p", &port.to_string()])
        .args(args)
        .output()
        .expect("redis-cli runs");
    String::from_utf8_lossy(&out.stdout).into_owned()
}

fn start_cluster() -> Cluster {
    let dir = tempfile::tempdir().unwrap();
    let mut ports = Vec::new();
    for _ in 0..3 {
        ports.push(free_port(&ports));
    }
    let mut cluster = Cluster {
        nodes: Vec::new(),
        ports: ports.clone(),
        _dir: dir,
    };
    for &p in &ports {
        let d = cluster._dir.path().join(p.to_string());
        std::fs::create_dir_all(&d).unwrap();
        let child = Command::new("redis-server")
            .args(["--port", &p.to_string(), "--bind", "127.0.0.1"])
            .args([
                "--cluster-enabled",
                "yes",
                "--cluster-config-file",
                "nodes.conf",
            ])
            .args([
                "--dir",
                d.to_str().unwrap(),
                "--save",
                "",
                "--appendonly",
                "no",
            ])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("redis-server runs");
        cluster.nodes.push(child);
    }
    let deadline = Instant::now() + Duration::from_secs(20);
    for &p in &ports {
        while cli(p, &["PING"]).trim() != "PONG" {
            assert!(Instant::now() < deadline, "node {p} never answered");
            std::thread::sleep(Duration::from_millis(20));
        }
    }
    let addrs: Vec<String> = ports.iter().map(|p| format!("127.0.0.1:{p}")).collect();
    let out = Command::new("redis-cli")
        .args(["--cluster", "create"])
        .args(&addrs)
        .args(["--cluster-replicas", "0", "--cluster-yes"])
        .output()
        .expect("redis-cli --cluster create runs");
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stdout)
    );
    for &p in &ports {
        while !cli(p, &["CLUSTER", "INFO"]).contains("cluster_state:ok") {
            assert!(Instant::now() < deadline, "cluster never became ok");
            std::thread::sleep(Duration::from_millis(50));
        }
    }
    cluster
}

async fn broker(cluster: &Cluster) -> Checked<RedisBroker> {
    let target = RedisTarget::parse(&format!(
        "redis-cluster://127.0.0.1:{},127.0.0.1:{}",
        cluster.ports[0], cluster.ports[1]
    ))
    .unwrap();
    let mut cfg = RedisConfig::new(target);
    cfg.prefix = format!("weirtest-{:016x}", rand::thread_rng().gen::<u64>());
    cfg.lease_grace_ms = 0;
    cfg.backoff = Backoff {
        base_ms: 2,
        cap_ms: 4,
    };
    cfg.sweep_interval_ms = 100;
    Checked::new(RedisBroker::connect(cfg).await.unwrap(), Limits::default())
}

/// The master serving each slot, from `CLUSTER SLOTS` (as "host:port").
fn master_of(port: u16, slot: u16) -> String {
    // CLUSTER NODES lines: "id host:port@bus flags master ... slot-ranges".
    let nodes = cli(port, &["CLUSTER", "NODES"]);
    for line in nodes.lines() {
        let f: Vec<&str> = line.split_whitespace().collect();
        if f.len() < 9 || !f[2].contains("master") {
            continue;
        }
        for range in &f[8..] {
            let (a, b) = range.split_once('-').unwrap_or((range, range));
            if let (Ok(a), Ok(b)) = (a.parse::<u16>(), b.parse::<u16>()) {
                if (a..=b).contains(&slot) {
                    return f[1].split('@').next().unwrap().to_owned();
                }
            }
        }
    }
    panic!("no master serves slot {slot}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn redis_cluster_runs_the_conformance_suite_and_odd_queue_names() {
    let cluster = start_cluster();

    macro_rules! cases {
        ($($case:ident),* $(,)?) => {$(
            c::$case(&broker(&cluster).await).await;
        )*};
    }
    cases!(
        enqueue_get_lease_ack,
        unknown_task_is_none,
        priority_then_fifo,
        lease_respects_max,
        stale_lease_is_refused,
        fail_retries_then_dies,
        fail_without_retry_dies,
        lease_expiry_requeues_then_dies,
        release_does_not_count,
        cancel_queued_and_active,
        idempotency_key_dedupes,
        delayed_task_waits_for_run_at,
        deadline_passed_is_dead_not_started,
        batch_settle_reports_each,
        bad_queue_name_changes_nothing,
        group_completes_with_results_in_order,
        group_fail_fast_cancels_the_rest,
        group_without_fail_fast_runs_everything,
        group_cancel_cancels_members,
        group_member_retried_after_fail_fast_is_canceled,
        lease_on_unknown_queue_creates_nothing,
        delete_queue_only_when_empty,
        lease_ids_are_random,
        // API keys: one hash outside every queue's slot, its script valid on
        // Cluster because it touches that one key only.
        api_keys_round_trip_through_create_get_list_and_delete,
        creating_an_existing_key_id_is_refused_and_changes_nothing,
        key_use_only_moves_forward_and_never_revives_a_key,
        has_keys_turns_on_with_the_first_key_and_off_with_the_last,
    );
    c::long_poll_lease_wakes_on_enqueue(broker(&cluster).await).await;
    c::long_poll_lease_on_a_new_queue_wakes_on_its_first_enqueue(broker(&cluster).await).await;
    c::watch_returns_when_a_cancel_is_requested(broker(&cluster).await).await;
    c::wait_wakes_when_terminal(broker(&cluster).await).await;

    // Names with braces, colons and non-ASCII letters: each queue's keys stay in
    // one slot (its own), and different queues land on different masters.
    // `Checked` refuses some of these names today; the store itself (reached
    // directly here) must not depend on that.
    let checked = broker(&cluster).await;
    let b = checked.inner();
    let names = [
        "a{b}:c", "zürich", "{", "}", "{}", "x:y", "q1", "q2", "q3", "q4",
    ];
    let mut masters = std::collections::BTreeSet::new();
    for name in names {
        let out = b
            .enqueue(name, vec![item(task("k"), "1"), item(task("k"), "2")])
            .await
            .unwrap();
        let id = out[0].id;
        let slot = keys::queue_slot(name);
        assert_eq!(keys::slot_of(id), slot);
        let keyslot: u16 = cli(
            cluster.ports[0],
            &[
                "CLUSTER",
                "KEYSLOT",
                &format!("p:{{{}}}:t:{id}", keys::tag(slot)),
            ],
        )
        .trim()
        .parse()
        .unwrap();
        assert_eq!(keyslot, slot, "{name}");
        masters.insert(master_of(cluster.ports[0], slot));
        let l = b.lease(name, 2, WAIT).await.unwrap();
        assert_eq!(l.len(), 2, "{name}");
        c::ack(b, l[0].record.id, l[0].lease_id).await;
        let v = b.get(l[0].record.id).await.unwrap().unwrap();
        assert_eq!(v.record.state, TaskState::Completed);
        assert_eq!(v.record.queue, name);
        let q = b.queues().await.unwrap();
        let info = q.iter().find(|q| q.name == name).unwrap();
        assert_eq!(info.counts.get(TaskState::Active), 1, "{name}");
    }
    assert!(masters.len() >= 2, "all queues on one master: {masters:?}");

    // One settle batch across queues on different slots: one script call per slot.
    let (x, y) = ("x:y", "zürich");
    assert_ne!(keys::queue_slot(x), keys::queue_slot(y));
    for q in [x, y] {
        b.enqueue(q, vec![item(task("k"), "3")]).await.unwrap();
    }
    let lx = b.lease(x, 1, WAIT).await.unwrap().remove(0);
    let ly = b.lease(y, 1, WAIT).await.unwrap().remove(0);
    let out = b
        .settle(vec![
            weir_store::Settle::Ack {
                id: lx.record.id,
                lease_id: lx.lease_id,
                result: None,
            },
            weir_store::Settle::Fail {
                id: ly.record.id,
                lease_id: ly.lease_id,
                error: "no".into(),
                retry: false,
            },
        ])
        .await
        .unwrap();
    assert_eq!(out[0].as_ref().unwrap(), &TaskState::Completed);
    assert_eq!(out[1].as_ref().unwrap(), &TaskState::Dead);
    drop(cluster);
}
