//! From a stored sample to the model's input, in the order a PyTorch pipeline applies it:
//! layout to CHW, channel count (1 → 3 by replication, 3 → 1 by ITU-R 601 luma), bilinear
//! resize as `F.interpolate(mode="bilinear", align_corners=False, antialias=False)`, then
//! `(v·scale − mean[c]) / std[c]`.
//!
//! Channel conversion happens once per source pixel, into a per-thread plane; interpolation
//! and normalisation then take one pass per output value, with each column's taps computed
//! once per image rather than per output pixel (224×224 from 28×28 is 64 outputs a source
//! pixel).

use std::cell::RefCell;
use std::path::Path;

use super::{DataError, Dataset, Form, Layout};

const IMAGENET_MEAN: [f32; 3] = [0.485, 0.456, 0.406];
const IMAGENET_STD: [f32; 3] = [0.229, 0.224, 0.225];
const LUMA: [f32; 3] = [0.299, 0.587, 0.114];

#[derive(Clone, Debug, PartialEq)]
pub struct Preprocess {
    /// The model's per-sample input shape: `[C, H, W]` for images, `[D]` for vectors.
    pub shape: Vec<usize>,
    /// Factor applied to raw values; `None` means 1/255 for `u8` data and 1 for `f32` data.
    pub scale: Option<f32>,
    /// Subtracted after scaling: one value, or one per channel (per element for `[D]`).
    pub mean: Vec<f32>,
    /// Divides after the mean: one value, or one per channel (per element for `[D]`).
    pub std: Vec<f32>,
}

impl Preprocess {
    /// The defaults for a model input of `shape` fed from `dataset`: scale 1/255 for bytes,
    /// 1 for floats; ImageNet mean and std for 3-channel images (what pretrained backbones
    /// expect), 0 and 1 otherwise. Fails, naming both sizes, when the data cannot feed
    /// that input.
    pub fn for_input(shape: &[usize], dataset: &Dataset) -> Result<Preprocess, DataError> {
        let (mean, std) = if shape.len() == 3 && shape[0] == 3 {
            (IMAGENET_MEAN.to_vec(), IMAGENET_STD.to_vec())
        } else {
            (vec![0.0], vec![1.0])
        };
        let scale = if dataset.is_u8() { 1.0 / 255.0 } else { 1.0 };
        let prep = Preprocess {
            shape: shape.to_vec(),
            scale: Some(scale),
            mean,
            std,
        };
        dataset.check(&prep)?;
        Ok(prep)
    }

    /// Values written per sample.
    pub fn numel(&self) -> usize {
        self.shape.iter().product()
    }
}

fn dims(shape: &[usize]) -> String {
    let parts: Vec<String> = shape.iter().map(|d| d.to_string()).collect();
    format!("[{}]", parts.join(", "))
}

pub(crate) fn check(
    path: &Path,
    form: Form,
    stored: &[usize],
    prep: &Preprocess,
) -> Result<(), DataError> {
    let fail = |reason: String| Err(DataError::incompatible(path, reason));
    let want = dims(&prep.shape);
    if prep.shape.contains(&0) {
        return fail(format!("the model input {want} has an empty dimension"));
    }
    let sample_len: usize = stored.iter().product();
    let stored = dims(stored);
    let channels = match (prep.shape.as_slice(), form) {
        (&[d], _) => {
            if sample_len != d {
                return fail(format!(
                    "each sample holds {sample_len} values ({stored}) but the model input \
                     takes {d}: a vector input is fed as is, so the sizes must match"
                ));
            }
            d
        }
        (&[c, h, w], Form::Flat) => {
            if sample_len != c * h * w {
                return fail(format!(
                    "each sample is a vector of {sample_len} values but the model input \
                     {want} takes {}: vectors are only reshaped, never resized",
                    c * h * w
                ));
            }
            c
        }
        (&[c, _, _], Form::Image { channels, .. }) => {
            if channels != c && !(channels == 1 && c == 3) && !(channels == 3 && c == 1) {
                return fail(format!(
                    "samples have {channels} channels ({stored}) but the model input {want} \
                     takes {c}: only 1 → 3 and 3 → 1 are converted"
                ));
            }
            c
        }
        _ => {
            return fail(format!(
                "the model input per sample is {want}: data feeds only [C, H, W] images and \
                 [D] vectors"
            ));
        }
    };
    for (name, values) in [("mean", &prep.mean), ("std", &prep.std)] {
        if values.len() != 1 && values.len() != channels {
            return fail(format!(
                "{name} has {} values: give one, or one per channel ({channels}) of the model \
                 input {want}",
                values.len()
            ));
        }
    }
    if prep.std.iter().any(|s| *s == 0.0 || !s.is_finite()) {
        return fail(format!("std {:?} must be finite and non-zero", prep.std));
    }
    if prep.scale.is_some_and(|s| !s.is_finite()) {
        return fail(format!("scale {:?} must be finite", prep.scale));
    }
    Ok(())
}

