//! `latentflow serve`: the native API, the ComfyUI subset driven by a Python client written
//! against ComfyUI's API, the queue surviving a `kill -9`, security, and a bounded load test.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use latentflow_tests::{workspace_root, Running, Sandbox};
use serde_json::{json, Value as Json};

/// A running server and its address.
pub(crate) struct Server {
    pub(crate) proc: Running,
    addr: String,
}

impl Drop for Server {
    fn drop(&mut self) {
        let _ = self.proc.child.kill();
        let _ = self.proc.child.wait();
    }
}

pub(crate) fn start(sb: &Sandbox, data: &Path, extra: &[&str]) -> Server {
    let mut args = vec![
        "serve",
        "--listen",
        "127.0.0.1:0",
        "--data-dir",
        data.to_str().unwrap_or_default(),
    ];
    args.extend_from_slice(extra);
    let proc = sb.spawn(&args);
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let err = proc.stderr();
        if let Some(line) = err.lines().find(|l| l.contains("listening on http://")) {
            let addr = line
                .rsplit("http://")
                .next()
                .unwrap_or_default()
                .trim()
                .to_string();
            return Server { proc, addr };
        }
        assert!(
            Instant::now() < deadline,
            "the server did not start:\n{err}"
        );
        std::thread::sleep(Duration::from_millis(50));
    }
}

impl Server {
    pub(crate) fn url(&self, path: &str) -> String {
        format!("http://{}{path}", self.addr)
    }

    pub(crate) fn get(&self, path: &str) -> Json {
        ureq::get(&self.url(path))
            .call()
            .expect("GET")
            .into_json()
            .expect("JSON")
    }

    pub(crate) fn post(&self, path: &str, body: &Json) -> Result<Json, (u16, Json)> {
        match ureq::post(&self.url(path)).send_json(body.clone()) {
            Ok(r) => Ok(r.into_json().unwrap_or(Json::Null)),
            Err(ureq::Error::Status(code, r)) => Err((code, r.into_json().unwrap_or(Json::Null))),
            Err(e) => panic!("POST {path}: {e}"),
        }
    }

    /// Waits until job `id` is over; returns it.
    pub(crate) fn wait_job(&self, id: &str, secs: u64) -> Json {
        let deadline = Instant::now() + Duration::from_secs(secs);
        loop {
            let j = self.get(&format!("/api/v1/jobs/{id}"));
            if matches!(
                j["state"].as_str(),
                Some("succeeded" | "failed" | "cancelled")
            ) {
                return j;
            }
            assert!(Instant::now() < deadline, "job {id} did not finish: {j}");
            std::thread::sleep(Duration::from_millis(50));
        }
    }
}

pub(crate) fn txt2img_yaml() -> String {
    std::fs::read_to_string(workspace_root().join("graphs/txt2img.yaml"))
        .expect("txt2img graph")
        .replace(
            "../models/tiny-shapes",
            &workspace_root()
                .join("models/tiny-shapes")
                .display()
                .to_string(),
        )
}

/// A ComfyUI API-format prompt with ComfyUI's core class names (as ComfyUI's own examples
/// write it), on the default model.
fn comfy_prompt(steps: u32) -> Json {
    let model = workspace_root()
        .join("models/tiny-shapes")
        .display()
        .to_string();
    json!({
        "3": {"class_type": "KSampler", "inputs": {"cfg": 7.5, "denoise": 1, "latent_image": ["5", 0], "model": ["4", 0],
              "negative": ["7", 0], "positive": ["6", 0], "sampler_name": "euler", "scheduler": "karras", "seed": 42, "steps": steps}},
        "4": {"class_type": "CheckpointLoaderSimple", "inputs": {"ckpt_name": model}},
        "5": {"class_type": "EmptyLatentImage", "inputs": {"batch_size": 1, "height": 64, "width": 64}},
        "6": {"class_type": "CLIPTextEncode", "inputs": {"clip": ["4", 1], "text": "a red circle on a blue background"}},
        "7": {"class_type": "CLIPTextEncode", "inputs": {"clip": ["4", 1], "text": ""}},
        "8": {"class_type": "VAEDecode", "inputs": {"samples": ["3", 0], "vae": ["4", 2]}},
        "9": {"class_type": "SaveImage", "inputs": {"filename_prefix": "ComfyUI", "images": ["8", 0]}}
    })
}

