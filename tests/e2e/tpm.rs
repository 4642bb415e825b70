//! The TPM plugin end to end: VQ codes, a circuit fitted by EM and saved, loaded back, and
//! circuit inpainting that keeps every fully known patch's own code and recovers the hole's.

use latentflow_tests::{graph, workspace_root, Sandbox};

use crate::sd_pipeline::{fixture, saved};

fn inpaint_graph(circuit: &str) -> String {
    let inputs = workspace_root().join("graphs/inputs");
    format!(
        "version: 1\nnodes:\n  vq: {{type: tpm.load_vq, params: {{path: {vq}}}}}\n  image: {{type: core.load_image, params: {{path: {img}}}}}\n  picture: {{type: core.resize_image, inputs: {{image: image.image}}, params: {{width: 32, height: 32}}}}\n  mask_image: {{type: core.load_image, params: {{path: {mask}}}}}\n  mask_resized: {{type: core.resize_image, inputs: {{image: mask_image.image}}, params: {{width: 32, height: 32, method: nearest}}}}\n  mask: {{type: core.image_to_mask, inputs: {{image: mask_resized}}}}\n  gray: {{type: core.solid_image, params: {{width: 32, height: 32, red: 0.5, green: 0.5, blue: 0.5}}}}\n  blank: {{type: core.composite_masked, inputs: {{destination: picture, source: gray, mask: mask}}}}\n  codes: {{type: tpm.vq_encode, inputs: {{vq: vq, image: picture}}}}\n  blank_codes: {{type: tpm.vq_encode, inputs: {{vq: vq, image: blank}}}}\n  circuit: {{type: tpm.load_circuit, params: {{path: {circuit}}}}}\n  fill: {{type: tpm.circuit_inpaint, inputs: {{circuit: circuit, vq: vq, image: blank, mask: mask}}, params: {{top_k: 0}}}}\n  s4: {{type: core.save_tensor, inputs: {{tensor: blank_codes.codes}}, params: {{filename: blank.safetensors}}}}\n  s1: {{type: core.save_tensor, inputs: {{tensor: codes.codes}}, params: {{filename: own.safetensors}}}}\n  s2: {{type: core.save_tensor, inputs: {{tensor: fill.codes}}, params: {{filename: filled.safetensors}}}}\n  s3: {{type: core.save_tensor, inputs: {{tensor: mask}}, params: {{filename: mask.safetensors}}}}\n",
        vq = fixture("tiny-vq").display(),
        img = inputs.join("shapes.png").display(),
        mask = inputs.join("center-mask.png").display(),
    )
}

#[test]
fn a_fitted_circuit_is_saved_loaded_and_fills_only_the_masked_patches() {
    let sb = Sandbox::new();
    let g = graph("tpm_inpaint.yaml").display().to_string();
    sb.run(&["run", &g, "-q"]).expect_code(0);
    let circuit = sb.output("tpm_circuit.safetensors");
    assert!(circuit.exists() && sb.output("tpm_inpaint.png").exists());
    let g2 = sb.write("again.yaml", &inpaint_graph(&circuit.display().to_string()));
    sb.run(&["run", g2.to_str().unwrap_or_default(), "-q"])
        .expect_code(0);
    let out = sb.path().join("output");
    let (shape, own) = saved(&out, "own.safetensors");
    let (_, filled) = saved(&out, "filled.safetensors");
    let (_, mask) = saved(&out, "mask.safetensors");
    let (_, blank) = saved(&out, "blank.safetensors");
    assert_eq!(shape, vec![1, 16, 16]);
    // The hole is painted gray before inpainting; the circuit, fitted on the original picture
    // (and another), recovers the original codes from the context far more often than the
    // encoder of the gray-holed picture gives them.
    let (mut kept, mut recovered, mut by_encoder, mut hole) = (0, 0, 0, 0);
    for py in 0..16 {
        for px in 0..16 {
            let repaint =
                (0..2).any(|dy| (0..2).any(|dx| mask[(py * 2 + dy) * 32 + px * 2 + dx] >= 0.5));
            let i = py * 16 + px;
            assert!(filled[i] >= 0.0 && filled[i] < 32.0);
            if !repaint {
                // The encoder's own code of the picture it was given.
                assert_eq!(filled[i], blank[i], "patch ({px}, {py}) is fully known");
                kept += 1;
            } else {
                hole += 1;
                recovered += usize::from(filled[i] == own[i]);
                by_encoder += usize::from(blank[i] == own[i]);
            }
        }
    }
    assert!(
        kept > 0 && kept < 256,
        "the mask covers part of the picture"
    );
    assert!(
        recovered * 2 >= hole && recovered > by_encoder,
        "{recovered} of {hole} hole patches recovered (the gray picture's encoder: {by_encoder})"
    );
}

#[test]
fn files_that_are_not_circuits_or_vq_models_are_refused_before_running() {
    let sb = Sandbox::new();
    let not_circuit = fixture("tiny-ella.safetensors").display().to_string();
    let g = sb.write("bad.yaml", &inpaint_graph(&not_circuit));
    sb.run(&["validate", g.to_str().unwrap_or_default()])
        .expect_code(3)
        .stderr_has("not a latentflow-pc-v1 circuit");
    let text = inpaint_graph(&not_circuit).replace(
        &fixture("tiny-vq").display().to_string(),
        &fixture("tiny-t5").display().to_string(),
    );
    let g = sb.write("bad2.yaml", &text);
    sb.run(&["validate", g.to_str().unwrap_or_default()])
        .expect_code(3)
        .stderr_has("config.json");
}

#[test]
fn the_readme_command_is_the_graph_run_by_the_tests() {
    let readme = std::fs::read_to_string(workspace_root().join("README.md")).expect("README");
    // The graphs run with their defaults in graphs.rs (every_example_graph_runs); the converter
    // command is the one ml/pc/tests/pyjuice_convert.rs runs.
    for command in [
        "latentflow run graphs/tpm_inpaint.yaml\n",
        "latentflow run graphs/tiramisu.yaml\n",
        "latentflow run graphs/tiramisu_sd.yaml\n",
        "python3 tools/convert/pyjuice_circuit.py circuit.jpc circuit.safetensors\n",
    ] {
        assert!(readme.contains(command), "README lacks {command:?}");
    }
}
