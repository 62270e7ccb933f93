//! IDX files, the MNIST family's format: a magic `00 00 type ndim`, `ndim` big-endian `u32`
//! dimensions, then the values. Images are `u8` N×H×W (magic 0x00000803), labels `u8` N
//! (0x00000801), each in its own file, usually gzipped.

use std::io::Read;
use std::path::{Path, PathBuf};

use flate2::read::GzDecoder;

use super::{DataError, Dataset, Form, Layout, Samples};

pub(crate) const GZIP_MAGIC: [u8; 2] = [0x1f, 0x8b];
const IMAGES_MAGIC: u32 = 0x0000_0803;
const LABELS_MAGIC: u32 = 0x0000_0801;
const TRAIN_IMAGES: &str = "train-images-idx3-ubyte";

/// The training images file of an IDX folder, gzipped or not.
pub(crate) fn find_in_dir(dir: &Path) -> Option<PathBuf> {
    [TRAIN_IMAGES.to_string(), format!("{TRAIN_IMAGES}.gz")]
        .iter()
        .map(|name| dir.join(name))
        .find(|p| p.is_file())
}

/// Loads an images file and the labels file beside it.
pub(crate) fn load(images_path: &Path) -> Result<Dataset, DataError> {
    let mut pixels = read_maybe_gz(images_path)?;
    let (dims, offset) = parse(images_path, &pixels, IMAGES_MAGIC)?;
    // In place: a full MNIST is 47 MB, not worth holding twice.
    pixels.drain(..offset);
    let labels_path = labels_path_for(images_path)?;
    let bytes = read_maybe_gz(&labels_path)?;
    let (label_dims, offset) = parse(&labels_path, &bytes, LABELS_MAGIC)?;
    if label_dims[0] != dims[0] {
        return Err(DataError::invalid(
            images_path,
            format!(
                "holds {} images but its labels file {} holds {} labels",
                dims[0],
                labels_path.display(),
                label_dims[0]
            ),
        ));
    }
    let (height, width) = (dims[1], dims[2]);
    Dataset::new(
        images_path,
        Samples::U8(pixels),
        vec![height, width],
        Form::Image {
            channels: 1,
            height,
            width,
            layout: Layout::Nchw,
        },
        bytes[offset..].iter().map(|&l| u32::from(l)).collect(),
        Vec::new(),
        None,
    )
}

/// Gunzips when the file starts with the gzip magic; the name is no guide, since browsers
/// often save decompressed bytes under the `.gz` name. Inflates no more than the IDX header
/// announces (and one byte, so that [`parse`] sees any excess): a small file that inflates to
/// gigabytes is refused without holding them.
fn read_maybe_gz(path: &Path) -> Result<Vec<u8>, DataError> {
    let raw = std::fs::read(path).map_err(|e| DataError::io(path, e))?;
    if !raw.starts_with(&GZIP_MAGIC) {
        return Ok(raw);
    }
    let damaged = |e: std::io::Error| {
        DataError::invalid(path, format!("truncated or damaged gzip data ({e})"))
    };
    let mut gz = GzDecoder::new(raw.as_slice());
    // The magic's last byte is the number of dimensions, each a big-endian u32.
    let mut out = Vec::new();
    (&mut gz).take(4).read_to_end(&mut out).map_err(damaged)?;
    let ndim = out.get(3).map_or(0, |&n| n as u64);
    (&mut gz)
        .take(4 * ndim)
        .read_to_end(&mut out)
        .map_err(damaged)?;
    let announced = out
        .get(4..)
        .unwrap_or_default()
        .chunks_exact(4)
        .map(|b| u64::from(u32::from_be_bytes(b.try_into().unwrap())))
        .try_fold(1u64, |n, d| n.checked_mul(d))
        .unwrap_or(u64::MAX)
        .min(MAX_INFLATED);
    gz.take(announced + 1)
        .read_to_end(&mut out)
        .map_err(damaged)?;
    Ok(out)
}

/// The most bytes an IDX payload may inflate to (4 GiB: 5 million 28×28 images).
const MAX_INFLATED: u64 = 1 << 32;

