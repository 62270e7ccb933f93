//! Sliding-window index arithmetic shared by convolution and pooling.

use std::ops::Range;

/// Output length along one axis: `input` padded by `pad_begin` and `pad_end`, a window of
/// `kernel` taps `dilation` apart, moved by `stride`. In ceil mode a partial last window
/// counts, unless it would start inside the end padding (PyTorch's rule, which ONNX's
/// pooling ops follow).
pub fn out_len(
    input: usize,
    kernel: usize,
    stride: usize,
    pad_begin: usize,
    pad_end: usize,
    dilation: usize,
    ceil_mode: bool,
) -> usize {
    debug_assert!(kernel >= 1 && stride >= 1 && dilation >= 1);
    let span = dilation * (kernel - 1) + 1;
    let padded = input + pad_begin + pad_end;
    if padded < span {
        return 0;
    }
    let room = padded - span;
    let mut out = if ceil_mode {
        room.div_ceil(stride)
    } else {
        room / stride
    } + 1;
    if ceil_mode && (out - 1) * stride >= input + pad_begin {
        out -= 1;
    }
    out
}

/// The positions `o` in `0..out` for which `o * stride + offset` lies in `0..len`. Loops
/// over this range need no bounds test per element; the range may be empty.
pub(crate) fn valid_range(out: usize, len: usize, stride: usize, offset: isize) -> Range<usize> {
    let lo = if offset >= 0 {
        0
    } else {
        offset.unsigned_abs().div_ceil(stride)
    };
    let room = len as isize - offset;
    let hi = if room <= 0 {
        0
    } else {
        (room as usize).div_ceil(stride).min(out)
    };
    lo.min(hi)..hi
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn valid_range_matches_brute_force() {
        for out in 0..7 {
            for len in 0..6 {
                for stride in 1..4 {
                    for offset in -7isize..7 {
                        let want: Vec<usize> = (0..out)
                            .filter(|&o| {
                                (0..len as isize).contains(&(o as isize * stride as isize + offset))
                            })
                            .collect();
                        let got: Vec<usize> = valid_range(out, len, stride, offset).collect();
                        assert_eq!(
                            got, want,
                            "out {out} len {len} stride {stride} offset {offset}"
                        );
                    }
                }
            }
        }
    }

    #[test]
    fn out_len_floor_and_ceil() {
        // 7 + 1 + 1 padded, kernel 3, stride 2: windows start at 0, 2, 4, 6 → 4.
        assert_eq!(out_len(7, 3, 2, 1, 1, 1, false), 4);
        // 6 unpadded, kernel 3, stride 2: floor keeps starts 0, 2; ceil adds start 4.
        assert_eq!(out_len(6, 3, 2, 0, 0, 1, false), 2);
        assert_eq!(out_len(6, 3, 2, 0, 0, 1, true), 3);
        // 5 + 0 + 2 padded, kernel 2, stride 2: ceil would add a window starting at 6,
        // inside the end padding, so it is dropped (PyTorch: 3, not 4).
        assert_eq!(out_len(5, 2, 2, 0, 2, 1, true), 3);
        // Dilation 2 makes a 3-tap kernel span 5.
        assert_eq!(out_len(9, 3, 1, 0, 0, 2, false), 5);
        assert_eq!(out_len(2, 3, 1, 0, 0, 1, false), 0);
    }
}
