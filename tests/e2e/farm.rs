//! `latentflow worker` and `latentflow serve --nats` on a NATS JetStream server started on
//! loopback: the Debian `nats-server` (2.9), which is the version the client is checked
//! against. Without `nats-server` on PATH these tests say so and pass, unless
//! `LATENTFLOW_REQUIRE_NATS=1` (as `.ci/run` sets).

use std::collections::BTreeSet;
use std::net::TcpStream;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use futures_util::StreamExt;
use latentflow::farm::record::Record;
use latentflow::farm::{names, Farm, FarmConfig};
use latentflow::serve::store::NewJob;
use latentflow_tests::{Running, Sandbox};
use serde_json::{json, Value as Json};

use super::serve::{start, txt2img_yaml, Server};

/// A `nats-server -js` on a free loopback port, stopped on drop.
struct Nats {
    child: Child,
    url: String,
    _dir: tempfile::TempDir,
}

impl Drop for Nats {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// `nats-server` on PATH, else Debian's `/usr/sbin/nats-server`.
fn nats_server() -> Command {
    let debian = std::path::Path::new("/usr/sbin/nats-server");
    let on_path = Command::new("nats-server")
        .arg("--version")
        .output()
        .is_ok();
    Command::new(if !on_path && debian.exists() {
        debian.as_os_str()
    } else {
        "nats-server".as_ref()
    })
}

fn nats() -> Option<Nats> {
    let version = nats_server().arg("--version").output();
    let Ok(version) = version else {
        assert!(
            std::env::var("LATENTFLOW_REQUIRE_NATS").is_err(),
            "nats-server is not on PATH (Debian: apt-get install nats-server)"
        );
        eprintln!("skipped: nats-server is not on PATH (Debian: apt-get install nats-server)");
        return None;
    };
    eprintln!("{}", String::from_utf8_lossy(&version.stdout).trim());
    let dir = tempfile::tempdir().expect("tempdir");
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .expect("a free port")
        .port();
    let child = nats_server()
        .args(["-js", "-a", "127.0.0.1", "-p", &port.to_string(), "-sd"])
        .arg(dir.path())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("nats-server starts");
    let deadline = Instant::now() + Duration::from_secs(20);
    while TcpStream::connect(("127.0.0.1", port)).is_err() {
        assert!(Instant::now() < deadline, "nats-server did not start");
        std::thread::sleep(Duration::from_millis(50));
    }
    Some(Nats {
        child,
        url: format!("nats://127.0.0.1:{port}"),
        _dir: dir,
    })
}

/// A worker named `id`, started and waiting for jobs.
fn worker(sb: &Sandbox, nats: &Nats, id: &str, extra: &[&str]) -> Running {
    let data = sb.path().join(id);
    let data = data.to_str().unwrap_or_default();
    let mut args = vec![
        "worker",
        "--nats",
        &nats.url,
        "--id",
        id,
        "--data-dir",
        data,
        "--ack-wait",
        "2",
        "--threads",
        "1",
    ];
    args.extend_from_slice(extra);
    let w = sb.spawn(&args);
    let deadline = Instant::now() + Duration::from_secs(60);
    while !w.stderr().contains("waiting for jobs") {
        assert!(
            Instant::now() < deadline,
            "worker {id} did not start:\n{}",
            w.stderr()
        );
        std::thread::sleep(Duration::from_millis(50));
    }
    w
}

fn front(sb: &Sandbox, nats: &Nats, name: &str) -> Server {
    start(sb, &sb.path().join(name), &["--nats", &nats.url])
}

fn job(id: &str, set: Json) -> Json {
    json!({"graph": txt2img_yaml(), "set": set, "id": id})
}

/// Waits until job `id` is running; returns its record.
fn wait_running(s: &Server, id: &str) -> Json {
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let j = s.get(&format!("/api/v1/jobs/{id}"));
        if j["state"] == "running" {
            return j;
        }
        assert!(Instant::now() < deadline, "job {id} did not start: {j}");
        std::thread::sleep(Duration::from_millis(30));
    }
}

