//! `.npy` arrays (NumPy's format): magic, version, a little-endian header length, a Python
//! dict literal `{'descr': '<f4', 'fortran_order': False, 'shape': (N, 64), }` padded with
//! spaces, then the raw values in C order.
//!
//! Errors are plain strings: the `.npz` reader adds the archive and member names.

use super::Samples;
use std::io::Read;

pub(crate) const MAGIC: &[u8] = b"\x93NUMPY";

/// Values in the element types NumPy writes for images, features and labels.
pub(crate) enum Values {
    U8(Vec<u8>),
    I32(Vec<i32>),
    I64(Vec<i64>),
    F32(Vec<f32>),
    F64(Vec<f64>),
}

pub(crate) struct Array {
    pub shape: Vec<usize>,
    pub values: Values,
}

impl Array {
    /// Samples keep bytes as bytes; every other type becomes `f32`, the model's type.
    pub fn into_samples(self) -> Samples {
        match self.values {
            Values::U8(v) => Samples::U8(v),
            Values::F32(v) => Samples::F32(v),
            Values::F64(v) => Samples::F32(v.into_iter().map(|x| x as f32).collect()),
            Values::I32(v) => Samples::F32(v.into_iter().map(|x| x as f32).collect()),
            Values::I64(v) => Samples::F32(v.into_iter().map(|x| x as f32).collect()),
        }
    }

    /// The values as f32 for a model input fed as floats: integers (token ids, masks) must
    /// be exact there, so of magnitude at most 2²⁴.
    pub fn to_exact_f32(&self) -> Result<Vec<f32>, String> {
        const EXACT: i64 = 1 << 24;
        self.each(
            |i, v| match v.abs() <= EXACT {
                true => Ok(v as f32),
                false => Err(format!(
                    "value {v} at index {i} is beyond 2^24, where float32 rows lose integers"
                )),
            },
            |_, v| Ok(v as f32),
        )
    }

    /// Class indices: any integer type, or floats holding integers (as some pipelines save
    /// them). Each must be a non-negative integer below 2³².
    pub fn to_labels(&self) -> Result<Vec<u32>, String> {
        fn not_class(i: usize, v: impl std::fmt::Display) -> String {
            format!("label {v} at index {i} is not a class index (a non-negative integer)")
        }
        self.each(
            |i, v| u32::try_from(v).map_err(|_| not_class(i, v)),
            |i, v| match v >= 0.0 && v.fract() == 0.0 && v <= f64::from(u32::MAX) {
                true => Ok(v as u32),
                false => Err(not_class(i, v)),
            },
        )
    }

    /// Every value converted by `int` (integer types) or `float` (float types), with its
    /// index; the first error stops.
    fn each<T>(
        &self,
        int: impl Fn(usize, i64) -> Result<T, String>,
        float: impl Fn(usize, f64) -> Result<T, String>,
    ) -> Result<Vec<T>, String> {
        match &self.values {
            Values::U8(v) => v
                .iter()
                .enumerate()
                .map(|(i, &x)| int(i, x.into()))
                .collect(),
            Values::I32(v) => v
                .iter()
                .enumerate()
                .map(|(i, &x)| int(i, x.into()))
                .collect(),
            Values::I64(v) => v.iter().enumerate().map(|(i, &x)| int(i, x)).collect(),
            Values::F32(v) => v
                .iter()
                .enumerate()
                .map(|(i, &x)| float(i, x.into()))
                .collect(),
            Values::F64(v) => v.iter().enumerate().map(|(i, &x)| float(i, x)).collect(),
        }
    }
}

/// Headers NumPy writes are a few hundred bytes; it refuses to read past 10 000 itself.
const MAX_HEADER: usize = 1 << 16;

