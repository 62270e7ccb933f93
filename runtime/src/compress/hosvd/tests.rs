use super::*;
use crate::compress::testutil::{assert_rel, golden, golden_conv};
use crate::kernels::gemm::tests::counting;
use crate::kernels::testutil::Lcg;

const EPS: [(&str, f32); 4] = [("e050", 0.5), ("e080", 0.8), ("e090", 0.9), ("e100", 1.0)];
/// Golden tensors and their conv cases (see make_compress_golden.py).
const TENSORS: [(&str, &[&str]); 5] = [
    ("t4", &["c3x3", "s2", "pw", "g2", "dw"]),
    ("t3", &["c3x3", "s2d2", "pw", "g2", "dwm2"]),
    ("t5", &["pw", "dw"]),
    ("t3d", &[]),
    ("m2", &[]),
];

fn geom(t: &str, c: &str, dims: &[usize]) -> Conv2dGeom {
    golden_conv("hosvd", &format!("{t}__{c}__geom"), dims).0
}

/// A compressed tensor with its buffers, caps = dims (nothing truncated).
struct Compressed {
    dims: Vec<usize>,
    caps: Vec<usize>,
    packed: Vec<f32>,
    ranks: Ranks,
}

fn compressed(x: &[f32], dims: &[usize], caps: &[usize], eps: f32) -> Compressed {
    let mut packed = vec![0.0; packed_len(dims, caps)];
    let mut ws = vec![0.0; workspace_len(dims, caps, Some(eps))];
    let mut state = vec![0.0; eps_state_len(dims, caps, eps)];
    let ranks = compress(
        x,
        dims,
        Rule::Eps(eps, &mut state),
        caps,
        &mut packed,
        &mut ws,
    );
    Compressed {
        dims: dims.to_vec(),
        caps: caps.to_vec(),
        packed,
        ranks,
    }
}

impl Compressed {
    fn conv_dw(&self, g: &Conv2dGeom, dy: &[f32]) -> Vec<f32> {
        let mut dw = vec![0.0; g.weight_len()];
        let mut ws = vec![0.0; conv_weight_grad_workspace_len(&self.dims, &self.caps, g)];
        conv_weight_grad(
            &self.packed,
            &self.dims,
            &self.caps,
            g,
            dy,
            1.0,
            0.0,
            &mut dw,
            &mut ws,
        );
        dw
    }
}

#[test]
fn ranks_and_reconstruction_match_numpy_hosvd() {
    for (t, _) in TENSORS {
        let x = golden("hosvd", &format!("{t}__x"));
        let dims = &x.shape;
        for (e, eps) in EPS {
            let c = compressed(&x.values, dims, dims, eps);
            let want: Vec<usize> = golden("hosvd", &format!("{t}__{e}__ranks"))
                .values
                .iter()
                .map(|&v| v as usize)
                .collect();
            let nm = dims.len();
            assert_eq!(c.ranks.used[..nm], want, "{t} {e}: ranks");
            assert_eq!(c.ranks.wanted[..nm], want, "{t} {e}: wanted ranks");
            assert_eq!(ranks(&c.packed, dims)[..nm], want, "{t} {e}: header");
            let mut out = vec![0.0; x.values.len()];
            let mut ws = vec![0.0; reconstruct_workspace_len(dims, dims)];
            reconstruct(&c.packed, dims, dims, &mut out, &mut ws);
            let recon = golden("hosvd", &format!("{t}__{e}__recon"));
            assert_rel(&format!("{t} {e} recon"), &out, &recon.values, 1e-4);
        }
    }
}

#[test]
fn conv_weight_grads_match_torch_on_the_reconstruction() {
    for (t, convs) in TENSORS {
        let x = golden("hosvd", &format!("{t}__x"));
        let dims = &x.shape;
        for (e, eps) in EPS {
            let c = compressed(&x.values, dims, dims, eps);
            for conv in convs.iter() {
                let g = geom(t, conv, dims);
                let dy = golden("hosvd", &format!("{t}__{conv}__dy")).values;
                let want = golden("hosvd", &format!("{t}__{conv}__{e}__dw")).values;
                assert_rel(
                    &format!("{t} {conv} {e} dw"),
                    &c.conv_dw(&g, &dy),
                    &want,
                    1e-4,
                );
            }
        }
    }
}

