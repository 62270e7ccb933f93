//! Runtime CPU-feature dispatch. A kernel that gains from 8-wide vectors and fused
//! multiply-adds has a `#[target_feature(enable = "avx2,fma")]` copy (its plain Rust compiled
//! a second time, or intrinsics), taken where the CPU has both; the portable code runs
//! everywhere else. Builds target no particular CPU, so the choice is made at run time.

/// Whether the CPU has AVX2 and FMA; in tests, also that this thread did not ask for the
/// portable paths (`PORTABLE`).
#[cfg(target_arch = "x86_64")]
#[inline]
pub(crate) fn has_avx2_fma() -> bool {
    // Asked once per micro-tile: a LazyLock read is a plain load once initialized. Inline,
    // as the kernels asking live in other modules (other codegen units).
    static DETECTED: std::sync::LazyLock<bool> = std::sync::LazyLock::new(|| {
        is_x86_feature_detected!("avx2") && is_x86_feature_detected!("fma")
    });
    #[cfg(test)]
    if PORTABLE.get() {
        return false;
    }
    *DETECTED
}

/// `dispatch_avx2!(call)`: returns `call` from the enclosing function when
/// [`has_avx2_fma`], and otherwise falls through to the portable code after it (on other
/// architectures, always). `call` is typically `unsafe { kernel_avx2(…) }`, whose SAFETY
/// comment may count on AVX2 and FMA: this is what checks them.
macro_rules! dispatch_avx2 {
    ($call:expr) => {
        #[cfg(target_arch = "x86_64")]
        if $crate::kernels::simd::has_avx2_fma() {
            return $call;
        }
    };
}
pub(crate) use dispatch_avx2;

/// Whether the CPU has AVX512-VNNI with AVX512-VL (8-bit dot products on 256-bit vectors)
/// besides AVX2 and FMA; in tests, also that this thread did not ask for the portable paths.
#[cfg(target_arch = "x86_64")]
#[inline]
pub(crate) fn has_vnni() -> bool {
    static DETECTED: std::sync::LazyLock<bool> = std::sync::LazyLock::new(|| {
        is_x86_feature_detected!("avx512f")
            && is_x86_feature_detected!("avx512vl")
            && is_x86_feature_detected!("avx512vnni")
    });
    has_avx2_fma() && *DETECTED
}

/// [`dispatch_avx2!`] for kernels that need [`has_vnni`].
macro_rules! dispatch_vnni {
    ($call:expr) => {
        #[cfg(target_arch = "x86_64")]
        if $crate::kernels::simd::has_vnni() {
            return $call;
        }
    };
}
pub(crate) use dispatch_vnni;

#[cfg(test)]
thread_local! {
    /// Makes this thread's kernels take the portable paths, which an AVX2 machine would
    /// otherwise never test.
    pub(crate) static PORTABLE: std::cell::Cell<bool> = const { std::cell::Cell::new(false) };
}

#[cfg(all(test, target_arch = "x86_64"))]
mod tests {
    use std::arch::x86_64::*;
    use std::time::Instant;

    /// Twelve independent FMA chains per iteration (enough to cover the FMA latency on
    /// two pipes), on 8-lane or 16-lane registers: the CPU's FMA peak per core in GFLOP/s.
    macro_rules! fma_peak {
        ($name:ident, $feature:literal, $vec:ty, $set1:ident, $fmadd:ident, $lanes:expr) => {
            #[target_feature(enable = $feature)]
            fn $name(iterations: usize) -> f64 {
                let mut acc: [$vec; 12] = [$set1(0.0); 12];
                let (a, b) = ($set1(1.000_000_1), $set1(0.999_999));
                let start = Instant::now();
                for _ in 0..iterations {
                    for r in acc.iter_mut() {
                        *r = $fmadd(a, b, *r);
                    }
                }
                let seconds = start.elapsed().as_secs_f64();
                std::hint::black_box(acc);
                (iterations * 12 * 2 * $lanes) as f64 / seconds / 1e9
            }
        };
    }
    fma_peak!(ymm, "avx2,fma", __m256, _mm256_set1_ps, _mm256_fmadd_ps, 8);
    fma_peak!(zmm, "avx512f", __m512, _mm512_set1_ps, _mm512_fmadd_ps, 16);

    /// Whether 512-bit FMAs would raise the GEMM's ceiling on this CPU. Run with
    /// `cargo test -p actc-runtime --release --lib simd::tests::fma_peak -- --ignored --nocapture`.
    #[test]
    #[ignore = "a benchmark: run in release with --ignored --nocapture"]
    fn fma_peak() {
        if !(super::has_avx2_fma() && is_x86_feature_detected!("avx512f")) {
            println!("this CPU lacks AVX2+FMA or AVX-512F");
            return;
        }
        for _ in 0..3 {
            // SAFETY: both features were just detected.
            let (y, z) = unsafe { (ymm(50_000_000), zmm(50_000_000)) };
            println!("FMA peak, one core: ymm {y:.1} GFLOP/s, zmm {z:.1} GFLOP/s");
        }
    }
}
