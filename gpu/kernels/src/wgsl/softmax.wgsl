// Softmax over the last dimension: one workgroup per row, 256 invocations reduce the row's
// maximum and then its sum of exponentials in workgroup memory.

struct Params {
    rows: u32,
    cols: u32,
    scale: f32,
    _pad: u32,
}

@group(0) @binding(0) var<storage, read> p: Params;
@group(0) @binding(1) var<storage, read> x: array<f32>;
@group(0) @binding(2) var<storage, read_write> out: array<f32>;

@compute @workgroup_size(256)
fn softmax(
    @builtin(workgroup_id) wid: vec3<u32>,
    @builtin(num_workgroups) groups: vec3<u32>,
    @builtin(local_invocation_index) lid: u32,
) {
    // Uniform across the workgroup, so the early return keeps barriers uniform.
    let row = wid.x + wid.y * groups.x;
    if (row >= p.rows) {
        return;
    }
    let base = row * p.cols;
    var m = -3.4028235e38;
    for (var j = lid; j < p.cols; j = j + 256u) {
        m = max(m, p.scale * x[base + j]);
    }
    m = reduce_max(lid, m);
    var s = 0.0;
    for (var j = lid; j < p.cols; j = j + 256u) {
        s = s + exp(p.scale * x[base + j] - m);
    }
    s = reduce_sum(lid, s);
    let inv = 1.0 / s;
    for (var j = lid; j < p.cols; j = j + 256u) {
        out[base + j] = exp(p.scale * x[base + j] - m) * inv;
    }
}
