//! The geometry of a 2-D convolution ([`Conv2dGeom`]) and the index helpers its kernels
//! share: a tap's offset, strided gathers and scatters. A module of its own so that
//! `conv`, which routes geometries to `depthwise`, `direct` and `rows`, is not also where
//! they take their geometry from: they import this, `conv` imports them, and no import
//! goes back.

use super::window::out_len;

#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Conv2dGeom {
    pub n: usize,
    pub c_in: usize,
    pub h: usize,
    pub w: usize,
    pub c_out: usize,
    pub kh: usize,
    pub kw: usize,
    pub stride: [usize; 2],
    /// top, left, bottom, right
    pub pad: [usize; 4],
    pub dilation: [usize; 2],
    pub groups: usize,
}

impl Conv2dGeom {
    pub fn out_h(&self) -> usize {
        out_len(
            self.h,
            self.kh,
            self.stride[0],
            self.pad[0],
            self.pad[2],
            self.dilation[0],
            false,
        )
    }

    pub fn out_w(&self) -> usize {
        out_len(
            self.w,
            self.kw,
            self.stride[1],
            self.pad[1],
            self.pad[3],
            self.dilation[1],
            false,
        )
    }

    pub fn input_len(&self) -> usize {
        self.n * self.c_in * self.h * self.w
    }

    pub fn output_len(&self) -> usize {
        self.n * self.c_out * self.out_h() * self.out_w()
    }

    pub fn weight_len(&self) -> usize {
        self.c_out * self.cin_per_group() * self.kh * self.kw
    }

    pub fn cin_per_group(&self) -> usize {
        self.c_in / self.groups
    }

    pub fn cout_per_group(&self) -> usize {
        self.c_out / self.groups
    }

    /// One input channel per group (channel multiplier c_out / c_in allowed).
    pub fn is_depthwise(&self) -> bool {
        self.groups > 1 && self.groups == self.c_in
    }

    /// 1×1, stride 1, no padding: the input planes are already the im2col matrix.
    pub fn is_pointwise(&self) -> bool {
        self.kh == 1 && self.kw == 1 && self.stride == [1, 1] && self.pad == [0; 4]
    }

    pub fn col_rows(&self) -> usize {
        self.cin_per_group() * self.kh * self.kw
    }

    pub(super) fn debug_check(&self) {
        debug_assert!(
            self.groups >= 1
                && self.c_in.is_multiple_of(self.groups)
                && self.c_out.is_multiple_of(self.groups)
        );
        debug_assert!(
            self.stride[0] >= 1
                && self.stride[1] >= 1
                && self.dilation[0] >= 1
                && self.dilation[1] >= 1
        );
    }
}

/// Offset of tap `k` relative to the window start `o * stride - pad`.
pub(crate) fn tap_offset(k: usize, dilation: usize, pad: usize) -> isize {
    (k * dilation) as isize - pad as isize
}

/// `dst[i] = src[start + i·stride]`.
pub(super) fn gather(dst: &mut [f32], src: &[f32], start: usize, stride: usize) {
    if stride == 1 {
        dst.copy_from_slice(&src[start..start + dst.len()]);
    } else {
        for (i, d) in dst.iter_mut().enumerate() {
            *d = src[start + i * stride];
        }
    }
}

/// `dst[i] += a · src[start + i·stride]`.
pub(super) fn gather_axpy(dst: &mut [f32], src: &[f32], start: usize, stride: usize, a: f32) {
    if stride == 1 {
        for (d, s) in dst.iter_mut().zip(&src[start..]) {
            *d += a * s;
        }
    } else {
        for (i, d) in dst.iter_mut().enumerate() {
            *d += a * src[start + i * stride];
        }
    }
}

/// `dst[start + i·stride] += a · src[i]`.
pub(super) fn scatter_axpy(dst: &mut [f32], start: usize, stride: usize, a: f32, src: &[f32]) {
    if stride == 1 {
        for (d, s) in dst[start..].iter_mut().zip(src) {
            *d += a * s;
        }
    } else {
        for (i, s) in src.iter().enumerate() {
            dst[start + i * stride] += a * s;
        }
    }
}

/// `Σ a[i] · src[start + i·stride]`.
pub(super) fn gather_dot(a: &[f32], src: &[f32], start: usize, stride: usize) -> f32 {
    if stride == 1 {
        super::dot(a, &src[start..])
    } else {
        a.iter()
            .enumerate()
            .map(|(i, a)| a * src[start + i * stride])
            .sum()
    }
}
