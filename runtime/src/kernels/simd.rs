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

/// The 8×8 transpose of eight vectors (rows): unpack pairs, shuffle quads, swap 128-bit
/// halves.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2,fma")]
pub(crate) fn transpose8(r: [std::arch::x86_64::__m256; 8]) -> [std::arch::x86_64::__m256; 8] {
    use std::arch::x86_64::*;
    let t0 = _mm256_unpacklo_ps(r[0], r[1]);
    let t1 = _mm256_unpackhi_ps(r[0], r[1]);
    let t2 = _mm256_unpacklo_ps(r[2], r[3]);
    let t3 = _mm256_unpackhi_ps(r[2], r[3]);
    let t4 = _mm256_unpacklo_ps(r[4], r[5]);
    let t5 = _mm256_unpackhi_ps(r[4], r[5]);
    let t6 = _mm256_unpacklo_ps(r[6], r[7]);
    let t7 = _mm256_unpackhi_ps(r[6], r[7]);
    let u0 = _mm256_shuffle_ps::<0x44>(t0, t2);
    let u1 = _mm256_shuffle_ps::<0xEE>(t0, t2);
    let u2 = _mm256_shuffle_ps::<0x44>(t1, t3);
    let u3 = _mm256_shuffle_ps::<0xEE>(t1, t3);
    let u4 = _mm256_shuffle_ps::<0x44>(t4, t6);
    let u5 = _mm256_shuffle_ps::<0xEE>(t4, t6);
    let u6 = _mm256_shuffle_ps::<0x44>(t5, t7);
    let u7 = _mm256_shuffle_ps::<0xEE>(t5, t7);
    [
        _mm256_permute2f128_ps::<0x20>(u0, u4),
        _mm256_permute2f128_ps::<0x20>(u1, u5),
        _mm256_permute2f128_ps::<0x20>(u2, u6),
        _mm256_permute2f128_ps::<0x20>(u3, u7),
        _mm256_permute2f128_ps::<0x31>(u0, u4),
        _mm256_permute2f128_ps::<0x31>(u1, u5),
        _mm256_permute2f128_ps::<0x31>(u2, u6),
        _mm256_permute2f128_ps::<0x31>(u3, u7),
    ]
}

/// Packs W lines of `kc` contiguous floats, `ld` apart, as `kc` groups of W
/// (`dst[p·W + l] = src[l·ld + p]`): a transposition, done 8×8 floats at a time in
/// registers (then 8×4, as two 4×4) rather than one scattered store per float. The GEMM's
/// packing of B, and eight planes into a depthwise conv's vector lanes.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2,fma")]
pub(crate) fn pack_lines<const W: usize>(dst: &mut [f32], src: &[f32], kc: usize, ld: usize) {
    use std::arch::x86_64::*;
    // These bound every pointer below.
    assert!(W.is_multiple_of(8) && dst.len() >= W * kc && (W - 1) * ld + kc <= src.len());
    let (s, d) = (src.as_ptr(), dst.as_mut_ptr());
    let full = kc - kc % 8;
    for p in (0..full).step_by(8) {
        for group in 0..W / 8 {
            let mut rows = [_mm256_setzero_ps(); 8];
            for (l, row) in rows.iter_mut().enumerate() {
                // SAFETY: line 8·group + l < W, floats p..p + 8 ≤ kc of it.
                *row = unsafe { _mm256_loadu_ps(s.add((8 * group + l) * ld + p)) };
            }
            for (q, col) in transpose8(rows).into_iter().enumerate() {
                // SAFETY: group p + q < kc, floats 8·group..8·group + 8 ≤ W of it.
                unsafe { _mm256_storeu_ps(d.add((p + q) * W + 8 * group), col) };
            }
        }
    }
    // Four more groups as two 4×4 transposes per eight lines (a 2×2 plane is all tail).
    let full = if kc - full >= 4 {
        for group in 0..W / 8 {
            let mut q = [_mm_setzero_ps(); 8];
            for (l, v) in q.iter_mut().enumerate() {
                // SAFETY: line 8·group + l < W, floats full..full + 4 ≤ kc of it.
                *v = unsafe { _mm_loadu_ps(s.add((8 * group + l) * ld + full)) };
            }
            let [a0, a1, a2, a3, b0, b1, b2, b3] = &mut q;
            _MM_TRANSPOSE4_PS(a0, a1, a2, a3);
            _MM_TRANSPOSE4_PS(b0, b1, b2, b3);
            for j in 0..4 {
                // SAFETY: group full + j < kc, floats 8·group..8·group + 8 ≤ W of it: lines
                // 0–3 of the eight from the first transpose, 4–7 from the second.
                let col = _mm256_set_m128(q[4 + j], q[j]);
                unsafe { _mm256_storeu_ps(d.add((full + j) * W + 8 * group), col) };
            }
        }
        full + 4
    } else {
        full
    };
    for p in full..kc {
        for l in 0..W {
            dst[p * W + l] = src[l * ld + p];
        }
    }
}

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