/// Checks the header against `magic` and the payload against the header's dimensions;
/// returns the dimensions and where the payload starts.
fn parse(path: &Path, bytes: &[u8], magic: u32) -> Result<(Vec<usize>, usize), DataError> {
    let what = if magic == IMAGES_MAGIC {
        "IDX images file"
    } else {
        "IDX labels file"
    };
    let found = bytes
        .get(..4)
        .map(|b| u32::from_be_bytes(b.try_into().unwrap()));
    if found != Some(magic) {
        let hint = match found {
            Some(LABELS_MAGIC) => {
                ": it is a labels file; pass the images file (*-images-idx3-ubyte)"
            }
            Some(m) if m >> 16 == 0 && (m >> 8) & 0xff != 0x08 => {
                ": only unsigned-byte IDX data (type 0x08) is read"
            }
            _ => "",
        };
        let found = found.map_or("none, the file is shorter than 4 bytes".to_string(), |m| {
            format!("0x{m:08x}")
        });
        return Err(DataError::invalid(
            path,
            format!("not an {what}: magic {found}, expected 0x{magic:08x}{hint}"),
        ));
    }
    let ndim = (magic & 0xff) as usize;
    let header_len = 4 + 4 * ndim;
    let header = bytes.get(4..header_len).ok_or_else(|| {
        DataError::invalid(
            path,
            format!("truncated: the {what} header needs {header_len} bytes"),
        )
    })?;
    let dims: Vec<usize> = header
        .chunks_exact(4)
        .map(|b| u32::from_be_bytes(b.try_into().unwrap()) as usize)
        .collect();
    // A damaged header can announce more than usize holds; that is "truncated" too.
    let expected = dims
        .iter()
        .try_fold(1usize, |acc, &d| acc.checked_mul(d))
        .unwrap_or(usize::MAX);
    let payload = &bytes[header_len..];
    let shape: Vec<String> = dims.iter().map(|d| d.to_string()).collect();
    if payload.len() < expected {
        return Err(DataError::invalid(
            path,
            format!(
                "truncated: the header announces {} = {expected} bytes of data, the file has {}",
                shape.join("×"),
                payload.len()
            ),
        ));
    }
    if payload.len() > expected {
        return Err(DataError::invalid(
            path,
            format!(
                "{} bytes after the {} = {expected} announced by the header: damaged or not IDX",
                payload.len() - expected,
                shape.join("×")
            ),
        ));
    }
    Ok((dims, header_len))
}

/// `…images-idx3…` → `…labels-idx1…` (also the `images.idx3` spelling), gzipped or not.
fn labels_path_for(images: &Path) -> Result<PathBuf, DataError> {
    let name = images
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_default();
    let Some(labels_name) = [
        ("images-idx3", "labels-idx1"),
        ("images.idx3", "labels.idx1"),
    ]
    .iter()
    .find(|(from, _)| name.contains(from))
    .map(|(from, to)| name.replacen(from, to, 1)) else {
        return Err(DataError::invalid(
            images,
            "cannot tell where its labels are: name it *-images-idx3-ubyte[.gz] with \
             *-labels-idx1-ubyte[.gz] beside it",
        ));
    };
    let other = match labels_name.strip_suffix(".gz") {
        Some(plain) => plain.to_string(),
        None => format!("{labels_name}.gz"),
    };
    let dir = images.parent().unwrap_or(Path::new(""));
    [&labels_name, &other]
        .iter()
        .map(|n| dir.join(n))
        .find(|p| p.is_file())
        .ok_or_else(|| {
            DataError::invalid(
                images,
                format!("its labels file {labels_name} (or {other}) is not beside it"),
            )
        })
}

#[cfg(test)]
mod tests {
    use super::super::Preprocess;
    use super::super::testutil::TempDir;
    use super::*;
    use flate2::Compression;
    use flate2::write::GzEncoder;
    use std::io::Write;

    fn bundled() -> PathBuf {
        Path::new(env!("CARGO_MANIFEST_DIR")).join("../models/data/fashion-mnist")
    }

    fn idx(magic: u32, dims: &[u32], data: &[u8]) -> Vec<u8> {
        let mut out = magic.to_be_bytes().to_vec();
        for d in dims {
            out.extend_from_slice(&d.to_be_bytes());
        }
        out.extend_from_slice(data);
        out
    }

