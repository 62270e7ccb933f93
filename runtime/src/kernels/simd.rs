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

#[cfg(test)]
thread_local! {
    /// Makes this thread's kernels take the portable paths, which an AVX2 machine would
    /// otherwise never test.
    pub(crate) static PORTABLE: std::cell::Cell<bool> = const { std::cell::Cell::new(false) };
}
