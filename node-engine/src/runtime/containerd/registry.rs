//! A small OCI distribution (registry v2) client: resolves a reference to a manifest and streams
//! blobs. Anonymous bearer tokens are fetched when a registry asks for them. Plain HTTP is used
//! for registries named with `--insecure-registry` and for loopback registries (as Docker does).

use super::oci::MANIFEST_ACCEPT;
use crate::runtime::{Result, RuntimeError};
use bytes::Bytes;
use futures::{Stream, StreamExt};
use std::sync::Mutex;

/// `[registry/]repository[:tag|@digest]`, normalised as Docker does.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Reference {
    /// Host (and port) as written, `docker.io` for Docker Hub.
    pub registry: String,
    pub repository: String,
    /// A tag or a `sha256:` digest.
    pub reference: String,
}

impl Reference {
    pub fn parse(s: &str) -> std::result::Result<Reference, String> {
        let s = s.trim();
        if s.is_empty() || s.chars().any(char::is_whitespace) {
            return Err(format!("{s:?} is not an image reference"));
        }
        let (name, reference) = if let Some((n, d)) = s.split_once('@') {
            (n, d.to_owned())
        } else {
            match s.rsplit_once(':') {
                Some((n, tag)) if !tag.contains('/') => (n, tag.to_owned()),
                _ => (s, "latest".to_owned()),
            }
        };
        let (registry, repository) = match name.split_once('/') {
            Some((first, rest))
                if first.contains('.') || first.contains(':') || first == "localhost" =>
            {
                (first.to_owned(), rest.to_owned())
            }
            _ => ("docker.io".to_owned(), name.to_owned()),
        };
        let repository = if registry == "docker.io" && !repository.contains('/') {
            format!("library/{repository}")
        } else {
            repository
        };
        if repository.is_empty()
            || !repository
                .chars()
                .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || "._-/".contains(c))
        {
            return Err(format!(
                "{s:?}: repository {repository:?} must be lower-case letters, digits, '.', '_', '-', '/'"
            ));
        }
        Ok(Reference {
            registry,
            repository,
            reference,
        })
    }

    /// The full name containerd stores the image under.
    pub fn name(&self) -> String {
        if self.reference.starts_with("sha256:") {
            format!("{}/{}@{}", self.registry, self.repository, self.reference)
        } else {
            format!("{}/{}:{}", self.registry, self.repository, self.reference)
        }
    }

    fn api_host(&self) -> &str {
        if self.registry == "docker.io" {
            "registry-1.docker.io"
        } else {
            &self.registry
        }
    }
}

pub struct Registry {
    http: reqwest::Client,
    insecure: Vec<String>,
    token: Mutex<Option<(String, String)>>,
}

impl Registry {
    pub fn new(insecure: Vec<String>) -> Result<Registry> {
        Ok(Registry {
            http: reqwest::Client::builder()
                .connect_timeout(std::time::Duration::from_secs(10))
                .build()
                .map_err(RuntimeError::backend)?,
            insecure,
            token: Mutex::new(None),
        })
    }

    fn base(&self, r: &Reference) -> String {
        let host = r.api_host();
        let hostname = host.rsplit_once(':').map(|(h, _)| h).unwrap_or(host);
        let plain = self.insecure.iter().any(|i| i == host)
            || hostname == "localhost"
            || hostname.starts_with("127.")
            || hostname == "[::1]";
        let scheme = if plain { "http" } else { "https" };
        format!("{scheme}://{host}/v2/{}", r.repository)
    }

    /// GET with an anonymous bearer token when the registry asks for one.
    async fn get(&self, r: &Reference, url: &str, accept: &str) -> Result<reqwest::Response> {
        let cached = self
            .token
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .clone()
            .filter(|(host, _)| host == &r.registry)
            .map(|(_, t)| t);
        let send = |token: Option<String>| {
            let mut req = self.http.get(url).header(reqwest::header::ACCEPT, accept);
            if let Some(t) = token {
                req = req.bearer_auth(t);
            }
            req.send()
        };
        let fetch_err = |e: reqwest::Error| RuntimeError::Fetch(format!("{url}: {e}"));
        let resp = send(cached).await.map_err(fetch_err)?;
        if resp.status() != reqwest::StatusCode::UNAUTHORIZED {
            return Ok(resp);
        }
        let challenge = resp
            .headers()
            .get(reqwest::header::WWW_AUTHENTICATE)
            .and_then(|v| v.to_str().ok())
            .unwrap_or_default()
            .to_owned();
        let token = self.anonymous_token(&challenge).await?;
        *self.token.lock().unwrap_or_else(|p| p.into_inner()) =
            Some((r.registry.clone(), token.clone()));
        send(Some(token)).await.map_err(fetch_err)
    }

