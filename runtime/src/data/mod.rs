//! Training data: loading a labelled data set from disk and turning one sample into the
//! model's input.
//!
//! [`Dataset::load`] reads the whole set into memory as stored (`u8` pixels stay `u8`, a
//! quarter of the `f32` size), so preprocessing happens per sample in
//! [`Dataset::write_sample`], straight into the caller's input buffer. Formats, recognised by
//! their contents rather than their names:
//! - IDX (MNIST, Fashion-MNIST), gzipped or not: a folder holding `train-images-idx3-ubyte`
//!   and `train-labels-idx1-ubyte`, or an images file whose labels file sits beside it;
//! - `.npz` (`numpy.savez`) with samples `x` and labels `y`;
//! - a folder of PNG/JPEG images with one sub-folder per class (torchvision's `ImageFolder`).

mod error;
mod idx;
mod images;
mod npy;
pub mod npz;
mod preprocess;
pub mod split;
#[cfg(test)]
mod testutil;

use std::fmt;
use std::fs::File;
use std::path::{Path, PathBuf};
use std::str::FromStr;

pub use error::DataError;
pub use preprocess::Preprocess;

/// Memory order of a 4-D sample array (batch dimension included).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Layout {
    Nchw,
    Nhwc,
}

impl Layout {
    /// The guess used when the caller does not say: a trailing 1 or 3 reads as channels
    /// unless dim 1 also does, since (N, 3, 32, 3) is far likelier a 3-channel NCHW array
    /// than 32×3 images with 3 channels.
    pub fn detect(dims: &[usize; 4]) -> Layout {
        let channel_like = |d: usize| d == 1 || d == 3;
        if channel_like(dims[3]) && !channel_like(dims[1]) {
            Layout::Nhwc
        } else {
            Layout::Nchw
        }
    }
}

impl FromStr for Layout {
    type Err = String;

    fn from_str(s: &str) -> Result<Layout, String> {
        match s.to_ascii_lowercase().as_str() {
            "nchw" => Ok(Layout::Nchw),
            "nhwc" => Ok(Layout::Nhwc),
            _ => Err(format!("unknown layout `{s}`: use nchw or nhwc")),
        }
    }
}

impl fmt::Display for Layout {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Layout::Nchw => "NCHW",
            Layout::Nhwc => "NHWC",
        })
    }
}

/// Samples handed over in memory as the array a `.npz` would hold.
fn npy_array(source: &Path, shape: Vec<usize>, x: SampleValues) -> Result<npy::Array, DataError> {
    let (len, values) = match x {
        SampleValues::U8(v) => (v.len(), npy::Values::U8(v)),
        SampleValues::F32(v) => (v.len(), npy::Values::F32(v)),
    };
    if shape.iter().product::<usize>() != len {
        return Err(DataError::invalid(
            source,
            format!("array x holds {len} values, not the {shape:?} its shape says"),
        ));
    }
    Ok(npy::Array { shape, values })
}

/// Sample values handed to [`Dataset::from_arrays`]: bytes (pixels, scaled by 1/255 as an
/// IDX file's are) or floats.
pub enum SampleValues {
    U8(Vec<u8>),
    F32(Vec<f32>),
}

/// Sample values as the file stores them, all samples back to back.
pub(crate) enum Samples {
    U8(Vec<u8>),
    F32(Vec<f32>),
}

/// How one stored sample is read: a plain vector, or an image in some memory order. A
/// one-channel image has the same bytes in either order.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Form {
    Flat,
    Image {
        channels: usize,
        height: usize,
        width: usize,
        layout: Layout,
    },
}

pub struct Dataset {
    /// Unique within the process: what a prefix cache keys samples by.
    id: u64,
    source: PathBuf,
    samples: Samples,
    shape: Vec<usize>,
    form: Form,
    /// One class per sample (empty when the data set holds regression targets instead).
    labels: Vec<u32>,
    targets: Option<Targets>,
    classes: usize,
    class_names: Vec<String>,
    layout: Option<Layout>,
}

