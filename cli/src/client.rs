//! The REST client of the root's API and the CLI's saved logins.
//!
//! Logins are kept in `$CANOPY_CONFIG`, else `$XDG_CONFIG_HOME/canopy/config.json`, else
//! `~/.config/canopy/config.json` (mode 0600): per API URL the user name, the access token and
//! the refresh token, plus the API used when `--api` is not given. An answer 401 with a saved
//! refresh token gets a new access token (`POST /api/auth/refresh`) and the request is sent
//! once more.

use anyhow::{Context, Result, anyhow, bail};
use canopy_api::{AccessToken, ErrorBody, LoginRequest, TokenPair};
use reqwest::{Method, StatusCode};
use serde::de::DeserializeOwned;
use serde::{Deserialize, Serialize};
use serde_json::Value;
use std::collections::BTreeMap;
use std::fmt;
use std::path::PathBuf;
use std::time::Duration;

/// The API when neither `--api` nor a saved one says otherwise.
pub const DEFAULT_API: &str = "http://127.0.0.1:10000";

/// One saved login.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct Login {
    pub username: String,
    pub token: String,
    pub refresh_token: String,
}

/// The CLI's config file.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct Config {
    /// The API used when `--api` is not given.
    #[serde(default)]
    pub current: Option<String>,
    #[serde(default)]
    pub logins: BTreeMap<String, Login>,
}

impl Config {
    pub fn path() -> PathBuf {
        if let Some(p) = std::env::var_os("CANOPY_CONFIG").filter(|p| !p.is_empty()) {
            return PathBuf::from(p);
        }
        let base = std::env::var_os("XDG_CONFIG_HOME")
            .filter(|p| !p.is_empty())
            .map(PathBuf::from)
            .or_else(|| std::env::var_os("HOME").map(|h| PathBuf::from(h).join(".config")))
            .unwrap_or_else(|| PathBuf::from("."));
        base.join("canopy").join("config.json")
    }

    pub fn load() -> Result<Config> {
        let path = Config::path();
        match std::fs::read_to_string(&path) {
            Ok(text) => serde_json::from_str(&text)
                .with_context(|| format!("{}: not a canopy config file", path.display())),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(Config::default()),
            Err(e) => Err(anyhow!("{}: {e}", path.display())),
        }
    }

    pub fn save(&self) -> Result<()> {
        let path = Config::path();
        let text = serde_json::to_string_pretty(self)?;
        canopy_store::secrets::write_private(&path, &text)
            .with_context(|| format!("cannot write {}", path.display()))
    }
}

/// An error answer of the API, with the field it names.
#[derive(Debug)]
pub struct ApiError {
    pub status: StatusCode,
    pub message: String,
    pub field: Option<String>,
    /// `PATH: MESSAGE` for every SLA problem.
    pub problems: Vec<String>,
}

impl fmt::Display for ApiError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}: {}", self.status, self.message)?;
        if let Some(field) = &self.field
            && !self.message.contains(field.as_str())
        {
            write!(f, " (field {field})")?;
        }
        for p in &self.problems {
            write!(f, "\n  {p}")?;
        }
        Ok(())
    }
}

impl std::error::Error for ApiError {}

impl ApiError {
    /// Reads Canopy's [`ErrorBody`], else Oakestra's `{"msg"}`, else takes the body as text.
    fn from_answer(status: StatusCode, body: &str) -> ApiError {
        if let Ok(e) = serde_json::from_str::<ErrorBody>(body) {
            return ApiError {
                status,
                message: e.message,
                field: e.field,
                problems: e
                    .problems
                    .iter()
                    .map(|p| format!("{}: {}", p.path, p.message))
                    .collect(),
            };
        }
        #[derive(Deserialize)]
        struct OakestraError {
            msg: String,
        }
        let message = serde_json::from_str::<OakestraError>(body)
            .map_or_else(|_| body.trim().to_owned(), |e| e.msg);
        ApiError {
            status,
            message,
            field: None,
            problems: Vec::new(),
        }
    }
}