    async fn anonymous_token(&self, challenge: &str) -> Result<String> {
        let params = challenge
            .strip_prefix("Bearer ")
            .ok_or_else(|| RuntimeError::Fetch(format!("registry wants {challenge:?} auth")))?;
        let mut realm = None;
        let mut query = Vec::new();
        for part in params.split(',') {
            if let Some((k, v)) = part.trim().split_once('=') {
                let v = v.trim_matches('"').to_owned();
                if k == "realm" {
                    realm = Some(v);
                } else {
                    query.push((k.to_owned(), v));
                }
            }
        }
        let realm =
            realm.ok_or_else(|| RuntimeError::Fetch("auth challenge has no realm".into()))?;
        #[derive(serde::Deserialize)]
        struct Token {
            token: Option<String>,
            access_token: Option<String>,
        }
        let t: Token = self
            .http
            .get(&realm)
            .query(&query)
            .send()
            .await
            .and_then(reqwest::Response::error_for_status)
            .map_err(|e| RuntimeError::Fetch(format!("token from {realm}: {e}")))?
            .json()
            .await
            .map_err(|e| RuntimeError::Fetch(format!("token from {realm}: {e}")))?;
        t.token
            .or(t.access_token)
            .ok_or_else(|| RuntimeError::Fetch(format!("{realm} gave no token")))
    }

    /// The manifest or index `reference` names: media type and bytes.
    pub async fn manifest(&self, r: &Reference, reference: &str) -> Result<(String, Vec<u8>)> {
        let url = format!("{}/manifests/{reference}", self.base(r));
        let resp = self.get(r, &url, MANIFEST_ACCEPT).await?;
        match resp.status() {
            s if s.is_success() => {}
            reqwest::StatusCode::NOT_FOUND => {
                return Err(RuntimeError::NotFound(format!(
                    "image {} not found in its registry",
                    r.name()
                )));
            }
            s => return Err(RuntimeError::Fetch(format!("{url} answered {s}"))),
        }
        let media_type = resp
            .headers()
            .get(reqwest::header::CONTENT_TYPE)
            .and_then(|v| v.to_str().ok())
            .unwrap_or_default()
            .split(';')
            .next()
            .unwrap_or_default()
            .trim()
            .to_owned();
        let bytes = resp
            .bytes()
            .await
            .map_err(|e| RuntimeError::Fetch(format!("{url}: {e}")))?;
        Ok((media_type, bytes.to_vec()))
    }

    /// A blob's bytes as a stream.
    pub async fn blob(
        &self,
        r: &Reference,
        digest: &str,
    ) -> Result<impl Stream<Item = Result<Bytes>> + Send + 'static + use<>> {
        let url = format!("{}/blobs/{digest}", self.base(r));
        let resp = self.get(r, &url, "*/*").await?;
        if !resp.status().is_success() {
            return Err(RuntimeError::Fetch(format!(
                "{url} answered {}",
                resp.status()
            )));
        }
        Ok(resp
            .bytes_stream()
            .map(|c| c.map_err(|e| RuntimeError::Fetch(e.to_string()))))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn references_normalise_like_docker() {
        let r = Reference::parse("busybox").unwrap();
        assert_eq!(r.name(), "docker.io/library/busybox:latest");
        let r = Reference::parse("127.0.0.1:5000/canopy/busybox:1.0").unwrap();
        assert_eq!(
            (
                r.registry.as_str(),
                r.repository.as_str(),
                r.reference.as_str()
            ),
            ("127.0.0.1:5000", "canopy/busybox", "1.0")
        );
        let r = Reference::parse("localhost/x@sha256:abc").unwrap();
        assert_eq!(r.reference, "sha256:abc");
        assert_eq!(r.name(), "localhost/x@sha256:abc");
        assert!(Reference::parse("Bad/Name").is_err());
        assert!(Reference::parse("a b").is_err());
    }

    #[test]
    fn loopback_and_named_registries_use_http() {
        let reg = Registry::new(vec!["reg.local:5000".into()]).unwrap();
        let base = |s: &str| reg.base(&Reference::parse(s).unwrap());
        assert!(base("127.0.0.1:5000/a").starts_with("http://"));
        assert!(base("reg.local:5000/a").starts_with("http://"));
        assert!(base("reg.other:5000/a").starts_with("https://"));
        assert!(base("busybox").starts_with("https://registry-1.docker.io/v2/library/"));
    }
}
