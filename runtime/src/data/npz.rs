//! `.npz` archives (`numpy.savez`, `savez_compressed`): a zip whose members are `.npy`
//! arrays, named after the keyword arguments. Samples are `x` (or `X`, `images`), labels `y`
//! (or `Y`, `labels`), one label per sample.

use std::fs::File;
use std::io::{BufReader, Read};
use std::path::Path;

use zip::ZipArchive;

use super::npy::{self, Array};
use super::{DataError, Dataset, Form, Layout, TargetArray};

const SAMPLE_NAMES: [&str; 3] = ["x", "X", "images"];
const LABEL_NAMES: [&str; 3] = ["y", "Y", "labels"];

pub(crate) fn load(path: &Path, layout: Option<Layout>) -> Result<Dataset, DataError> {
    let file = File::open(path).map_err(|e| DataError::io(path, e))?;
    let mut zip = ZipArchive::new(BufReader::new(file))
        .map_err(|e| DataError::invalid(path, format!("not a readable .npz (zip) archive: {e}")))?;
    let x = read_array(&mut zip, path, &SAMPLE_NAMES)?;
    let y = read_array(&mut zip, path, &LABEL_NAMES)?;

    from_arrays(path, x, y, layout)
}

/// Samples of a model with several inputs (or an integer one): one array per input, named
/// after it, (N, …) with the input's per-sample shape, packed into one row per sample in the
/// order of `inputs`; class labels `y`.
pub(crate) fn load_packed(path: &Path, inputs: &[(&str, &[usize])]) -> Result<Dataset, DataError> {
    let file = File::open(path).map_err(|e| DataError::io(path, e))?;
    let mut zip = ZipArchive::new(BufReader::new(file))
        .map_err(|e| DataError::invalid(path, format!("not a readable .npz (zip) archive: {e}")))?;
    let mut parts = Vec::with_capacity(inputs.len());
    for &(name, shape) in inputs {
        let a = read_array(&mut zip, path, &[name])?;
        if a.shape.get(1..) != Some(shape) {
            return Err(DataError::invalid(
                path,
                format!(
                    "array {name} has shape {:?}; the model input takes (N, {})",
                    a.shape,
                    shape
                        .iter()
                        .map(|d| d.to_string())
                        .collect::<Vec<_>>()
                        .join(", ")
                ),
            ));
        }
        let values = a
            .to_exact_f32()
            .map_err(|reason| DataError::invalid(path, format!("array {name}: {reason}")))?;
        parts.push((a.shape[0], shape.iter().product::<usize>(), values));
    }
    let y = read_array(&mut zip, path, &LABEL_NAMES)?;
    let n = y.shape.first().copied().unwrap_or(0);
    if let Some((i, (m, _, _))) = parts.iter().enumerate().find(|(_, (m, _, _))| *m != n) {
        return Err(DataError::invalid(
            path,
            format!(
                "array {} holds {m} samples but y holds {n} labels",
                inputs[i].0
            ),
        ));
    }
    let row: usize = parts.iter().map(|(_, len, _)| len).sum();
    let mut packed = Vec::with_capacity(n * row);
    for s in 0..n {
        for (_, len, values) in &parts {
            packed.extend_from_slice(&values[s * len..][..*len]);
        }
    }
    let x = Array {
        shape: vec![n, row],
        values: npy::Values::F32(packed),
    };
    from_arrays(path, x, y, None)
}

/// How many samples `x` holds and how each is read.
fn samples_of(
    source: &Path,
    x: &Array,
    layout: Option<Layout>,
) -> Result<(usize, Form, Vec<usize>, Option<Layout>), DataError> {
    let n = x.shape.first().copied().unwrap_or(0);
    let (form, shape, layout) = form_of(&x.shape, layout)
        .map_err(|reason| DataError::invalid(source, format!("array x: {reason}")))?;
    Ok((n, form, shape, layout))
}

