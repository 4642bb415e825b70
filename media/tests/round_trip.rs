//! What `write` encodes, `read` decodes to the same frames, delays and graph.

use latentflow_media::{embedded_graph, read, write, Clip, Format, Limits, MediaError};

/// Frames with few colours (so GIF's palette is exact) but every pixel of each frame distinct
/// from the last.
fn few_colours(w: u32, h: u32, n: usize) -> Vec<Vec<u8>> {
    (0..n)
        .map(|i| {
            (0..w * h)
                .flat_map(|p| {
                    let v = ((p as usize + 5 * i) % 7 * 36) as u8;
                    [v, 255 - v, (v / 2).wrapping_add(i as u8 * 9)]
                })
                .collect()
        })
        .collect()
}

/// Frames of smooth gradients, many colours.
fn gradients(w: u32, h: u32, n: usize) -> Vec<Vec<u8>> {
    (0..n)
        .map(|i| {
            (0..h)
                .flat_map(|y| {
                    (0..w).flat_map(move |x| {
                        [
                            (x * 255 / w) as u8,
                            (y * 255 / h) as u8,
                            (i * 255 / n.max(1)) as u8,
                        ]
                    })
                })
                .collect()
        })
        .collect()
}

fn save(
    dir: &std::path::Path,
    name: &str,
    format: Format,
    clip: &Clip,
    graph: &str,
) -> std::path::PathBuf {
    let path = dir.join(name);
    let mut bytes = Vec::new();
    let mut seen = Vec::new();
    write(&mut bytes, format, clip, Some(graph), &mut |d, t| {
        seen.push((d, t))
    })
    .unwrap();
    let n = clip.frames.len();
    assert_eq!(
        seen,
        (1..=n).map(|d| (d, n)).collect::<Vec<_>>(),
        "progress per frame"
    );
    std::fs::write(&path, bytes).unwrap();
    path
}

#[test]
fn every_format_round_trips_frames_delays_and_graph() {
    let dir = tempfile::tempdir().unwrap();
    let (w, h, n) = (13, 7, 6); // odd, non-square sizes
    let graph = r#"{"graph": {"nodes": {"a": {"type": "x<y>&z"}}}, "seed": 1}"#;
    for format in [Format::Gif, Format::Apng, Format::WebP] {
        for (kind, frames) in [
            ("few", few_colours(w, h, n)),
            ("smooth", gradients(w, h, n)),
        ] {
            if format == Format::Gif && kind == "smooth" {
                continue; // quantised: checked below with a tolerance
            }
            let clip = Clip::at_fps(w, h, frames, 12.0);
            let path = save(
                dir.path(),
                &format!("{kind}.{}", format.name()),
                format,
                &clip,
                graph,
            );
            let back = read(&path, Limits::default()).unwrap();
            assert_eq!((back.width, back.height), (w, h), "{format:?}");
            assert_eq!(back.frames, clip.frames, "{format:?} {kind}");
            // Delays: exact in APNG and WebP; GIF rounds to centiseconds.
            let tol = if format == Format::Gif { 10 } else { 0 };
            for (a, b) in back.delays_ms.iter().zip(&clip.delays_ms) {
                assert!(a.abs_diff(*b) <= tol, "{format:?}: {a} vs {b}");
            }
            assert!(
                (back.fps(0.0) - 12.0).abs() < 0.05,
                "{format:?}: {}",
                back.fps(0.0)
            );
            match format {
                // APNG keeps it in a PNG text chunk (read by the host's PNG reader).
                Format::Apng => {
                    let bytes = std::fs::read(&path).unwrap();
                    assert!(bytes.windows(16).any(|w| w == b"latentflow:graph"));
                    assert_eq!(embedded_graph(&path).unwrap(), None);
                }
                _ => assert_eq!(embedded_graph(&path).unwrap().as_deref(), Some(graph)),
            }
        }
    }
}

