//! Getting an image into containerd and unpacked, whatever the SLA's `code` says:
//! - an image already in the namespace is used as it is (unpacked if it is not yet);
//! - `docker-archive:/abs/file.tar` and `oci-archive:/abs/file.tar` (skopeo's transport syntax)
//!   are imported from the file (air-gapped sites);
//! - anything else is a registry reference and is pulled (containerd 1.6 has no Transfer
//!   service, so the engine fetches the blobs itself and writes them to the content store).
//!
//! Everything happens under a lease so nothing is garbage-collected half-way; blobs carry
//! containerd's GC labels so the image keeps its content and snapshots once the lease is gone.

use super::client::{CHUNK, Containerd};
use super::oci::{
    Descriptor, ImageConfig, Index, Manifest, OCI_CONFIG, OCI_LAYER, OCI_LAYER_GZIP, OCI_MANIFEST,
    chain_ids, host_arch, is_index, sha256_digest,
};
use super::registry::{Reference, Registry};
use crate::runtime::{Result, RuntimeError};
use bytes::Bytes;
use futures::Stream;
use futures::StreamExt;
use futures::stream::BoxStream;
use sha2::{Digest, Sha256};
use std::collections::HashMap;
use std::io::Read;
use std::path::{Path, PathBuf};

/// An image ready to run: its name, its configuration and the snapshot its layers unpack to.
#[derive(Debug, Clone)]
pub struct Ready {
    pub name: String,
    pub config: ImageConfig,
    /// Parent for the container's snapshot (empty for an image without layers).
    pub top_chain_id: String,
}

/// What the SLA's `code` names.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Source {
    Registry(Reference),
    DockerArchive(PathBuf),
    OciArchive(PathBuf),
}

impl Source {
    pub fn parse(code: &str) -> Result<Source> {
        let archive = |rest: &str| -> Result<PathBuf> {
            let p = PathBuf::from(rest);
            if !p.is_absolute() {
                return Err(RuntimeError::bad(
                    "code",
                    format!("archive path {rest:?} must be absolute"),
                ));
            }
            Ok(p)
        };
        if let Some(rest) = code.strip_prefix("docker-archive:") {
            return Ok(Source::DockerArchive(archive(rest)?));
        }
        if let Some(rest) = code.strip_prefix("oci-archive:") {
            return Ok(Source::OciArchive(archive(rest)?));
        }
        let code = code.strip_prefix("docker://").unwrap_or(code);
        Reference::parse(code)
            .map(Source::Registry)
            .map_err(|m| RuntimeError::bad("code", m))
    }
}

/// Where blobs come from while storing an image.
enum Blobs<'a> {
    Registry(&'a Registry, &'a Reference),
    /// Digest → extracted file.
    Files(&'a HashMap<String, PathBuf>),
}

impl Blobs<'_> {
    async fn open(&self, digest: &str) -> Result<BoxStream<'static, Result<Bytes>>> {
        match self {
            Blobs::Registry(reg, r) => Ok(reg.blob(r, digest).await?.boxed()),
            Blobs::Files(files) => {
                let path = files.get(digest).ok_or_else(|| {
                    RuntimeError::bad("code", format!("the archive lacks blob {digest}"))
                })?;
                Ok(file_stream(path.clone()).await?.boxed())
            }
        }
    }
}

async fn file_stream(path: PathBuf) -> Result<impl Stream<Item = Result<Bytes>> + Send> {
    use tokio::io::AsyncReadExt;
    let file = tokio::fs::File::open(&path).await?;
    Ok(futures::stream::try_unfold(file, |mut f| async move {
        let mut buf = vec![0u8; CHUNK];
        let n = f.read(&mut buf).await?;
        if n == 0 {
            return Ok(None);
        }
        buf.truncate(n);
        Ok(Some((Bytes::from(buf), f)))
    }))
}

pub struct Images<'a> {
    pub ctrd: &'a Containerd,
    pub registry: &'a Registry,
    /// Scratch space for archive imports.
    pub scratch: &'a Path,
    /// Archives imported before, by path.
    pub imported: &'a mut HashMap<PathBuf, Imported>,
}

/// An archive imported before: what its file was then and the image it became. Used again
/// while the file is unchanged and containerd still has the image with that target, so a
/// start does not extract and store the whole archive again (measured 2026-12-03: that was
/// a share of every `oci-archive:` start).
#[derive(Debug, Clone, PartialEq)]
pub struct Imported {
    pub stamp: FileStamp,
    pub name: String,
    pub target: containerd_client::types::Descriptor,
}