fn block<F: std::future::Future>(f: F) -> F::Output {
    tokio::runtime::Builder::new_multi_thread()
        .worker_threads(1)
        .enable_all()
        .build()
        .expect("runtime")
        .block_on(f)
}

/// `(pending, unacknowledged)` messages of the default pool's consumer.
fn consumer_backlog(nats: &Nats) -> (u64, usize) {
    block(async {
        let farm = Farm::connect(FarmConfig::new(nats.url.clone()), "test")
            .await
            .expect("connect");
        let mut c: async_nats::jetstream::consumer::PullConsumer = farm
            .jobs
            .get_consumer(&names::consumer(names::DEFAULT_POOL))
            .await
            .expect("consumer");
        let info = c.info().await.expect("consumer info");
        (info.num_pending, info.num_ack_pending)
    })
}

#[test]
fn three_workers_run_fifty_jobs_each_exactly_once() {
    let Some(nats) = nats() else { return };
    let sb = Sandbox::new();
    let _w: Vec<Running> = ["w1", "w2", "w3"]
        .iter()
        .map(|id| worker(&sb, &nats, id, &[]))
        .collect();
    let s = front(&sb, &nats, "front");
    // The workers say who they are and what they have.
    let deadline = Instant::now() + Duration::from_secs(20);
    while s.get("/api/v1/workers").as_array().map_or(0, Vec::len) < 3 {
        assert!(Instant::now() < deadline, "{}", s.get("/api/v1/workers"));
        std::thread::sleep(Duration::from_millis(100));
    }
    let workers = s.get("/api/v1/workers");
    assert!(workers[0]["plugins"]["sd"].is_string(), "{workers}");
    assert_eq!(workers[0]["devices"][0]["kind"], "cpu");
    for k in 0..50 {
        let r = s.post(
            "/api/v1/jobs",
            &job(&format!("j{k}"), json!({"steps": 1, "seed": k})),
        );
        assert!(r.is_ok(), "{r:?}");
    }
    for k in 0..50 {
        let j = s.wait_job(&format!("j{k}"), 300);
        assert_eq!(j["state"], "succeeded", "{j}");
    }
    let history = s.get("/api/v1/history?limit=1000");
    let ids: Vec<&str> = history
        .as_array()
        .expect("history")
        .iter()
        .filter_map(|j| j["id"].as_str())
        .collect();
    let unique: BTreeSet<&str> = ids.iter().copied().collect();
    assert_eq!((ids.len(), unique.len()), (50, 50), "{ids:?}");
    let ran_on: BTreeSet<&str> = history
        .as_array()
        .into_iter()
        .flatten()
        .filter_map(|j| j["worker"].as_str())
        .collect();
    assert!(ran_on.len() >= 2, "one worker did everything: {ran_on:?}");
    // Outputs come from the object store; the stream is drained.
    let out = s.get("/api/v1/jobs/j7")["outputs"]["save"][0]
        .as_str()
        .expect("an output")
        .to_string();
    let png = ureq::get(&s.url(&format!("/api/v1/outputs/{out}")))
        .call()
        .expect("output");
    let mut bytes = Vec::new();
    std::io::Read::read_to_end(&mut png.into_reader(), &mut bytes).expect("read");
    assert!(bytes.starts_with(b"\x89PNG"), "not a PNG");
    assert_eq!(consumer_backlog(&nats), (0, 0));
}

