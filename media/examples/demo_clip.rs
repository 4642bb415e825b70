//! Writes the demo clip `graphs/inputs/flicker.gif`: 8 frames of 32×24, a square moving across a
//! background whose brightness flickers from frame to frame (what a temporal low-pass removes).
//!
//! `cargo run -p latentflow-media --example demo_clip -- graphs/inputs/flicker.gif`

use latentflow_media::{write, Clip, Format};

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let out = std::env::args()
        .nth(1)
        .unwrap_or_else(|| "graphs/inputs/flicker.gif".into());
    let (w, h, n) = (32u32, 24u32, 8usize);
    let frames = (0..n)
        .map(|i| {
            let bg: u8 = if i % 2 == 0 { 70 } else { 130 };
            let x0 = 2 + 3 * i as u32;
            let mut f = Vec::with_capacity((w * h * 3) as usize);
            for y in 0..h {
                for x in 0..w {
                    let inside = (x0..x0 + 8).contains(&x) && (8..16).contains(&y);
                    f.extend(if inside {
                        [230, 180, 40]
                    } else {
                        [bg, bg, bg + 20]
                    });
                }
            }
            f
        })
        .collect();
    let clip = Clip::at_fps(w, h, frames, 8.0);
    let mut file = std::fs::File::create(&out)?;
    write(&mut file, Format::Gif, &clip, None, &mut |_, _| {})?;
    println!("wrote {out}");
    Ok(())
}
