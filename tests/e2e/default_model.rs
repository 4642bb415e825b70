//! The default model (tiny-shapes) draws what the prompt says: colour statistics of its
//! pictures over several seeds and samplers, and the README's commands and picture.

use latentflow_tests::{graph, read_png, workspace_root, Sandbox};

/// Mean R, G, B of the `size`×`size` box at (`x`, `y`).
fn mean_rgb(png: &(usize, usize, usize, Vec<u8>), x: usize, y: usize, size: usize) -> [f32; 3] {
    let (w, _, ch, data) = png;
    let mut sum = [0f32; 3];
    for row in y..y + size {
        for col in x..x + size {
            for (k, s) in sum.iter_mut().enumerate() {
                *s += data[(row * w + col) * ch + k] as f32;
            }
        }
    }
    sum.map(|s| s / (size * size) as f32)
}

/// Runs `graphs/<name>.yaml` with `sets` and returns the picture it saves as `<name>.png`.
fn draw_graph(
    sb: &Sandbox,
    name: &str,
    out: &str,
    sets: &[String],
) -> (usize, usize, usize, Vec<u8>) {
    let g = graph(&format!("{name}.yaml")).display().to_string();
    let mut args = vec!["run", g.as_str(), "-q", "--output-dir", out, "--set"];
    args.extend(sets.iter().map(String::as_str));
    sb.run(&args).expect_code(0);
    read_png(&sb.path().join(out).join(format!("{name}.png")))
}

/// Runs `graphs/txt2img.yaml` with `sets` and returns its picture.
fn draw(sb: &Sandbox, out: &str, sets: &[String]) -> (usize, usize, usize, Vec<u8>) {
    draw_graph(sb, "txt2img", out, sets)
}

/// The centre of the picture is `centre` and its four corners are `corners`, as far as the
/// channels that tell the colours apart go: each named channel's mean is within 60 of the
/// target.
fn assert_colours(
    what: &str,
    png: &(usize, usize, usize, Vec<u8>),
    centre: [f32; 3],
    corners: [f32; 3],
) {
    let (w, h, ..) = *png;
    assert_eq!((w, h), (64, 64), "{what}");
    let close =
        |got: [f32; 3], want: [f32; 3]| got.iter().zip(want).all(|(g, t)| (g - t).abs() < 60.0);
    let c = mean_rgb(png, 24, 24, 16);
    assert!(
        close(c, centre),
        "{what}: centre {c:?}, want about {centre:?}"
    );
    for (x, y) in [(0, 0), (56, 0), (0, 56), (56, 56)] {
        let k = mean_rgb(png, x, y, 8);
        assert!(
            close(k, corners),
            "{what}: corner ({x}, {y}) {k:?}, want about {corners:?}"
        );
    }
}

const RED: [f32; 3] = [220.0, 30.0, 35.0];
const BLUE: [f32; 3] = [35.0, 70.0, 220.0];

#[test]
fn a_red_circle_on_a_blue_background_over_seeds_and_samplers() {
    // LMS and UniPC are left out: at guidance 7.5 and 20 steps their high-order updates push
    // this small model off its colours (dark purple, orange circles), in diffusers exactly as
    // here; see models/tiny-shapes/RECIPE.md.
    let sb = Sandbox::new();
    for (seed, sampler) in [
        (1, "euler_a"),
        (2, "ddim"),
        (3, "dpmpp_2m"),
        (4, "ddpm"),
        (5, "euler"),
    ] {
        let out = format!("out_{seed}");
        let sets = [format!("seed={seed}"), format!("sampler={sampler}")];
        let png = draw(&sb, &out, &sets);
        assert_colours(&format!("seed {seed}, {sampler}"), &png, RED, BLUE);
    }
}