/// A client of one root's API.
pub struct Client {
    http: reqwest::Client,
    /// For event streams: no overall timeout.
    stream_http: reqwest::Client,
    pub api: String,
    config: Config,
}

impl Client {
    /// A client of `api`, else the saved current API, else [`DEFAULT_API`].
    pub fn new(api: Option<&str>) -> Result<Client> {
        let config = Config::load()?;
        let api = api
            .map(str::to_owned)
            .or_else(|| config.current.clone())
            .unwrap_or_else(|| DEFAULT_API.to_owned());
        let api = api.trim_end_matches('/').to_owned();
        if !api.starts_with("http://") && !api.starts_with("https://") {
            bail!("--api must be an http:// or https:// URL, not {api:?}");
        }
        let http = reqwest::Client::builder()
            .connect_timeout(Duration::from_secs(5))
            .timeout(Duration::from_secs(60))
            .build()?;
        let stream_http = reqwest::Client::builder()
            .connect_timeout(Duration::from_secs(5))
            .build()?;
        Ok(Client {
            http,
            stream_http,
            api,
            config,
        })
    }

    pub fn login_info(&self) -> Option<&Login> {
        self.config.logins.get(&self.api)
    }

    /// Logs in and saves the tokens; this API becomes the current one.
    pub async fn login(&mut self, username: &str, password: &str) -> Result<()> {
        let body = serde_json::to_value(LoginRequest {
            username: username.to_owned(),
            password: password.to_owned(),
            organization_name: None,
            organization: None,
        })?;
        let answer = self
            .raw(Method::POST, "/api/auth/login", Some(&body), None)
            .await?;
        let TokenPair {
            token,
            refresh_token,
        } = typed("/api/auth/login", answer)?;
        self.config.logins.insert(
            self.api.clone(),
            Login {
                username: username.to_owned(),
                token,
                refresh_token,
            },
        );
        self.config.current = Some(self.api.clone());
        self.config.save()
    }

    /// The answer as `T`: a view of `canopy-api`, or `Value` to keep it as the API sent it.
    pub async fn get<T: DeserializeOwned>(&mut self, path: &str) -> Result<T> {
        typed(path, self.send(Method::GET, path, None).await?)
    }

    pub async fn post<T: DeserializeOwned>(
        &mut self,
        path: &str,
        body: Option<&Value>,
    ) -> Result<T> {
        typed(path, self.send(Method::POST, path, body).await?)
    }

    pub async fn put<T: DeserializeOwned>(&mut self, path: &str, body: &Value) -> Result<T> {
        typed(path, self.send(Method::PUT, path, Some(body)).await?)
    }

    /// Opens the root's event stream (`GET /api/events{query}`), after event `after` when
    /// resuming; the saved access token is refreshed once on 401.
    pub async fn events(
        &mut self,
        query: &str,
        after: Option<u64>,
    ) -> Result<crate::events::EventStream> {
        let resume = after.map(|id| ("Last-Event-ID", id.to_string()));
        let resp = self
            .open_stream(&format!("/api/events{query}"), resume)
            .await?;
        Ok(crate::events::EventStream::new(resp))
    }

    /// `GET path` for a response read as it comes (no overall timeout), with the saved access
    /// token, refreshed once on 401, and `header` if given. An error status is an [`ApiError`].
    pub async fn open_stream(
        &mut self,
        path: &str,
        header: Option<(&str, String)>,
    ) -> Result<reqwest::Response> {
        let Some(login) = self.login_info().cloned() else {
            bail!("not logged in to {}: run `canopy login`", self.api);
        };
        let mut token = login.token.clone();
        let mut refreshed = false;
        loop {
            let mut req = self
                .stream_http
                .get(format!("{}{path}", self.api))
                .bearer_auth(&token);
            if let Some((name, value)) = &header {
                req = req.header(*name, value);
            }
            let resp = req
                .send()
                .await
                .map_err(|e| anyhow!("cannot reach the API at {}: {e}", self.api))?;
            let status = resp.status();
            if status == StatusCode::UNAUTHORIZED && !refreshed {
                token = self.refresh(&login).await?;
                refreshed = true;
                continue;
            }
            if !status.is_success() {
                let text = resp.text().await.unwrap_or_default();
                return Err(ApiError::from_answer(status, &text).into());
            }
            return Ok(resp);
        }
    }