/// Whether the GEMM takes its 512-bit micro-kernel: the CPU has AVX-512F and its 512-bit
/// FMAs measurably outrun its 256-bit ones (twice the lanes pay only where the core has the
/// execution units for them: about 2× on Intel's server cores, 1× on AMD's Zen 4, which
/// splits them in halves). `ACTC_SIMD=avx2` or `avx512` overrides the measurement, to compare
/// the two in one benchmark run. Both kernels give the same bits (`gemm` says how), so the
/// choice moves only the speed. In tests, a thread may choose for itself (`WIDE`), and
/// asking for the portable paths (`PORTABLE`) turns this off.
#[cfg(target_arch = "x86_64")]
#[inline]
pub(crate) fn wide_fma() -> bool {
    static CHOSEN: std::sync::LazyLock<bool> =
        std::sync::LazyLock::new(|| match std::env::var("ACTC_SIMD").as_deref() {
            Ok("avx2") => false,
            Ok("avx512") => *AVX512F,
            _ => {
                *AVX512F && {
                    let (ymm, zmm) = fma_peaks(200_000);
                    zmm > 1.5 * ymm
                }
            }
        });
    #[cfg(test)]
    if let Some(wide) = WIDE.get() {
        return wide && has_avx512f();
    }
    has_avx2_fma() && *CHOSEN
}

/// Whether the CPU has AVX-512F besides AVX2 and FMA; in tests, also that this thread did
/// not ask for the portable paths.
#[cfg(target_arch = "x86_64")]
#[inline]
pub(crate) fn has_avx512f() -> bool {
    has_avx2_fma() && *AVX512F
}

/// Detected afresh rather than by [`has_avx2_fma`], whose answer in tests depends on the
/// thread that happens to ask first.
#[cfg(target_arch = "x86_64")]
static AVX512F: std::sync::LazyLock<bool> = std::sync::LazyLock::new(|| {
    is_x86_feature_detected!("avx2")
        && is_x86_feature_detected!("fma")
        && is_x86_feature_detected!("avx512f")
});

/// A short name of the f32 micro-kernel [`wide_fma`] chose, for reports.
pub fn gemm_isa() -> &'static str {
    #[cfg(target_arch = "x86_64")]
    {
        if wide_fma() {
            return "avx512";
        }
        if has_avx2_fma() {
            return "avx2";
        }
    }
    "portable"
}

/// Twelve independent FMA chains per iteration (enough to cover the FMA latency on two
/// pipes), on 8-lane or 16-lane registers: the core's FMA throughput in GFLOP/s.
#[cfg(target_arch = "x86_64")]
macro_rules! fma_peak {
    ($name:ident, $feature:literal, $vec:ty, $set1:ident, $fmadd:ident, $lanes:expr) => {
        #[target_feature(enable = $feature)]
        fn $name(iterations: usize) -> f64 {
            use std::arch::x86_64::*;
            let mut acc: [$vec; 12] = [$set1(0.0); 12];
            let (a, b) = ($set1(1.000_000_1), $set1(0.999_999));
            let start = std::time::Instant::now();
            for _ in 0..iterations {
                for r in acc.iter_mut() {
                    *r = $fmadd(a, b, *r);
                }
            }
            let seconds = start.elapsed().as_secs_f64();
            std::hint::black_box(acc);
            (iterations * 12 * 2 * $lanes) as f64 / seconds.max(1e-9) / 1e9
        }
    };
}
#[cfg(target_arch = "x86_64")]
fma_peak!(
    ymm_peak,
    "avx2,fma",
    __m256,
    _mm256_set1_ps,
    _mm256_fmadd_ps,
    8
);
#[cfg(target_arch = "x86_64")]
fma_peak!(
    zmm_peak,
    "avx512f",
    __m512,
    _mm512_set1_ps,
    _mm512_fmadd_ps,
    16
);

/// The best of three alternating runs of each (the machine may be shared), after a first
/// one that wakes the 512-bit units: (ymm, zmm) GFLOP/s on this core. Needs AVX2, FMA and
/// AVX-512F; `iterations` of 200 000 take about a millisecond in all.
#[cfg(target_arch = "x86_64")]
fn fma_peaks(iterations: usize) -> (f64, f64) {
    assert!(
        is_x86_feature_detected!("avx2")
            && is_x86_feature_detected!("fma")
            && is_x86_feature_detected!("avx512f")
    );
    // SAFETY: the features were just checked.
    let run = || unsafe { (ymm_peak(iterations), zmm_peak(iterations)) };
    run();
    (0..3).map(|_| run()).fold((0.0, 0.0), |(y, z), (ry, rz)| {
        (f64::max(y, ry), f64::max(z, rz))
    })
}

#[cfg(test)]
thread_local! {
    /// Makes this thread's kernels take the portable paths, which an AVX2 machine would
    /// otherwise never test.
    pub(crate) static PORTABLE: std::cell::Cell<bool> = const { std::cell::Cell::new(false) };
    /// Makes this thread's GEMM take the AVX2 (`Some(false)`) or, where the CPU has it, the
    /// AVX-512 (`Some(true)`) micro-kernel, whatever [`wide_fma`] measured.
    pub(crate) static WIDE: std::cell::Cell<Option<bool>> = const { std::cell::Cell::new(None) };
}

#[cfg(all(test, target_arch = "x86_64"))]
mod tests {
    /// Whether 512-bit FMAs would raise the GEMM's ceiling on this CPU, and which kernel
    /// [`super::wide_fma`] takes. Run with
    /// `cargo test -p actc-runtime --release --lib simd::tests::fma_peak -- --ignored --nocapture`.
    #[test]
    #[ignore = "a benchmark: run in release with --ignored --nocapture"]
    fn fma_peak() {
        if !(super::has_avx2_fma() && is_x86_feature_detected!("avx512f")) {
            println!("this CPU lacks AVX2+FMA or AVX-512F");
            return;
        }
        for _ in 0..3 {
            let (y, z) = super::fma_peaks(20_000_000);
            println!("FMA peak, one core: ymm {y:.1} GFLOP/s, zmm {z:.1} GFLOP/s");
        }
        println!("the GEMM takes: {}", super::gemm_isa());
    }
}