/// `target/pydeps` with websocket-client (pinned by hash), installed on first use.
fn pydeps() -> PathBuf {
    let dir = workspace_root().join("target/pydeps");
    if !dir.join("websocket").exists() {
        let status = Command::new("python3")
            .args([
                "-m",
                "pip",
                "install",
                "--quiet",
                "--no-deps",
                "--require-hashes",
                "--target",
            ])
            .arg(&dir)
            .arg("-r")
            .arg(workspace_root().join("tests/clients/requirements.txt"))
            .status()
            .expect("python3 runs");
        assert!(
            status.success(),
            "could not install websocket-client from PyPI into {}",
            dir.display()
        );
    }
    dir
}

#[test]
fn a_comfyui_client_script_runs_a_core_workflow_unchanged() {
    let sb = Sandbox::new();
    let server = start(&sb, &sb.path().join("data"), &[]);
    let prompt = sb.write("prompt.json", &comfy_prompt(4).to_string());
    let out = sb.path().join("client-out");
    let r = Command::new("python3")
        .arg(workspace_root().join("tests/clients/comfy_ws_client.py"))
        .args(["--server", &server.addr, "--prompt"])
        .arg(&prompt)
        .arg("--out")
        .arg(&out)
        .env("PYTHONPATH", pydeps())
        .output()
        .expect("python3 runs");
    let stdout = String::from_utf8_lossy(&r.stdout);
    assert!(
        r.status.success(),
        "{stdout}\n{}\n{}",
        String::from_utf8_lossy(&r.stderr),
        server.proc.stderr()
    );
    let report: Json = serde_json::from_str(stdout.trim()).expect("client report");
    let none = Vec::new();
    let events: Vec<&str> = report["events"]
        .as_array()
        .unwrap_or(&none)
        .iter()
        .filter_map(Json::as_str)
        .collect();
    for e in [
        "status",
        "execution_start",
        "executing",
        "progress",
        "executed",
        "execution_success",
    ] {
        assert!(events.contains(&e), "no `{e}` in {events:?}");
    }
    assert!(report["previews"].as_u64().unwrap_or(0) >= 1, "{report}");
    let saved = report["saved"][0].as_str().unwrap_or_default();
    assert!(saved.ends_with("9_ComfyUI.png"), "{report}");
    let (w, h, _, _) = latentflow_tests::read_png(Path::new(saved));
    assert_eq!((w, h), (64, 64));

    // The same prompt id again is queued once.
    let body = json!({"prompt": comfy_prompt(2), "prompt_id": "fixed-id-1"});
    let a = server.post("/prompt", &body).expect("queued");
    let b = server.post("/api/prompt", &body).expect("answered");
    assert_eq!(a["prompt_id"], "fixed-id-1");
    assert_eq!(b["prompt_id"], "fixed-id-1");
    server.wait_job("fixed-id-1", 120);
    let history = server.get("/history");
    assert_eq!(
        history
            .as_object()
            .map(|h| h.keys().filter(|k| *k == "fixed-id-1").count()),
        Some(1)
    );

    // LatentFlow class types map by port order.
    let ours = json!({"prompt": {
        "bg": {"class_type": "core.solid_image", "inputs": {"width": 16, "height": 8, "red": 1.0}},
        "save": {"class_type": "core.save_image", "inputs": {"image": ["bg", 0], "filename": "solid.png"}}
    }});
    let id = server.post("/prompt", &ours).expect("queued")["prompt_id"]
        .as_str()
        .unwrap_or_default()
        .to_string();
    assert_eq!(server.wait_job(&id, 60)["state"], "succeeded");
    let h = server.get(&format!("/history/{id}"));
    assert_eq!(
        h[&id]["outputs"]["save"]["images"][0]["filename"],
        "solid.png"
    );

    // Validation errors come back as ComfyUI's node_errors, before anything is queued.
    let mut bad = comfy_prompt(2);
    bad["3"]["inputs"]["sampler_name"] = "heun".into();
    let (code, body) = server
        .post("/prompt", &json!({"prompt": bad}))
        .expect_err("refused");
    assert_eq!(code, 400);
    assert_eq!(body["node_errors"]["3"]["class_type"], "KSampler", "{body}");
    let info = server.get("/object_info/sd.load_checkpoint");
    assert_eq!(
        info["sd.load_checkpoint"]["output"],
        json!(["DENOISER", "CLIP", "VAE"])
    );
    assert!(server.get("/system_stats")["devices"].is_array());
}