/// A file's length and modification time: changed when the file is rewritten.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct FileStamp {
    pub len: u64,
    pub modified: std::time::SystemTime,
}

impl FileStamp {
    pub fn of(path: &Path) -> Option<FileStamp> {
        let m = std::fs::metadata(path).ok()?;
        Some(FileStamp {
            len: m.len(),
            modified: m.modified().ok()?,
        })
    }
}

/// The import of `path` recorded in `imported` if the file still has that stamp.
pub fn reusable<'a>(
    imported: &'a HashMap<PathBuf, Imported>,
    path: &Path,
    stamp: Option<FileStamp>,
) -> Option<&'a Imported> {
    imported
        .get(path)
        .filter(|i| stamp.is_some_and(|s| s == i.stamp))
}

impl Images<'_> {
    /// Makes `code` runnable: present, complete and unpacked. Holds `lease` while working.
    pub async fn ensure(&mut self, code: &str, lease: &str) -> Result<Ready> {
        let (name, target) = match Source::parse(code)? {
            Source::Registry(r) => {
                let name = r.name();
                match self.ctrd.image_get(&name).await? {
                    Some(img) => match img.target {
                        Some(t) => (name, t),
                        None => {
                            return Err(RuntimeError::Backend(format!(
                                "image {name} has no target"
                            )));
                        }
                    },
                    None => {
                        let t = self.pull(&r, lease).await?;
                        (name, t)
                    }
                }
            }
            Source::DockerArchive(p) => self.import_once(&p, false, lease).await?,
            Source::OciArchive(p) => self.import_once(&p, true, lease).await?,
        };
        let (manifest, config) = self.resolve(&target.digest, &target.media_type).await?;
        let chains = chain_ids(&config.rootfs.diff_ids);
        if manifest.layers.len() != chains.len() {
            return Err(RuntimeError::bad(
                "code",
                format!(
                    "image {name}: {} layers but {} diff ids",
                    manifest.layers.len(),
                    chains.len()
                ),
            ));
        }
        self.unpack(&manifest, &config, lease).await?;
        Ok(Ready {
            name,
            config,
            top_chain_id: chains.last().cloned().unwrap_or_default(),
        })
    }

    /// Reads the manifest (through an index, for this platform) and the config from content.
    async fn resolve(&self, digest: &str, media_type: &str) -> Result<(Manifest, ImageConfig)> {
        let mut bytes = self.ctrd.content_read(digest).await?;
        if is_index(media_type) {
            let index: Index = parse_json(&bytes, "image index")?;
            let d = index.pick(host_arch()).ok_or_else(|| no_platform(&index))?;
            bytes = self.ctrd.content_read(&d.digest).await?;
        }
        let manifest: Manifest = parse_json(&bytes, "image manifest")?;
        let config: ImageConfig = parse_json(
            &self.ctrd.content_read(&manifest.config.digest).await?,
            "image config",
        )?;
        Ok((manifest, config))
    }

    /// Unpacks every layer not yet unpacked into committed snapshots named by chain id.
    async fn unpack(&self, manifest: &Manifest, config: &ImageConfig, lease: &str) -> Result<()> {
        let chains = chain_ids(&config.rootfs.diff_ids);
        let mut parent = String::new();
        for (i, (layer, chain)) in manifest.layers.iter().zip(&chains).enumerate() {
            if !self.ctrd.snapshot_exists(chain).await? {
                let key = format!("canopy-extract-{}-{}", std::process::id(), chain);
                let mounts = self.ctrd.snapshot_prepare(lease, &key, &parent).await?;
                let applied = self.ctrd.diff_apply(layer.to_containerd(), mounts).await;
                let applied = match applied {
                    Ok(a) => a,
                    Err(e) => {
                        let _ = self.ctrd.snapshot_remove(&key).await;
                        return Err(e);
                    }
                };
                if applied != config.rootfs.diff_ids[i] {
                    let _ = self.ctrd.snapshot_remove(&key).await;
                    return Err(RuntimeError::bad(
                        "code",
                        format!(
                            "layer {i} unpacks to {applied}, the image config says {}",
                            config.rootfs.diff_ids[i]
                        ),
                    ));
                }
                self.ctrd.snapshot_commit(lease, chain, &key).await?;
            }
            parent = chain.clone();
        }
        Ok(())
    }

    /// Pulls `r` from its registry; returns the descriptor the image record points at.
    async fn pull(
        &self,
        r: &Reference,
        lease: &str,
    ) -> Result<containerd_client::types::Descriptor> {
        let (mut media_type, mut bytes) = self.registry.manifest(r, &r.reference).await?;
        if is_index(&media_type) || (media_type.is_empty() && looks_like_index(&bytes)) {
            let index: Index = parse_json(&bytes, "image index")?;
            let d = index
                .pick(host_arch())
                .ok_or_else(|| no_platform(&index))?
                .clone();
            (media_type, bytes) = self.registry.manifest(r, &d.digest).await?;
            if media_type.is_empty() {
                media_type = d.media_type;
            }
        }
        let manifest: Manifest = parse_json(&bytes, "image manifest")?;
        if media_type.is_empty() {
            media_type = manifest
                .media_type
                .clone()
                .unwrap_or_else(|| OCI_MANIFEST.into());
        }
        let mut config = Vec::new();
        let mut s = self.registry.blob(r, &manifest.config.digest).await?;
        while let Some(c) = s.next().await {
            config.extend_from_slice(&c?);
        }
        if sha256_digest(&config) != manifest.config.digest {
            return Err(RuntimeError::Fetch(
                "the image config does not match its digest".into(),
            ));
        }
        self.store(
            lease,
            &media_type,
            &bytes,
            &manifest,
            &config,
            Blobs::Registry(self.registry, r),
        )
        .await
    }

    /// Writes layers, config and manifest (each only if missing) with GC labels.
    async fn store(
        &self,
        lease: &str,
        media_type: &str,
        manifest_bytes: &[u8],
        manifest: &Manifest,
        config_bytes: &[u8],
        blobs: Blobs<'_>,
    ) -> Result<containerd_client::types::Descriptor> {
        let config: ImageConfig = parse_json(config_bytes, "image config")?;
        if config.rootfs.diff_ids.len() != manifest.layers.len() {
            return Err(RuntimeError::bad(
                "code",
                "the image config's diff ids do not match the manifest's layers",
            ));
        }
        for (layer, diff_id) in manifest.layers.iter().zip(&config.rootfs.diff_ids) {
            if self.ctrd.content_exists(&layer.digest).await? {
                continue;
            }
            let labels = HashMap::from([("containerd.io/uncompressed".into(), diff_id.clone())]);
            let data = blobs.open(&layer.digest).await?;
            self.ctrd
                .content_write(lease, &layer.digest, layer.size, labels, data)
                .await?;
        }
        let chains = chain_ids(&config.rootfs.diff_ids);
        let mut labels = HashMap::new();
        if let Some(top) = chains.last() {
            labels.insert(
                format!(
                    "containerd.io/gc.ref.snapshot.{}",
                    super::client::SNAPSHOTTER
                ),
                top.clone(),
            );
        }
        self.write_small(lease, &manifest.config.digest, config_bytes, labels)
            .await?;
        let mut labels = HashMap::from([(
            "containerd.io/gc.ref.content.config".into(),
            manifest.config.digest.clone(),
        )]);
        for (i, l) in manifest.layers.iter().enumerate() {
            labels.insert(
                format!("containerd.io/gc.ref.content.l.{i}"),
                l.digest.clone(),
            );
        }
        let digest = sha256_digest(manifest_bytes);
        self.write_small(lease, &digest, manifest_bytes, labels)
            .await?;
        Ok(containerd_client::types::Descriptor {
            media_type: media_type.to_owned(),
            digest,
            size: manifest_bytes.len() as i64,
            annotations: HashMap::new(),
        })
    }

    async fn write_small(
        &self,
        lease: &str,
        digest: &str,
        bytes: &[u8],
        labels: HashMap<String, String>,
    ) -> Result<()> {
        if self.ctrd.content_exists(digest).await? {
            return Ok(());
        }
        let data = futures::stream::once(futures::future::ready(Ok(Bytes::copy_from_slice(bytes))));
        self.ctrd
            .content_write(lease, digest, bytes.len() as i64, labels, data)
            .await
    }

    /// Imports a `docker save` or OCI layout tarball; returns the image name and target.
    /// [`Images::import`], unless the same file was imported before and containerd still has
    /// the image it became.
    async fn import_once(
        &mut self,
        path: &Path,
        oci_layout: bool,
        lease: &str,
    ) -> Result<(String, containerd_client::types::Descriptor)> {
        let stamp = FileStamp::of(path);
        if let Some(i) = reusable(self.imported, path, stamp) {
            let present = self.ctrd.image_get(&i.name).await?;
            if present.and_then(|img| img.target).as_ref() == Some(&i.target) {
                return Ok((i.name.clone(), i.target.clone()));
            }
        }
        let (name, target) = self.import(path, oci_layout, lease).await?;
        match stamp {
            Some(stamp) => {
                let i = Imported {
                    stamp,
                    name: name.clone(),
                    target: target.clone(),
                };
                self.imported.insert(path.to_owned(), i);
            }
            None => {
                self.imported.remove(path);
            }
        }
        Ok((name, target))
    }

    async fn import(
        &self,
        path: &Path,
        oci_layout: bool,
        lease: &str,
    ) -> Result<(String, containerd_client::types::Descriptor)> {
        if !path.is_file() {
            return Err(RuntimeError::NotFound(format!(
                "no archive at {}",
                path.display()
            )));
        }
        let stamp = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap_or_default()
            .as_nanos();
        let dir = self
            .scratch
            .join(format!("import-{}-{stamp}", std::process::id()));
        let (p, d) = (path.to_owned(), dir.clone());
        let extracted = tokio::task::spawn_blocking(move || extract(&p, &d))
            .await
            .map_err(RuntimeError::backend)?;
        let result = async {
            let files = extracted?;
            let stem = path
                .file_stem()
                .map(|s| s.to_string_lossy().to_lowercase())
                .unwrap_or_else(|| "image".into());
            let (name, manifest_bytes, media_type) = if oci_layout {
                oci_layout_manifest(&files, &stem)?
            } else {
                docker_save_manifest(&files, &stem)?
            };
            let manifest: Manifest = parse_json(&manifest_bytes, "image manifest")?;
            let config_bytes = read_file(&files.by_digest, &manifest.config.digest)?;
            let target = self
                .store(
                    lease,
                    &media_type,
                    &manifest_bytes,
                    &manifest,
                    &config_bytes,
                    Blobs::Files(&files.by_digest),
                )
                .await?;
            self.ctrd.image_put(lease, &name, target.clone()).await?;
            Ok((name, target))
        }
        .await;
        let _ = tokio::fs::remove_dir_all(&dir).await;
        result
    }
}