/// Panics where [`check`] would have failed (a wrong-sized `out` included).
pub(crate) fn write<T: Copy + Into<f32>>(
    form: Form,
    sample: &[T],
    prep: &Preprocess,
    default_scale: f32,
    out: &mut [f32],
) {
    assert_eq!(out.len(), prep.numel(), "output length vs the model input");
    let norm = Normalize {
        scale: prep.scale.unwrap_or(default_scale),
        mean: &prep.mean,
        std: &prep.std,
    };
    match (prep.shape.as_slice(), form) {
        (&[_], Form::Flat) => {
            assert_eq!(sample.len(), out.len(), "sample length vs the model input");
            for (k, (o, &v)) in out.iter_mut().zip(sample).enumerate() {
                *o = norm.apply(k, v.into());
            }
        }
        (&[_], Form::Image { .. }) => {
            assert_eq!(sample.len(), out.len(), "sample length vs the model input");
            // A vector input trained on images saw them flattened from NCHW (`x.view(N, -1)`).
            let img = Image::new(sample, form);
            let mut k = 0;
            for c in 0..img.channels {
                for y in 0..img.height {
                    for x in 0..img.width {
                        out[k] = norm.apply(k, img.at(c, y, x));
                        k += 1;
                    }
                }
            }
        }
        (&[channels, height, width], Form::Flat) => {
            let chw = Form::Image {
                channels,
                height,
                width,
                layout: Layout::Nchw,
            };
            assert_eq!(sample.len(), out.len(), "sample length vs the model input");
            resize(
                &Image::new(sample, chw),
                [channels, height, width],
                &norm,
                out,
            );
        }
        (&[c, h, w], Form::Image { .. }) => {
            resize(&Image::new(sample, form), [c, h, w], &norm, out)
        }
        _ => panic!(
            "model input {:?} does not fit the data: call Dataset::check",
            prep.shape
        ),
    }
}

struct Normalize<'a> {
    scale: f32,
    mean: &'a [f32],
    std: &'a [f32],
}

impl Normalize<'_> {
    /// `k` is the channel (or the element of a vector input).
    fn apply(&self, k: usize, v: f32) -> f32 {
        let (mean, std) = self.of(k);
        (v * self.scale - mean) / std
    }

    /// Mean and std of channel (or element) `k`.
    fn of(&self, k: usize) -> (f32, f32) {
        let pick = |p: &[f32]| if p.len() == 1 { p[0] } else { p[k] };
        (pick(self.mean), pick(self.std))
    }
}

struct Image<'a, T> {
    data: &'a [T],
    channels: usize,
    height: usize,
    width: usize,
    layout: Layout,
}

impl<'a, T: Copy + Into<f32>> Image<'a, T> {
    fn new(data: &'a [T], form: Form) -> Self {
        let Form::Image {
            channels,
            height,
            width,
            layout,
        } = form
        else {
            unreachable!("callers pass image forms")
        };
        assert_eq!(
            data.len(),
            channels * height * width,
            "sample length vs its shape"
        );
        Image {
            data,
            channels,
            height,
            width,
            layout,
        }
    }