/// One trained output's regression targets in a `.npz`: the names its array may go by (the
/// first present is read), and the output's shape per sample (its values are checked when
/// the targets come from several arrays; the plan checks one array's against the output).
#[derive(Clone, Debug, PartialEq)]
pub struct TargetArray {
    pub names: Vec<String>,
    pub shape: Vec<usize>,
}

/// Regression targets: per sample, `shape` float values, all samples back to back.
struct Targets {
    shape: Vec<usize>,
    values: Vec<f32>,
}

impl Dataset {
    /// Reads a data set; see the module documentation for the formats. `layout` only matters
    /// for 4-D sample arrays in a `.npz`; `None` guesses with [`Layout::detect`].
    pub fn load(path: &Path, layout: Option<Layout>) -> Result<Dataset, DataError> {
        let meta = std::fs::metadata(path).map_err(|e| DataError::io(path, e))?;
        if meta.is_dir() {
            return match idx::find_in_dir(path) {
                Some(images) => idx::load(&images),
                None => images::load(path),
            };
        }
        let mut head = [0u8; 8];
        let got = read_prefix(path, &mut head)?;
        let head = &head[..got];
        if head.starts_with(b"PK\x03\x04") || head.starts_with(b"PK\x05\x06") {
            npz::load(path, layout)
        } else if head.starts_with(npy::MAGIC) {
            Err(DataError::invalid(
                path,
                "a .npy file holds one array and no labels: save samples and labels together \
                 with numpy.savez(path, x=samples, y=labels) and pass the .npz",
            ))
        } else if head.starts_with(&idx::GZIP_MAGIC) || head.starts_with(&[0, 0]) {
            idx::load(path)
        } else if images::is_image_name(path) {
            Err(DataError::invalid(
                path,
                "a single image is not a data set: put the images in one sub-folder per class \
                 and pass the parent folder",
            ))
        } else {
            Err(DataError::invalid(
                path,
                "not a data set actc reads: expected an IDX images file \
                 (*-images-idx3-ubyte[.gz]), a .npz with arrays x and y, or a folder with one \
                 sub-folder of PNG/JPEG images per class",
            ))
        }
    }

    /// Reads the samples of a model with several inputs (or an integer one) from a `.npz`
    /// holding one array per input, named after it, and class labels `y`: each sample
    /// becomes one row of every input's values in the order of `inputs` (name, per-sample
    /// shape), as the plan feeds them (`Source::inputs`).
    pub fn load_packed(path: &Path, inputs: &[(&str, &[usize])]) -> Result<Dataset, DataError> {
        npz::load_packed(path, inputs)
    }

    /// A data set from arrays in memory (the bindings' NumPy arrays): samples `x` of
    /// `shape` (the sample count first) and one class index per sample, checked as a
    /// `.npz`'s arrays are; `source` names them in errors.
    pub fn from_arrays(
        source: &str,
        shape: Vec<usize>,
        x: SampleValues,
        labels: Vec<i64>,
        layout: Option<Layout>,
    ) -> Result<Dataset, DataError> {
        let source = Path::new(source);
        let x = npy_array(source, shape, x)?;
        let y = npy::Array {
            shape: vec![labels.len()],
            values: npy::Values::I64(labels),
        };
        npz::from_arrays(source, x, y, layout)
    }

    /// Reads samples and regression targets (`--loss mse`): only a `.npz` holds them, its
    /// samples `x` and its targets, float values of shape (N, …), from one array per
    /// trained output (say, the output's name, then `y`). With several, each sample's
    /// target is their values back to back, in the order of `targets`.
    pub fn load_regression(
        path: &Path,
        layout: Option<Layout>,
        targets: &[TargetArray],
    ) -> Result<Dataset, DataError> {
        let mut head = [0u8; 8];
        let is_zip = !path.is_dir()
            && read_prefix(path, &mut head).is_ok_and(|got| head[..got].starts_with(b"PK\x03\x04"));
        if !is_zip {
            return Err(DataError::invalid(
                path,
                format!(
                    "a plan trained with --loss mse reads float targets, and only a .npz holds them: \
                     save numpy.savez(path, x=samples, {}) with targets of the trained \
                     output's shape per sample",
                    targets
                        .iter()
                        .map(|t| format!("{}=targets", t.names.first().map_or("y", |n| n)))
                        .collect::<Vec<_>>()
                        .join(", ")
                ),
            ));
        }
        npz::load_regression(path, layout, targets)
    }