fn no_platform(index: &Index) -> RuntimeError {
    let have: Vec<String> = index
        .manifests
        .iter()
        .filter_map(|d| {
            d.platform
                .as_ref()
                .map(|p| format!("{}/{}", p.os, p.architecture))
        })
        .collect();
    RuntimeError::bad(
        "code",
        format!(
            "the image has no linux/{} variant (it has {})",
            host_arch(),
            have.join(", ")
        ),
    )
}

fn looks_like_index(bytes: &[u8]) -> bool {
    serde_json::from_slice::<serde_json::Value>(bytes)
        .ok()
        .is_some_and(|v| v.get("manifests").is_some())
}

fn parse_json<T: serde::de::DeserializeOwned>(bytes: &[u8], what: &str) -> Result<T> {
    serde_json::from_slice(bytes).map_err(|e| RuntimeError::bad("code", format!("bad {what}: {e}")))
}

/// An archive unpacked to scratch files.
struct Extracted {
    /// Path inside the archive → `sha256:…` of its content.
    by_path: HashMap<String, String>,
    /// `sha256:…` → scratch file.
    by_digest: HashMap<String, PathBuf>,
}

impl Extracted {
    /// The scratch file of an archive path.
    fn path_file(&self, path: &str) -> Result<(&str, &PathBuf)> {
        let missing = || RuntimeError::bad("code", format!("the archive lacks {path}"));
        let digest = self.by_path.get(&normalise(path)).ok_or_else(missing)?;
        let file = self.by_digest.get(digest).ok_or_else(missing)?;
        Ok((digest, file))
    }

