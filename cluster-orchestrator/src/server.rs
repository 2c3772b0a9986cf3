//! Start-up and serving: opens the store, the broker (embedded or external) and the control
//! plane, then runs the node API, the MQTT client, the root link and the control loop until
//! shutdown.

use crate::api::{self, ApiState};
use crate::broker::{DynsecAuth, DynsecWaiters, EmbeddedBroker};
use crate::config::{BrokerUrl, Config};
use crate::control::{self, Cluster, NodeAuth, Publish, Settings};
use crate::mqtt::{self, Endpoint};
use crate::uplink::{RootAddressPlan, Uplink};
use canopy_store::secrets;
use rumqttc::{AsyncClient, EventLoop};
use std::future::Future;
use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::AtomicBool;
use std::time::Duration;
use tokio::net::TcpListener;
use tokio::sync::mpsc;

#[derive(Debug, thiserror::Error)]
pub enum ServeError {
    #[error("store: {0}")]
    Store(#[from] canopy_store::StoreError),
    #[error(transparent)]
    Control(#[from] control::Error),
    #[error("{what}: {source}")]
    Io {
        what: &'static str,
        source: std::io::Error,
    },
    #[error("MQTT broker: {0}")]
    Broker(String),
}

/// A cluster ready to serve.
pub struct Server {
    pub cluster: Arc<Cluster>,
    pub node_token: String,
    config: Config,
    mqtt_client: AsyncClient,
    mqtt_events: EventLoop,
    outgoing: mpsc::UnboundedReceiver<Publish>,
    dynsec: Option<DynsecWaiters>,
    embedded: Option<Arc<EmbeddedBroker>>,
    mqtt_port: u16,
}

impl Server {
    pub async fn open(config: &Config) -> Result<Server, ServeError> {
        std::fs::create_dir_all(&config.data_dir).map_err(|source| ServeError::Io {
            what: "--data-dir",
            source,
        })?;
        let store = config.store().open().await?;
        tracing::info!(backend = store.backend(), "store opened");
        let node_token =
            canopy_daemon::join_token(config.node_token.as_deref(), &config.data_dir, "node-token")
                .map_err(|source| ServeError::Io {
                    what: "node-token",
                    source,
                })?;
        let settings = Settings {
            worker_timeout: config.worker_timeout(),
            drain: std::time::Duration::from_secs_f64(config.drain_secs.clamp(0.0, 600.0)),
            ..Settings::default()
        };
        let client_id = format!("canopy-cluster-{}", secrets::random_token(4));
        let (auth, endpoint, embedded, dynsec): (
            Arc<dyn NodeAuth>,
            Endpoint,
            Option<Arc<EmbeddedBroker>>,
            Option<DynsecWaiters>,
        ) = match &config.mqtt_url {
            None => {
                let password = secrets::random_token(16);
                let user = "canopy-cluster";
                let broker = EmbeddedBroker::start(config.mqtt_addr, user, &password)
                    .await
                    .map_err(|e| ServeError::Broker(format!("--mqtt-addr: {e}")))?;
                let endpoint = Endpoint {
                    host: local_host(broker.local_addr()),
                    port: broker.local_addr().port(),
                    username: user.into(),
                    password,
                };
                (broker.clone(), endpoint, Some(broker), None)
            }
            Some(url) => {
                let u = BrokerUrl::parse(url).map_err(ServeError::Broker)?;
                let endpoint = Endpoint {
                    host: u.host,
                    port: u.port,
                    username: u.username.clone(),
                    password: u.password,
                };
                let waiters = DynsecWaiters::default();
                // The cluster's one client serves both the worker protocol and dynsec.
                let (client, events) = mqtt::client(&endpoint, &client_id);
                let auth = Arc::new(DynsecAuth::new(client.clone(), waiters.clone(), u.username));
                let (cluster, outgoing) = Cluster::open(store, settings, auth).await?;
                return Ok(Server {
                    cluster,
                    node_token,
                    config: config.clone(),
                    mqtt_client: client,
                    mqtt_events: events,
                    outgoing,
                    dynsec: Some(waiters),
                    embedded: None,
                    mqtt_port: endpoint.port,
                });
            }
        };
        let (cluster, outgoing) = Cluster::open(store, settings, auth).await?;
        if let Some(b) = &embedded {
            b.restore(&cluster.worker_password_hashes().await);
        }
        let (client, events) = mqtt::client(&endpoint, &client_id);
        Ok(Server {
            cluster,
            node_token,
            config: config.clone(),
            mqtt_client: client,
            mqtt_events: events,
            outgoing,
            dynsec,
            embedded,
            mqtt_port: endpoint.port,
        })
    }

    /// Serves until `shutdown` resolves.
    pub async fn serve(
        self,
        api: TcpListener,
        shutdown: impl Future<Output = ()> + Send + 'static,
    ) -> Result<(), ServeError> {
        let stopper = canopy_daemon::Stopper::new(shutdown);
        let stopped = || stopper.stopped();
        let connected = Arc::new(AtomicBool::new(false));
        let (subscribed_tx, mut subscribed) = tokio::sync::watch::channel(false);
        let mqtt_task = tokio::spawn(mqtt::run(
            self.cluster.clone(),
            self.mqtt_client.clone(),
            self.mqtt_events,
            self.outgoing,
            self.dynsec.clone(),
            subscribed_tx,
            stopped(),
        ));
        if let Some(waiters) = &self.dynsec {
            // Dynsec answers arrive on a subscription: wait until it is in place.
            tokio::time::timeout(Duration::from_secs(10), subscribed.wait_for(|s| *s))
                .await
                .map_err(|_| {
                    ServeError::Broker("no subscription at the broker within 10 s".into())
                })?
                .map_err(|_| ServeError::Broker("the MQTT client stopped".into()))?;
            let url = self.config.mqtt_url.clone().unwrap_or_default();
            let user = BrokerUrl::parse(&url)
                .map(|u| u.username)
                .unwrap_or_default();
            let auth = DynsecAuth::new(self.mqtt_client.clone(), waiters.clone(), user);
            auth.grant_cluster(&mut subscribed)
                .await
                .map_err(ServeError::Broker)?;
        }
        let ticker = tokio::spawn(self.cluster.clone().run_ticker(stopped()));
        let overlay = tokio::spawn(self.cluster.clone().run_overlay(stopped()));
        let address_plan = RootAddressPlan::new(&self.config.root_addr);
        self.cluster.set_address_plan(address_plan.clone());
        let uplink = Uplink {
            address_plan,
            root_addr: self.config.root_addr.clone(),
            join_token: self.config.join_token.clone(),
            name: self.config.name.clone(),
            location: self.config.location,
            report_every: self.config.report_interval(),
        };
        let uplink_task =
            tokio::spawn(uplink.run(self.cluster.clone(), connected.clone(), stopped()));
        let state = ApiState {
            cluster: self.cluster.clone(),
            node_token: self.node_token.clone(),
            name: self.config.name.clone(),
            root_connected: connected,
            mqtt_host: self.config.mqtt_advertise.clone(),
            mqtt_port: self.mqtt_port,
        };
        let installer = crate::install::Installer {
            dir: Arc::new(self.config.install_dir()),
            node_token: Arc::new(self.node_token.clone()),
        };
        let routes = api::router(state).merge(crate::install::router(installer));
        let served = axum::serve(api, routes)
            .with_graceful_shutdown(stopped())
            .await;
        let _ = tokio::join!(mqtt_task, ticker, uplink_task, overlay);
        if let Some(broker) = &self.embedded {
            broker.stop().await;
        }
        served.map_err(|source| ServeError::Io {
            what: "--api-addr",
            source,
        })
    }
}

/// A host to reach a listener on from this machine.
fn local_host(addr: SocketAddr) -> String {
    if addr.ip().is_unspecified() {
        "127.0.0.1".into()
    } else {
        addr.ip().to_string()
    }
}