    fn at(&self, c: usize, y: usize, x: usize) -> f32 {
        let i = match self.layout {
            Layout::Nchw => (c * self.height + y) * self.width + x,
            Layout::Nhwc => (y * self.width + x) * self.channels + c,
        };
        self.data[i].into()
    }

    /// Channel `c` as a model taking `want` channels sees it.
    fn converted(&self, want: usize, c: usize, y: usize, x: usize) -> f32 {
        match (self.channels, want) {
            (have, want) if have == want => self.at(c, y, x),
            (1, 3) => self.at(0, y, x),
            (3, 1) => {
                LUMA[0] * self.at(0, y, x) + LUMA[1] * self.at(1, y, x) + LUMA[2] * self.at(2, y, x)
            }
            (have, want) => panic!("cannot feed {have} channels to {want}: call Dataset::check"),
        }
    }
}

/// Source pixels and weights of output index `o` along one axis, as PyTorch's CPU kernel
/// computes them for `align_corners=False`: half-pixel centres, the ratio `in/out` in `f32`,
/// clamped to the first pixel on the low side and the last on the high side. PyTorch's build
/// fuses `ratio·(o + ½) − ½` into one multiply-add (a single rounding); the product is exact
/// in `f64`, so computing there and rounding once gives its weights bit for bit without an
/// FMA. The weighted sums can still differ in the last bit: PyTorch's kernels (it picks one
/// by size and memory format) each sum in their own order.
fn source_index(o: usize, in_len: usize, out_len: usize) -> (usize, usize, f32, f32) {
    let ratio = in_len as f32 / out_len as f32;
    let src = ((f64::from(ratio) * (o as f64 + 0.5) - 0.5) as f32).max(0.0);
    let i0 = (src as usize).min(in_len - 1);
    let i1 = if i0 + 1 < in_len { i0 + 1 } else { i0 };
    let l1 = (src - i0 as f32).clamp(0.0, 1.0);
    (i0, i1, 1.0 - l1, l1)
}

/// An output index's two source pixels and their weights, as [`source_index`] gives them.
type Tap = (usize, usize, f32, f32);

thread_local! {
    /// A source plane converted to the model's channels, and the column taps: grown to the
    /// largest image met, so a thread's later samples do not allocate.
    static SCRATCH: RefCell<(Vec<f32>, Vec<Tap>)> = const { RefCell::new((Vec::new(), Vec::new())) };
}

fn resize<T: Copy + Into<f32>>(
    img: &Image<'_, T>,
    [channels, height, width]: [usize; 3],
    norm: &Normalize<'_>,
    out: &mut [f32],
) {
    let (ih, iw) = (img.height, img.width);
    let same_size = ih == height && iw == width;
    SCRATCH.with_borrow_mut(|(plane, taps)| {
        plane.resize(ih * iw, 0.0);
        taps.clear();
        taps.extend((0..width).map(|ox| source_index(ox, iw, width)));
        for c in 0..channels {
            for (y, row) in plane.chunks_exact_mut(iw).enumerate() {
                for (x, p) in row.iter_mut().enumerate() {
                    *p = img.converted(channels, c, y, x);
                }
            }
            let (mean, std) = norm.of(c);
            let out = &mut out[c * height * width..(c + 1) * height * width];
            for (oy, row) in out.chunks_exact_mut(width).enumerate() {
                if same_size {
                    let src = &plane[oy * iw..][..iw];
                    for (o, &v) in row.iter_mut().zip(src) {
                        *o = (v * norm.scale - mean) / std;
                    }
                    continue;
                }
                let (y0, y1, wy0, wy1) = source_index(oy, ih, height);
                let (r0, r1) = (&plane[y0 * iw..][..iw], &plane[y1 * iw..][..iw]);
                for (o, &(x0, x1, wx0, wx1)) in row.iter_mut().zip(taps.iter()) {
                    let v =
                        wy0 * (wx0 * r0[x0] + wx1 * r0[x1]) + wy1 * (wx0 * r1[x0] + wx1 * r1[x1]);
                    *o = (v * norm.scale - mean) / std;
                }
            }
        }
    })
}

#[cfg(test)]
mod tests {
    use super::super::Samples;
    use super::*;

