//! The device service on a real adapter (lavapipe in CI). These tests fail, never skip, when no
//! adapter is found: `.ci/run` installs Mesa's software Vulkan driver.

use std::sync::Arc;

use latentflow_gpu::{GpuError, OpenOptions, Service};
use latentflow_plugin_api::abi_stable::std_types::RResult;
use latentflow_plugin_api::{DType, ErrorKind};

fn service() -> Arc<Service> {
    match Service::open(&OpenOptions::from_env()) {
        Ok(s) => s,
        Err(e) => panic!("{e}"),
    }
}

const ADD: &str = r#"
@group(0) @binding(0) var<storage, read> a: array<f32>;
@group(0) @binding(1) var<storage, read> b: array<f32>;
@group(0) @binding(2) var<storage, read_write> c: array<f32>;

@compute @workgroup_size(64)
fn add(@builtin(global_invocation_id) id: vec3<u32>) {
    if (id.x < arrayLength(&c)) {
        c[id.x] = a[id.x] + b[id.x];
    }
}
"#;

fn f32_bytes(v: &[f32]) -> Vec<u8> {
    v.iter().flat_map(|x| x.to_le_bytes()).collect()
}

fn from_bytes(b: &[u8]) -> Vec<f32> {
    b.chunks_exact(4)
        .map(|c| f32::from_le_bytes([c[0], c[1], c[2], c[3]]))
        .collect()
}

#[test]
fn a_kernel_runs_and_its_result_reads_back() {
    let s = service();
    let n = 1000usize;
    let a: Vec<f32> = (0..n).map(|i| i as f32).collect();
    let b: Vec<f32> = (0..n).map(|i| 2.0 * i as f32).collect();
    let (ha, hb, hc) = (
        s.create(4 * n as u64).unwrap(),
        s.create(4 * n as u64).unwrap(),
        s.create(4 * n as u64).unwrap(),
    );
    s.write(ha, 0, &f32_bytes(&a)).unwrap();
    s.write(hb, 0, &f32_bytes(&b)).unwrap();
    let k = s.compile(ADD, "add").unwrap();
    s.dispatch(
        k,
        &[(0, ha), (1, hb), (2, hc)],
        [n.div_ceil(64) as u32, 1, 1],
    )
    .unwrap();
    let c = from_bytes(&s.read(hc, 0, 4 * n as u64).unwrap());
    assert_eq!(c.len(), n);
    for (i, v) in c.iter().enumerate() {
        assert_eq!(*v, 3.0 * i as f32, "element {i}");
    }
    // A partial read at an offset.
    assert_eq!(from_bytes(&s.read(hc, 40, 8).unwrap()), vec![30.0, 33.0]);
    for h in [ha, hb, hc] {
        s.release(h);
    }
    assert_eq!(s.live_buffers().0, 0);
}

#[test]
fn the_same_kernel_compiles_once() {
    let s = service();
    let before = s.compiled_kernels();
    let k1 = s.compile(ADD, "add").unwrap();
    let k2 = s.compile(ADD, "add").unwrap();
    assert_eq!(k1, k2);
    assert_eq!(s.compiled_kernels(), before + 1);
}

#[test]
fn a_bad_shader_is_an_error_with_its_line() {
    let s = service();
    let src = "@compute @workgroup_size(1)\nfn main() {\n    let x: f32 = nope;\n}\n";
    match s.compile(src, "main") {
        Err(GpuError::Shader { entry, message }) => {
            assert_eq!(entry, "main");
            assert!(message.contains("nope"), "{message}");
            assert!(message.starts_with("line 3:18: "), "no line in: {message}");
            assert!(!message.contains('┌'), "one line: {message}");
        }
        other => panic!("expected a shader error, got {:?}", other.err()),
    }
    // A missing entry point is an error too, not a panic.
    assert!(matches!(
        s.compile(ADD, "not_there"),
        Err(GpuError::Shader { .. })
    ));
}

#[test]
fn a_released_handle_is_refused_and_never_aliases_a_new_buffer() {
    let s = service();
    let h = s.create(16).unwrap();
    s.release(h);
    assert!(matches!(s.size(h), Err(GpuError::StaleBuffer(_))));
    assert!(matches!(
        s.write(h, 0, &[0; 4]),
        Err(GpuError::StaleBuffer(_))
    ));
    let h2 = s.create(16).unwrap();
    assert_ne!(h, h2, "the slot is reused with a new generation");
    assert!(matches!(s.read(h, 0, 4), Err(GpuError::StaleBuffer(_))));
    // Releasing a stale handle does nothing.
    s.release(h);
    assert_eq!(s.size(h2).unwrap(), 16);
    s.release(h2);
}