/// A data set of samples `x` and class labels `y` (one per sample), checked as a `.npz`'s
/// are; `source` names them in errors.
pub(crate) fn from_arrays(
    source: &Path,
    x: Array,
    y: Array,
    layout: Option<Layout>,
) -> Result<Dataset, DataError> {
    let (n, form, shape, layout) = samples_of(source, &x, layout)?;
    let labels_per_sample = y
        .shape
        .get(1..)
        .is_some_and(|rest| rest.iter().all(|&d| d == 1));
    if !labels_per_sample {
        return Err(DataError::invalid(
            source,
            format!(
                "array y has shape {:?}: expected one class index per sample, shape (N,); \
                 for one-hot labels save y.argmax(1)",
                y.shape
            ),
        ));
    }
    if y.shape[0] != n {
        return Err(DataError::invalid(
            source,
            format!("x holds {n} samples but y holds {} labels", y.shape[0]),
        ));
    }
    let labels = y
        .to_labels()
        .map_err(|reason| DataError::invalid(source, format!("array y: {reason}")))?;
    Dataset::new(
        source,
        x.into_samples(),
        shape,
        form,
        labels,
        Vec::new(),
        layout,
    )
}

/// Samples `x` and regression targets, the first array of `targets` present.
pub(crate) fn load_regression(
    path: &Path,
    layout: Option<Layout>,
    targets: &[TargetArray],
) -> Result<Dataset, DataError> {
    let file = File::open(path).map_err(|e| DataError::io(path, e))?;
    let mut zip = ZipArchive::new(BufReader::new(file))
        .map_err(|e| DataError::invalid(path, format!("not a readable .npz (zip) archive: {e}")))?;
    let x = read_array(&mut zip, path, &SAMPLE_NAMES)?;
    let y = match targets {
        [one] => read_array(&mut zip, path, &names_of(one))?,
        several => {
            let n = x.shape.first().copied().unwrap_or(0);
            let mut arrays = Vec::with_capacity(several.len());
            for t in several {
                let names = names_of(t);
                let present = |m: &str| zip.index_for_name(m).is_some();
                if !names
                    .iter()
                    .any(|m| present(m) || present(&format!("{m}.npy")))
                {
                    let mut held: Vec<&str> = zip
                        .file_names()
                        .map(|m| m.strip_suffix(".npy").unwrap_or(m))
                        .collect();
                    held.sort_unstable();
                    return Err(DataError::invalid(
                        path,
                        format!(
                            "no array named {} (it holds: {}): a plan trained on several outputs \
                             reads one array per output; save numpy.savez(path, x=samples, {})",
                            name_of(t),
                            held.join(", "),
                            several
                                .iter()
                                .map(|t| format!("{0}={0}_targets", name_of(t)))
                                .collect::<Vec<_>>()
                                .join(", ")
                        ),
                    ));
                }
                arrays.push((t, read_array(&mut zip, path, &names)?));
            }
            side_by_side(path, n, arrays)?
        }
    };
    regression_from_arrays(path, x, y, layout)
}

fn names_of(t: &TargetArray) -> Vec<&str> {
    t.names.iter().map(String::as_str).collect()
}

/// The name an array of targets is asked for by.
fn name_of(t: &TargetArray) -> &str {
    t.names.first().map_or("y", String::as_str)
}

/// Several outputs' target arrays as one of shape (N, their values per sample summed): each
/// sample's row holds theirs in turn. Each must hold `n` samples of its output's values.
fn side_by_side(
    path: &Path,
    n: usize,
    arrays: Vec<(&TargetArray, Array)>,
) -> Result<Array, DataError> {
    let total: usize = arrays
        .iter()
        .map(|(t, _)| t.shape.iter().product::<usize>())
        .sum();
    let mut rows = vec![0f32; n * total];
    let mut offset = 0;
    for (t, a) in arrays {
        let per: usize = a.shape.iter().skip(1).product();
        if a.shape.first() != Some(&n) || per != t.shape.iter().product::<usize>() {
            let want: Vec<usize> = [n].into_iter().chain(t.shape.iter().copied()).collect();
            return Err(DataError::invalid(
                path,
                format!(
                    "array {} has shape {:?}, not {want:?}: one row per sample of x, each of \
                     the trained output's shape",
                    name_of(t),
                    a.shape,
                ),
            ));
        }
        let values = match a.into_samples() {
            super::Samples::F32(v) => v,
            super::Samples::U8(v) => v.into_iter().map(f32::from).collect(),
        };
        for (row, src) in rows
            .chunks_exact_mut(total)
            .zip(values.chunks_exact(per.max(1)))
        {
            row[offset..offset + per].copy_from_slice(&src[..per]);
        }
        offset += per;
    }
    Ok(Array {
        shape: vec![n, total],
        values: super::npy::Values::F32(rows),
    })
}