    fn gzip(bytes: &[u8]) -> Vec<u8> {
        let mut enc = GzEncoder::new(Vec::new(), Compression::default());
        enc.write_all(bytes).unwrap();
        enc.finish().unwrap()
    }

    fn load_err(path: &Path) -> String {
        let msg = Dataset::load(path, None).err().unwrap().to_string();
        assert!(
            msg.contains(&path.file_name().unwrap().to_string_lossy().to_string()),
            "{msg}"
        );
        msg
    }

    #[test]
    fn bundled_fashion_mnist_folder() {
        let ds = Dataset::load(&bundled(), None).unwrap();
        assert_eq!(ds.len(), 2000);
        assert_eq!(ds.sample_shape(), &[28, 28]);
        assert_eq!(ds.classes(), 10);
        assert!(ds.is_u8());
        let mut counts = [0; 10];
        for &l in ds.labels() {
            counts[l as usize] += 1;
        }
        assert_eq!(counts, [200; 10]);
        // Expected values read with Python, independently of this code:
        //   b = gzip.open(f).read(); n,h,w = np.frombuffer(b[4:16], '>u4')
        //   x = np.frombuffer(b[16:], np.uint8).reshape(n, h, w)
        // giving labels y[:10], row x[0, 14], x[0].sum(), x[1999].sum(), x[1999, 10, 10:16].
        let first: Vec<u32> = (0..10).map(|i| ds.label(i)).collect();
        assert_eq!(first, [6, 9, 1, 9, 8, 1, 7, 0, 4, 4]);
        let raw = Preprocess {
            shape: vec![1, 28, 28],
            scale: Some(1.0),
            mean: vec![0.0],
            std: vec![1.0],
        };
        ds.check(&raw).unwrap();
        let mut img = vec![0.0; 784];
        ds.write_sample(0, &raw, &mut img);
        let row: Vec<f32> = img[14 * 28..15 * 28].to_vec();
        let expected = [
            0, 0, 0, 0, 103, 253, 228, 254, 236, 221, 223, 224, 223, 227, 223, 225, 222, 223, 222,
            225, 254, 227, 253, 111, 0, 0, 0, 0,
        ];
        assert_eq!(row, expected.map(|v| v as f32));
        assert_eq!(img.iter().sum::<f32>(), 104_878.0);
        ds.write_sample(1999, &raw, &mut img);
        assert_eq!(img.iter().sum::<f32>(), 99_289.0);
        assert_eq!(
            &img[10 * 28 + 10..10 * 28 + 16],
            &[223., 218., 229., 224., 219., 229.]
        );
    }

    #[test]
    fn bundled_test_split_by_images_file() {
        let ds = Dataset::load(&bundled().join("t10k-images-idx3-ubyte.gz"), None).unwrap();
        assert_eq!(ds.len(), 500);
        assert_eq!(ds.classes(), 10);
        // From Python as above: y[:10] and x[499, 20, 5:10] of the t10k files.
        assert_eq!(&ds.labels()[..10], &[8, 0, 4, 0, 2, 4, 3, 9, 4, 2]);
        let prep = Preprocess::for_input(&[1, 28, 28], &ds).unwrap();
        let mut img = vec![0.0; 784];
        ds.write_sample(499, &prep, &mut img);
        let want = [4.0f32, 0.0, 97.0, 170.0, 165.0].map(|v| v / 255.0);
        for (got, want) in img[20 * 28 + 5..20 * 28 + 10].iter().zip(want) {
            assert!((got - want).abs() < 1e-7, "{got} vs {want}");
        }
    }

    #[test]
    fn uncompressed_pair_and_gz_detected_by_content() {
        let dir = TempDir::new("idx-plain");
        let pixels: Vec<u8> = (0..12).collect();
        // Plain bytes under a .gz name: detection must go by the magic, not the name.
        dir.write(
            "a-images-idx3-ubyte.gz",
            &idx(IMAGES_MAGIC, &[3, 2, 2], &pixels),
        );
        dir.write(
            "a-labels-idx1-ubyte",
            &gzip(&idx(LABELS_MAGIC, &[3], &[2, 0, 1])),
        );
        let ds = Dataset::load(&dir.path().join("a-images-idx3-ubyte.gz"), None).unwrap();
        assert_eq!(ds.labels(), &[2, 0, 1]);
        assert_eq!(ds.classes(), 3);
        assert_eq!(ds.sample_shape(), &[2, 2]);
    }