#[test]
fn linear_weight_grad_matches_numpy() {
    let x = golden("hosvd", "m2__x");
    let dims = &x.shape;
    let (k, n) = (dims[1], 7);
    let dy = golden("hosvd", "m2__lin__dy").values;
    for (e, eps) in EPS {
        let c = compressed(&x.values, dims, dims, eps);
        let want = golden("hosvd", &format!("m2__{e}__dw_lin")).values; // K × N
        let mut ws = vec![0.0; linear_weight_grad_workspace_len(dims, dims, n)];
        let mut dw = vec![0.0; k * n];
        linear_weight_grad(&c.packed, dims, dims, &dy, false, &mut dw, &mut ws);
        assert_rel(&format!("m2 {e} dw K×N"), &dw, &want, 1e-4);
        linear_weight_grad(&c.packed, dims, dims, &dy, true, &mut dw, &mut ws);
        let want_t: Vec<f32> = (0..n * k).map(|i| want[(i % k) * n + i / k]).collect();
        assert_rel(&format!("m2 {e} dw N×K"), &dw, &want_t, 1e-4);
    }
}

#[test]
fn eps_one_gives_the_exact_weight_gradient() {
    for (t, convs) in &TENSORS[..3] {
        let x = golden("hosvd", &format!("{t}__x"));
        let dims = &x.shape;
        let c = compressed(&x.values, dims, dims, 1.0);
        for conv in convs.iter() {
            let g = geom(t, conv, dims);
            let dy = golden("hosvd", &format!("{t}__{conv}__dy")).values;
            let mut want = vec![0.0; g.weight_len()];
            let mut ws = vec![0.0; conv::workspace_len(&g)];
            conv::backward_weight(&g, &x.values, &dy, &mut want, &mut ws);
            assert_rel(
                &format!("{t} {conv} exact"),
                &c.conv_dw(&g, &dy),
                &want,
                1e-4,
            );
        }
    }
}

#[test]
fn caps_below_the_eps_rank_truncate() {
    let x = golden("hosvd", "t4__x");
    let dims = &x.shape;
    let caps = [1, 2, 5, 2];
    let c = compressed(&x.values, dims, &caps, 0.9);
    // ε = 0.9 wants [3, 4, 3, 3] (the golden ranks).
    assert_eq!(c.ranks.wanted, [3, 4, 3, 3]);
    assert_eq!(c.ranks.used, [1, 2, 3, 2]);
    assert_eq!(ranks(&c.packed, dims), [1, 2, 3, 2]);
    assert_eq!(
        paper_bytes(dims, &c.ranks.used),
        (12 + 4 + 12 + 15 + 10) * 4
    );
    // Still a projection of the input: the truncated reconstruction is the best this
    // subspace holds, so further from the input than the ε = 0.9 one but not garbage.
    let mut out = vec![0.0; x.values.len()];
    let mut ws = vec![0.0; reconstruct_workspace_len(dims, &caps)];
    reconstruct(&c.packed, dims, &caps, &mut out, &mut ws);
    let norm = |v: &[f32]| v.iter().map(|v| v * v).sum::<f32>().sqrt();
    let diff: Vec<f32> = out.iter().zip(&x.values).map(|(o, x)| o - x).collect();
    assert!(
        norm(&diff) < norm(&x.values),
        "a projection never grows the error"
    );
    assert!(norm(&out) <= norm(&x.values) * (1.0 + 1e-5));
}