/// A data set of samples `x` and regression targets `y` (float values, the sample count
/// first), checked as a `.npz`'s arrays are; `source` names them in errors.
pub(crate) fn regression_from_arrays(
    source: &Path,
    x: Array,
    y: Array,
    layout: Option<Layout>,
) -> Result<Dataset, DataError> {
    let (n, form, shape, layout) = samples_of(source, &x, layout)?;
    if y.shape.first() != Some(&n) {
        return Err(DataError::invalid(
            source,
            format!(
                "x holds {n} samples but the targets have shape {:?}: expected (N, …), one target per sample",
                y.shape
            ),
        ));
    }
    let target_shape = y.shape[1..].to_vec();
    let targets = match y.into_samples() {
        super::Samples::F32(v) => v,
        super::Samples::U8(v) => v.into_iter().map(f32::from).collect(),
    };
    Dataset::with_targets(
        source,
        x.into_samples(),
        shape,
        form,
        target_shape,
        targets,
        layout,
    )
}

/// One named array of an archive, as f32 whatever its numeric type.
pub struct NamedArray {
    pub shape: Vec<usize>,
    pub values: Vec<f32>,
}

/// The array `name` of the `.npz` at `path` (reference data, for instance).
pub fn read(path: &Path, name: &str) -> Result<NamedArray, DataError> {
    let file = File::open(path).map_err(|e| DataError::io(path, e))?;
    let mut zip = ZipArchive::new(BufReader::new(file))
        .map_err(|e| DataError::invalid(path, format!("not a readable .npz (zip) archive: {e}")))?;
    let a = read_array(&mut zip, path, &[name])?;
    let shape = a.shape.clone();
    let values = match a.into_samples() {
        super::Samples::F32(v) => v,
        super::Samples::U8(v) => v.into_iter().map(f32::from).collect(),
    };
    Ok(NamedArray { shape, values })
}

/// The first of `names` present (with or without the `.npy` NumPy appends).
fn read_array<R: Read + std::io::Seek>(
    zip: &mut ZipArchive<R>,
    path: &Path,
    names: &[&str],
) -> Result<Array, DataError> {
    let member = names
        .iter()
        .flat_map(|n| [format!("{n}.npy"), n.to_string()])
        .find(|m| zip.index_for_name(m).is_some());
    let Some(member) = member else {
        let mut present: Vec<&str> = zip
            .file_names()
            .map(|n| n.strip_suffix(".npy").unwrap_or(n))
            .collect();
        present.sort_unstable();
        return Err(DataError::invalid(
            path,
            format!(
                "no array named {} (it holds: {}); save with numpy.savez(path, x=samples, \
                 y=labels)",
                names.join(", "),
                if present.is_empty() {
                    "nothing".to_string()
                } else {
                    present.join(", ")
                }
            ),
        ));
    };
    let damaged = |e: &dyn std::fmt::Display| {
        DataError::invalid(path, format!("member {member} is damaged: {e}"))
    };
    let mut file = zip.by_name(&member).map_err(|e| damaged(&e))?;
    npy::parse(&mut file).map_err(|reason| DataError::invalid(path, format!("{member}: {reason}")))
}

/// How to read samples of the array shape `dims` (batch first), the per-sample shape, and the
/// layout used for a 4-D array.
fn form_of(
    dims: &[usize],
    layout: Option<Layout>,
) -> Result<(Form, Vec<usize>, Option<Layout>), String> {
    let image = |channels, height, width, layout| Form::Image {
        channels,
        height,
        width,
        layout,
    };
    match *dims {
        [_, d] => Ok((Form::Flat, vec![d], None)),
        [_, h, w] => Ok((image(1, h, w, Layout::Nchw), vec![h, w], None)),
        [n, a, b, c] => {
            let layout = layout.unwrap_or_else(|| Layout::detect(&[n, a, b, c]));
            let form = match layout {
                Layout::Nchw => image(a, b, c, layout),
                Layout::Nhwc => image(c, a, b, layout),
            };
            Ok((form, vec![a, b, c], Some(layout)))
        }
        _ => Err(format!(
            "shape {dims:?}: expected (N, D) vectors, (N, H, W) grayscale images or \
             (N, C, H, W) / (N, H, W, C) images"
        )),
    }
}

