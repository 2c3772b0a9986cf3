//! Oakestra's unikernel images: a `.tar.gz` holding `kernel`, optionally `initramfs.cpio`
//! and a `files/` folder. Extracted once per content digest under the cache directory
//! (`<digest>/`, renamed into place when complete), shared by every VM that runs it.

use super::super::fetch::Fetcher;
use super::super::{Result, RuntimeError};
use super::command::Image;
use sha2::{Digest, Sha256};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};

pub struct Images {
    dir: PathBuf,
    fetch: Fetcher,
    seq: AtomicU64,
}

impl Images {
    pub fn new(dir: PathBuf, fetch: Fetcher) -> Images {
        Images {
            dir,
            fetch,
            seq: AtomicU64::new(0),
        }
    }

    /// The extracted image of the archive at `code` (a path or an HTTP(S) URL).
    pub async fn get(&self, code: &str) -> Result<Image> {
        let bytes = self.fetch.bytes(code, "kernel archive").await?;
        let digest = hex::encode(Sha256::digest(&bytes));
        let done = self.dir.join(&digest);
        if !done.join("kernel").is_file() {
            let tmp = self.dir.join(format!(
                ".tmp-{digest}-{}-{}",
                std::process::id(),
                self.seq.fetch_add(1, Ordering::Relaxed)
            ));
            let (t, d) = (tmp.clone(), done.clone());
            let r = tokio::task::spawn_blocking(move || extract(&bytes, &t, &d))
                .await
                .map_err(RuntimeError::backend)?;
            let _ = std::fs::remove_dir_all(&tmp);
            r?;
        }
        Ok(image_in(&done))
    }

    /// Removes extractions a crash interrupted.
    pub fn clean_partial(&self) {
        if let Ok(entries) = std::fs::read_dir(&self.dir) {
            for e in entries.flatten() {
                if e.file_name().to_string_lossy().starts_with(".tmp-") {
                    let _ = std::fs::remove_dir_all(e.path());
                }
            }
        }
    }
}

/// What an extracted image directory holds.
fn image_in(dir: &Path) -> Image {
    let initrd = dir.join("initramfs.cpio");
    let files = dir.join("files");
    Image {
        kernel: dir.join("kernel"),
        initrd: initrd.is_file().then_some(initrd),
        files: files.is_dir().then_some(files),
    }
}

/// Unpacks `bytes` into `tmp`, checks it, and renames it to `done` (another extraction of the
/// same digest that finished first wins).
fn extract(bytes: &[u8], tmp: &Path, done: &Path) -> Result<()> {
    std::fs::create_dir_all(tmp)?;
    let mut archive = tar::Archive::new(flate2::read::GzDecoder::new(bytes));
    archive.set_preserve_permissions(false);
    archive
        .unpack(tmp)
        .map_err(|e| RuntimeError::bad("code", format!("not a readable .tar.gz: {e}")))?;
    if !tmp.join("kernel").is_file() {
        return Err(RuntimeError::bad(
            "code",
            "the archive holds no `kernel` file",
        ));
    }
    match std::fs::rename(tmp, done) {
        Ok(()) => Ok(()),
        Err(_) if done.join("kernel").is_file() => Ok(()),
        Err(e) => Err(e.into()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn tarball(entries: &[(&str, &[u8])]) -> Vec<u8> {
        let mut b = tar::Builder::new(flate2::write::GzEncoder::new(
            Vec::new(),
            flate2::Compression::fast(),
        ));
        for (path, data) in entries {
            let mut h = tar::Header::new_gnu();
            h.set_size(data.len() as u64);
            h.set_mode(0o644);
            h.set_cksum();
            b.append_data(&mut h, path, *data).unwrap();
        }
        b.into_inner().unwrap().finish().unwrap()
    }

    #[tokio::test]
    async fn archives_are_extracted_once_per_digest_and_checked() {
        let dir = tempfile::tempdir().unwrap();
        let images = Images::new(dir.path().join("cache"), Fetcher::new().unwrap());
        let full = dir.path().join("full.tar.gz");
        std::fs::write(
            &full,
            tarball(&[
                ("kernel", b"k"),
                ("initramfs.cpio", b"i"),
                ("files/a.txt", b"a"),
            ]),
        )
        .unwrap();
        let a = images.get(&full.display().to_string()).await.unwrap();
        assert!(a.initrd.is_some() && a.files.as_ref().unwrap().join("a.txt").is_file());
        let b = images.get(&full.display().to_string()).await.unwrap();
        assert_eq!(a, b);
        let cached: Vec<_> = std::fs::read_dir(dir.path().join("cache"))
            .unwrap()
            .collect();
        assert_eq!(cached.len(), 1, "one directory per digest, no temp left");

        let bare = dir.path().join("bare.tar.gz");
        std::fs::write(&bare, tarball(&[("kernel", b"k2")])).unwrap();
        let c = images.get(&bare.display().to_string()).await.unwrap();
        assert!(c.initrd.is_none() && c.files.is_none());

        let none = dir.path().join("none.tar.gz");
        std::fs::write(&none, tarball(&[("vmlinuz", b"k")])).unwrap();
        let e = images.get(&none.display().to_string()).await.unwrap_err();
        assert_eq!(e.to_string(), "code: the archive holds no `kernel` file");
        let junk = dir.path().join("junk.tar.gz");
        std::fs::write(&junk, b"not gzip at all").unwrap();
        let e = images.get(&junk.display().to_string()).await.unwrap_err();
        assert!(
            e.to_string().starts_with("code: not a readable .tar.gz"),
            "{e}"
        );
        let e = images.get("/nonexistent/k.tar.gz").await.unwrap_err();
        assert_eq!(
            e.to_string(),
            "code: no kernel archive at /nonexistent/k.tar.gz"
        );
        let left: Vec<_> = std::fs::read_dir(dir.path().join("cache"))
            .unwrap()
            .collect();
        assert_eq!(left.len(), 2, "failed extractions leave nothing");
    }
}