/// Reads one array from `r`: exactly the bytes its header announces, and nothing may follow
/// (a member inflating to more than its shape needs is refused once it passes that, not
/// after memory runs out).
pub(crate) fn parse(r: &mut impl Read) -> Result<Array, String> {
    let io = |e: std::io::Error| match e.kind() {
        std::io::ErrorKind::UnexpectedEof => "truncated .npy header".to_string(),
        _ => format!("cannot be read: {e}"),
    };
    let mut lead = [0u8; 8];
    r.read_exact(&mut lead[..MAGIC.len()]).map_err(io)?;
    if &lead[..MAGIC.len()] != MAGIC {
        return Err("not a .npy array (no \\x93NUMPY magic)".into());
    }
    r.read_exact(&mut lead[MAGIC.len()..]).map_err(io)?;
    let len_bytes = match lead[6] {
        1 => 2,
        2 | 3 => 4,
        v => {
            return Err(format!(
                ".npy format version {v} is not supported (1 to 3 are)"
            ));
        }
    };
    let mut len = [0u8; 4];
    r.read_exact(&mut len[..len_bytes]).map_err(io)?;
    let len = u32::from_le_bytes(len) as usize;
    if len > MAX_HEADER {
        return Err(format!(
            "the .npy header claims {len} bytes; NumPy writes a few hundred"
        ));
    }
    let mut header = vec![0u8; len];
    r.read_exact(&mut header).map_err(io)?;
    let header = std::str::from_utf8(&header).map_err(|_| "the .npy header is not text")?;

    let descr = quoted(field(header, "descr")?)?;
    let fortran = field(header, "fortran_order")?;
    if fortran.starts_with("True") {
        return Err("the array is in Fortran order: save np.ascontiguousarray(a) instead".into());
    }
    if !fortran.starts_with("False") {
        return Err("unreadable fortran_order in the .npy header".into());
    }
    let shape = tuple(field(header, "shape")?)?;

    let (item, make): (usize, fn(&[u8]) -> Values) = match descr {
        "|u1" | "<u1" | "u1" => (1, |b| Values::U8(b.to_vec())),
        "<i4" => (4, |b| Values::I32(le(b, i32::from_le_bytes))),
        "<i8" => (8, |b| Values::I64(le(b, i64::from_le_bytes))),
        "<f4" => (4, |b| Values::F32(le(b, f32::from_le_bytes))),
        "<f8" => (8, |b| Values::F64(le(b, f64::from_le_bytes))),
        d if d.starts_with('>') => {
            return Err(format!(
                "dtype '{d}' is big-endian: save a.astype(a.dtype.newbyteorder('<'))"
            ));
        }
        d => {
            return Err(format!(
                "dtype '{d}' is not supported: use uint8, int32, int64, float32 or float64"
            ));
        }
    };
    let need = shape
        .iter()
        .try_fold(item, |acc, &d| acc.checked_mul(d))
        .ok_or("the shape in the .npy header is too large")?;
    let mut data = Vec::new();
    data.try_reserve_exact(need).map_err(|_| {
        format!("shape {shape:?} of '{descr}' needs {need} bytes, more than this machine can give")
    })?;
    r.take(need as u64).read_to_end(&mut data).map_err(io)?;
    if data.len() < need {
        return Err(format!(
            "truncated: shape {shape:?} of '{descr}' needs {need} bytes of data, found {}",
            data.len()
        ));
    }
    // One byte more: bytes beyond the shape, or the end (where a zip member checks its CRC).
    if r.read(&mut [0u8]).map_err(io)? > 0 {
        return Err(format!(
            "holds bytes beyond the {need} its shape {shape:?} of '{descr}' needs: not an array NumPy wrote"
        ));
    }
    Ok(Array {
        values: make(&data),
        shape,
    })
}

fn le<T, const N: usize>(bytes: &[u8], from: fn([u8; N]) -> T) -> Vec<T> {
    bytes
        .chunks_exact(N)
        .map(|c| from(c.try_into().unwrap()))
        .collect()
}

/// The text after `'key':` in the header dict.
fn field<'a>(header: &'a str, key: &str) -> Result<&'a str, String> {
    ["'", "\""]
        .iter()
        .find_map(|q| {
            let at = header.find(&format!("{q}{key}{q}"))?;
            let rest = header[at + key.len() + 2..].trim_start();
            Some(rest.strip_prefix(':')?.trim_start())
        })
        .ok_or_else(|| format!("the .npy header has no '{key}'"))
}

fn quoted(text: &str) -> Result<&str, String> {
    let mut chars = text.chars();
    let q = chars.next().filter(|c| *c == '\'' || *c == '"');
    q.and_then(|q| text[1..].find(q).map(|end| &text[1..1 + end]))
        .ok_or_else(|| "unreadable descr in the .npy header".to_string())
}