#[cfg(test)]
mod tests {
    use super::super::Preprocess;
    use super::super::testutil::{TempDir, f32_bytes, i64_bytes, npy, write_npz};
    use super::*;
    use std::path::PathBuf;
    use zip::CompressionMethod::{Deflated, Stored};

    fn digits() -> PathBuf {
        Path::new(env!("CARGO_MANIFEST_DIR")).join("../models/data/digits.npz")
    }

    fn flat(len: usize) -> Preprocess {
        Preprocess {
            shape: vec![len],
            scale: Some(1.0),
            mean: vec![0.0],
            std: vec![1.0],
        }
    }

    fn load_err(path: &Path) -> String {
        let msg = Dataset::load(path, None).err().unwrap().to_string();
        assert!(msg.starts_with(&path.display().to_string()), "{msg}");
        msg
    }

    #[test]
    fn bundled_digits() {
        let ds = Dataset::load(&digits(), None).unwrap();
        assert_eq!(ds.len(), 1797);
        assert_eq!(ds.sample_shape(), &[64]);
        assert_eq!(ds.classes(), 10);
        assert!(!ds.is_u8());
        assert_eq!(ds.layout(), None);
        // From Python: z = np.load("digits.npz"); z["y"][:12], np.bincount(z["y"]), z["x"][0].
        assert_eq!(&ds.labels()[..12], &[0, 1, 2, 3, 4, 5, 6, 7, 8, 9, 0, 1]);
        let mut counts = [0; 10];
        for &l in ds.labels() {
            counts[l as usize] += 1;
        }
        assert_eq!(counts, [178, 182, 177, 183, 181, 182, 181, 179, 174, 180]);
        let prep = Preprocess::for_input(&[64], &ds).unwrap();
        assert_eq!(prep.scale, Some(1.0));
        let mut x = vec![0.0; 64];
        ds.write_sample(0, &prep, &mut x);
        assert_eq!(
            &x[..16],
            &[
                0., 0., 5., 13., 9., 1., 0., 0., 0., 0., 13., 15., 10., 15., 5., 0.
            ]
        );
        assert_eq!(x.iter().sum::<f32>(), 294.0);
    }

    #[test]
    fn u8_nhwc_deflated() {
        let dir = TempDir::new("npz-nhwc");
        let path = dir.path().join("imgs.npz");
        // Two 2×2 RGB images; pixel (y, x) of image k has channels [10k+y, 20+x, 40+10y+x].
        let mut pixels = Vec::new();
        for k in 0..2u8 {
            for y in 0..2u8 {
                for x in 0..2u8 {
                    pixels.extend_from_slice(&[10 * k + y, 20 + x, 40 + 10 * y + x]);
                }
            }
        }
        let members = [
            ("images.npy", npy("|u1", &[2, 2, 2, 3], &pixels)),
            ("labels.npy", npy("|u1", &[2], &[1, 3])),
        ];
        write_npz(&path, &members, Deflated);
        let ds = Dataset::load(&path, None).unwrap();
        assert_eq!(ds.layout(), Some(Layout::Nhwc));
        assert_eq!(ds.sample_shape(), &[2, 2, 3]);
        assert_eq!(ds.labels(), &[1, 3]);
        assert_eq!(ds.classes(), 4);
        assert_eq!(ds.to_string(), "2 samples of 2×2×3 u8 (NHWC), 4 classes");
        let raw = Preprocess {
            shape: vec![3, 2, 2],
            ..flat(0)
        };
        ds.check(&raw).unwrap();
        let mut out = vec![0.0; 12];
        ds.write_sample(1, &raw, &mut out);
        assert_eq!(
            out,
            [10., 10., 11., 11., 20., 21., 20., 21., 40., 41., 50., 51.]
        );
        // Forcing NCHW reads the same bytes as 2 channels of 2×3.
        let forced = Dataset::load(&path, Some(Layout::Nchw)).unwrap();
        assert_eq!(forced.layout(), Some(Layout::Nchw));
        let err = Preprocess::for_input(&[3, 2, 2], &forced).err().unwrap();
        assert!(err.to_string().contains("2 channels"), "{err}");
    }