    /// Samples and regression targets from arrays in memory (see [`Dataset::from_arrays`]):
    /// `targets` of `target_shape` per sample.
    pub fn from_arrays_with_targets(
        source: &str,
        shape: Vec<usize>,
        x: SampleValues,
        target_shape: Vec<usize>,
        targets: Vec<f32>,
        layout: Option<Layout>,
    ) -> Result<Dataset, DataError> {
        let source = Path::new(source);
        let x = npy_array(source, shape, x)?;
        let y = npy::Array {
            shape: target_shape,
            values: npy::Values::F32(targets),
        };
        npz::regression_from_arrays(source, x, y, layout)
    }

    /// A regression data set: `targets` are `target_shape` floats per sample.
    pub(crate) fn with_targets(
        source: &Path,
        samples: Samples,
        shape: Vec<usize>,
        form: Form,
        target_shape: Vec<usize>,
        targets: Vec<f32>,
        layout: Option<Layout>,
    ) -> Result<Dataset, DataError> {
        if let Some(i) = targets.iter().position(|x| !x.is_finite()) {
            let per: usize = target_shape.iter().product();
            return Err(DataError::invalid(
                source,
                format!(
                    "the target of sample {} holds {}; clean the data first",
                    i / per.max(1),
                    targets[i]
                ),
            ));
        }
        let n = targets.len() / target_shape.iter().product::<usize>().max(1);
        // Zero labels stand for the samples the invariants count.
        let mut ds = Dataset::new(source, samples, shape, form, vec![0; n], Vec::new(), layout)?;
        ds.labels = Vec::new();
        ds.classes = 0;
        ds.targets = Some(Targets {
            shape: target_shape,
            values: targets,
        });
        Ok(ds)
    }