#[test]
fn warm_calls_do_not_allocate() {
    let x = golden("hosvd", "t3__x");
    let dims = &x.shape;
    let caps = [3, 6, 6, 6];
    let geoms: Vec<Conv2dGeom> = TENSORS[1].1.iter().map(|c| geom("t3", c, dims)).collect();
    let dys: Vec<Vec<f32>> = TENSORS[1]
        .1
        .iter()
        .map(|c| golden("hosvd", &format!("t3__{c}__dy")).values)
        .collect();
    let mut dws: Vec<Vec<f32>> = geoms.iter().map(|g| vec![0.0; g.weight_len()]).collect();
    let ws_len = geoms
        .iter()
        .map(|g| conv_weight_grad_workspace_len(dims, &caps, g))
        .chain([
            workspace_len(dims, &caps, Some(0.5)),
            reconstruct_workspace_len(dims, &caps),
        ])
        .max()
        .unwrap();
    let mut ws = vec![0.0; ws_len];
    let mut packed = vec![0.0; packed_len(dims, &caps)];
    let mut out = vec![0.0; x.values.len()];
    // And a tensor whose channel mode is decomposed through the smaller Gram matrix.
    let x5 = golden("hosvd", "t5__x");
    let mut packed5 = vec![0.0; packed_len(&x5.shape, &x5.shape)];
    let mut ws5 = vec![0.0; workspace_len(&x5.shape, &x5.shape, Some(0.5))];
    let mut state = vec![0.0; eps_state_len(dims, &caps, 0.5)];
    let mut state5 = vec![0.0; eps_state_len(&x5.shape, &x5.shape, 0.5)];
    let mut step = |eps: f32| {
        compress(
            &x5.values,
            &x5.shape,
            Rule::Eps(eps, &mut state5),
            &x5.shape,
            &mut packed5,
            &mut ws5,
        );
        let rule = Rule::Eps(eps, &mut state);
        compress(&x.values, dims, rule, &caps, &mut packed, &mut ws);
        for ((g, dy), dw) in geoms.iter().zip(&dys).zip(&mut dws) {
            conv_weight_grad(&packed, dims, &caps, g, dy, 1.0, 0.0, dw, &mut ws);
        }
        reconstruct(&packed, dims, &caps, &mut out, &mut ws);
    };
    step(1.0);
    let before = counting::allocations();
    for eps in [0.5, 0.8, 1.0] {
        step(eps);
    }
    assert_eq!(counting::allocations() - before, 0);
}

/// compress + conv_weight_grad against the uncompressed weight gradient, MobileNetV2's last
/// convs, with the compressor `--compress hosvd` gives by default (`--rank-rule auto`): fixed
/// ranks (8, 32, 4, 4) tracked from step to step on 7×7 maps, centered ε 0.95 within caps of
/// 32 on 1×1 maps. Run with `cargo test -p actc-runtime --release --lib
/// compress::hosvd::tests::bench -- --ignored --nocapture`.
#[test]
#[ignore = "a benchmark: run in release with --ignored --nocapture"]
fn bench() {
    use crate::ops::{Compressor, Conv, Hosvd, Method};
    use std::time::Instant;
    // (input dims, c_out, kernel, groups): 224² input (7×7) and 32² input (1×1)
    let cases: [([usize; 4], usize, usize, usize); 8] = [
        ([8, 960, 7, 7], 320, 1, 1),
        ([8, 960, 7, 7], 960, 3, 960),
        ([8, 160, 7, 7], 960, 1, 1),
        ([8, 320, 7, 7], 1280, 1, 1),
        ([64, 960, 1, 1], 320, 1, 1),
        ([64, 960, 1, 1], 960, 3, 960),
        ([64, 160, 1, 1], 960, 1, 1),
        ([64, 320, 1, 1], 1280, 1, 1),
    ];
    let mut rng = Lcg::new(3);
    let (mut total_c, mut total_g, mut total_v) = (0.0, 0.0, 0.0);
    for (dims, c_out, k, groups) in cases {
        let u32s = |v: &[usize]| v.iter().map(|&d| d as u32).collect::<Vec<_>>();
        let conv_op = Conv {
            kernel: u32s(&[k, k]),
            strides: u32s(&[1, 1]),
            pads: u32s(&[k / 2; 4]),
            dilations: u32s(&[1, 1]),
            group: groups as u32,
        };
        let w = [c_out, dims[1] / groups, k, k].map(|d| d as u64);
        let g = crate::exec::geom::conv(&conv_op, &dims.map(|d| d as u64), &w);
        let spatial = dims[2] * dims[3] > 1;
        let caps = match spatial {
            true => [8, 32, 4, 4],
            false => [32; 4],
        };
        let c = Compressor {
            shape: dims.iter().map(|&d| d as u64).collect(),
            method: Some(Method::Hosvd(Hosvd {
                eps: if spatial { 1.0 } else { 0.95 },
                caps: dims
                    .iter()
                    .zip(caps)
                    .map(|(&d, c)| d.min(c) as u32)
                    .collect(),
                fixed: spatial,
                center: !spatial,
            })),
        };
        // Structured like a post-ReLU activation: a rank-8 CP tensor plus noise, clipped at 0.
        let numel: usize = dims.iter().product();
        let (bs, cs, ps) = (dims[0], dims[1], dims[2] * dims[3]);
        let (fb, fc, fp) = (rng.vec(bs * 8), rng.vec(cs * 8), rng.vec(ps * 8));
        let mut x = vec![0.0f32; numel];
        for (i, v) in x.iter_mut().enumerate() {
            let (b, c, p) = (i / (cs * ps), i / ps % cs, i % ps);
            let s: f32 = (0..8)
                .map(|l| fb[b * 8 + l] * fc[c * 8 + l] * fp[p * 8 + l])
                .sum();
            *v = (s + 0.1 * rng.uniform()).max(0.0);
        }
        let dy = rng.vec(g.output_len());
        let mut packed = vec![0.0; c.packed_len()];
        let mut state = vec![0.0; c.state_len()];
        let mut ws = vec![
            0.0;
            c.compress_workspace_len()
                .max(c.conv_grad_workspace_len(&conv_op, &w))
                .max(conv::workspace_len(&g))
        ];
        let mut dw = vec![0.0; g.weight_len()];
        // The best of several rounds: the machine is shared.
        let time = |f: &mut dyn FnMut()| {
            f();
            (0..7)
                .map(|_| {
                    let t = Instant::now();
                    let reps = 5;
                    for _ in 0..reps {
                        f();
                    }
                    t.elapsed().as_secs_f64() * 1e3 / reps as f64
                })
                .fold(f64::INFINITY, f64::min)
        };
        let mut ranks = None;
        let tc = time(&mut || ranks = Some(c.compress(&x, &mut state, &mut packed, &mut ws)));
        let tg = time(&mut || {
            c.conv_weight_grad(&conv_op, &w, &packed, &dy, 1.0, 0.0, &mut dw, &mut ws)
        });
        let tv = time(&mut || conv::backward_weight(&g, &x, &dy, &mut dw, &mut ws));
        (total_c, total_g, total_v) = (total_c + tc, total_g + tg, total_v + tv);
        println!(
            "{dims:?} -> {c_out} k{k} g{groups}: ranks {:?}, compress {tc:.3} ms + grad {tg:.3} ms vs vanilla grad {tv:.3} ms; {} vs {} bytes",
            &ranks.unwrap().used,
            c.packed_len() * 4,
            numel * 4
        );
    }
    println!(
        "all: compress {total_c:.3} ms + grad {total_g:.3} ms vs vanilla grad {total_v:.3} ms"
    );
}

