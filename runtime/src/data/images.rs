//! A folder of PNG/JPEG images with one sub-folder per class, as torchvision's
//! `ImageFolder` reads it: class index = position of the sub-folder name in sorted order,
//! images found at any depth below it.
//!
//! Images are decoded once, at load, and kept as 8-bit HWC. The set is gray when every image
//! is, else RGB (gray images replicated), alpha dropped; all images must share one size so
//! that samples have one shape (the model-side resize then applies to every one alike).

use std::path::{Path, PathBuf};

use super::{DataError, Dataset, Form, Layout, Samples};

const EXTENSIONS: [&str; 3] = ["png", "jpg", "jpeg"];

pub(crate) fn is_image_name(path: &Path) -> bool {
    path.extension()
        .and_then(|e| e.to_str())
        .is_some_and(|e| EXTENSIONS.contains(&e.to_ascii_lowercase().as_str()))
}

/// Dot-files are other tools' bookkeeping (`.DS_Store`, `.ipynb_checkpoints`, `.git`).
fn is_hidden(path: &Path) -> bool {
    path.file_name()
        .is_some_and(|n| n.to_string_lossy().starts_with('.'))
}

fn sorted_entries(dir: &Path) -> Result<Vec<PathBuf>, DataError> {
    let mut entries = Vec::new();
    for entry in std::fs::read_dir(dir).map_err(|e| DataError::io(dir, e))? {
        let path = entry.map_err(|e| DataError::io(dir, e))?.path();
        if !is_hidden(&path) {
            entries.push(path);
        }
    }
    // Byte order of the names, which is Python's `sorted` order for UTF-8 names.
    entries.sort();
    Ok(entries)
}

/// Every image below `dir`, in sorted path order. Any other visible file is an error rather
/// than silently skipped: a `.bmp` or `.webp` left out would quietly shrink a class.
fn collect_images(dir: &Path, out: &mut Vec<PathBuf>) -> Result<(), DataError> {
    for path in sorted_entries(dir)? {
        if path.is_dir() {
            collect_images(&path, out)?;
        } else if is_image_name(&path) {
            out.push(path);
        } else {
            return Err(DataError::invalid(
                &path,
                "not a PNG or JPEG image (only .png, .jpg and .jpeg are read from class \
                 folders): convert it or move it out",
            ));
        }
    }
    Ok(())
}

struct Decoded {
    path: PathBuf,
    rgb: bool,
    width: u32,
    height: u32,
    pixels: Vec<u8>,
}

fn decode(path: &Path) -> Result<Decoded, DataError> {
    let img = image::ImageReader::open(path)
        .map_err(|e| DataError::io(path, e))?
        .with_guessed_format()
        .map_err(|e| DataError::io(path, e))?
        .decode()
        .map_err(|e| DataError::invalid(path, format!("cannot decode the image: {e}")))?;
    let rgb = img.color().has_color();
    let pixels = if rgb {
        img.to_rgb8().into_raw()
    } else {
        img.to_luma8().into_raw()
    };
    Ok(Decoded {
        path: path.to_path_buf(),
        rgb,
        width: img.width(),
        height: img.height(),
        pixels,
    })
}

pub(crate) fn load(root: &Path) -> Result<Dataset, DataError> {
    let class_dirs: Vec<PathBuf> = sorted_entries(root)?
        .into_iter()
        .filter(|p| p.is_dir())
        .collect();
    if class_dirs.is_empty() {
        return Err(DataError::invalid(
            root,
            "neither an IDX folder (train-images-idx3-ubyte[.gz] with \
             train-labels-idx1-ubyte[.gz]) nor an image folder (one sub-folder of PNG/JPEG \
             images per class)",
        ));
    }
    let mut decoded = Vec::new();
    let mut labels = Vec::new();
    let mut names = Vec::new();
    for (class, dir) in class_dirs.iter().enumerate() {
        let mut files = Vec::new();
        collect_images(dir, &mut files)?;
        if files.is_empty() {
            return Err(DataError::invalid(
                dir,
                "class folder holds no .png/.jpg/.jpeg image: remove it or add images (class \
                 indices follow the sorted folder names)",
            ));
        }
        for file in &files {
            let img = decode(file)?;
            if let Some(first) = decoded.first() {
                let first: &Decoded = first;
                if (img.width, img.height) != (first.width, first.height) {
                    return Err(DataError::invalid(
                        file,
                        format!(
                            "is {}×{} but {} is {}×{}: images of one folder must share a size \
                             (resize them beforehand; the model input is then resized alike)",
                            img.width,
                            img.height,
                            first.path.display(),
                            first.width,
                            first.height
                        ),
                    ));
                }
            }
            decoded.push(img);
            labels.push(class as u32);
        }
        names.push(dir.file_name().unwrap().to_string_lossy().into_owned());
    }

    let (width, height) = (decoded[0].width as usize, decoded[0].height as usize);
    let channels = if decoded.iter().any(|d| d.rgb) { 3 } else { 1 };
    let mut pixels = Vec::with_capacity(decoded.len() * height * width * channels);
    for img in decoded {
        if img.rgb || channels == 1 {
            pixels.extend_from_slice(&img.pixels);
        } else {
            pixels.extend(img.pixels.iter().flat_map(|&v| [v, v, v]));
        }
    }
    Dataset::new(
        root,
        Samples::U8(pixels),
        vec![height, width, channels],
        Form::Image {
            channels,
            height,
            width,
            layout: Layout::Nhwc,
        },
        labels,
        names,
        None,
    )
}