#[test]
fn a_worker_killed_mid_job_has_its_job_redelivered_and_finished_elsewhere() {
    let Some(nats) = nats() else { return };
    let sb = Sandbox::new();
    let mut a = worker(&sb, &nats, "a", &[]);
    let s = front(&sb, &nats, "front");
    s.post(
        "/api/v1/jobs",
        &job("long", json!({"steps": 60, "width": 128, "height": 128})),
    )
    .expect("queued");
    let r = wait_running(&s, "long");
    assert_eq!(r["worker"], "a");
    let _b = worker(&sb, &nats, "b", &[]);
    std::thread::sleep(Duration::from_millis(300));
    a.child.kill().expect("kill -9");
    let _ = a.child.wait();
    let j = s.wait_job("long", 180);
    assert_eq!(j["state"], "succeeded", "{j}");
    assert_eq!(j["worker"], "b", "{j}");
    assert_eq!(j["attempts"], 2, "{j}");
    assert_eq!(s.get("/api/v1/history").as_array().map(Vec::len), Some(1));
    assert_eq!(consumer_backlog(&nats), (0, 0));
}

#[test]
fn cancel_reaches_the_worker_running_the_job_and_no_other() {
    let Some(nats) = nats() else { return };
    let sb = Sandbox::new();
    let _a = worker(&sb, &nats, "a", &[]);
    let _b = worker(&sb, &nats, "b", &[]);
    let s = front(&sb, &nats, "front");
    let slow = json!({"steps": 40, "width": 128, "height": 128});
    s.post("/api/v1/jobs", &job("one", slow.clone()))
        .expect("queued");
    s.post("/api/v1/jobs", &job("two", slow)).expect("queued");
    let one = wait_running(&s, "one");
    let two = wait_running(&s, "two");
    assert_ne!(one["worker"], two["worker"]);
    let asked = Instant::now();
    s.post("/api/v1/jobs/one/cancel", &json!({}))
        .expect("cancel");
    let one = s.wait_job("one", 60);
    assert_eq!(one["state"], "cancelled", "{one}");
    assert!(asked.elapsed() < Duration::from_secs(20));
    let two = s.wait_job("two", 240);
    assert_eq!(two["state"], "succeeded", "{two}");
    // Cancelling a job that is over is refused.
    assert!(matches!(
        s.post("/api/v1/jobs/two/cancel", &json!({})),
        Err((404, _))
    ));
}

#[test]
fn a_job_submitted_twice_with_one_id_is_queued_once() {
    let Some(nats) = nats() else { return };
    let sb = Sandbox::new();
    let _w = worker(&sb, &nats, "w", &[]);
    let f1 = front(&sb, &nats, "f1");
    let f2 = front(&sb, &nats, "f2");
    // Both front ends at once.
    let body = job("same", json!({"steps": 2}));
    let answers: Vec<Result<Json, (u16, Json)>> = std::thread::scope(|t| {
        let a = t.spawn(|| f1.post("/api/v1/jobs", &body));
        let b = t.spawn(|| f2.post("/api/v1/jobs", &body));
        vec![a.join().expect("a"), b.join().expect("b")]
    });
    let created = answers.iter().filter(|a| a.is_ok()).count();
    let refused = answers
        .iter()
        .filter(|a| matches!(a, Err((409, _))))
        .count();
    assert_eq!((created, refused), (1, 1), "{answers:?}");
    assert_eq!(f1.wait_job("same", 120)["state"], "succeeded");
    // And again, once it is over.
    assert!(matches!(f2.post("/api/v1/jobs", &body), Err((409, _))));
    let h1 = f1.get("/api/v1/history");
    let h2 = f2.get("/api/v1/history");
    assert_eq!(h1.as_array().map(Vec::len), Some(1), "{h1}");
    assert_eq!(h2.as_array().map(Vec::len), Some(1), "{h2}");

    // The stream itself drops a second message with the same Nats-Msg-Id; the client talks to
    // the server version installed here.
    let cli = Command::new("nats-server")
        .arg("--version")
        .output()
        .expect("version");
    let cli = String::from_utf8_lossy(&cli.stdout).to_string();
    block(async {
        let farm = Farm::connect(FarmConfig::new(nats.url.clone()), "test")
            .await
            .expect("connect");
        let server = farm.client.server_info().version;
        assert!(cli.contains(&server), "{cli} vs {server}");
        let rec = record("direct", "nodes: {}");
        let mut dup = Vec::new();
        for _ in 0..2 {
            let ack = farm
                .js
                .send_publish(
                    names::jobs_subject("elsewhere"),
                    async_nats::jetstream::message::PublishMessage::build()
                        .payload(rec.bytes())
                        .message_id("direct"),
                )
                .await
                .expect("publish")
                .await
                .expect("ack");
            dup.push(ack.duplicate);
        }
        assert_eq!(dup, vec![false, true]);
    });
}