    #[test]
    fn f32_nchw_stored_with_float_labels() {
        let dir = TempDir::new("npz-nchw");
        let path = dir.path().join("feats.npz");
        let values: Vec<f32> = (0..2 * 3 * 2 * 2).map(|v| v as f32 * 0.5).collect();
        let members = [
            ("x.npy", npy("<f4", &[2, 3, 2, 2], &f32_bytes(&values))),
            ("y.npy", npy("<f4", &[2], &f32_bytes(&[0.0, 2.0]))),
        ];
        write_npz(&path, &members, Stored);
        let ds = Dataset::load(&path, None).unwrap();
        assert_eq!(ds.layout(), Some(Layout::Nchw));
        assert_eq!(ds.labels(), &[0, 2]);
        let prep = Preprocess::for_input(&[3, 2, 2], &ds).unwrap();
        assert_eq!(prep.scale, Some(1.0));
        let mut out = vec![0.0; 12];
        ds.write_sample(1, &prep, &mut out);
        for (k, got) in out.iter().enumerate() {
            let c = k / 4;
            let raw = (12 + k) as f32 * 0.5;
            let want = (raw - prep.mean[c]) / prep.std[c];
            assert!((got - want).abs() < 1e-6, "{k}: {got} vs {want}");
        }
    }

    #[test]
    fn several_inputs_pack_into_one_row_per_sample() {
        let dir = TempDir::new("npz-packed");
        let path = dir.path().join("tokens.npz");
        let ids = npy("<i8", &[2, 3], &i64_bytes(&[101, 7, 102, 101, 8, 0]));
        let mask = npy("<i8", &[2, 3], &i64_bytes(&[1, 1, 1, 1, 1, 0]));
        let feats = npy("<f4", &[2, 2], &f32_bytes(&[0.5, -1.0, 2.0, 3.0]));
        let y = npy("<i8", &[2], &i64_bytes(&[1, 0]));
        let members = [
            ("input_ids.npy", ids.clone()),
            ("attention_mask.npy", mask.clone()),
            ("extra.npy", feats),
            ("y.npy", y.clone()),
        ];
        write_npz(&path, &members, Stored);
        let inputs: [(&str, &[usize]); 3] = [
            ("attention_mask", &[3]),
            ("input_ids", &[3]),
            ("extra", &[2]),
        ];
        let ds = Dataset::load_packed(&path, &inputs).unwrap();
        assert_eq!((ds.sample_shape(), ds.labels()), (&[8][..], &[1, 0][..]));
        let mut row = vec![0.0; 8];
        ds.write_sample(1, &flat(8), &mut row);
        assert_eq!(row, [1.0, 1.0, 0.0, 101.0, 8.0, 0.0, 2.0, 3.0]);

        let msg = |members: &[(&str, Vec<u8>)], inputs: &[(&str, &[usize])]| {
            write_npz(&path, members, Stored);
            Dataset::load_packed(&path, inputs)
                .err()
                .unwrap()
                .to_string()
        };
        let shape = msg(&members, &[("input_ids", &[4])]);
        assert!(
            shape.contains("array input_ids has shape [2, 3]"),
            "{shape}"
        );
        let missing = msg(&members, &[("token_type_ids", &[3])]);
        assert!(
            missing.contains("no array named token_type_ids"),
            "{missing}"
        );
        let big = npy("<i8", &[2, 3], &i64_bytes(&[1, 2, 1 << 25, 1, 1, 1]));
        let huge = msg(
            &[("input_ids.npy", big), ("y.npy", y)],
            &[("input_ids", &[3])],
        );
        assert!(huge.contains("beyond 2^24"), "{huge}");
    }