    /// A small gzip that inflates far past what its header announces is refused after
    /// reading the announced bytes and one more, not after inflating it all.
    #[test]
    fn a_gzip_bomb_stops_at_the_announced_size() {
        let dir = TempDir::new("idx-bomb");
        let mut bomb = idx(IMAGES_MAGIC, &[3, 2, 2], &[0; 12]);
        bomb.extend(std::iter::repeat_n(0u8, 64 << 20));
        let packed = gzip(&bomb);
        assert!(packed.len() < 1 << 20, "a bomb: {} bytes", packed.len());
        let p = dir.write("bomb-images-idx3-ubyte.gz", &packed);
        let read = read_maybe_gz(&p).unwrap();
        assert_eq!(read.len(), 16 + 12 + 1);
        assert!(load_err(&p).contains("bytes after"), "{}", load_err(&p));
    }

    #[test]
    fn error_paths_name_the_file() {
        let dir = TempDir::new("idx-errors");
        let labels3 = idx(LABELS_MAGIC, &[3], &[0, 1, 2]);
        dir.write("ok-labels-idx1-ubyte", &labels3);

        let p = dir.write(
            "magic-images-idx3-ubyte",
            &idx(0x0000_0804, &[1, 1, 1, 1], &[0]),
        );
        assert!(load_err(&p).contains("magic 0x00000804, expected 0x00000803"));

        let p = dir.write(
            "float-images-idx3-ubyte",
            &idx(0x0000_0d03, &[1, 1, 1], &[0; 4]),
        );
        assert!(load_err(&p).contains("only unsigned-byte"));

        let p = dir.write("lab-labels-idx1-ubyte.gz", &gzip(&labels3));
        assert!(load_err(&p).contains("it is a labels file"));

        let p = dir.write(
            "ok-images-idx3-ubyte",
            &idx(IMAGES_MAGIC, &[3, 2, 2], &[0; 10]),
        );
        let msg = load_err(&p);
        assert!(
            msg.contains("truncated: the header announces 3×2×2 = 12 bytes"),
            "{msg}"
        );

        let p = dir.write("hdr-images-idx3-ubyte", &IMAGES_MAGIC.to_be_bytes()[..]);
        assert!(load_err(&p).contains("header needs 16 bytes"));

        let full = gzip(&idx(IMAGES_MAGIC, &[3, 2, 2], &[7; 12]));
        let p = dir.write("cut-images-idx3-ubyte.gz", &full[..full.len() - 10]);
        assert!(load_err(&p).contains("truncated or damaged gzip"));

        let p = dir.write(
            "long-images-idx3-ubyte",
            &idx(IMAGES_MAGIC, &[3, 2, 2], &[0; 13]),
        );
        assert!(load_err(&p).contains("1 bytes after"));

        dir.write("count-labels-idx1-ubyte", &idx(LABELS_MAGIC, &[2], &[0, 1]));
        let p = dir.write(
            "count-images-idx3-ubyte",
            &idx(IMAGES_MAGIC, &[3, 1, 1], &[0; 3]),
        );
        let msg = load_err(&p);
        assert!(msg.contains("holds 3 images but its labels file"), "{msg}");
        assert!(
            msg.contains("count-labels-idx1-ubyte holds 2 labels"),
            "{msg}"
        );

        let p = dir.write(
            "lonely-images-idx3-ubyte",
            &idx(IMAGES_MAGIC, &[1, 1, 1], &[0]),
        );
        assert!(load_err(&p).contains("labels file lonely-labels-idx1-ubyte"));

        let p = dir.write("pixels.idx", &idx(IMAGES_MAGIC, &[1, 1, 1], &[0]));
        assert!(load_err(&p).contains("cannot tell where its labels are"));

        let p = dir.write(
            "empty-images-idx3-ubyte",
            &idx(IMAGES_MAGIC, &[0, 2, 2], &[]),
        );
        dir.write("empty-labels-idx1-ubyte", &idx(LABELS_MAGIC, &[0], &[]));
        assert!(load_err(&p).contains("holds no samples"));
    }
}