/// A (B, C, H, W) tensor whose channel unfolding is `rank` slowly decaying directions plus
/// noise, so one subspace iteration from a random start would not find the leading ones.
fn low_rank_channels(rng: &mut Lcg, dims: [usize; 4], rank: usize, mix: &[f32]) -> Vec<f32> {
    let (c, rest) = (dims[1], dims[0] * dims[2] * dims[3]);
    let r = rng.vec(rank * rest);
    let hw = dims[2] * dims[3];
    let mut x = vec![0.0; c * rest];
    for (i, v) in x.iter_mut().enumerate() {
        let (b, ch, s) = (i / (c * hw), i / hw % c, i % hw);
        let col = b * hw + s;
        let signal: f32 = (0..rank)
            .map(|k| 0.85f32.powi(k as i32) * mix[ch * rank + k] * r[k * rest + col])
            .sum();
        *v = signal + 0.02 * rng.uniform();
    }
    x
}

/// 1 − ‖UᵀV‖²_F / r for two D × r orthonormal bases: 0 when they span the same subspace.
fn subspace_gap(u: &[f32], v: &[f32], d: usize, r: usize) -> f32 {
    let mut overlap = 0.0;
    for j in 0..r {
        for k in 0..r {
            let dot: f32 = (0..d).map(|i| u[i * r + j] * v[i * r + k]).sum();
            overlap += dot * dot;
        }
    }
    1.0 - overlap / r as f32
}

fn reconstruction_error(x: &[f32], packed: &[f32], dims: &[usize], caps: &[usize]) -> f32 {
    let mut out = vec![0.0; x.len()];
    let mut ws = vec![0.0; reconstruct_workspace_len(dims, caps)];
    reconstruct(packed, dims, caps, &mut out, &mut ws);
    out.iter()
        .zip(x)
        .map(|(o, x)| (o - x) * (o - x))
        .sum::<f32>()
        .sqrt()
}