#[test]
fn gif_quantises_many_colours_closely() {
    let dir = tempfile::tempdir().unwrap();
    let clip = Clip::at_fps(40, 30, gradients(40, 30, 3), 8.0);
    let path = save(dir.path(), "g.gif", Format::Gif, &clip, "{}");
    let back = read(&path, Limits::default()).unwrap();
    for (a, b) in back.frames.iter().zip(&clip.frames) {
        let mean = a
            .iter()
            .zip(b)
            .map(|(x, y)| x.abs_diff(*y) as f64)
            .sum::<f64>()
            / a.len() as f64;
        // 1200 colours into a 256-colour palette: about 2 % of the range on average.
        assert!(mean < 6.0, "mean error {mean}");
    }
}

#[test]
fn a_folder_of_frames_reads_in_natural_order() {
    let dir = tempfile::tempdir().unwrap();
    let frames = few_colours(5, 4, 11);
    for (i, f) in frames.iter().enumerate() {
        let img = image::RgbImage::from_raw(5, 4, f.clone()).unwrap();
        img.save(dir.path().join(format!("frame{i}.png"))).unwrap();
    }
    std::fs::write(dir.path().join("notes.txt"), "not a frame").unwrap();
    let back = read(dir.path(), Limits::default()).unwrap();
    assert_eq!(back.frames, frames);
    assert_eq!(back.fps(8.0), 8.0, "folders have no delays: the fallback");
    // A frame of another size is refused, naming it.
    image::RgbImage::new(6, 4)
        .save(dir.path().join("frame99.png"))
        .unwrap();
    let e = read(dir.path(), Limits::default()).unwrap_err().to_string();
    assert!(e.contains("frame99.png") && e.contains("6×4"), "{e}");
}

#[test]
fn hostile_input_is_refused_before_it_is_kept() {
    let dir = tempfile::tempdir().unwrap();
    let clip = Clip::at_fps(16, 16, few_colours(16, 16, 20), 10.0);
    let path = save(dir.path(), "c.webp", Format::WebP, &clip, "{}");
    // 20 frames of 16×16×3 = 15360 bytes: a limit of 5 frames' worth stops at the sixth.
    let tight = Limits {
        max_bytes: 16 * 16 * 3 * 5,
        max_frames: 1000,
    };
    assert!(matches!(
        read(&path, tight),
        Err(MediaError::TooLarge { .. })
    ));
    let few = Limits {
        max_bytes: 1 << 30,
        max_frames: 3,
    };
    assert!(matches!(read(&path, few), Err(MediaError::TooLarge { .. })));
    // Truncated and foreign files are decode errors, not panics.
    let bytes = std::fs::read(&path).unwrap();
    for cut in [10, 40, bytes.len() / 3, bytes.len() / 2] {
        let p = dir.path().join(format!("cut{cut}.webp"));
        std::fs::write(&p, &bytes[..cut]).unwrap();
        assert!(read(&p, Limits::default()).is_err(), "cut at {cut}");
    }
    let junk = dir.path().join("junk.gif");
    std::fs::write(&junk, b"this is not a gif").unwrap();
    let e = read(&junk, Limits::default()).unwrap_err().to_string();
    assert!(e.contains("not a GIF, PNG/APNG, WebP or MP4"), "{e}");
    // Clips that cannot be written are refused with a reason.
    let mut bad = clip.clone();
    bad.frames[3].pop();
    assert!(write(&mut Vec::new(), Format::Gif, &bad, None, &mut |_, _| {}).is_err());
    let wide = Clip::at_fps(70000, 1, vec![vec![0; 70000 * 3]], 1.0);
    let e = write(&mut Vec::new(), Format::Gif, &wide, None, &mut |_, _| {}).unwrap_err();
    assert!(e.to_string().contains("65535"), "{e}");
}