#[cfg(test)]
mod tests {
    use super::super::Preprocess;
    use super::super::testutil::TempDir;
    use super::*;
    use image::{GrayImage, Luma, Rgb, RgbImage, Rgba, RgbaImage};

    fn raw(shape: &[usize]) -> Preprocess {
        Preprocess {
            shape: shape.to_vec(),
            scale: Some(1.0),
            mean: vec![0.0],
            std: vec![1.0],
        }
    }

    #[test]
    fn classes_in_sorted_folder_order() {
        let dir = TempDir::new("imgfolder");
        let root = dir.path();
        for sub in ["dog", "cat", "cat/more", ".cache"] {
            std::fs::create_dir_all(root.join(sub)).unwrap();
        }
        // 2×1 images; pixel values encode which file they came from.
        RgbImage::from_fn(2, 1, |x, _| Rgb([10 + x as u8, 20, 30]))
            .save(root.join("dog/b.png"))
            .unwrap();
        RgbaImage::from_fn(2, 1, |x, _| Rgba([40 + x as u8, 50, 60, 7]))
            .save(root.join("dog/a.png"))
            .unwrap();
        GrayImage::from_fn(2, 1, |x, _| Luma([70 + x as u8]))
            .save(root.join("cat/z.png"))
            .unwrap();
        GrayImage::from_fn(2, 1, |x, _| Luma([90 + x as u8]))
            .save(root.join("cat/more/y.png"))
            .unwrap();
        std::fs::write(root.join("README.txt"), "not a class").unwrap();
        std::fs::write(root.join("dog/.DS_Store"), "junk").unwrap();

        let ds = Dataset::load(root, None).unwrap();
        assert_eq!(ds.class_names(), ["cat", "dog"]);
        assert_eq!(ds.classes(), 2);
        assert_eq!(ds.sample_shape(), &[1, 2, 3]);
        assert!(ds.is_u8());
        // Sorted paths: cat/more/y.png, cat/z.png, dog/a.png, dog/b.png.
        assert_eq!(ds.labels(), &[0, 0, 1, 1]);
        let mut out = vec![0.0; 6];
        let expect: [[f32; 6]; 4] = [
            [90., 91., 90., 91., 90., 91.],
            [70., 71., 70., 71., 70., 71.],
            [40., 41., 50., 50., 60., 60.],
            [10., 11., 20., 20., 30., 30.],
        ];
        for (i, want) in expect.iter().enumerate() {
            ds.write_sample(i, &raw(&[3, 1, 2]), &mut out);
            assert_eq!(&out, want, "sample {i}");
        }
    }

    #[test]
    fn gray_folder_and_jpeg() {
        let dir = TempDir::new("imgjpeg");
        let root = dir.path();
        std::fs::create_dir_all(root.join("only")).unwrap();
        // A flat gray JPEG decodes to its value exactly (no detail to lose).
        GrayImage::from_pixel(8, 8, Luma([128]))
            .save(root.join("only/flat.JPG"))
            .unwrap();
        let ds = Dataset::load(root, None).unwrap();
        assert_eq!(ds.sample_shape(), &[8, 8, 1]);
        let prep = Preprocess::for_input(&[3, 4, 4], &ds).unwrap();
        let mut out = vec![0.0; 48];
        ds.write_sample(0, &prep, &mut out);
        for c in 0..3 {
            let want = (128.0 / 255.0 - prep.mean[c]) / prep.std[c];
            assert!(
                out[c * 16..(c + 1) * 16]
                    .iter()
                    .all(|v| (v - want).abs() < 1e-5)
            );
        }
    }

    #[test]
    fn error_paths_name_the_file() {
        let dir = TempDir::new("imgerrors");
        let root = dir.path();
        let msg = |p: &Path| Dataset::load(p, None).err().unwrap().to_string();

        std::fs::create_dir_all(root.join("a/x")).unwrap();
        std::fs::create_dir_all(root.join("b")).unwrap();
        GrayImage::new(2, 2).save(root.join("a/x/1.png")).unwrap();
        let m = msg(root);
        assert!(m.starts_with(&root.join("b").display().to_string()), "{m}");
        assert!(m.contains("holds no .png"), "{m}");

        GrayImage::new(3, 2).save(root.join("b/2.png")).unwrap();
        let m = msg(root);
        assert!(
            m.starts_with(&root.join("b/2.png").display().to_string()),
            "{m}"
        );
        assert!(m.contains("is 3×2 but"), "{m}");
        assert!(m.contains("1.png is 2×2"), "{m}");

        std::fs::write(root.join("b/2.png"), b"\x89PNG\r\n\x1a\ncut").unwrap();
        let m = msg(root);
        assert!(
            m.starts_with(&root.join("b/2.png").display().to_string()),
            "{m}"
        );
        assert!(m.contains("cannot decode"), "{m}");

        std::fs::remove_file(root.join("b/2.png")).unwrap();
        std::fs::write(root.join("b/3.bmp"), b"BM").unwrap();
        let m = msg(root);
        assert!(
            m.starts_with(&root.join("b/3.bmp").display().to_string()),
            "{m}"
        );
        assert!(m.contains("not a PNG or JPEG"), "{m}");
    }
}