#[test]
fn fixed_ranks_track_the_leading_subspace_from_step_to_step() {
    // The channel mode's Gram on its left side (C ≤ B·H·W), then on its right side.
    for dims in [[8, 144, 5, 5], [4, 160, 6, 6]] {
        let mut rng = Lcg::new(3);
        let rank = 24;
        let mix = rng.vec(dims[1] * rank);
        let caps = [2, 8, 3, 3];
        let len = packed_len(&dims, &caps);
        let ws_len =
            workspace_len(&dims, &caps, None).max(workspace_len(&dims, &caps, Some(0.99999)));
        let mut ws = vec![0.0; ws_len];
        let mut state = vec![0.0; state_len(&dims, &caps)];
        let (mut fixed, mut capped) = (vec![0.0; len], vec![0.0; len]);

        for step in 0..4 {
            let x = low_rank_channels(&mut rng, dims, rank, &mix);
            let fixed_rule = Rule::Fixed(&mut state);
            let r = compress(&x, &dims, fixed_rule, &caps, &mut fixed, &mut ws);
            assert_eq!(r.used[..4], caps, "{dims:?}");
            // From scratch: a fresh state every step.
            let mut fresh = vec![0.0; eps_state_len(&dims, &caps, 0.99999)];
            let eps_rule = Rule::Eps(0.99999, &mut fresh);
            let e = compress(&x, &dims, eps_rule, &caps, &mut capped, &mut ws);
            assert_eq!(e.used[..4], caps, "the ε rule wants more than the caps");
            let (got, best) = (
                reconstruction_error(&x, &fixed, &dims, &caps),
                reconstruction_error(&x, &capped, &dims, &caps),
            );
            if step == 0 {
                // Nothing to start from: Gram matrices, truncated mode after mode (ST-HOSVD),
                // against the ε rule's HOSVD.
                assert_eq!(
                    state,
                    fixed[4..4 + state.len()],
                    "the state holds the factors"
                );
                assert!(
                    got <= best * 1.01,
                    "{dims:?}: a cold step's error {got} vs HOSVD's {best}"
                );
                continue;
            }
            // Later batches of the same distribution: one step from the last factors finds
            // what the capped ε rule's POWER_STEPS from scratch find.
            let at = 4 + dims[0] * caps[0];
            let factor = |p: &[f32]| p[at..at + dims[1] * caps[1]].to_vec();
            let gap = subspace_gap(&factor(&fixed), &factor(&capped), dims[1], caps[1]);
            // A start that carries no knowledge of the subspace leaves gaps above 0.05
            // here after one step.
            assert!(
                gap < 0.02,
                "{dims:?} step {step}: channel subspaces differ by {gap}"
            );
            assert!(
                got <= best * 1.001,
                "{dims:?} step {step}: error {got} vs {best} from scratch"
            );
        }
    }
}

#[test]
fn eps_rule_tracks_the_leading_subspace_from_step_to_step() {
    // The channel mode iterated (Gram order 144) on its left side, then on its right side.
    for dims in [[8, 144, 5, 5], [4, 160, 6, 6]] {
        let mut rng = Lcg::new(5);
        let rank = 24;
        let mix = rng.vec(dims[1] * rank);
        let (caps, eps) = ([8, 12, 5, 5], 0.8);
        let len = packed_len(&dims, &caps);
        let mut ws = vec![0.0; workspace_len(&dims, &caps, Some(eps))];
        let mut state = vec![0.0; eps_state_len(&dims, &caps, eps)];
        assert_eq!(
            state.len(),
            dims[1] * (caps[1] + 8),
            "only the channel mode is tracked"
        );
        let (mut tracked, mut scratch) = (vec![0.0; len], vec![0.0; len]);
        for step in 0..5 {
            let x = low_rank_channels(&mut rng, dims, rank, &mix);
            let r = compress(
                &x,
                &dims,
                Rule::Eps(eps, &mut state),
                &caps,
                &mut tracked,
                &mut ws,
            );
            let mut fresh = vec![0.0; state.len()];
            let s = compress(
                &x,
                &dims,
                Rule::Eps(eps, &mut fresh),
                &caps,
                &mut scratch,
                &mut ws,
            );
            if step == 0 {
                assert_eq!(
                    tracked, scratch,
                    "{dims:?}: the first step is computed from scratch"
                );
                continue;
            }
            // The kept share of each mode is at least ε either way; a lagging subspace may
            // need a direction more, never fewer than the exact ranks.
            let (t, e) = (r.used[1], s.used[1]);
            assert!(
                (e..=e + 1).contains(&t),
                "{dims:?} step {step}: channel rank {t} tracked vs {e} from scratch"
            );
            assert_eq!(r.used[..1], s.used[..1], "{dims:?} step {step}");
            assert_eq!(r.used[2..4], s.used[2..4], "{dims:?} step {step}");
            let (got, best) = (
                reconstruction_error(&x, &tracked, &dims, &caps),
                reconstruction_error(&x, &scratch, &dims, &caps),
            );
            assert!(
                got <= best * 1.01,
                "{dims:?} step {step}: error {got} vs {best} from scratch"
            );
        }
    }
}