fn record(id: &str, graph: &str) -> Record {
    Record::pending(
        NewJob {
            id: id.into(),
            graph: graph.into(),
            set: Vec::new(),
            client: None,
            comfy: None,
            origin: Json::Null,
            pool: None,
            needs: Vec::new(),
        },
        names::DEFAULT_POOL.into(),
        0,
    )
}

#[test]
fn an_invalid_graph_is_terminated_with_an_error_event_and_a_lost_job_is_dead_lettered() {
    let Some(nats) = nats() else { return };
    let sb = Sandbox::new();
    // One delivery only: a job whose worker dies goes to the dead letters.
    let mut w = worker(&sb, &nats, "w", &["--max-deliver", "1"]);
    let s = front(&sb, &nats, "front");
    // Straight onto the stream, past the front end's validation.
    block(async {
        let farm = Farm::connect(FarmConfig::new(nats.url.clone()), "test")
            .await
            .expect("connect");
        let mut events = farm
            .client
            .subscribe(format!("{}.bad", names::EVENTS))
            .await
            .expect("subscribe");
        farm.client.flush().await.expect("flush");
        let rec = record("bad", "nodes:\n  x: {type: no.such_node}\n");
        farm.js
            .publish(names::jobs_subject(names::DEFAULT_POOL), rec.bytes())
            .await
            .expect("publish")
            .await
            .expect("ack");
        let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
        loop {
            let m = tokio::time::timeout_at(deadline, events.next())
                .await
                .expect("an error event")
                .expect("subscription");
            let e: Json = serde_json::from_slice(&m.payload).expect("JSON");
            if e["comfy"]["type"] == "execution_error" {
                let text = e["comfy"]["data"]["exception_message"]
                    .as_str()
                    .unwrap_or("");
                assert!(text.contains("no.such_node"), "{e}");
                break;
            }
        }
    });
    let bad = s.wait_job("bad", 30);
    assert_eq!(bad["state"], "failed");
    assert_eq!(bad["attempts"], 1);
    // Terminated, not redelivered.
    std::thread::sleep(Duration::from_secs(3));
    assert_eq!(consumer_backlog(&nats), (0, 0));
    assert_eq!(s.get("/api/v1/jobs/bad")["attempts"], 1);

    s.post(
        "/api/v1/jobs",
        &job("lost", json!({"steps": 200, "width": 128, "height": 128})),
    )
    .expect("queued");
    wait_running(&s, "lost");
    // The server gives up on a job when the pool next asks for work: another worker is there.
    let _other = worker(&sb, &nats, "other", &[]);
    w.child.kill().expect("kill -9");
    let _ = w.child.wait();
    let lost = s.wait_job("lost", 60);
    assert_eq!(lost["state"], "failed", "{lost}");
    let why = lost["error"].as_str().unwrap_or_default();
    assert!(
        why.contains("no worker finished it") && why.contains("lf.dead.default"),
        "{why}"
    );
    block(async {
        let farm = Farm::connect(FarmConfig::new(nats.url.clone()), "test")
            .await
            .expect("connect");
        let mut dead = farm
            .js
            .get_stream(names::DEAD_STREAM)
            .await
            .expect("LF_DEAD");
        let (messages, first) = {
            let info = dead.info().await.expect("info");
            (info.state.messages, info.state.first_sequence)
        };
        assert_eq!(messages, 1);
        let msg = dead.get_raw_message(first).await.expect("message");
        assert_eq!(
            Record::parse(&msg.payload).map(|r| r.job.id),
            Some("lost".to_string())
        );
    });
    assert_eq!(consumer_backlog(&nats), (0, 0));
}