    /// Checks the invariants every loader relies on; loaders report count mismatches
    /// themselves, in their own terms, before calling this.
    pub(crate) fn new(
        source: &Path,
        samples: Samples,
        shape: Vec<usize>,
        form: Form,
        labels: Vec<u32>,
        class_names: Vec<String>,
        layout: Option<Layout>,
    ) -> Result<Dataset, DataError> {
        if labels.is_empty() {
            return Err(DataError::invalid(source, "holds no samples"));
        }
        if shape.contains(&0) {
            return Err(DataError::invalid(
                source,
                format!("its samples have an empty axis ({shape:?})"),
            ));
        }
        // A NaN or infinite input would train (and evaluate) on silently.
        if let Samples::F32(v) = &samples
            && let Some(i) = v.iter().position(|x| !x.is_finite())
        {
            let per: usize = shape.iter().product();
            return Err(DataError::invalid(
                source,
                format!("sample {} holds {}; clean the data first", i / per, v[i]),
            ));
        }
        let stored = match &samples {
            Samples::U8(v) => v.len(),
            Samples::F32(v) => v.len(),
        };
        debug_assert_eq!(stored, labels.len() * shape.iter().product::<usize>());
        let classes = if class_names.is_empty() {
            labels.iter().max().map_or(0, |&m| m as usize + 1)
        } else {
            class_names.len()
        };
        static NEXT_ID: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);
        Ok(Dataset {
            id: NEXT_ID.fetch_add(1, std::sync::atomic::Ordering::Relaxed),
            source: source.to_path_buf(),
            samples,
            shape,
            form,
            labels,
            targets: None,
            classes,
            class_names,
            layout,
        })
    }

    /// A CRC-32 of the samples' values and the labels: the same data, wherever it is read
    /// from (what a resumed run checks it trains on).
    pub fn checksum(&self) -> u32 {
        let mut crc = crc32fast::Hasher::new();
        for d in &self.shape {
            crc.update(&(*d as u64).to_le_bytes());
        }
        if let Samples::U8(v) = &self.samples {
            crc.update(v);
        }
        // A block of values at a time: one `update` per value is many times slower.
        let mut words = |words: &mut dyn Iterator<Item = [u8; 4]>| loop {
            let block: Vec<[u8; 4]> = words.take(4096).collect();
            if block.is_empty() {
                break;
            }
            crc.update(block.as_flattened());
        };
        if let Samples::F32(v) = &self.samples {
            words(&mut v.iter().map(|x| x.to_le_bytes()));
        }
        words(&mut self.labels.iter().map(|l| l.to_le_bytes()));
        if let Some(t) = &self.targets {
            words(&mut t.values.iter().map(|x| x.to_le_bytes()));
        }
        crc.finalize()
    }

    /// Tells this data set apart from every other one loaded by the process.
    pub fn id(&self) -> u64 {
        self.id
    }

    /// The file or folder the data came from, for messages.
    pub fn source(&self) -> &Path {
        &self.source
    }

    pub fn len(&self) -> usize {
        match &self.targets {
            Some(t) => t.values.len() / t.shape.iter().product::<usize>().max(1),
            None => self.labels.len(),
        }
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// The shape of one sample's regression target; `None` for class labels.
    pub fn target_shape(&self) -> Option<&[usize]> {
        self.targets.as_ref().map(|t| t.shape.as_slice())
    }

    /// Sample `i`'s regression target. Panics for a data set of class labels.
    pub fn target(&self, i: usize) -> &[f32] {
        let t = self.targets.as_ref().expect("a regression data set");
        let per: usize = t.shape.iter().product();
        &t.values[i * per..(i + 1) * per]
    }

    /// Number of classes: the largest label + 1, or the number of class folders.
    pub fn classes(&self) -> usize {
        self.classes
    }

    /// Class folder names in class-index order; empty for formats that carry no names.
    pub fn class_names(&self) -> &[String] {
        &self.class_names
    }

    pub fn label(&self, i: usize) -> u32 {
        self.labels[i]
    }

    pub fn labels(&self) -> &[u32] {
        &self.labels
    }

    /// One sample's shape as stored, without the batch dimension: `[H, W]` for IDX, `[H, W, C]`
    /// for image folders, the array's trailing dimensions for `.npz`.
    pub fn sample_shape(&self) -> &[usize] {
        &self.shape
    }

    /// The memory order a 4-D `.npz` array was read with (given or detected); `None` for
    /// every other form.
    pub fn layout(&self) -> Option<Layout> {
        self.layout
    }

    /// Whether samples are stored as bytes (the default scale is then 1/255).
    pub fn is_u8(&self) -> bool {
        matches!(self.samples, Samples::U8(_))
    }

    /// Checks that `prep` can turn this data set's samples into the model's input; the error
    /// names both sides' sizes. [`Preprocess::for_input`] calls it, so only a hand-built or
    /// edited `Preprocess` needs an explicit call before [`Dataset::write_sample`].
    pub fn check(&self, prep: &Preprocess) -> Result<(), DataError> {
        preprocess::check(&self.source, self.form, &self.shape, prep)
    }

    /// Writes sample `i`, preprocessed, into `out` (length [`Preprocess::numel`]). Allocates
    /// nothing. Panics if `prep` does not fit this data set (see [`Dataset::check`]).
    pub fn write_sample(&self, i: usize, prep: &Preprocess, out: &mut [f32]) {
        let numel: usize = self.shape.iter().product();
        let range = i * numel..(i + 1) * numel;
        match &self.samples {
            Samples::U8(v) => preprocess::write(self.form, &v[range], prep, 1.0 / 255.0, out),
            Samples::F32(v) => preprocess::write(self.form, &v[range], prep, 1.0, out),
        }
    }
}