    /// Deletes; the acknowledgement says nothing more than success.
    pub async fn delete(&mut self, path: &str) -> Result<()> {
        self.send(Method::DELETE, path, None).await.map(drop)
    }

    /// Sends with the saved access token; refreshes it once on 401.
    async fn send(&mut self, method: Method, path: &str, body: Option<&Value>) -> Result<Value> {
        let Some(login) = self.login_info().cloned() else {
            bail!(
                "not logged in to {}: run `canopy login --api {} --username USER`",
                self.api,
                self.api
            );
        };
        match self
            .raw(method.clone(), path, body, Some(&login.token))
            .await
        {
            Err(e)
                if e.downcast_ref::<ApiError>()
                    .is_some_and(|a| a.status == StatusCode::UNAUTHORIZED) =>
            {
                let token = self.refresh(&login).await?;
                self.raw(method, path, body, Some(&token)).await
            }
            other => other,
        }
    }

    async fn refresh(&mut self, login: &Login) -> Result<String> {
        let answer = self
            .raw(
                Method::POST,
                "/api/auth/refresh",
                None,
                Some(&login.refresh_token),
            )
            .await
            .map_err(|e| {
                anyhow!(
                    "the login to {} has expired ({e}): run `canopy login` again",
                    self.api
                )
            })?;
        let AccessToken { token } = typed("/api/auth/refresh", answer)?;
        if let Some(l) = self.config.logins.get_mut(&self.api) {
            l.token = token.clone();
        }
        self.config.save()?;
        Ok(token)
    }

    async fn raw(
        &self,
        method: Method,
        path: &str,
        body: Option<&Value>,
        token: Option<&str>,
    ) -> Result<Value> {
        let url = format!("{}{path}", self.api);
        let mut req = self.http.request(method, &url);
        if let Some(t) = token {
            req = req.bearer_auth(t);
        }
        if let Some(b) = body {
            req = req.json(b);
        }
        let resp = req
            .send()
            .await
            .map_err(|e| anyhow!("cannot reach the API at {}: {e}", self.api))?;
        let status = resp.status();
        let text = resp.text().await.unwrap_or_default();
        if !status.is_success() {
            return Err(ApiError::from_answer(status, &text).into());
        }
        if text.trim().is_empty() {
            return Ok(Value::Null);
        }
        serde_json::from_str(&text).with_context(|| format!("{url}: the answer is not JSON"))
    }
}

/// An answer (JSON) read as `T`; unknown fields are ignored.
pub fn typed<T: DeserializeOwned>(path: &str, answer: Value) -> Result<T> {
    serde_json::from_value(answer)
        .with_context(|| format!("the API's answer to {path} is not as expected"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn api_errors_name_the_field_and_every_problem() {
        let e = ApiError::from_answer(
            StatusCode::UNPROCESSABLE_ENTITY,
            r#"{"message":"the SLA is not valid","field":"applications[0].microservices[0].code",
                "problems":[{"path":"applications[0].microservices[0].code","message":"must not be empty"}]}"#,
        );
        let text = e.to_string();
        assert!(text.starts_with("422 Unprocessable Entity: the SLA is not valid"));
        assert!(text.contains("(field applications[0].microservices[0].code)"));
        assert!(text.contains("\n  applications[0].microservices[0].code: must not be empty"));

        let e = ApiError::from_answer(StatusCode::BAD_GATEWAY, "upstream down");
        assert_eq!(e.to_string(), "502 Bad Gateway: upstream down");
    }

    #[test]
    fn oakestra_error_bodies_give_their_msg() {
        let e = ApiError::from_answer(StatusCode::BAD_REQUEST, r#"{"msg":"no such job"}"#);
        assert_eq!(e.to_string(), "400 Bad Request: no such job");
    }
}