#[test]
fn the_native_api_submits_validates_and_serves_outputs() {
    let sb = Sandbox::new();
    let server = start(&sb, &sb.path().join("data"), &[]);
    let (events_ws, _) =
        tungstenite::connect(format!("ws://{}/api/v1/events", server.addr)).expect("events socket");
    let events = std::sync::Arc::new(std::sync::Mutex::new(Vec::<String>::new()));
    let sink = events.clone();
    let mut ws = events_ws;
    std::thread::spawn(move || {
        while let Ok(m) = ws.read() {
            if let tungstenite::Message::Text(t) = m {
                sink.lock()
                    .map(|mut v| v.push(t.to_string()))
                    .unwrap_or_default();
            }
        }
    });
    let job = server
        .post("/api/v1/jobs", &json!({"graph": txt2img_yaml(), "set": ["steps=3", "prompt=a yellow star on a purple background"]}))
        .expect("queued");
    let id = job["id"].as_str().unwrap_or_default().to_string();
    let done = server.wait_job(&id, 120);
    assert_eq!(done["state"], "succeeded", "{done}");
    let file = done["outputs"]["save"][0]
        .as_str()
        .unwrap_or_default()
        .to_string();
    assert!(file.ends_with("txt2img.png"), "{done}");
    let png = ureq::get(&server.url(&format!("/api/v1/outputs/{file}")))
        .call()
        .expect("output");
    assert_eq!(png.content_type(), "image/png");
    std::thread::sleep(Duration::from_millis(200));
    let seen = events.lock().map(|v| v.clone()).unwrap_or_default();
    assert!(
        seen.iter()
            .any(|e| e.contains("\"node_started\"") && e.contains(&id)),
        "{seen:?}"
    );
    assert!(
        seen.iter().any(|e| e.contains("\"run_finished\"")),
        "{seen:?}"
    );

    // Invalid graphs are refused with the validator's positions; nothing is queued.
    let (code, body) = server
        .post(
            "/api/v1/jobs",
            &json!({"graph": "nodes:\n  a:\n    type: core.innt\n"}),
        )
        .expect_err("refused");
    assert_eq!(code, 400);
    let d = &body["diagnostics"][0];
    assert_eq!(
        (d["code"].as_str(), d["line"].as_u64(), d["column"].as_u64()),
        (Some("unknown-node-type"), Some(3), Some(11)),
        "{body}"
    );
    let v = server
        .post("/api/v1/validate", &json!({"graph": txt2img_yaml()}))
        .expect("validated");
    assert_eq!(v["valid"], true);
    // The same job id twice: queued once.
    let body = json!({"graph": txt2img_yaml(), "set": {"steps": 2}, "id": "mine"});
    server.post("/api/v1/jobs", &body).expect("queued");
    assert_eq!(
        server.post("/api/v1/jobs", &body).expect_err("duplicate").0,
        409
    );
    server.wait_job("mine", 120);
    // Models stay loaded and the cache serves repeated sub-graphs across jobs.
    let again = server
        .post(
            "/api/v1/jobs",
            &json!({"graph": txt2img_yaml(), "set": {"steps": 2}}),
        )
        .expect("queued");
    let again_id = again["id"].as_str().unwrap_or_default().to_string();
    server.wait_job(&again_id, 120);
    std::thread::sleep(Duration::from_millis(200));
    let seen = events.lock().map(|v| v.clone()).unwrap_or_default();
    let cached: Vec<&String> = seen
        .iter()
        .filter(|e| e.contains("\"node_cached\"") && e.contains(&again_id))
        .collect();
    assert!(cached.iter().any(|e| e.contains("\"ckpt\"")), "{seen:?}");
    assert!(
        seen.iter().any(|e| e.contains("\"node_started\"")
            && e.contains(&again_id)
            && e.contains("\"save\"")),
        "the save node writes into the new job's folder: {seen:?}"
    );

    let nodes = server.get("/api/v1/nodes");
    let cli = sb.run(&["nodes", "--json"]);
    let cli: Json = serde_json::from_str(&cli.stdout).expect("nodes json");
    assert_eq!(nodes, cli);
    let history = server.get("/api/v1/history");
    assert!(history.as_array().map(|h| h.len()).unwrap_or(0) >= 3);
}