    fn image_set(samples: Samples, shape: [usize; 3], layout: Layout) -> Dataset {
        let [a, b, c] = shape;
        let form = match layout {
            Layout::Nchw => Form::Image {
                channels: a,
                height: b,
                width: c,
                layout,
            },
            Layout::Nhwc => Form::Image {
                channels: c,
                height: a,
                width: b,
                layout,
            },
        };
        Dataset::new(
            Path::new("mem.npz"),
            samples,
            shape.to_vec(),
            form,
            vec![0],
            Vec::new(),
            Some(layout),
        )
        .unwrap()
    }

    fn gray(values: Vec<f32>, h: usize, w: usize) -> Dataset {
        image_set(Samples::F32(values), [1, h, w], Layout::Nchw)
    }

    fn raw(shape: &[usize]) -> Preprocess {
        Preprocess {
            shape: shape.to_vec(),
            scale: None,
            mean: vec![0.0],
            std: vec![1.0],
        }
    }

    fn run(ds: &Dataset, prep: &Preprocess) -> Vec<f32> {
        ds.check(prep).unwrap();
        let mut out = vec![f32::NAN; prep.numel()];
        ds.write_sample(0, prep, &mut out);
        out
    }

    fn assert_close(got: &[f32], want: &[f32], tol: f32) {
        assert_eq!(got.len(), want.len());
        for (k, (g, w)) in got.iter().zip(want).enumerate() {
            assert!((g - w).abs() <= tol * w.abs().max(1.0), "[{k}] {g} vs {w}");
        }
    }

    #[test]
    fn source_index_by_hand() {
        // 2 → 4: centres of outputs 0..3 map to -0.25 (clamped), 0.25, 0.75, 1.25.
        assert_eq!(source_index(0, 2, 4), (0, 1, 1.0, 0.0));
        assert_eq!(source_index(1, 2, 4), (0, 1, 0.75, 0.25));
        assert_eq!(source_index(2, 2, 4), (0, 1, 0.25, 0.75));
        assert_eq!(source_index(3, 2, 4), (1, 1, 0.75, 0.25));
        // 4 → 2: 0.5 and 2.5, the midpoints of each pair.
        assert_eq!(source_index(0, 4, 2), (0, 1, 0.5, 0.5));
        assert_eq!(source_index(1, 4, 2), (2, 3, 0.5, 0.5));
        // 1 → n: both taps read the single pixel, whatever their weights.
        let (i0, i1, w0, w1) = source_index(2, 1, 3);
        assert_eq!((i0, i1, w0 + w1), (0, 0, 1.0));
    }

    #[test]
    fn bilinear_by_hand() {
        // [[0, 1], [2, 3]] → 4×4. Columns of row 0 come from x = 0, 0.25, 0.75, 1 (clamped),
        // rows likewise, so row k is row 0 + 2·(0, 0.25, 0.75, 1)[k].
        let out = run(&gray(vec![0., 1., 2., 3.], 2, 2), &raw(&[1, 4, 4]));
        #[rustfmt::skip]
        let want = [
            0.0, 0.25, 0.75, 1.0,
            0.5, 0.75, 1.25, 1.5,
            1.5, 1.75, 2.25, 2.5,
            2.0, 2.25, 2.75, 3.0,
        ];
        assert_eq!(out, want);
        // 4×4 → 2×2 averages each 2×2 block (no antialiasing needed at exactly half size).
        let v: Vec<f32> = (0..16).map(|k| k as f32).collect();
        assert_eq!(
            run(&gray(v, 4, 4), &raw(&[1, 2, 2])),
            [2.5, 4.5, 10.5, 12.5]
        );
    }