    fn read_path(&self, path: &str) -> Result<Vec<u8>> {
        Ok(std::fs::read(self.path_file(path)?.1)?)
    }
}

fn read_file(files: &HashMap<String, PathBuf>, key: &str) -> Result<Vec<u8>> {
    let p = files
        .get(key)
        .ok_or_else(|| RuntimeError::bad("code", format!("the archive lacks {key}")))?;
    Ok(std::fs::read(p)?)
}

/// Copies every regular file of the tarball to `dir` (named by number, never by the archive's
/// paths) and hashes it. Symlinks (docker save links identical layers) point at their target.
fn extract(archive: &Path, dir: &Path) -> Result<Extracted> {
    std::fs::create_dir_all(dir)?;
    let file = std::fs::File::open(archive)?;
    let mut tar = tar::Archive::new(file);
    let mut by_path = HashMap::new();
    let mut by_digest = HashMap::new();
    let mut links = Vec::new();
    let bad =
        |e: std::io::Error| RuntimeError::bad("code", format!("not a readable tar archive: {e}"));
    for (n, entry) in tar.entries().map_err(bad)?.enumerate() {
        let mut entry = entry.map_err(bad)?;
        let name = normalise(&entry.path().map_err(bad)?.to_string_lossy());
        match entry.header().entry_type() {
            tar::EntryType::Regular => {
                let out = dir.join(n.to_string());
                let mut f = std::fs::File::create(&out)?;
                let mut hasher = Sha256::new();
                let mut buf = vec![0u8; CHUNK];
                loop {
                    let k = entry.read(&mut buf).map_err(bad)?;
                    if k == 0 {
                        break;
                    }
                    hasher.update(&buf[..k]);
                    std::io::Write::write_all(&mut f, &buf[..k])?;
                }
                let digest = format!("sha256:{}", hex::encode(hasher.finalize()));
                by_digest.insert(digest.clone(), out);
                by_path.insert(name, digest);
            }
            tar::EntryType::Symlink | tar::EntryType::Link => {
                if let Ok(Some(target)) = entry.link_name() {
                    let target = target.to_string_lossy().into_owned();
                    let base = name.rsplit_once('/').map(|(d, _)| d).unwrap_or("");
                    let resolved = if entry.header().entry_type() == tar::EntryType::Link {
                        normalise(&target)
                    } else {
                        normalise(&format!("{base}/{target}"))
                    };
                    links.push((name, resolved));
                }
            }
            _ => {}
        }
    }
    for (name, target) in links {
        if let Some(p) = by_path.get(&target).cloned() {
            by_path.insert(name, p);
        }
    }
    Ok(Extracted { by_path, by_digest })
}

