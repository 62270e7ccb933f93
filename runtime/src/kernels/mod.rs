//! CPU kernels of the plan (the frozen prefix and the trainable suffix), forward and
//! backward, one op family per file.
//!
//! Conventions shared by every kernel:
//! - tensors are contiguous `f32` slices, row-major, images in NCHW;
//! - attributes and geometry come first, then inputs, then outputs, then scratch;
//! - outputs (gradients included) are overwritten, never accumulated into: summing the
//!   gradients of a tensor used twice is [`elementwise::accumulate`]'s job, so the planner
//!   decides where that happens;
//! - kernels never allocate: a kernel that needs scratch takes `ws` and its module exposes
//!   `workspace_len`, which the memory planner uses to size it;
//! - slice lengths are checked with `debug_assert!` (the plan was checked when it was built);
//!   the one exception is [`gemm::sgemm`], which guards an `unsafe` call.

pub mod activation;
mod approx;
pub mod chain;
pub mod conv;
mod depthwise;
mod direct;
pub mod elementwise;
pub mod gemm;
pub mod geometry;
pub mod layout;
pub mod linear;
pub mod loss;
pub mod norm;
pub mod pool;
pub mod qconv;
pub mod qgemm;
pub mod resize;
mod rows;
pub mod shape;
pub(crate) mod simd;
pub use simd::gemm_isa;
pub mod window;

#[cfg(test)]
pub(crate) mod testutil;

/// `Σ a[i]·b[i]` over `a`'s length, in eight independent partial sums: a single running sum
/// is a serial dependency chain the compiler may not reorder, so it would neither vectorise
/// nor pipeline. Inlined, so a caller compiled for AVX2 gets AVX2.
#[inline(always)]
pub(crate) fn dot(a: &[f32], b: &[f32]) -> f32 {
    let b = &b[..a.len()];
    let mut acc = [0.0f32; 8];
    let (a8, a_rest) = a.split_at(a.len() / 8 * 8);
    let (b8, b_rest) = b.split_at(a8.len());
    for (ca, cb) in a8.chunks_exact(8).zip(b8.chunks_exact(8)) {
        for l in 0..8 {
            acc[l] += ca[l] * cb[l];
        }
    }
    let rest: f32 = a_rest.iter().zip(b_rest).map(|(a, b)| a * b).sum();
    acc.iter().sum::<f32>() + rest
}

/// `Σ term(i)` for `i < len`, in eight interleaved partial sums: the rounding error grows
/// with len/8 instead of len, and the independent sums pipeline (see [`dot`]; a bias
/// gradient's planes summed one value at a time waited on each add).
#[inline(always)]
pub(crate) fn sum8(len: usize, mut term: impl FnMut(usize) -> f32) -> f32 {
    let mut acc = [0.0f32; 8];
    let full = len / 8 * 8;
    for base in (0..full).step_by(8) {
        for (l, a) in acc.iter_mut().enumerate() {
            *a += term(base + l);
        }
    }
    let rest: f32 = (full..len).map(&mut term).sum();
    acc.iter().sum::<f32>() + rest
}

/// `a·b + c`, fused where the target always has FMA (one instruction instead of two) and
/// unfused elsewhere, where `f32::mul_add` would be a libm call.
#[inline(always)]
pub(crate) fn mul_add(a: f32, b: f32, c: f32) -> f32 {
    if cfg!(any(target_arch = "aarch64", target_feature = "fma")) {
        a.mul_add(b, c)
    } else {
        a * b + c
    }
}

/// `Σ f(k)` for `k < n` in f32, in blocks of [`SUM_BLOCK`] terms whose sums are then added:
/// the rounding error grows with the block length plus the number of blocks, not with `n`.
/// (A 6625-class softmax summed term by term lost 1.3e-5 of its gradients' accuracy.)
#[inline]
pub(crate) fn blocked_sum(n: usize, mut f: impl FnMut(usize) -> f32) -> f32 {
    let mut total = 0.0f32;
    let mut k = 0;
    while k < n {
        let end = (k + SUM_BLOCK).min(n);
        let mut block = 0.0f32;
        for i in k..end {
            block += f(i);
        }
        total += block;
        k = end;
    }
    total
}

/// Terms per partial sum of [`blocked_sum`].
pub(crate) const SUM_BLOCK: usize = 64;