    #[test]
    fn bilinear_matches_pytorch() {
        // Within 1e-6 relative: the last bit depends on PyTorch's summation order (see
        // `source_index`). Values from torch 2.15.0 (the venv of models/README.md):
        //   F.interpolate(a, size=..., mode="bilinear", align_corners=False, antialias=False)
        // with a = torch.arange(12.).reshape(1, 1, 3, 4) and size (5, 7).
        let a: Vec<f32> = (0..12).map(|k| k as f32).collect();
        #[rustfmt::skip]
        let up = [
            0.0, 0.3571429, 0.92857146, 1.5000001, 2.0714288, 2.6428573, 3.0,
            1.6000001, 1.957143, 2.5285716, 3.1000001, 3.6714287, 4.2428575, 4.6000004,
            4.0, 4.357143, 4.9285717, 5.5, 6.071429, 6.642857, 7.0,
            6.4000006, 6.7571435, 7.3285723, 7.900001, 8.471429, 9.042858, 9.400001,
            8.0, 8.357142, 8.928571, 9.499999, 10.071428, 10.642858, 11.0,
        ];
        let out = run(&gray(a, 3, 4), &raw(&[1, 5, 7]));
        assert_close(&out, &up, 1e-6);
        // Row 0 reads pixels 0 and 1 only, so it is the x weights themselves: bit for bit.
        assert_eq!(out[..7], up[..7]);
        // Same call, b = [(i*37) % 23 for i in range(30)] as 5×6, size (3, 4): a
        // non-integer downscale.
        let b: Vec<f32> = (0..30).map(|i| ((i * 37) % 23) as f32).collect();
        #[rustfmt::skip]
        let down = [
            6.5833335, 10.333333, 14.083334, 6.333333,
            10.5, 14.25, 6.5, 10.25,
            14.416668, 12.416665, 10.416668, 8.416665,
        ];
        assert_close(&run(&gray(b, 5, 6), &raw(&[1, 3, 4])), &down, 1e-6);
    }

    /// The resize against the per-output-pixel formula it replaced (taps and channel
    /// conversion computed at every output): bit for bit, up and down, across channel
    /// conversions and layouts, with ImageNet normalisation.
    #[test]
    fn resize_matches_the_per_pixel_formula_bit_for_bit() {
        let mut seed = 7u32;
        let mut byte = || {
            seed = seed.wrapping_mul(1_664_525).wrapping_add(1_013_904_223);
            (seed >> 24) as u8
        };
        for (shape, layout, want) in [
            ([1, 28, 28], Layout::Nchw, [3, 224, 224]),
            ([3, 5, 7], Layout::Nchw, [3, 9, 4]),
            ([6, 5, 3], Layout::Nhwc, [1, 11, 13]),
            ([1, 8, 8], Layout::Nchw, [3, 8, 8]),
        ] {
            let n: usize = shape.iter().product();
            let ds = image_set(Samples::U8((0..n).map(|_| byte()).collect()), shape, layout);
            let prep = Preprocess::for_input(&want, &ds).unwrap();
            let got = run(&ds, &prep);
            let Samples::U8(v) = &ds.samples else {
                unreachable!()
            };
            let img = Image::new(v, ds.form);
            let norm = Normalize {
                scale: prep.scale.unwrap(),
                mean: &prep.mean,
                std: &prep.std,
            };
            let [c_out, h, w] = want;
            for c in 0..c_out {
                for oy in 0..h {
                    for ox in 0..w {
                        let pixel = |y, x| img.converted(c_out, c, y, x);
                        let (y0, y1, wy0, wy1) = source_index(oy, img.height, h);
                        let (x0, x1, wx0, wx1) = source_index(ox, img.width, w);
                        let v = if (img.height, img.width) == (h, w) {
                            pixel(oy, ox)
                        } else {
                            wy0 * (wx0 * pixel(y0, x0) + wx1 * pixel(y0, x1))
                                + wy1 * (wx0 * pixel(y1, x0) + wx1 * pixel(y1, x1))
                        };
                        let k = (c * h + oy) * w + ox;
                        assert_eq!(
                            got[k].to_bits(),
                            norm.apply(c, v).to_bits(),
                            "{shape:?} [{k}]"
                        );
                    }
                }
            }
        }
    }