#[test]
fn mp4_round_trips_closely() {
    let dir = tempfile::tempdir().unwrap();
    let (w, h, n) = (48, 32, 6);
    let clip = Clip::at_fps(w, h, gradients(w, h, n), 12.0);
    let mut seen = 0;
    let path = dir.path().join("clip.mp4");
    let mut bytes = Vec::new();
    write(&mut bytes, Format::Mp4, &clip, None, &mut |d, _| seen = d).unwrap();
    assert_eq!(seen, n);
    std::fs::write(&path, bytes).unwrap();
    let back = read(&path, Limits::default()).unwrap();
    assert_eq!((back.width, back.height, back.frames.len()), (w, h, n));
    assert!((back.fps(0.0) - 12.0).abs() < 0.1, "{}", back.fps(0.0));
    for (i, (a, b)) in back.frames.iter().zip(&clip.frames).enumerate() {
        let mean = a
            .iter()
            .zip(b)
            .map(|(x, y)| x.abs_diff(*y) as f64)
            .sum::<f64>()
            / a.len() as f64;
        assert!(mean < 6.0, "frame {i}: mean error {mean}");
    }
    // Odd sides cannot be H.264 4:2:0.
    let odd = Clip::at_fps(5, 4, vec![vec![0; 60]], 1.0);
    let e = write(&mut Vec::new(), Format::Mp4, &odd, None, &mut |_, _| {}).unwrap_err();
    assert!(e.to_string().contains("even sides"), "{e}");
}

#[test]
fn damaged_mp4_files_are_refused_without_panicking() {
    // Every truncation, and seeded byte and box-size corruptions of a real file: each read
    // returns (a clip or an error), never panics or aborts on a size it read.
    let dir = tempfile::tempdir().unwrap();
    let (w, h, n) = (16, 16, 3);
    let clip = Clip::at_fps(w, h, gradients(w, h, n), 8.0);
    let mut good = Vec::new();
    write(&mut good, Format::Mp4, &clip, None, &mut |_, _| {}).unwrap();
    let path = dir.path().join("bad.mp4");
    let try_read = |bytes: &[u8]| {
        std::fs::write(&path, bytes).unwrap();
        read(&path, Limits::default()).map(|c| c.frames.len())
    };
    assert_eq!(try_read(&good).ok(), Some(n));
    for cut in (0..good.len()).step_by(7) {
        if let Err(e) = try_read(&good[..cut]) {
            assert!(!e.to_string().is_empty());
        }
    }
    let mut state = 0x2545_f491_4f6c_dd1du64;
    let mut next = move || {
        state ^= state << 13;
        state ^= state >> 7;
        state ^= state << 17;
        state
    };
    // Where the boxes start: their size fields are the most dangerous bytes.
    let mut starts = Vec::new();
    let mut at = 0usize;
    while at + 8 <= good.len() {
        starts.push(at);
        let size = u32::from_be_bytes([good[at], good[at + 1], good[at + 2], good[at + 3]]);
        at += (size as usize).max(8);
    }
    // More rounds on request (LATENTFLOW_FUZZ_ROUNDS), e.g. before touching the demuxer.
    let rounds: u32 = std::env::var("LATENTFLOW_FUZZ_ROUNDS")
        .ok()
        .and_then(|r| r.parse().ok())
        .unwrap_or(300);
    for round in 0..rounds {
        let mut bad = good.clone();
        for _ in 0..1 + round % 4 {
            let i = next() as usize % bad.len();
            bad[i] = next() as u8;
        }
        if round % 3 == 0 {
            // A huge size on a box (or a child: any 4 aligned bytes).
            let i = if round % 2 == 0 {
                starts[next() as usize % starts.len()]
            } else {
                next() as usize % (bad.len() - 4)
            };
            bad[i..i + 4].copy_from_slice(&(0xffff_fff0u32.wrapping_sub(round)).to_be_bytes());
        }
        let _ = try_read(&bad);
    }
    // A 64-bit size far past the end (after the leading ftyp box) is refused by name.
    let mut large = good.clone();
    large.splice(
        starts[1]..starts[1],
        [
            0, 0, 0, 1, b'f', b'r', b'e', b'e', 0xff, 0, 0, 0, 0, 0, 0, 0,
        ],
    );
    let e = try_read(&large).unwrap_err().to_string();
    assert!(e.contains("`free`"), "{e}");
}