/// `./a/../b//c` → `b/c`.
fn normalise(p: &str) -> String {
    let mut parts: Vec<&str> = Vec::new();
    for part in p.split('/') {
        match part {
            "" | "." => {}
            ".." => {
                parts.pop();
            }
            x => parts.push(x),
        }
    }
    parts.join("/")
}

/// An OCI layout: `index.json` names the manifest (possibly through a nested index).
fn oci_layout_manifest(files: &Extracted, stem: &str) -> Result<(String, Vec<u8>, String)> {
    let index: Index = parse_json(&files.read_path("index.json")?, "index.json")?;
    let first = index
        .pick(host_arch())
        .or_else(|| index.manifests.first())
        .ok_or_else(|| RuntimeError::bad("code", "index.json lists no manifest"))?
        .clone();
    let name = image_name(
        first
            .annotations
            .get("io.containerd.image.name")
            .or_else(|| first.annotations.get("org.opencontainers.image.ref.name")),
        stem,
    );
    let mut desc: Descriptor = first;
    let mut bytes = read_file(&files.by_digest, &desc.digest)?;
    if is_index(&desc.media_type) {
        let nested: Index = parse_json(&bytes, "nested index")?;
        desc = nested
            .pick(host_arch())
            .ok_or_else(|| no_platform(&nested))?
            .clone();
        bytes = read_file(&files.by_digest, &desc.digest)?;
    }
    let media_type = if desc.media_type.is_empty() {
        OCI_MANIFEST.into()
    } else {
        desc.media_type
    };
    Ok((name, bytes, media_type))
}