#[test]
fn pending_jobs_survive_kill_9_and_the_running_one_is_marked_failed() {
    let sb = Sandbox::new();
    let data = sb.path().join("data");
    let mut server = start(&sb, &data, &["--threads", "1"]);
    let slow = json!({"graph": txt2img_yaml(), "set": {"steps": 200, "width": 128, "height": 128}, "id": "slow"});
    server.post("/api/v1/jobs", &slow).expect("queued");
    for k in 0..3 {
        let j = json!({"graph": txt2img_yaml(), "set": {"steps": 2, "seed": k}, "id": format!("after-{k}")});
        server.post("/api/v1/jobs", &j).expect("queued");
    }
    let deadline = Instant::now() + Duration::from_secs(60);
    while server.get("/api/v1/jobs/slow")["state"] != "running" {
        assert!(Instant::now() < deadline);
        std::thread::sleep(Duration::from_millis(20));
    }
    std::thread::sleep(Duration::from_millis(300));
    // SIGKILL: nothing gets to clean up.
    let _ = server.proc.child.kill();
    let _ = server.proc.child.wait();
    server = start(&sb, &data, &[]);
    let slow = server.get("/api/v1/jobs/slow");
    assert_eq!(slow["state"], "failed", "{slow}");
    assert!(
        slow["error"]
            .as_str()
            .unwrap_or_default()
            .contains("stopped"),
        "{slow}"
    );
    for k in 0..3 {
        let j = server.wait_job(&format!("after-{k}"), 120);
        assert_eq!(j["state"], "succeeded", "{j}");
    }
    let history = server.get("/api/v1/history");
    assert_eq!(history.as_array().map(|h| h.len()), Some(4), "{history}");
}

#[test]
fn the_server_guards_its_folders_and_needs_a_token_off_loopback() {
    let sb = Sandbox::new();
    // Anywhere but loopback needs a token.
    let r = sb.run(&["serve", "--listen", "0.0.0.0:0", "--data-dir", "d"]);
    assert_ne!(r.code, 0);
    assert!(r.stderr.contains("needs --token"), "{}", r.stderr);
    // The data folder may not hold the plugin folder (uploads could write plugins).
    let r = sb.run(&[
        "serve",
        "--listen",
        "127.0.0.1:0",
        "--data-dir",
        ".",
        "--plugins",
        "plugins",
    ]);
    assert_ne!(r.code, 0);
    assert!(r.stderr.contains("plugin folder"), "{}", r.stderr);

    let server = start(
        &sb,
        &sb.path().join("data"),
        &["--token", "s3cret", "--max-body-mib", "1"],
    );
    let e = ureq::get(&server.url("/queue"))
        .call()
        .expect_err("no token");
    assert!(matches!(e, ureq::Error::Status(401, _)), "{e}");
    let ok = ureq::get(&server.url("/queue"))
        .set("Authorization", "Bearer s3cret")
        .call();
    assert!(ok.is_ok());
    let authed = |path: &str| ureq::get(&server.url(path)).set("Authorization", "Bearer s3cret");
    // Paths stay inside the data folder.
    let e = authed("/view?filename=../jobs.sqlite&type=output")
        .call()
        .expect_err("traversal");
    assert!(matches!(e, ureq::Error::Status(400, _)), "{e}");
    let e = authed("/view?filename=jobs.sqlite&subfolder=..&type=input")
        .call()
        .expect_err("traversal");
    assert!(matches!(e, ureq::Error::Status(400, _)), "{e}");
    // Uploads: the name loses its folders; bodies over the limit are refused.
    let boundary = "XyZ";
    let form = format!("--{boundary}\r\nContent-Disposition: form-data; name=\"image\"; filename=\"../../evil.png\"\r\nContent-Type: image/png\r\n\r\nPNGDATA\r\n--{boundary}--\r\n");
    let r: Json = ureq::post(&server.url("/upload/image"))
        .set("Authorization", "Bearer s3cret")
        .set(
            "Content-Type",
            &format!("multipart/form-data; boundary={boundary}"),
        )
        .send_string(&form)
        .expect("uploaded")
        .into_json()
        .expect("json");
    assert_eq!(r["name"], "evil.png");
    assert!(sb.path().join("data/input/evil.png").exists());
    let big = format!("--{boundary}\r\nContent-Disposition: form-data; name=\"image\"; filename=\"big.png\"\r\n\r\n{}\r\n--{boundary}--\r\n", "x".repeat(2 << 20));
    let e = ureq::post(&server.url("/upload/image"))
        .set("Authorization", "Bearer s3cret")
        .set(
            "Content-Type",
            &format!("multipart/form-data; boundary={boundary}"),
        )
        .send_string(&big)
        .expect_err("too big");
    // 413, or the connection closed on the client mid-send.
    assert!(
        matches!(e, ureq::Error::Status(413, _) | ureq::Error::Transport(_)),
        "{e}"
    );
    assert!(!sb.path().join("data/input/big.png").exists());
}