/// `--budget` calibration compiles one plan and runs it at every candidate ε: the state the
/// ε rule plans must not depend on which ε below 1 it is.
#[test]
fn eps_state_depends_only_on_eps_below_one() {
    let (dims, caps) = ([8, 960, 7, 7], [8, 32, 7, 7]);
    let tracked = eps_state_len(&dims, &caps, 0.3);
    assert_eq!(tracked, 960 * 40, "the channel mode's block of cap + 8");
    for eps in [0.5, 0.8, 0.995] {
        assert_eq!(eps_state_len(&dims, &caps, eps), tracked, "eps {eps}");
    }
    assert_eq!(
        eps_state_len(&dims, &caps, 1.0),
        0,
        "eps 1 decomposes exactly"
    );
}

/// A tensor whose extents are 1 but for two modes is a matrix: its truncated HOSVD is the
/// truncated SVD (both factors from the one Gram matrix the two modes share, the unit modes
/// [1]), with the SVD's ε rank, under the ε rule and at fixed ranks alike.
#[test]
fn a_matrix_shaped_tensor_is_its_truncated_svd() {
    use crate::compress::svd;
    let mut rng = Lcg::new(9);
    let (rows, cols) = (12, 40);
    let x: Vec<f32> = (0..rows * cols)
        .map(|i| rng.uniform() * (1.0 + (i % cols) as f32 / 8.0))
        .collect();
    let svd_error = |eps: f32, cap: usize| {
        let mut packed = vec![0.0; svd::packed_len(rows, cols, cap)];
        let mut ws = vec![0.0; svd::workspace_len(rows, cols, cap)];
        let (k, _) = svd::compress(&x, rows, cols, eps, cap, &mut packed, &mut ws);
        let mut out = vec![0.0; x.len()];
        svd::reconstruct(&packed, rows, cols, cap, &mut out);
        let e: f32 = out.iter().zip(&x).map(|(o, x)| (o - x) * (o - x)).sum();
        (k, e.sqrt())
    };
    for dims in [[rows, cols, 1, 1], [1, rows, cols, 1]] {
        let caps = dims.map(|d| d.min(rows));
        for eps in [0.5, 0.8, 0.95] {
            let c = compressed(&x, &dims, &caps, eps);
            let (k, want) = svd_error(eps, rows);
            let ranks: Vec<usize> = dims.iter().map(|&d| if d == 1 { 1 } else { k }).collect();
            assert_eq!(c.ranks.used[..4], ranks[..], "{dims:?} eps {eps}");
            let got = reconstruction_error(&x, &c.packed, &dims, &caps);
            assert!(
                (got - want).abs() <= 1e-4 * want,
                "{dims:?} eps {eps}: {got} vs {want}"
            );
        }
        let r = 5;
        let caps = dims.map(|d| d.min(r));
        let mut state = vec![0.0; state_len(&dims, &caps)];
        let mut packed = vec![0.0; packed_len(&dims, &caps)];
        let mut ws = vec![0.0; workspace_len(&dims, &caps, None)];
        compress(
            &x,
            &dims,
            Rule::Fixed(&mut state),
            &caps,
            &mut packed,
            &mut ws,
        );
        let got = reconstruction_error(&x, &packed, &dims, &caps);
        let (_, want) = svd_error(1.0, r);
        assert!(
            (got - want).abs() <= 1e-4 * want,
            "{dims:?} rank {r}: {got} vs {want}"
        );
    }
}

