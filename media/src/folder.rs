//! A folder of frames: every PNG, JPEG and WebP file in it, in natural order of their names
//! (`f2` before `f10`), all of one size.

use std::cmp::Ordering;
use std::path::{Path, PathBuf};

use crate::read::{owned, Collector, Limits};
use crate::{Clip, MediaError};

const EXTENSIONS: [&str; 4] = ["png", "jpg", "jpeg", "webp"];

/// Compares names with runs of digits as numbers.
fn natural(a: &str, b: &str) -> Ordering {
    let (mut a, mut b) = (a, b);
    loop {
        match (a.chars().next(), b.chars().next()) {
            (None, None) => return Ordering::Equal,
            (None, _) => return Ordering::Less,
            (_, None) => return Ordering::Greater,
            (Some(x), Some(y)) if x.is_ascii_digit() && y.is_ascii_digit() => {
                let da = a.len() - a.trim_start_matches(|c: char| c.is_ascii_digit()).len();
                let db = b.len() - b.trim_start_matches(|c: char| c.is_ascii_digit()).len();
                let (na, nb) = (
                    a[..da].trim_start_matches('0'),
                    b[..db].trim_start_matches('0'),
                );
                let o = na.len().cmp(&nb.len()).then_with(|| na.cmp(nb));
                if o != Ordering::Equal {
                    return o;
                }
                (a, b) = (&a[da..], &b[db..]);
            }
            (Some(x), Some(y)) => {
                if x != y {
                    return x.cmp(&y);
                }
                (a, b) = (&a[x.len_utf8()..], &b[y.len_utf8()..]);
            }
        }
    }
}

fn frame_files(dir: &Path) -> Result<Vec<PathBuf>, MediaError> {
    let io = |source| MediaError::Io {
        path: owned(dir),
        source,
    };
    let mut files = Vec::new();
    for entry in std::fs::read_dir(dir).map_err(io)? {
        let path = entry.map_err(io)?.path();
        let is_frame = path
            .extension()
            .and_then(|e| e.to_str())
            .is_some_and(|e| EXTENSIONS.contains(&e.to_ascii_lowercase().as_str()));
        let hidden = path
            .file_name()
            .and_then(|n| n.to_str())
            .is_none_or(|n| n.starts_with('.'));
        if is_frame && !hidden && path.is_file() {
            files.push(path);
        }
    }
    files.sort_by(|a, b| natural(&a.to_string_lossy(), &b.to_string_lossy()));
    Ok(files)
}

pub(crate) fn read(dir: &Path, limits: Limits) -> Result<Clip, MediaError> {
    let files = frame_files(dir)?;
    if files.is_empty() {
        return Err(MediaError::Decode {
            path: owned(dir),
            message: format!("the folder holds no frames ({})", EXTENSIONS.join(", ")),
        });
    }
    let mut c = Collector::new(dir, limits);
    for file in &files {
        let fail = |e: &dyn std::fmt::Display| MediaError::Decode {
            path: file.clone(),
            message: e.to_string(),
        };
        let reader = image::ImageReader::open(file)
            .and_then(|r| r.with_guessed_format())
            .map_err(|e| fail(&e))?;
        let (w, h) = image::ImageReader::open(file)
            .and_then(|r| r.with_guessed_format())
            .map_err(|e| fail(&e))?
            .into_dimensions()
            .map_err(|e| fail(&e))?;
        c.check_size(w, h)?;
        let mut reader = reader;
        let mut l = image::Limits::default();
        l.max_alloc = Some(limits.max_bytes);
        reader.limits(l);
        let img = reader.decode().map_err(|e| fail(&e))?;
        let name = file.display().to_string();
        c.push(&img.to_rgba8(), 0, &|| name.clone())?;
    }
    Ok(c.clip)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn numbers_sort_as_numbers() {
        let mut v = vec!["f10.png", "f2.png", "f1.png", "f02b.png", "e.png"];
        v.sort_by(|a, b| natural(a, b));
        assert_eq!(v, ["e.png", "f1.png", "f2.png", "f02b.png", "f10.png"]);
    }
}