#[test]
fn concurrent_clients_lose_and_duplicate_nothing() {
    let sb = Sandbox::new();
    let server = start(&sb, &sb.path().join("data"), &[]);
    let graph = "nodes:\n  bg:\n    type: core.solid_image\n    params: {width: 8, height: 8, red: $r}\n  save:\n    type: core.save_image\n    inputs: {image: bg}\n    params: {filename: s.png}\ninputs:\n  r: {type: float, default: 0.5}\n";
    // Bounded in CI; `LATENTFLOW_LOAD=CLIENTS,JOBS` for a bigger run (BENCHMARKS.md).
    let (clients, each) = std::env::var("LATENTFLOW_LOAD")
        .ok()
        .and_then(|v| {
            let (c, j) = v.split_once(',')?;
            Some((c.trim().parse().ok()?, j.trim().parse().ok()?))
        })
        .unwrap_or((4usize, 10usize));
    let url = server.url("/api/v1/jobs");
    let started = Instant::now();
    let handles: Vec<_> = (0..clients)
        .map(|c| {
            let url = url.clone();
            std::thread::spawn(move || {
                let mut out = Vec::new();
                for k in 0..each {
                    let t = Instant::now();
                    let body = json!({"graph": graph, "set": {"r": (c * each + k) as f64 / (clients * each) as f64}});
                    let r: Json = ureq::post(&url)
                        .send_json(body)
                        .expect("queued")
                        .into_json()
                        .expect("json");
                    out.push((
                        r["id"].as_str().unwrap_or_default().to_string(),
                        t.elapsed(),
                    ));
                }
                out
            })
        })
        .collect();
    let mut ids = Vec::new();
    let mut latencies = Vec::new();
    for h in handles {
        for (id, lat) in h.join().expect("client") {
            ids.push(id);
            latencies.push(lat);
        }
    }
    for id in &ids {
        assert_eq!(server.wait_job(id, 120)["state"], "succeeded");
    }
    let elapsed = started.elapsed();
    let history = server.get("/api/v1/history?limit=1000");
    let mut seen: Vec<String> = history
        .as_array()
        .unwrap_or(&vec![])
        .iter()
        .filter_map(|j| j["id"].as_str().map(str::to_string))
        .collect();
    seen.sort();
    let mut want = ids.clone();
    want.sort();
    assert_eq!(seen, want, "every job exactly once in history");
    latencies.sort();
    let p = |q: f64| latencies[((latencies.len() as f64 - 1.0) * q).round() as usize];
    eprintln!(
        "serve load: {clients} clients × {each} jobs: submit p50 {:?}, p99 {:?}; {:.1} jobs/s end to end",
        p(0.5),
        p(0.99),
        ids.len() as f64 / elapsed.as_secs_f64()
    );
}

