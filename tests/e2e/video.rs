//! The video plugin end to end: files in and out (frames compared after decoding, the graph
//! re-run from the file), video latents kept apart from image latents by type, and DCTInit's
//! and the temporal low-pass's invariants through graphs.

use latentflow_tests::{graph, read_safetensors_f32, workspace_root, Sandbox};

fn clip() -> String {
    workspace_root()
        .join("graphs/inputs/flicker.gif")
        .display()
        .to_string()
}

fn copy_graph(file: &str) -> String {
    format!(
        "version: 1\nnodes:\n  load: {{type: video.load, params: {{path: {clip}}}}}\n  frames: {{type: video.to_frames, inputs: {{video: load}}}}\n  again: {{type: video.from_frames, inputs: {{image: frames.image, fps: frames.fps}}}}\n  save: {{type: video.save, inputs: {{video: again}}, params: {{filename: {file}}}}}\n  raw: {{type: core.save_tensor, inputs: {{tensor: frames.image}}, params: {{filename: frames.safetensors}}}}\n",
        clip = clip()
    )
}

#[test]
fn saved_videos_decode_to_the_same_frames_and_rerun_from_the_file() {
    for file in ["copy.webp", "copy.png", "copy.gif"] {
        let sb = Sandbox::new();
        let r = sb.graph("run", "copy.yaml", &copy_graph(file), &["--events", "json"]);
        r.expect_code(0);
        // Progress per frame: eight frames written.
        let progress = r
            .events()
            .into_iter()
            .filter(|e| e["event"] == "progress" && e["node"] == "save")
            .count();
        assert!(progress >= 8, "{file}: {progress} progress events");
        let (shape, frames) = read_safetensors_f32(&sb.output("frames.safetensors"));
        assert_eq!(shape, vec![8, 24, 32, 3]);
        // Load what was written with the same node: the same frames (the clip has few colours,
        // so even GIF is exact), at the same rate.
        let written = sb.output(file).display().to_string();
        let reload = format!(
            "version: 1\nnodes:\n  load: {{type: video.load, params: {{path: {written}}}}}\n  frames: {{type: video.to_frames, inputs: {{video: load}}}}\n  raw: {{type: core.save_tensor, inputs: {{tensor: frames.image}}, params: {{filename: back.safetensors}}}}\n"
        );
        sb.graph("run", "reload.yaml", &reload, &["-q"])
            .expect_code(0);
        let (_, back) = read_safetensors_f32(&sb.output("back.safetensors"));
        assert_eq!(back, frames, "{file}");
        // The file carries its graph: running the file runs the graph again.
        std::fs::remove_file(sb.output("frames.safetensors")).unwrap_or_default();
        sb.run(&["run", &written, "-q"]).expect_code(0);
        assert!(sb.output("frames.safetensors").exists(), "{file} re-ran");
    }
}

#[test]
fn image_latents_and_video_latents_do_not_mix() {
    let sb = Sandbox::new();
    // An image latent into a video node is refused before anything runs.
    sb.refuses(
        "version: 1\nnodes:\n  l: {type: core.empty_latent, params: {width: 64, height: 64}}\n  s: {type: video.temporal_lowpass, inputs: {video_latent: l}}\n",
        "hint: frame latents become a video latent through video.latent_from_batch",
    );
    // And a video latent into an image-latent node.
    sb.refuses(
        "version: 1\nnodes:\n  n: {type: video.noise, params: {width: 64, height: 64, frames: 4}}\n  s: {type: core.latent_scale, inputs: {latent: n}, params: {factor: 2.0}}\n",
        "Latent",
    );
    // Frames are not images without the conversion node.
    sb.refuses(
        &format!(
            "version: 1\nnodes:\n  v: {{type: video.load, params: {{path: {}}}}}\n  s: {{type: core.save_image, inputs: {{image: v}}}}\n",
            clip()
        ),
        "Video",
    );
}

fn dct_graph(cutoff: f64) -> String {
    format!(
        "version: 1\nnodes:\n  image: {{type: core.noise_latent, params: {{width: 48, height: 40, seed: 3}}}}\n  noise: {{type: video.noise, params: {{width: 48, height: 40, frames: 5, seed: 4}}}}\n  init: {{type: video.dct_init, inputs: {{image_latent: image, noise: noise}}, params: {{cutoff: {cutoff}}}}}\n  smooth: {{type: video.temporal_lowpass, inputs: {{video_latent: init}}, params: {{cutoff: 0.3}}}}\n  frames: {{type: video.latent_to_batch, inputs: {{video_latent: smooth}}}}\n  back: {{type: video.latent_from_batch, inputs: {{latent: frames.latent}}, params: {{frames: 5}}}}\n  s1: {{type: core.save_tensor, inputs: {{tensor: init}}, params: {{filename: init.safetensors}}}}\n  s2: {{type: core.save_tensor, inputs: {{tensor: noise}}, params: {{filename: noise.safetensors}}}}\n  s3: {{type: core.save_tensor, inputs: {{tensor: image}}, params: {{filename: image.safetensors}}}}\n  s4: {{type: core.save_tensor, inputs: {{tensor: smooth}}, params: {{filename: smooth.safetensors}}}}\n  s5: {{type: core.save_tensor, inputs: {{tensor: back}}, params: {{filename: back.safetensors}}}}\n  s6: {{type: core.save_tensor, inputs: {{tensor: frames.latent}}, params: {{filename: batch.safetensors}}}}\n"
    )
}