    #[test]
    fn gray_to_rgb_with_imagenet_defaults() {
        let ds = image_set(Samples::U8(vec![0, 51, 102, 255]), [1, 2, 2], Layout::Nchw);
        let prep = Preprocess::for_input(&[3, 2, 2], &ds).unwrap();
        assert_eq!(prep.mean, IMAGENET_MEAN);
        assert_eq!(prep.scale, Some(1.0 / 255.0));
        let out = run(&ds, &prep);
        for c in 0..3 {
            for (k, v) in [0.0f32, 0.2, 0.4, 1.0].iter().enumerate() {
                let want = (v - IMAGENET_MEAN[c]) / IMAGENET_STD[c];
                assert!((out[c * 4 + k] - want).abs() < 1e-6);
            }
        }
    }

    #[test]
    fn rgb_to_gray_by_luma_from_nhwc() {
        // One 1×2 RGB image in NHWC: pure red, then (10, 20, 30).
        let ds = image_set(
            Samples::U8(vec![255, 0, 0, 10, 20, 30]),
            [1, 2, 3],
            Layout::Nhwc,
        );
        let prep = Preprocess::for_input(&[1, 1, 2], &ds).unwrap();
        assert_eq!(
            (prep.mean.as_slice(), prep.std.as_slice()),
            (&[0.0][..], &[1.0][..])
        );
        let luma = 0.299 * 10.0 + 0.587 * 20.0 + 0.114 * 30.0;
        assert_close(&run(&ds, &prep), &[0.299, luma / 255.0], 1e-6);
    }

    #[test]
    fn vectors_and_images_cross_over() {
        // An NHWC image into a vector input: flattened in CHW order, as x.view(N, -1) on NCHW.
        let ds = image_set(Samples::U8(vec![1, 2, 3, 4, 5, 6]), [1, 2, 3], Layout::Nhwc);
        let out = run(
            &ds,
            &Preprocess {
                scale: Some(1.0),
                ..raw(&[6])
            },
        );
        assert_eq!(out, [1., 4., 2., 5., 3., 6.]);
        // A vector into a [C, H, W] input of the same size: reshaped; per-element mean.
        let flat = Dataset::new(
            Path::new("mem.npz"),
            Samples::F32(vec![1., 2., 3., 4.]),
            vec![4],
            Form::Flat,
            vec![0],
            Vec::new(),
            None,
        )
        .unwrap();
        assert_eq!(run(&flat, &raw(&[1, 2, 2])), [1., 2., 3., 4.]);
        let centred = Preprocess {
            mean: vec![1., 1., 1., 1.],
            std: vec![2.0],
            ..raw(&[4])
        };
        assert_eq!(run(&flat, &centred), [0., 0.5, 1., 1.5]);
    }

    #[test]
    fn mismatches_are_named() {
        let ds = image_set(Samples::U8(vec![0; 8]), [2, 2, 2], Layout::Nchw);
        let err = |prep: Preprocess| {
            let msg = ds.check(&prep).unwrap_err().to_string();
            assert!(msg.starts_with("mem.npz: "), "{msg}");
            msg
        };
        assert!(err(raw(&[3, 4, 4])).contains("samples have 2 channels ([2, 2, 2])"));
        assert!(err(raw(&[7])).contains("holds 8 values ([2, 2, 2]) but the model input takes 7"));
        assert!(err(raw(&[2, 4])).contains("only [C, H, W] images and [D] vectors"));
        assert!(err(raw(&[2, 0, 4])).contains("empty dimension"));
        let bad_mean = Preprocess {
            mean: vec![0.0; 3],
            ..raw(&[2, 4, 4])
        };
        assert!(err(bad_mean).contains("mean has 3 values"));
        let zero_std = Preprocess {
            std: vec![1.0, 0.0],
            ..raw(&[2, 4, 4])
        };
        assert!(err(zero_std).contains("non-zero"));
        let flat = Dataset::new(
            Path::new("mem.npz"),
            Samples::F32(vec![0.0; 64]),
            vec![64],
            Form::Flat,
            vec![0],
            Vec::new(),
            None,
        )
        .unwrap();
        let msg = flat.check(&raw(&[1, 28, 28])).unwrap_err().to_string();
        assert!(msg.contains("vector of 64 values but the model input [1, 28, 28] takes 784"));
    }
}
