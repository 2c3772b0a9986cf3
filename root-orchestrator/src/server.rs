//! Start-up and serving: opens the store, sets up secrets and the admin user, then serves the
//! REST API, the cluster link and `/metrics` on listeners the caller has bound, until shutdown.

use crate::api::{self, ApiState};
use crate::auth::{self, TokenKeys};
use crate::config::Config;
use crate::control::{self, Root, Settings};
use crate::link::LinkService;
use crate::model::collections;
use canopy_store::secrets;
use std::future::Future;
use std::sync::Arc;
use std::time::Duration;
use tokio::net::TcpListener;

#[derive(Debug, thiserror::Error)]
pub enum ServeError {
    #[error("store: {0}")]
    Store(#[from] canopy_store::StoreError),
    #[error(transparent)]
    Control(#[from] control::Error),
    #[error(transparent)]
    Auth(#[from] auth::AuthError),
    #[error("{what}: {source}")]
    Io {
        what: &'static str,
        source: std::io::Error,
    },
    #[error("cluster link: {0}")]
    Grpc(#[from] tonic::transport::Error),
}

/// The listeners a root serves on, bound by the caller (tests bind `127.0.0.1:0`).
pub struct Listeners {
    pub api: TcpListener,
    pub grpc: TcpListener,
    pub metrics: TcpListener,
}

impl Listeners {
    pub async fn bind(config: &Config) -> Result<Listeners, ServeError> {
        let bind = |what: &'static str, addr| async move {
            TcpListener::bind(addr)
                .await
                .map_err(|source| ServeError::Io { what, source })
        };
        Ok(Listeners {
            api: bind("--api-addr", config.api_addr).await?,
            grpc: bind("--grpc-addr", config.grpc_addr).await?,
            metrics: bind("--metrics-addr", config.metrics_addr).await?,
        })
    }
}

/// A root ready to serve.
pub struct Server {
    pub root: Arc<Root>,
    pub keys: TokenKeys,
    pub cluster_token: String,
    /// `--max-body-bytes`.
    pub max_body_bytes: usize,
}

impl Server {
    pub async fn open(config: &Config) -> Result<Server, ServeError> {
        std::fs::create_dir_all(&config.data_dir).map_err(|source| ServeError::Io {
            what: "--data-dir",
            source,
        })?;
        let store = config.store().open().await?;
        tracing::info!(backend = store.backend(), "store opened");
        let secret = jwt_secret(&store).await?;
        let keys = TokenKeys::new(
            &secret,
            Duration::from_secs(config.access_token_secs.max(1)),
            Duration::from_secs(config.refresh_token_secs.max(1)),
        );
        let settings = Settings {
            cluster_grace: config.cluster_grace(),
            default_quota: config.default_quota(),
            events_kept: config.events_kept,
            max_log_bytes: config.max_log_bytes,
            rollout_deadline: Duration::from_secs_f64(
                config.rollout_deadline_secs.clamp(1.0, 86_400.0),
            ),
            rollout_min_ready: Duration::from_secs_f64(
                config.rollout_min_ready_secs.clamp(0.0, 3_600.0),
            ),
            autoscale: config.autoscale_windows(),
            ..Settings::default()
        };
        let root = Root::open(store, settings).await?;
        if let Some(pw) = root
            .bootstrap_admin(config.admin_password.as_deref())
            .await?
            && config.admin_password.as_deref().is_none_or(str::is_empty)
        {
            let path = config.data_dir.join("admin-password");
            secrets::write_private(&path, &format!("{pw}\n")).map_err(|source| ServeError::Io {
                what: "admin-password",
                source,
            })?;
            tracing::warn!(
                password = %pw,
                file = %path.display(),
                "created user Admin with a generated password (shown this once; also in the file)"
            );
        }
        let cluster_token = canopy_daemon::join_token(
            config.cluster_token.as_deref(),
            &config.data_dir,
            "cluster-token",
        )
        .map_err(|source| ServeError::Io {
            what: "cluster-token",
            source,
        })?;
        Ok(Server {
            root,
            keys,
            cluster_token,
            max_body_bytes: config.max_body_bytes,
        })
    }

    /// Serves until `shutdown` resolves, then drains.
    pub async fn serve(
        self,
        listeners: Listeners,
        shutdown: impl Future<Output = ()> + Send + 'static,
    ) -> Result<(), ServeError> {
        let stopper = canopy_daemon::Stopper::new(shutdown);
        let stopped = || stopper.stopped();

        let ticker = tokio::spawn(self.root.clone().run_ticker(stopped()));
        // Event streams end when the root stops, so the API's connections can drain.
        let feed_root = self.root.clone();
        let feed_stop = stopped();
        tokio::spawn(async move {
            feed_stop.await;
            feed_root.feed.close();
        });
        let overlay = tokio::spawn(self.root.clone().run_overlay(stopped()));

        let jobs = Arc::new(api::jobs::JobDocs::default());
        tokio::spawn(api::jobs::keep_current(
            self.root.clone(),
            jobs.clone(),
            stopped(),
        ));
        let state = ApiState {
            root: self.root.clone(),
            keys: self.keys.clone(),
            max_body_bytes: self.max_body_bytes,
            jobs,
        };
        let api = axum::serve(listeners.api, api::service(state))
            .with_graceful_shutdown(stopped())
            .into_future();

        let metrics_root = self.root.clone();
        let metrics_app = axum::Router::new().route(
            "/metrics",
            axum::routing::get(move || {
                let root = metrics_root.clone();
                async move {
                    root.refresh_gauges().await;
                    (
                        [(
                            axum::http::header::CONTENT_TYPE,
                            canopy_daemon::metrics::CONTENT_TYPE,
                        )],
                        root.metrics.render(),
                    )
                }
            }),
        );
        let metrics = axum::serve(listeners.metrics, metrics_app)
            .with_graceful_shutdown(stopped())
            .into_future();

        let grpc = tonic::transport::Server::builder()
            .http2_keepalive_interval(Some(Duration::from_secs(10)))
            .add_service(LinkService::new(
                self.root.clone(),
                self.cluster_token,
                stopper.receiver(),
            ))
            .serve_with_incoming_shutdown(
                // No Nagle on the cluster sessions: a command written right after another
                // would otherwise wait for the delayed ACK of the first (~40 ms per deploy,
                // measured by the submit path's span marks). `Server::tcp_nodelay` applies
                // only to listeners tonic binds itself.
                futures::StreamExt::map(
                    tokio_stream::wrappers::TcpListenerStream::new(listeners.grpc),
                    |conn| {
                        conn.inspect(|tcp| {
                            if let Err(e) = tcp.set_nodelay(true) {
                                tracing::warn!(error = %e, "TCP_NODELAY on a cluster session");
                            }
                        })
                    },
                ),
                stopped(),
            );

        let (a, m, g) = tokio::join!(api, metrics, grpc);
        let _ = ticker.await;
        let _ = overlay.await;
        a.map_err(|source| ServeError::Io {
            what: "REST API",
            source,
        })?;
        m.map_err(|source| ServeError::Io {
            what: "metrics",
            source,
        })?;
        g?;
        Ok(())
    }
}

/// The token signing key: made once, kept in the store so tokens outlive restarts.
async fn jwt_secret(store: &canopy_store::SharedStore) -> Result<Vec<u8>, ServeError> {
    const KEY: &str = "jwt";
    let read = |doc: Option<serde_json::Value>| {
        doc.and_then(|d| d.get("key").and_then(|k| k.as_str()).map(str::to_owned))
            .and_then(|k| hex::decode(k).ok())
            .filter(|k| k.len() >= 32)
    };
    if let Some(k) = read(store.get(collections::SECRETS, KEY).await?) {
        return Ok(k);
    }
    let key = secrets::random_token(32);
    let doc = serde_json::json!({ "key": key });
    match store.create(collections::SECRETS, KEY, &doc).await {
        Ok(()) => {}
        // Another root process sharing the database made it first: use theirs.
        Err(canopy_store::StoreError::Conflict { .. }) => {}
        Err(e) => return Err(e.into()),
    }
    read(store.get(collections::SECRETS, KEY).await?).ok_or_else(|| {
        ServeError::Store(canopy_store::StoreError::Backend(
            "the stored token key is unreadable".into(),
        ))
    })
}