#[test]
fn dct_init_keeps_its_invariants_through_a_graph() {
    // Linear betas 1e-4…0.02 (Cinemo's): ᾱ_975 from the same f32 cumulative product.
    let mut acc = 1f32;
    for i in 0..=975 {
        let beta = 1e-4f32 + (0.02f32 - 1e-4) * i as f32 / 999.0;
        acc *= 1.0 - beta;
    }
    let ab = acc as f64;
    for cutoff in [0.0, 1.0] {
        let sb = Sandbox::new();
        sb.graph("run", "dct.yaml", &dct_graph(cutoff), &["-q"])
            .expect_code(0);
        let read = |f: &str| read_safetensors_f32(&sb.output(f));
        let (shape, init) = read("init.safetensors");
        let (_, noise) = read("noise.safetensors");
        let (_, image) = read("image.safetensors");
        assert_eq!(shape, vec![1, 4, 5, 5, 6]);
        let mut worst = 0f64;
        for c in 0..4 {
            for f in 0..5 {
                for p in 0..30 {
                    let i = (c * 5 + f) * 30 + p;
                    let eps = noise[i] as f64;
                    let want = if cutoff == 0.0 {
                        eps
                    } else {
                        ab.sqrt() * image[c * 30 + p] as f64 + (1.0 - ab).sqrt() * eps
                    };
                    worst = worst.max((init[i] as f64 - want).abs());
                }
            }
        }
        assert!(worst < 1e-5, "cutoff {cutoff}: {worst}");
        // The batch round trip is exact; the temporal low-pass keeps each pixel's mean.
        let (bshape, _) = read("batch.safetensors");
        assert_eq!(bshape, vec![5, 4, 5, 6]);
        let (_, smooth) = read("smooth.safetensors");
        assert_eq!(read("back.safetensors").1, smooth);
        for c in 0..4 {
            for p in 0..30 {
                let mean = |v: &[f32]| (0..5).map(|f| v[(c * 5 + f) * 30 + p] as f64).sum::<f64>();
                assert!((mean(&smooth) - mean(&init)).abs() < 1e-5);
            }
        }
    }
}

#[test]
fn the_video_smoothing_graph_writes_its_video() {
    let sb = Sandbox::new();
    let g = graph("video_smoothing.yaml").display().to_string();
    sb.run(&["run", &g, "-q"]).expect_code(0);
    let out = sb.output("video_smoothing.webp");
    let bytes = std::fs::read(&out).unwrap_or_default();
    assert!(bytes.starts_with(b"RIFF") && bytes.windows(4).any(|w| w == b"ANMF"));
    // Running the written video runs its graph again, to the same bytes.
    let written = out.display().to_string();
    sb.run(&["run", &written, "-q"]).expect_code(0);
    assert_eq!(std::fs::read(&out).unwrap_or_default(), bytes);
}

#[test]
fn bad_video_files_are_refused_with_one_line() {
    let sb = Sandbox::new();
    let junk = sb.write("junk.gif", "GIF89a but not really");
    let g = format!(
        "version: 1\nnodes:\n  load: {{type: video.load, params: {{path: {}}}}}\n  save: {{type: video.save, inputs: {{video: load}}}}\n",
        junk.display()
    );
    let r = sb.graph("run", "junk.yaml", &g, &["-q"]);
    r.stderr_has("cannot decode");
    assert!(!sb.output("video.webp").exists());
    // An unknown extension is refused with the choices.
    let g = format!(
        "version: 1\nnodes:\n  load: {{type: video.load, params: {{path: {}}}}}\n  save: {{type: video.save, inputs: {{video: load}}, params: {{filename: clip.mkv}}}}\n",
        clip()
    );
    sb.graph("run", "mkv.yaml", &g, &["-q"])
        .stderr_has(".gif, .png/.apng, .webp or .mp4");
}