    #[test]
    fn error_paths_name_the_file() {
        let dir = TempDir::new("npz-errors");
        let y = npy("<i8", &[2], &i64_bytes(&[0, 1]));
        let x = npy("<f4", &[2, 3], &f32_bytes(&[0.0; 6]));

        let p = dir.path().join("nox.npz");
        write_npz(&p, &[("a.npy", x.clone()), ("y.npy", y.clone())], Stored);
        let msg = load_err(&p);
        assert!(
            msg.contains("no array named x, X, images (it holds: a, y)"),
            "{msg}"
        );

        let p = dir.path().join("count.npz");
        let y3 = npy("<i8", &[3], &i64_bytes(&[0, 1, 2]));
        write_npz(&p, &[("x.npy", x.clone()), ("y.npy", y3)], Deflated);
        assert!(load_err(&p).contains("x holds 2 samples but y holds 3 labels"));

        let p = dir.path().join("onehot.npz");
        let y2d = npy("<f4", &[2, 2], &f32_bytes(&[1.0, 0.0, 0.0, 1.0]));
        write_npz(&p, &[("x.npy", x.clone()), ("y.npy", y2d)], Stored);
        assert!(load_err(&p).contains("y.argmax(1)"));

        let p = dir.path().join("neg.npz");
        let yneg = npy("<i8", &[2], &i64_bytes(&[0, -3]));
        write_npz(&p, &[("x.npy", x.clone()), ("y.npy", yneg)], Stored);
        assert!(load_err(&p).contains("array y: label -3 at index 1"));

        let p = dir.path().join("rank.npz");
        let x1 = npy("<f4", &[2], &f32_bytes(&[0.0; 2]));
        write_npz(&p, &[("x.npy", x1), ("y.npy", y.clone())], Stored);
        assert!(load_err(&p).contains("array x: shape [2]: expected (N, D)"));

        let p = dir.path().join("short.npz");
        let cut = x[..x.len() - 4].to_vec();
        write_npz(&p, &[("x.npy", cut), ("y.npy", y.clone())], Stored);
        assert!(load_err(&p).contains("x.npy: truncated"));

        // Bytes past the array: 1 GiB of them once loaded silently.
        let p = dir.path().join("trailing.npz");
        let mut long = x.clone();
        long.extend_from_slice(&[0; 4096]);
        write_npz(&p, &[("x.npy", long), ("y.npy", y.clone())], Stored);
        assert!(load_err(&p).contains("x.npy: holds bytes beyond the 24"));

        // A bomb: 2 labels announced, 16 MiB of zeros deflated to 16 kB. Refused after the
        // 16 bytes its shape needs, not after inflating it all.
        let p = dir.path().join("bomb.npz");
        let mut bomb = y.clone();
        bomb.resize(bomb.len() + (16 << 20), 0);
        write_npz(&p, &[("x.npy", x.clone()), ("y.npy", bomb)], Deflated);
        assert!(load_err(&p).contains("y.npy: holds bytes beyond the 16"));

        let p = dir.path().join("huge.npz");
        let huge = npy("<f4", &[1 << 40, 1 << 20], &[]);
        write_npz(&p, &[("x.npy", huge), ("y.npy", y.clone())], Stored);
        assert!(load_err(&p).contains("more than this machine can give"));

        let p = dir.path().join("trunc.npz");
        write_npz(&p, &[("x.npy", x.clone()), ("y.npy", y.clone())], Deflated);
        let bytes = std::fs::read(&p).unwrap();
        std::fs::write(&p, &bytes[..bytes.len() / 2]).unwrap();
        assert!(load_err(&p).contains("not a readable .npz"));

        let p = dir.path().join("wide.npz");
        write_npz(&p, &[("x.npy", x), ("y.npy", y)], Stored);
        let ds = Dataset::load(&p, None).unwrap();
        let err = Preprocess::for_input(&[4], &ds).err().unwrap().to_string();
        assert!(err.starts_with(&p.display().to_string()), "{err}");
        assert!(
            err.contains("holds 3 values ([3]) but the model input takes 4"),
            "{err}"
        );
    }
}