/// The browser view in headless Chromium: the nodes are drawn, the sampler's progress reached
/// 100 % and the output image is shown (checked in a screenshot and in the DOM).
#[test]
fn the_browser_view_shows_the_graph_progress_and_output() {
    let chromium = ["chromium", "chromium-browser", "google-chrome"]
        .into_iter()
        .find(|c| Command::new(c).arg("--version").output().is_ok_and(|o| o.status.success()))
        .expect("headless Chromium is needed for this test: `apt-get install chromium` (.ci/run installs it)");
    let sb = Sandbox::new();
    let server = start(&sb, &sb.path().join("data"), &["--token", "t0k"]);
    let job: Json = ureq::post(&server.url("/api/v1/jobs"))
        .set("Authorization", "Bearer t0k")
        .send_json(json!({"graph": txt2img_yaml(), "set": {"steps": 4}}))
        .expect("queued")
        .into_json()
        .expect("json");
    let id = job["id"].as_str().unwrap_or_default().to_string();
    let deadline = Instant::now() + Duration::from_secs(120);
    loop {
        let j: Json = ureq::get(&server.url(&format!("/api/v1/jobs/{id}")))
            .set("Authorization", "Bearer t0k")
            .call()
            .expect("job")
            .into_json()
            .expect("json");
        if j["state"] == "succeeded" {
            break;
        }
        assert!(j["state"] != "failed" && Instant::now() < deadline, "{j}");
        std::thread::sleep(Duration::from_millis(50));
    }
    let page = server.url(&format!("/?job={id}&token=t0k"));
    let shot = sb.path().join("view.png");
    let browse = |extra: &[&str]| {
        Command::new(chromium)
            .args([
                "--headless",
                "--no-sandbox",
                "--disable-gpu",
                "--disable-background-networking",
                "--window-size=1400,900",
                "--virtual-time-budget=8000",
            ])
            .args(extra)
            .arg(&page)
            .output()
            .expect("chromium runs")
    };
    let dom = browse(&["--dump-dom"]);
    let dom = String::from_utf8_lossy(&dom.stdout);
    for node in [
        "ckpt", "positive", "negative", "empty", "sample", "decode", "save",
    ] {
        assert!(
            dom.contains(&format!("data-node=\"{node}\"")),
            "node {node} not drawn:\n{dom}"
        );
    }
    assert!(dom.contains("class=\"node done\""), "{dom}");
    assert!(dom.contains(">100%<"), "{dom}");
    assert!(dom.contains("Denoiser{family=sd1}"), "typed ports: {dom}");
    let shot_arg = format!("--screenshot={}", shot.display());
    let out = browse(&[&shot_arg]);
    assert!(shot.exists(), "{}", String::from_utf8_lossy(&out.stderr));
    let (w, h, ch, px) = latentflow_tests::read_png(&shot);
    let at = |x: usize, y: usize| {
        let i = (y * w + x) * ch;
        (px[i], px[i + 1], px[i + 2])
    };
    let (mut done_fill, mut blue, mut longest_bar) = (0usize, 0usize, 0usize);
    for y in 0..h {
        let mut run = 0;
        for x in 0..w {
            let (r, g, b) = at(x, y);
            // Finished nodes are filled #cfe8d0.
            if (r as i32 - 207).abs() < 6
                && (g as i32 - 232).abs() < 6
                && (b as i32 - 208).abs() < 6
            {
                done_fill += 1;
            }
            // The picture: tiny-shapes paints a blue background.
            if b > 150 && r < 100 && g < 100 {
                blue += 1;
            }
            // The progress bar is #43a047.
            if (r as i32 - 67).abs() < 12
                && (g as i32 - 160).abs() < 12
                && (b as i32 - 71).abs() < 12
            {
                run += 1;
                longest_bar = longest_bar.max(run);
            } else {
                run = 0;
            }
        }
    }
    assert!(
        done_fill > 5_000,
        "finished nodes are drawn ({done_fill} px)"
    );
    assert!(
        longest_bar > 60,
        "the progress bar is full ({longest_bar} px)"
    );
    assert!(blue > 20_000, "the output image is shown ({blue} blue px)");
}

/// With `--graph FILE`, the view is told when the file is saved, and reads the new text.
#[test]
fn the_view_follows_edits_of_the_graph_file() {
    let sb = Sandbox::new();
    let file = sb.write("g.yaml", &txt2img_yaml());
    let server = start(
        &sb,
        &sb.path().join("data"),
        &["--graph", file.to_str().unwrap_or_default()],
    );
    let (mut ws, _) =
        tungstenite::connect(format!("ws://{}/api/v1/events", server.addr)).expect("events socket");
    let page: Json = server.get("/api/v1/graph-file");
    assert!(page["text"]
        .as_str()
        .unwrap_or_default()
        .contains("samplers.sample"));
    std::thread::sleep(Duration::from_millis(600));
    std::fs::write(
        &file,
        txt2img_yaml().replace(
            "steps: {type: int, default: 20}",
            "steps: {type: int, default: 7}",
        ),
    )
    .expect("edit");
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        while let Ok(m) = ws.read() {
            if let tungstenite::Message::Text(t) = m {
                if t.contains("graph_file_changed") {
                    let _ = tx.send(());
                    return;
                }
            }
        }
    });
    rx.recv_timeout(Duration::from_secs(10))
        .expect("graph_file_changed event");
    let page: Json = server.get("/api/v1/graph-file");
    assert!(page["text"]
        .as_str()
        .unwrap_or_default()
        .contains("default: 7"));
    // The page and its script are served by the binary.
    let html = ureq::get(&server.url("/"))
        .call()
        .expect("page")
        .into_string()
        .unwrap_or_default();
    assert!(html.contains("ui/app.js"));
}