#[test]
fn the_readme_commands_are_the_ones_tested_here() {
    let readme = std::fs::read_to_string(workspace_root().join("README.md")).expect("README");
    // The graphs run in graphs.rs (every_example_graph_runs), animatediff.rs and bivdiff.rs;
    // written files re-run in saved_videos_decode_to_the_same_frames_and_rerun_from_the_file and
    // the_video_smoothing_graph_writes_its_video; the demo clip below.
    for command in [
        "latentflow run graphs/animatediff.yaml\n",
        "latentflow run graphs/freeinit.yaml\n",
        "latentflow run graphs/cinemo_dctinit.yaml\n",
        "latentflow run graphs/bivdiff.yaml\n",
        "latentflow run graphs/video_smoothing.yaml\n",
        "latentflow run output/video_smoothing.webp",
        "cargo run -p latentflow-media --example demo_clip",
    ] {
        assert!(readme.contains(command), "README lacks {command:?}");
    }
    // The committed demo clip is what the example writes.
    let example = latentflow_tests::target_dir()
        .join("examples")
        .join(format!("demo_clip{}", std::env::consts::EXE_SUFFIX));
    if !example.exists() {
        let built = std::process::Command::new(env!("CARGO"))
            .args([
                "build",
                "-q",
                "-p",
                "latentflow-media",
                "--example",
                "demo_clip",
            ])
            .current_dir(workspace_root())
            .status()
            .expect("cargo");
        assert!(built.success());
    }
    let dir = tempfile::tempdir().expect("tempdir");
    let out = dir.path().join("flicker.gif");
    let status = std::process::Command::new(&example)
        .arg(&out)
        .status()
        .expect("demo_clip");
    assert!(status.success());
    assert_eq!(
        std::fs::read(&out).expect("written"),
        std::fs::read(workspace_root().join("graphs/inputs/flicker.gif")).expect("committed"),
        "graphs/inputs/flicker.gif differs from what the example writes"
    );
}

#[test]
fn free_noise_reuses_the_first_windows_noise() {
    let sb = Sandbox::new();
    let g = "version: 1\nnodes:\n  n: {type: video.noise, params: {width: 32, height: 24, frames: 12, seed: 1}}\n  f: {type: video.free_noise, inputs: {noise: n}, params: {context_length: 4, context_stride: 2, seed: 2}}\n  s1: {type: core.save_tensor, inputs: {tensor: n}, params: {filename: n.safetensors}}\n  s2: {type: core.save_tensor, inputs: {tensor: f}, params: {filename: f.safetensors}}\n";
    sb.graph("run", "fn.yaml", g, &["-q"]).expect_code(0);
    let (shape, noise) = read_safetensors_f32(&sb.output("n.safetensors"));
    let (_, shuffled) = read_safetensors_f32(&sb.output("f.safetensors"));
    assert_eq!(shape, vec![1, 4, 12, 3, 4]);
    let frame =
        |v: &[f32], c: usize, f: usize| v[(c * 12 + f) * 12..(c * 12 + f + 1) * 12].to_vec();
    for f in 0..12 {
        // Every frame is one of the first window's frames, the first window itself unchanged.
        let src = (0..4).find(|&k| (0..4).all(|c| frame(&shuffled, c, f) == frame(&noise, c, k)));
        match src {
            Some(k) if f < 4 => assert_eq!(k, f),
            Some(_) => {}
            None => panic!("frame {f} is not one of the first window's"),
        }
    }
}

#[test]
fn an_mp4_is_written_and_read_back_closely() {
    let sb = Sandbox::new();
    sb.graph("run", "copy.yaml", &copy_graph("copy.mp4"), &["-q"])
        .expect_code(0);
    let (_, frames) = read_safetensors_f32(&sb.output("frames.safetensors"));
    let written = sb.output("copy.mp4").display().to_string();
    let reload = format!(
        "version: 1\nnodes:\n  load: {{type: video.load, params: {{path: {written}}}}}\n  frames: {{type: video.to_frames, inputs: {{video: load}}}}\n  raw: {{type: core.save_tensor, inputs: {{tensor: frames.image}}, params: {{filename: back.safetensors}}}}\n"
    );
    sb.graph("run", "reload.yaml", &reload, &["-q"])
        .expect_code(0);
    let (shape, back) = read_safetensors_f32(&sb.output("back.safetensors"));
    assert_eq!(shape, vec![8, 24, 32, 3]);
    // An MP4 carries no graph: running one says so instead of failing to parse it.
    sb.run(&["run", &written, "-q"])
        .stderr_has("carries no graph");
    // H.264 is lossy: close on average, not equal.
    let mean = back
        .iter()
        .zip(&frames)
        .map(|(a, b)| (a - b).abs() as f64)
        .sum::<f64>()
        / back.len() as f64;
    assert!(mean < 0.05, "mean error {mean}");
}