#[test]
fn sizes_and_ranges_are_checked_before_anything_is_queued() {
    let s = service();
    let max = s.limits().max_buffer_size;
    assert!(matches!(s.create(max + 1), Err(GpuError::Limit(_))));
    assert!(matches!(s.create(u64::MAX), Err(GpuError::Limit(_))));
    let h = s.create(8).unwrap();
    assert!(matches!(s.write(h, 2, &[0; 4]), Err(GpuError::Limit(_))));
    assert!(matches!(s.write(h, 0, &[0; 3]), Err(GpuError::Limit(_))));
    assert!(matches!(s.write(h, 4, &[0; 8]), Err(GpuError::Limit(_))));
    assert!(matches!(s.read(h, 0, 12), Err(GpuError::Limit(_))));
    assert!(matches!(
        s.read(h, u64::MAX - 3, 4),
        Err(GpuError::Limit(_))
    ));
    let k = s.compile(ADD, "add").unwrap();
    let too_many = s.limits().max_compute_workgroups_per_dimension + 1;
    assert!(matches!(
        s.dispatch(k, &[(0, h), (1, h), (2, h)], [too_many, 1, 1]),
        Err(GpuError::Limit(_))
    ));
    assert!(matches!(
        s.dispatch(99_999, &[], [1, 1, 1]),
        Err(GpuError::UnknownKernel(_))
    ));
    s.release(h);
}

#[test]
fn a_binding_that_does_not_match_is_an_error_not_a_panic() {
    let s = service();
    let h = s.create(16).unwrap();
    let k = s.compile(ADD, "add").unwrap();
    // Binding 2 missing, binding 7 unknown.
    match s.dispatch(k, &[(0, h), (1, h), (7, h)], [1, 1, 1]) {
        Err(GpuError::Operation { what, message }) => {
            assert_eq!(what, "dispatch");
            assert!(message.contains("add"), "{message}");
        }
        other => panic!("expected a dispatch error, got {other:?}"),
    }
    // Bindings for a kernel that declares none.
    let bare = s
        .compile("@compute @workgroup_size(1)\nfn main() {}\n", "main")
        .unwrap();
    assert!(matches!(
        s.dispatch(bare, &[(0, h)], [1, 1, 1]),
        Err(GpuError::Operation { .. })
    ));
    s.dispatch(bare, &[], [1, 1, 1]).unwrap();
    // The service still works afterwards.
    s.write(h, 0, &f32_bytes(&[1.0, 2.0, 3.0, 4.0])).unwrap();
    assert_eq!(
        from_bytes(&s.read(h, 0, 16).unwrap()),
        vec![1.0, 2.0, 3.0, 4.0]
    );
    s.release(h);
}

#[test]
fn a_device_tensor_holds_its_own_reference() {
    let s = service();
    let table = s.handle();
    let (live_before, _) = s.live_buffers();
    let buf = match table.buffer_create(24) {
        RResult::ROk(b) => b,
        RResult::RErr(e) => panic!("{e}"),
    };
    let t = match table.tensor(buf, DType::F32.into(), [2u64, 3].as_slice().into()) {
        RResult::ROk(t) => t,
        RResult::RErr(e) => panic!("{e}"),
    };
    assert_eq!(t.gpu_buffer(), Some(buf));
    assert_eq!(t.device().device_type, 15);
    assert_eq!(t.shape(), vec![2, 3]);
    assert!(t.as_bytes().is_none(), "device memory has no CPU view");
    // The creator's reference goes; the tensor's keeps the buffer.
    table.buffer_release(buf);
    let copy = t.clone();
    drop(t);
    assert!(matches!(table.buffer_size(buf), RResult::ROk(24)));
    drop(copy);
    assert_eq!(s.live_buffers().0, live_before);
    assert!(table.buffer_size(buf).is_err());
    // A shape larger than the buffer is refused, with the "too large" kind.
    let small = match table.buffer_create(8) {
        RResult::ROk(b) => b,
        RResult::RErr(e) => panic!("{e}"),
    };
    match table.tensor(small, DType::F32.into(), [4u64].as_slice().into()) {
        RResult::RErr(e) => assert_eq!(e.kind, ErrorKind::TOO_LARGE),
        RResult::ROk(_) => panic!("a 16-byte tensor over an 8-byte buffer"),
    }
    // A shape whose strides overflow is refused, not a panic (a zero hides no dimension).
    for shape in [vec![0u64, 1 << 62, 4], vec![u64::MAX], vec![0, u64::MAX]] {
        match table.tensor(small, DType::F32.into(), shape.as_slice().into()) {
            RResult::RErr(e) => assert_eq!(e.kind, ErrorKind::TOO_LARGE, "{shape:?}"),
            RResult::ROk(_) => panic!("shape {shape:?} accepted"),
        }
    }
    table.buffer_release(small);
}