#[test]
fn the_readme_commands_draw_what_the_readme_shows() {
    let sb = Sandbox::new();
    // The main command, at the graph's defaults: the committed picture (pixels within 2 levels
    // on average; matrix kernels differ between CPUs).
    let ours = draw(&sb, "main", &["seed=42".into()]);
    let shown = read_png(&workspace_root().join("docs/txt2img-default.png"));
    assert_eq!((ours.0, ours.1), (shown.0, shown.1));
    let diff: f64 = ours
        .3
        .iter()
        .zip(&shown.3)
        .map(|(a, b)| (*a as f64 - *b as f64).abs())
        .sum::<f64>()
        / ours.3.len() as f64;
    assert!(
        diff < 2.0,
        "mean difference {diff} from docs/txt2img-default.png"
    );
    // The second command of the quick start.
    let star = draw(
        &sb,
        "star",
        &["prompt=a yellow star on a purple background".into()],
    );
    assert_colours(
        "the yellow star",
        &star,
        [245.0, 215.0, 35.0],
        [145.0, 50.0, 185.0],
    );
    let readme = std::fs::read_to_string(workspace_root().join("README.md")).expect("README");
    assert!(readme.contains(
        "latentflow run graphs/txt2img.yaml --set prompt=\"a yellow star on a purple background\""
    ));
}

#[test]
fn the_inpainting_graph_paints_its_prompt_into_the_masked_middle_only() {
    // graphs/inpaint.yaml by default: a plain blue picture, a mask over its middle (16..48) and
    // the prompt "a red circle on a blue background". The middle turns red (the circle's size
    // varies with the seed, so only its central 8×8 is checked); the corners, outside the mask,
    // keep the input's blue up to the VAE's round trip. That the mask confines the change is
    // checked against diffusers by `sd_pipeline::inpaint_matches_diffusers`.
    let sb = Sandbox::new();
    let input = read_png(&graph("inputs/blue.png"));
    let blue = mean_rgb(&input, 0, 0, 8);
    for (seed, sampler) in [(1, "ddim"), (2, "euler_a"), (3, "dpmpp_2m")] {
        let what = format!("inpaint seed {seed}, {sampler}");
        let sets = [format!("seed={seed}"), format!("sampler={sampler}")];
        let png = draw_graph(&sb, "inpaint", &format!("out_{seed}"), &sets);
        assert_eq!((png.0, png.1), (64, 64), "{what}");
        let [r, g, b] = mean_rgb(&png, 28, 28, 8);
        assert!(
            r >= 150.0 && g <= 80.0 && b <= 80.0,
            "{what}: centre {:?} is not red",
            [r, g, b]
        );
        for (x, y) in [(0, 0), (56, 0), (0, 56), (56, 56)] {
            let k = mean_rgb(&png, x, y, 8);
            assert!(
                k.iter().zip(blue).all(|(k, b)| (k - b).abs() < 25.0),
                "{what}: corner ({x}, {y}) {k:?} changed from the input's {blue:?}"
            );
        }
    }
}

/// How many pixels are clearly red (R at least 80 above G and B).
fn red_pixels(png: &(usize, usize, usize, Vec<u8>)) -> usize {
    let (_, _, ch, data) = png;
    data.chunks(*ch)
        .filter(|p| p[0] as i32 - (p[1].max(p[2]) as i32) >= 80)
        .count()
}

#[test]
fn the_lora_graph_teaches_the_default_model_a_ring() {
    // graphs/lora.yaml by default: "a red ring on a blue background" with the ring LoRA. The
    // base model (strength 0) has never seen "ring" and draws a red disc; with the LoRA the
    // middle stays blue inside a red ring.
    let sb = Sandbox::new();
    for seed in [1, 2, 3] {
        let with = draw_graph(
            &sb,
            "lora",
            &format!("ring_{seed}"),
            &[format!("seed={seed}")],
        );
        let [r, _, b] = mean_rgb(&with, 30, 30, 4);
        assert!(b > r + 60.0, "seed {seed}: centre {:?} is not blue", [r, b]);
        let red = red_pixels(&with);
        assert!(red >= 150, "seed {seed}: only {red} red pixels, no ring");
        let without = draw_graph(
            &sb,
            "lora",
            &format!("disc_{seed}"),
            &[
                format!("seed={seed}"),
                "strength_model=0".into(),
                "strength_clip=0".into(),
            ],
        );
        let [r, _, b] = mean_rgb(&without, 30, 30, 4);
        assert!(
            r > b + 60.0,
            "seed {seed}, no LoRA: centre {:?} is not red",
            [r, b]
        );
    }
}