fn tuple(text: &str) -> Result<Vec<usize>, String> {
    let bad = || format!("unreadable shape in the .npy header: {text}");
    let inner = text.strip_prefix('(').ok_or_else(bad)?;
    let inner = &inner[..inner.find(')').ok_or_else(bad)?];
    inner
        .split(',')
        .map(str::trim)
        .filter(|s| !s.is_empty())
        // NumPy on some platforms writes Python 2 longs: `(3L, 4L)`.
        .map(|s| s.trim_end_matches('L').parse::<usize>().map_err(|_| bad()))
        .collect()
}

#[cfg(test)]
mod tests {
    use super::super::testutil::{f32_bytes, i64_bytes, npy};
    use super::*;

    fn read(bytes: &[u8]) -> Result<Array, String> {
        parse(&mut &bytes[..])
    }

    #[test]
    fn parses_what_numpy_writes() {
        let a = read(&npy("<f4", &[2, 3], &f32_bytes(&[0., 1., 2., 3., 4., 5.5]))).unwrap();
        assert_eq!(a.shape, [2, 3]);
        assert!(matches!(&a.values, Values::F32(v) if v[5] == 5.5));

        let a = read(&npy("<i8", &[3], &i64_bytes(&[4, 0, 9]))).unwrap();
        assert_eq!(a.shape, [3]);
        assert_eq!(a.to_labels().unwrap(), [4, 0, 9]);

        // Exactly what numpy 2.4 wrote for np.save(f, np.array([[1, 2]], np.uint8)), and a
        // version-2.0 header (np.lib.format.write_array(f, a, version=(2, 0))).
        let v1 = b"\x93NUMPY\x01\x00v\x00{'descr': '|u1', 'fortran_order': False, 'shape': (1, 2), }                                                          \x0a\x01\x02";
        let a = read(v1).unwrap();
        assert_eq!(a.shape, [1, 2]);
        assert!(matches!(&a.values, Values::U8(v) if v == &[1, 2]));
        let v2 = b"\x93NUMPY\x02\x00t\x00\x00\x00{'descr': '<i4', 'fortran_order': False, 'shape': (2,), }                                                          \x0a\x07\x00\x00\x00\x01\x00\x00\x00";
        assert_eq!(read(v2).unwrap().to_labels().unwrap(), [7, 1]);

        let scalar = read(&npy("<f8", &[], &2.5f64.to_le_bytes())).unwrap();
        assert!(scalar.shape.is_empty());
    }

    #[test]
    fn labels_from_any_integral_type() {
        let floats = Array {
            shape: vec![3],
            values: Values::F64(vec![1.0, 0.0, 2.0]),
        };
        assert_eq!(floats.to_labels().unwrap(), [1, 0, 2]);
        let bad = Array {
            shape: vec![2],
            values: Values::F32(vec![1.0, 0.5]),
        };
        assert!(
            bad.to_labels()
                .unwrap_err()
                .contains("label 0.5 at index 1")
        );
        let negative = Array {
            shape: vec![1],
            values: Values::I64(vec![-1]),
        };
        assert!(
            negative
                .to_labels()
                .unwrap_err()
                .contains("label -1 at index 0")
        );
        let i32s = Array {
            shape: vec![2],
            values: Values::I32(vec![3, 1]),
        };
        assert_eq!(i32s.to_labels().unwrap(), [3, 1]);
    }

    #[test]
    fn refuses_clearly() {
        let mut fortran = npy("<f4", &[1], &[0; 4]);
        let at = fortran.windows(5).position(|w| w == b"False").unwrap();
        fortran[at..at + 5].copy_from_slice(b"True ");
        let err = read(&fortran).err().unwrap();
        assert!(err.contains("Fortran order"), "{err}");

        let err = read(&npy(">f4", &[1], &[0; 4])).err().unwrap();
        assert!(err.contains("big-endian"), "{err}");
        let err = read(&npy("<c8", &[1], &[0; 8])).err().unwrap();
        assert!(err.contains("'<c8' is not supported"), "{err}");
        let err = read(&npy("<f4", &[2, 2], &[0; 12])).err().unwrap();
        assert!(err.contains("needs 16 bytes of data, found 12"), "{err}");
        let err = read(&npy("<f4", &[2, 2], &[0; 16])[..20]).err().unwrap();
        assert!(err.contains("truncated .npy header"), "{err}");
    }
}
