// GroupNorm over x of shape N×C×S (S = the spatial size): one workgroup per (sample, group).
// Two passes over the group (mean, then the variance of x − mean) keep f32 accurate; then the
// per-channel affine and, when asked, SiLU.

struct Params {
    channels: u32,
    spatial: u32,
    groups: u32,
    flags: u32, // bit 0: affine (weight, bias), bit 1: SiLU after
    eps: f32,
    items: u32, // samples × groups
    _pad1: u32,
    _pad2: u32,
}

@group(0) @binding(0) var<storage, read> p: Params;
@group(0) @binding(1) var<storage, read> x: array<f32>;
@group(0) @binding(2) var<storage, read> weight: array<f32>;
@group(0) @binding(3) var<storage, read> bias: array<f32>;
@group(0) @binding(4) var<storage, read_write> out: array<f32>;

@compute @workgroup_size(256)
fn group_norm(
    @builtin(workgroup_id) wid: vec3<u32>,
    @builtin(num_workgroups) groups: vec3<u32>,
    @builtin(local_invocation_index) lid: u32,
) {
    // Uniform across the workgroup, so the early return keeps barriers uniform.
    let item = wid.x + wid.y * groups.x;
    if (item >= p.items) {
        return;
    }
    let per_group = p.channels / p.groups;
    let n = per_group * p.spatial;
    let sample = item / p.groups;
    let g = item % p.groups;
    let base = sample * p.channels * p.spatial + g * n;
    var s = 0.0;
    for (var j = lid; j < n; j = j + 256u) {
        s = s + x[base + j];
    }
    let mean = reduce_sum(lid, s) / f32(n);
    var q = 0.0;
    for (var j = lid; j < n; j = j + 256u) {
        let d = x[base + j] - mean;
        q = q + d * d;
    }
    let inv = inverseSqrt(reduce_sum(lid, q) / f32(n) + p.eps);
    for (var j = lid; j < n; j = j + 256u) {
        let c = g * per_group + j / p.spatial;
        var y = (x[base + j] - mean) * inv;
        if ((p.flags & 1u) != 0u) {
            y = y * weight[c] + bias[c];
        }
        if ((p.flags & 2u) != 0u) {
            y = y / (1.0 + exp(-y));
        }
        out[base + j] = y;
    }
}
