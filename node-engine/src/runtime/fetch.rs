//! Reading a workload's code from an absolute path or an HTTP(S) URL (wasm modules, kernel
//! tarballs).

use super::{Result, RuntimeError};
use std::time::Duration;

/// An HTTP client for code downloads.
#[derive(Clone)]
pub struct Fetcher {
    http: reqwest::Client,
}

impl Fetcher {
    pub fn new() -> Result<Fetcher> {
        Ok(Fetcher {
            http: reqwest::Client::builder()
                .connect_timeout(Duration::from_secs(10))
                .timeout(Duration::from_secs(300))
                .build()
                .map_err(RuntimeError::backend)?,
        })
    }

    /// The bytes at `code`: an `http(s)://` URL, or an absolute path (`file://` allowed).
    /// `what` names the thing in errors ("module", "kernel archive").
    pub async fn bytes(&self, code: &str, what: &str) -> Result<Vec<u8>> {
        if code.starts_with("http://") || code.starts_with("https://") {
            let resp = self
                .http
                .get(code)
                .send()
                .await
                .map_err(|e| RuntimeError::Fetch(format!("{code}: {e}")))?;
            if resp.status() == reqwest::StatusCode::NOT_FOUND {
                return Err(RuntimeError::NotFound(format!("{code} answered 404")));
            }
            if !resp.status().is_success() {
                return Err(RuntimeError::Fetch(format!(
                    "{code} answered {}",
                    resp.status()
                )));
            }
            let bytes = resp
                .bytes()
                .await
                .map_err(|e| RuntimeError::Fetch(format!("{code}: {e}")))?;
            return Ok(bytes.to_vec());
        }
        let path = code.strip_prefix("file://").unwrap_or(code);
        if !path.starts_with('/') {
            return Err(RuntimeError::bad(
                "code",
                format!("{code:?} is neither an absolute path nor an http(s) URL"),
            ));
        }
        match tokio::fs::read(path).await {
            Ok(b) => Ok(b),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                Err(RuntimeError::NotFound(format!("no {what} at {path}")))
            }
            Err(e) => Err(e.into()),
        }
    }
}