/// A `docker save` archive: `manifest.json` lists config and layer files; an OCI manifest is
/// built from them.
fn docker_save_manifest(files: &Extracted, stem: &str) -> Result<(String, Vec<u8>, String)> {
    #[derive(serde::Deserialize)]
    struct Entry {
        #[serde(rename = "Config")]
        config: String,
        #[serde(rename = "RepoTags", default)]
        repo_tags: Option<Vec<String>>,
        #[serde(rename = "Layers")]
        layers: Vec<String>,
    }
    let entries: Vec<Entry> = parse_json(&files.read_path("manifest.json")?, "manifest.json")?;
    let e = entries
        .first()
        .ok_or_else(|| RuntimeError::bad("code", "manifest.json lists no image"))?;
    let describe = |path: &str, media_type: &str| -> Result<Descriptor> {
        let (digest, file) = files.path_file(path)?;
        let digest = digest.to_owned();
        let size = std::fs::metadata(file)?.len() as i64;
        let mut magic = [0u8; 2];
        let gz = std::fs::File::open(file)?.read_exact(&mut magic).is_ok() && magic == [0x1f, 0x8b];
        let media_type = match media_type {
            OCI_LAYER if gz => OCI_LAYER_GZIP,
            m => m,
        };
        Ok(Descriptor {
            media_type: media_type.into(),
            digest,
            size,
            platform: None,
            annotations: HashMap::new(),
        })
    };
    let manifest = Manifest {
        schema_version: 2,
        media_type: Some(OCI_MANIFEST.into()),
        config: describe(&e.config, OCI_CONFIG)?,
        layers: e
            .layers
            .iter()
            .map(|l| describe(l, OCI_LAYER))
            .collect::<Result<_>>()?,
    };
    let name = image_name(e.repo_tags.as_ref().and_then(|t| t.first()), stem);
    let bytes = serde_json::to_vec(&manifest).map_err(RuntimeError::backend)?;
    Ok((name, bytes, OCI_MANIFEST.into()))
}

/// The name an imported image is stored under: its own full name when it has one, otherwise
/// `import.canopy.local/<file stem>:<tag>`.
fn image_name(annotation: Option<&String>, stem: &str) -> String {
    match annotation {
        Some(a) if a.contains('/') || a.contains(':') => Reference::parse(a)
            .map(|r| r.name())
            .unwrap_or_else(|_| a.clone()),
        Some(tag) if !tag.is_empty() => format!("import.canopy.local/{}:{tag}", clean(stem)),
        _ => format!("import.canopy.local/{}:latest", clean(stem)),
    }
}

fn clean(stem: &str) -> String {
    let s: String = stem
        .chars()
        .map(|c| c.to_ascii_lowercase())
        .map(|c| {
            if c.is_ascii_alphanumeric() || c == '-' || c == '_' || c == '.' {
                c
            } else {
                '-'
            }
        })
        .collect();
    if s.is_empty() { "image".into() } else { s }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_import_is_used_again_only_while_its_file_is_unchanged() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("image.tar");
        std::fs::write(&path, b"first").unwrap();
        let stamp = FileStamp::of(&path).unwrap();
        let mut imported = HashMap::new();
        imported.insert(
            path.clone(),
            Imported {
                stamp,
                name: "docker.io/library/image:latest".into(),
                target: containerd_client::types::Descriptor::default(),
            },
        );
        let got = reusable(&imported, &path, FileStamp::of(&path));
        assert_eq!(
            got.map(|i| i.name.as_str()),
            Some("docker.io/library/image:latest")
        );
        // Rewritten (another length), gone, or another file: imported again.
        std::fs::write(&path, b"second, longer").unwrap();
        assert!(reusable(&imported, &path, FileStamp::of(&path)).is_none());
        assert!(reusable(&imported, &path, None).is_none());
        let other = dir.path().join("other.tar");
        std::fs::write(&other, b"first").unwrap();
        assert!(reusable(&imported, &other, FileStamp::of(&other)).is_none());
    }

    #[test]
    fn code_names_its_source() {
        assert_eq!(
            Source::parse("docker-archive:/tmp/a.tar").unwrap(),
            Source::DockerArchive("/tmp/a.tar".into())
        );
        assert_eq!(
            Source::parse("oci-archive:/tmp/a.tar").unwrap(),
            Source::OciArchive("/tmp/a.tar".into())
        );
        assert!(matches!(
            Source::parse("oci-archive:rel.tar"),
            Err(RuntimeError::BadInput { field: "code", .. })
        ));
        assert!(matches!(
            Source::parse("docker://busybox").unwrap(),
            Source::Registry(_)
        ));
        assert!(Source::parse("NOT VALID").is_err());
    }

    #[test]
    fn imported_images_get_a_name() {
        assert_eq!(
            image_name(Some(&"busybox:1".into()), "x"),
            "docker.io/library/busybox:1"
        );
        assert_eq!(
            image_name(Some(&"v1".into()), "My Image"),
            "import.canopy.local/my-image:v1"
        );
        assert_eq!(image_name(None, "demo"), "import.canopy.local/demo:latest");
        assert_eq!(normalise("./a/../b//c"), "b/c");
    }
}