/// A matrix compressed step after step starts each step's decomposition from the rank the
/// last one wanted (a subspace iteration on a block of it): its ranks and reconstructions
/// are the full decomposition's, and a batch whose rank grew past the block gets the full
/// decomposition.
#[test]
fn a_matrix_iterated_from_the_last_rank_matches_the_full_decomposition() {
    let mut rng = Lcg::new(23);
    let dims = [64, 300, 1, 1];
    let caps = [32, 32, 1, 1];
    let eps = 0.9;
    // Rank `rank` with decaying weights, plus noise: the ε rank grows with `rank`.
    let mut batch = |rank: usize| -> Vec<f32> {
        let (l, r) = (rng.vec(64 * rank), rng.vec(rank * 300));
        (0..64 * 300)
            .map(|i| {
                let (b, c) = (i / 300, i % 300);
                let s: f32 = (0..rank)
                    .map(|k| l[b * rank + k] * r[k * 300 + c] / (1.0 + 0.2 * k as f32))
                    .sum();
                s + 0.02 * rng.uniform()
            })
            .collect()
    };
    let batches: Vec<Vec<f32>> = [6, 6, 7, 6, 24, 24].into_iter().map(&mut batch).collect();
    assert_eq!(eps_state_len(&dims, &caps, eps), 1);
    let mut state = [0.0f32];
    let mut packed = vec![0.0; packed_len(&dims, &caps)];
    let mut ws = vec![0.0; workspace_len(&dims, &caps, Some(eps))];
    for (step, x) in batches.iter().enumerate() {
        let full = compressed(x, &dims, &caps, eps);
        let ranks = compress(
            x,
            &dims,
            Rule::Eps(eps, &mut state),
            &caps,
            &mut packed,
            &mut ws,
        );
        assert_eq!(ranks, full.ranks, "step {step}");
        assert_eq!(state[0], ranks.wanted[0] as f32, "step {step}");
        let (got, want) = (
            reconstruction_error(x, &packed, &dims, &caps),
            reconstruction_error(x, &full.packed, &dims, &caps),
        );
        assert!(
            (got - want).abs() <= 1e-3 * want,
            "step {step}: {got} vs {want}"
        );
    }
}

/// Tokens (batch, tokens, features): the contraction through three factors equals the weight
/// gradient of the reconstructed input, at full rank and truncated.
#[test]
fn token_weight_grad_is_the_gradient_of_the_reconstruction() {
    let mut rng = Lcg::new(91);
    let dims = [3, 5, 4];
    let n = 6;
    // Low-rank structure plus noise, so ε truncates some modes and not others.
    let x: Vec<f32> = (0..60)
        .map(|i| ((i % 4) as f32 - 1.5) * (1.0 + (i / 20) as f32) + 0.1 * rng.vec(1)[0])
        .collect();
    let dy = rng.vec(3 * 5 * n);
    for (eps, caps) in [(1.0, [3, 5, 4]), (0.9, [3, 5, 4]), (0.9, [2, 3, 2])] {
        let c = compressed(&x, &dims, &caps, eps);
        let mut xh = vec![0.0; 60];
        let mut ws = vec![0.0; reconstruct_workspace_len(&dims, &caps)];
        reconstruct(&c.packed, &dims, &caps, &mut xh, &mut ws);
        let want: Vec<f32> = (0..4 * n)
            .map(|i| {
                let (f, o) = (i / n, i % n);
                (0..15).map(|r| xh[r * 4 + f] * dy[r * n + o]).sum()
            })
            .collect();
        let mut ws = vec![f32::NAN; linear_weight_grad_workspace_len(&dims, &caps, n)];
        let mut dw = vec![f32::NAN; 4 * n];
        linear_weight_grad(&c.packed, &dims, &caps, &dy, false, &mut dw, &mut ws);
        assert_rel(&format!("tokens eps {eps} caps {caps:?}"), &dw, &want, 1e-5);
        if eps == 1.0 {
            let exact: Vec<f32> = (0..4 * n)
                .map(|i| (0..15).map(|r| x[r * 4 + i / n] * dy[r * n + i % n]).sum())
                .collect();
            assert_rel("tokens at full rank", &dw, &exact, 1e-5);
        }
        linear_weight_grad(&c.packed, &dims, &caps, &dy, true, &mut dw, &mut ws);
        let want_t: Vec<f32> = (0..n * 4).map(|i| want[(i % 4) * n + i / 4]).collect();
        assert_rel(&format!("tokens eps {eps} N×K"), &dw, &want_t, 1e-5);
    }
}
