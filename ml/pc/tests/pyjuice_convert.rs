//! The pyjuice converter (tools/convert/pyjuice_circuit.py) on circuits pyjuice built and saved
//! (tools/reference/make_pyjuice_fixtures.py): an HCLT and a Poon-Domingos circuit with blocks
//! of two and tied parameters. The converted files load, and every assignment's likelihood
//! equals the block-by-block reference; files that are not circuits, or that ask the unpickler
//! for other code, are refused with the reason.

use std::path::{Path, PathBuf};
use std::process::Command;

use latentflow_pc::{format, forward, Evidence};
use safetensors::SafeTensors;

fn root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../..")
}

/// Runs the converter; its exit status and standard error.
fn convert(src: &Path, dst: &Path) -> (bool, String) {
    let out = Command::new("python3")
        .arg(root().join("tools/convert/pyjuice_circuit.py"))
        .arg(src)
        .arg(dst)
        .output()
        .expect("python3 runs (the converter needs only its standard library)");
    (
        out.status.success(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

fn reference(name: &str) -> (Vec<Vec<usize>>, Vec<f64>) {
    let bytes =
        std::fs::read(root().join(format!("tests/fixtures/pc-ref/{name}.safetensors"))).unwrap();
    let st = SafeTensors::deserialize(&bytes).unwrap();
    let x = st.tensor("x").unwrap();
    let n = x.shape()[1];
    let xs: Vec<usize> = x
        .data()
        .chunks(8)
        .map(|c| i64::from_le_bytes(c.try_into().unwrap()) as usize)
        .collect();
    let logp: Vec<f64> = st
        .tensor("logp")
        .unwrap()
        .data()
        .chunks(8)
        .map(|c| f64::from_le_bytes(c.try_into().unwrap()))
        .collect();
    (xs.chunks(n).map(<[usize]>::to_vec).collect(), logp)
}

#[test]
fn converted_pyjuice_circuits_give_the_reference_likelihoods() {
    let dir = tempfile::tempdir().unwrap();
    for name in ["hclt", "pd"] {
        let dst = dir.path().join(format!("{name}.safetensors"));
        let (ok, err) = convert(
            &root().join(format!("tests/fixtures/pc-ref/{name}.jpc")),
            &dst,
        );
        assert!(ok, "{name}: {err}");
        let c = format::load(&dst).unwrap();
        let (xs, logp) = reference(name);
        let ev: Vec<Evidence> = xs.iter().map(|x| Evidence::values(x)).collect();
        let got = forward(&c, &ev).unwrap().log_z();
        for (i, (g, w)) in got.iter().zip(&logp).enumerate() {
            assert!((g - w).abs() <= 1e-6, "{name}: assignment {i}: {g} vs {w}");
        }
        let z = forward(&c, &[Evidence::missing(c.num_vars())])
            .unwrap()
            .log_z()[0];
        assert!(z.abs() < 1e-9, "{name}: normalised, log Z = {z}");
    }
}

#[test]
fn files_that_are_not_pyjuice_circuits_are_refused() {
    let dir = tempfile::tempdir().unwrap();
    let dst = dir.path().join("out.safetensors");
    // A pickle that asks for os.system: refused by name, nothing runs.
    let evil = dir.path().join("evil.jpc");
    std::fs::write(&evil, b"cos\nsystem\n(S'touch /tmp/pwned-by-jpc'\ntR.").unwrap();
    let (ok, err) = convert(&evil, &dst);
    assert!(!ok && err.contains("os.system"), "{err}");
    assert!(!dst.exists());
    // Not a pickle at all.
    let junk = dir.path().join("junk.jpc");
    std::fs::write(&junk, b"not a pickle").unwrap();
    let (ok, err) = convert(&junk, &dst);
    assert!(!ok && err.contains("junk.jpc"), "{err}");
    // A pickle of something else.
    let list = dir.path().join("list.jpc");
    std::fs::write(&list, b"\x80\x04K\x01.").unwrap();
    let (ok, err) = convert(&list, &dst);
    assert!(!ok && err.contains("not a pyjuice circuit"), "{err}");
}