impl fmt::Display for Dataset {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let dims: Vec<String> = self.shape.iter().map(|d| d.to_string()).collect();
        let kind = if self.is_u8() { "u8" } else { "f32" };
        write!(f, "{} samples of {} {kind}", self.len(), dims.join("×"))?;
        if let Some(layout) = self.layout() {
            write!(f, " ({layout})")?;
        }
        match self.target_shape() {
            Some(t) => {
                let dims: Vec<String> = t.iter().map(|d| d.to_string()).collect();
                write!(f, ", targets of {}", dims.join("×"))
            }
            None => write!(f, ", {} classes", self.classes),
        }
    }
}

/// Reads up to `buf.len()` leading bytes, fewer only at end of file.
fn read_prefix(path: &Path, buf: &mut [u8]) -> Result<usize, DataError> {
    let mut file = File::open(path).map_err(|e| DataError::io(path, e))?;
    crate::plan::read_up_to(&mut file, buf).map_err(|e| DataError::io(path, e))
}

#[cfg(test)]
mod tests {
    use super::testutil::TempDir;
    use super::*;

    #[test]
    fn empty_samples_and_non_finite_values_are_refused() {
        let at = Path::new("d.npz");
        let new = |samples, shape: Vec<usize>| {
            Dataset::new(at, samples, shape, Form::Flat, vec![0, 1], vec![], None)
                .err()
                .map(|e| e.to_string())
        };
        let e = new(Samples::U8(vec![]), vec![0, 28]).unwrap();
        assert!(e.contains("empty axis"), "{e}");
        let e = new(Samples::F32(vec![0.0, 1.0, f32::NAN, 2.0]), vec![2]).unwrap();
        assert!(e.contains("sample 1 holds NaN"), "{e}");
        let e = new(Samples::F32(vec![f32::INFINITY, 1.0]), vec![1]).unwrap();
        assert!(e.contains("sample 0 holds inf"), "{e}");
        assert_eq!(new(Samples::F32(vec![0.5; 4]), vec![2]), None);
    }

    #[test]
    fn layout_detection_prefers_nchw_when_ambiguous() {
        assert_eq!(Layout::detect(&[5, 28, 28, 1]), Layout::Nhwc);
        assert_eq!(Layout::detect(&[5, 32, 32, 3]), Layout::Nhwc);
        assert_eq!(Layout::detect(&[5, 3, 32, 32]), Layout::Nchw);
        assert_eq!(Layout::detect(&[5, 1, 28, 28]), Layout::Nchw);
        assert_eq!(Layout::detect(&[5, 3, 32, 3]), Layout::Nchw);
        assert_eq!("NHWC".parse::<Layout>(), Ok(Layout::Nhwc));
        assert!(
            "chw"
                .parse::<Layout>()
                .unwrap_err()
                .contains("nchw or nhwc")
        );
    }

    #[test]
    fn missing_path_is_named() {
        let err = Dataset::load(Path::new("/nonexistent/train.npz"), None)
            .err()
            .unwrap();
        assert_eq!(err.to_string(), "/nonexistent/train.npz: not found");
    }

    #[test]
    fn unrecognised_files_say_what_would_work() {
        let dir = TempDir::new("unrecognised");
        let cases: [(&str, &[u8], &str); 4] = [
            ("notes.txt", b"hello world", "expected an IDX images file"),
            ("one.npy", b"\x93NUMPY\x01\x00", "numpy.savez"),
            ("cat.png", b"\x89PNG\r\n\x1a\n", "one sub-folder per class"),
            ("empty.bin", b"", "expected an IDX images file"),
        ];
        for (name, bytes, hint) in cases {
            let path = dir.write(name, bytes);
            let msg = Dataset::load(&path, None).err().unwrap().to_string();
            assert!(msg.starts_with(&path.display().to_string()), "{msg}");
            assert!(msg.contains(hint), "{msg}");
        }
    }

    #[test]
    fn empty_folder_says_what_would_work() {
        let dir = TempDir::new("emptydir");
        let msg = Dataset::load(dir.path(), None).err().unwrap().to_string();
        assert!(msg.starts_with(&dir.path().display().to_string()), "{msg}");
        assert!(msg.contains("train-images-idx3-ubyte"), "{msg}");
        assert!(msg.contains("sub-folder"), "{msg}");
    }
}
