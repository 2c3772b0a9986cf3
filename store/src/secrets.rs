//! Secrets kept by a daemon: random tokens, constant-time comparison, and secret files under
//! the data directory (join tokens, generated passwords) readable only by their owner.

use std::path::Path;

/// Fills `buf` from the operating system's random source.
pub fn fill_random(buf: &mut [u8]) {
    // The OS random source failing is not recoverable; every key and id depends on it.
    #[allow(clippy::expect_used)]
    getrandom::fill(buf).expect("the operating system's random source failed");
}

/// A random secret as `bytes * 2` hex digits.
pub fn random_token(bytes: usize) -> String {
    let mut b = vec![0u8; bytes];
    fill_random(&mut b);
    hex::encode(b)
}

/// Compares secrets in time independent of where they differ.
pub fn constant_time_eq(a: &str, b: &str) -> bool {
    let (a, b) = (a.as_bytes(), b.as_bytes());
    a.len() == b.len() && a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

/// Where a secret came from, for the one log line that announces it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SecretSource {
    Environment,
    File,
    Generated,
}

/// A secret taken from the environment value if given, else from `path`, else generated and
/// written to `path` (mode 0600) once.
pub fn file_secret(
    env_value: Option<&str>,
    path: &Path,
) -> std::io::Result<(String, SecretSource)> {
    if let Some(v) = env_value.filter(|v| !v.is_empty()) {
        return Ok((v.to_owned(), SecretSource::Environment));
    }
    let io = |e: std::io::Error| std::io::Error::new(e.kind(), format!("{}: {e}", path.display()));
    match std::fs::read_to_string(path) {
        Ok(s) if !s.trim().is_empty() => return Ok((s.trim().to_owned(), SecretSource::File)),
        Ok(_) => {}
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
        Err(e) => return Err(io(e)),
    }
    let secret = random_token(16);
    write_private(path, &format!("{secret}\n")).map_err(io)?;
    Ok((secret, SecretSource::Generated))
}

/// Writes a file only its owner can read.
pub fn write_private(path: &Path, text: &str) -> std::io::Result<()> {
    use std::io::Write;
    use std::os::unix::fs::OpenOptionsExt;
    if let Some(dir) = path.parent() {
        std::fs::create_dir_all(dir)?;
    }
    let mut f = std::fs::OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .mode(0o600)
        .open(path)?;
    f.write_all(text.as_bytes())?;
    f.sync_all()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn secrets_come_from_env_then_file_then_are_generated_once() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("sub/token");
        let (a, src) = file_secret(None, &path).unwrap();
        assert_eq!(src, SecretSource::Generated);
        let (b, src) = file_secret(None, &path).unwrap();
        assert_eq!((b.as_str(), src), (a.as_str(), SecretSource::File));
        let (c, src) = file_secret(Some("given"), &path).unwrap();
        assert_eq!((c.as_str(), src), ("given", SecretSource::Environment));
        use std::os::unix::fs::PermissionsExt;
        let mode = std::fs::metadata(&path).unwrap().permissions().mode();
        assert_eq!(mode & 0o777, 0o600);
        assert!(constant_time_eq("abc", "abc") && !constant_time_eq("abc", "abd"));
        assert_eq!(random_token(16).len(), 32);
    }
}
