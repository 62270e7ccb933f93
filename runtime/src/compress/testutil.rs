//! Golden data of `models/golden/compress` (written by `make_compress_golden.py`) and the
//! comparison the compression tests share.

use std::path::PathBuf;

use crate::data::npz::{self, NamedArray};
use crate::kernels::geometry::Conv2dGeom;

/// Array `name` of `models/golden/compress/{file}.npz`.
pub fn golden(file: &str, name: &str) -> NamedArray {
    let path = PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("../models/golden/compress")
        .join(format!("{file}.npz"));
    npz::read(&path, name).unwrap_or_else(|e| panic!("{}: {name}: {e}", path.display()))
}

/// The conv of golden array `{name}` (c_out, kh, kw, stride h/w, pad h/w, dilation h/w,
/// groups, …; symmetric padding) over an input of shape `x`; with the values after groups.
pub fn golden_conv(file: &str, name: &str, x: &[usize]) -> (Conv2dGeom, Vec<usize>) {
    let v: Vec<usize> = golden(file, name)
        .values
        .iter()
        .map(|&v| v as usize)
        .collect();
    let g = Conv2dGeom {
        n: x[0],
        c_in: x[1],
        h: x[2],
        w: x[3],
        c_out: v[0],
        kh: v[1],
        kw: v[2],
        stride: [v[3], v[4]],
        pad: [v[5], v[6], v[5], v[6]],
        dilation: [v[7], v[8]],
        groups: v[9],
    };
    (g, v[10..].to_vec())
}

/// Every |got − want| within `tol` of want's largest magnitude.
#[track_caller]
pub fn assert_rel(what: &str, got: &[f32], want: &[f32], tol: f32) {
    assert_eq!(got.len(), want.len(), "{what}: length");
    let scale = want
        .iter()
        .fold(0.0f32, |m, w| m.max(w.abs()))
        .max(f32::MIN_POSITIVE);
    let (i, err) = got
        .iter()
        .zip(want)
        .map(|(g, w)| (g - w).abs() / scale)
        .enumerate()
        .fold((0, 0.0f32), |m, (i, e)| if e > m.1 { (i, e) } else { m });
    assert!(
        err <= tol,
        "{what}: [{i}] got {}, want {} (err {err:.2e} > {tol:.0e} of max {scale})",
        got[i],
        want[i]
    );
}
