// Batched matrix product out[b] = alpha · a[b] · op(bm[b]), a: M×K, bm: K×N (or N×K when
// transposed), row-major. 16×16 output tiles per workgroup, K in steps of 16 through workgroup
// memory; the batch is the z workgroup index.

struct Params {
    m: u32,
    n: u32,
    k: u32,
    trans_b: u32,
    alpha: f32,
    batch: u32,
    _pad0: u32,
    _pad1: u32,
}

@group(0) @binding(0) var<storage, read> p: Params;
@group(0) @binding(1) var<storage, read> a: array<f32>;
@group(0) @binding(2) var<storage, read> bm: array<f32>;
@group(0) @binding(3) var<storage, read_write> out: array<f32>;

var<workgroup> ta: array<array<f32, 16>, 16>;
var<workgroup> tb: array<array<f32, 16>, 16>;

@compute @workgroup_size(16, 16)
fn matmul(
    @builtin(workgroup_id) wid: vec3<u32>,
    @builtin(local_invocation_id) lid: vec3<u32>,
) {
    let row = wid.y * 16u + lid.y;
    let col = wid.x * 16u + lid.x;
    let batch = wid.z;
    let a0 = batch * p.m * p.k;
    let b0 = batch * p.k * p.n;
    var acc = 0.0;
    let steps = (p.k + 15u) / 16u;
    for (var t = 0u; t < steps; t = t + 1u) {
        let ka = t * 16u + lid.x;
        var va = 0.0;
        if (row < p.m && ka < p.k) {
            va = a[a0 + row * p.k + ka];
        }
        ta[lid.y][lid.x] = va;
        let kb = t * 16u + lid.y;
        var vb = 0.0;
        if (col < p.n && kb < p.k) {
            if (p.trans_b != 0u) {
                vb = bm[b0 + col * p.k + kb];
            } else {
                vb = bm[b0 + kb * p.n + col];
            }
        }
        tb[lid.y][lid.x] = vb;
        workgroupBarrier();
        for (var i = 0u; i < 16u; i = i + 1u) {
            acc = acc + ta[lid.y][i] * tb[i][lid.x];
        }
        workgroupBarrier();
    }
    if (row < p.m && col < p.n) {
        out[batch * p.m * p.n + row * p.n + col] = p.alpha * acc;
    }
}
