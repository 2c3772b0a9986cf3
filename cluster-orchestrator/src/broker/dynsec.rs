//! Worker credentials in an external Mosquitto through its dynamic-security plugin.

use crate::control::NodeAuth;
use async_trait::async_trait;
use canopy_core::NodeId;
use canopy_proto::worker::topics;
use rumqttc::{AsyncClient, QoS};
use serde_json::{Value, json};
use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;
use tokio::sync::oneshot;

/// The dynamic-security control topic of Mosquitto and its response topic.
pub const DYNSEC_TOPIC: &str = "$CONTROL/dynamic-security/v1";
pub const DYNSEC_RESPONSE_TOPIC: &str = "$CONTROL/dynamic-security/v1/response";

/// Pending dynsec requests by correlation id.
pub type DynsecWaiters = Arc<std::sync::Mutex<HashMap<String, oneshot::Sender<Value>>>>;

/// Worker credentials in an external Mosquitto through its dynamic-security plugin.
pub struct DynsecAuth {
    client: AsyncClient,
    waiters: DynsecWaiters,
    cluster_user: String,
}

impl DynsecAuth {
    pub fn new(client: AsyncClient, waiters: DynsecWaiters, cluster_user: String) -> Self {
        DynsecAuth {
            client,
            waiters,
            cluster_user,
        }
    }

    /// Sends dynsec commands and returns each command's response (`error` set on failure).
    async fn send(&self, commands: Vec<Value>, wait: Duration) -> Result<Vec<Value>, String> {
        let id = canopy_store::secrets::random_token(8);
        let (tx, rx) = oneshot::channel();
        self.waiters
            .lock()
            .map_err(|_| "dynsec waiters poisoned".to_owned())?
            .insert(id.clone(), tx);
        let commands: Vec<Value> = commands
            .into_iter()
            .enumerate()
            .map(|(i, mut c)| {
                c["correlationData"] = json!(format!("{id}-{i}"));
                c
            })
            .collect();
        let n = commands.len();
        let body = json!({ "commands": commands });
        self.client
            .publish(DYNSEC_TOPIC, QoS::AtLeastOnce, false, body.to_string())
            .await
            .map_err(|e| format!("cannot publish to the broker: {e}"))?;
        let resp = tokio::time::timeout(wait, rx)
            .await
            .map_err(|_| format!("the broker did not answer the dynamic-security request within {wait:?} (is the plugin loaded and the cluster user a dynsec admin?)"))?
            .map_err(|_| "the MQTT connection closed".to_owned())?;
        let responses = resp["responses"].as_array().cloned().unwrap_or_default();
        Ok((0..n)
            .map(|i| {
                responses
                    .iter()
                    .find(|r| r["correlationData"] == json!(format!("{id}-{i}")))
                    .cloned()
                    .unwrap_or_else(|| json!({"error": "no answer"}))
            })
            .collect())
    }

    /// Whether the cluster's user has `role`.
    async fn cluster_has_role(&self, role: &str) -> Result<bool, String> {
        let r = self
            .send(
                vec![json!({"command": "getClient", "username": self.cluster_user})],
                Duration::from_secs(2),
            )
            .await?;
        Ok(r[0]["data"]["client"]["roles"]
            .as_array()
            .is_some_and(|roles| roles.iter().any(|x| x["rolename"] == role)))
    }

    /// Lets the cluster's own user publish and subscribe under `nodes/`. Adding a role to a
    /// connected client makes Mosquitto disconnect it, so the grant is sent without waiting for
    /// an answer, and checked once the client is connected and subscribed again (`subscribed`).
    pub async fn grant_cluster(
        &self,
        subscribed: &mut tokio::sync::watch::Receiver<bool>,
    ) -> Result<(), String> {
        let role = "canopy-cluster";
        self.send(
            vec![
                json!({"command": "createRole", "rolename": role}),
                acl(role, "publishClientSend", "nodes/#"),
                acl(role, "subscribePattern", "nodes/#"),
            ],
            Duration::from_secs(5),
        )
        .await?;
        if self.cluster_has_role(role).await? {
            return Ok(());
        }
        let grant = json!({"commands": [
            {"command": "addClientRole", "username": self.cluster_user, "rolename": role}
        ]});
        self.client
            .publish(DYNSEC_TOPIC, QoS::AtLeastOnce, false, grant.to_string())
            .await
            .map_err(|e| format!("cannot publish to the broker: {e}"))?;
        // The kick, then the reconnect and new subscriptions.
        let _ = tokio::time::timeout(Duration::from_secs(3), subscribed.wait_for(|s| !*s)).await;
        let _ = tokio::time::timeout(Duration::from_secs(10), subscribed.wait_for(|s| *s)).await;
        let mut last = String::from("the role did not show");
        for _ in 0..10 {
            match self.cluster_has_role(role).await {
                Ok(true) => return Ok(()),
                Ok(false) => {}
                Err(e) => last = e,
            }
            tokio::time::sleep(Duration::from_millis(300)).await;
        }
        Err(format!(
            "cannot grant the cluster user access to nodes/#: {last}"
        ))
    }
}

fn acl(role: &str, kind: &str, topic: &str) -> Value {
    json!({"command": "addRoleACL", "rolename": role, "acltype": kind, "topic": topic, "allow": true})
}

/// Routes a dynsec response to the request waiting for it.
pub fn dynsec_response(waiters: &DynsecWaiters, payload: &[u8]) {
    let Ok(v) = serde_json::from_slice::<Value>(payload) else {
        return;
    };
    let Some(corr) = v["responses"]
        .as_array()
        .and_then(|r| r.first())
        .and_then(|r| r["correlationData"].as_str())
    else {
        return;
    };
    let id = corr.rsplit_once('-').map_or(corr, |(id, _)| id).to_owned();
    if let Ok(mut w) = waiters.lock()
        && let Some(tx) = w.remove(&id)
    {
        let _ = tx.send(v);
    }
}

#[async_trait]
impl NodeAuth for DynsecAuth {
    async fn allow(&self, node: &NodeId, password: &str) -> Result<(), String> {
        let role = format!("canopy-node-{node}");
        let prefix = topics::node_prefix(node);
        let commands = vec![
            json!({"command": "createRole", "rolename": role}),
            acl(&role, "publishClientSend", &prefix),
            acl(&role, "subscribePattern", &prefix),
            json!({"command": "deleteClient", "username": node.to_string()}),
            json!({"command": "createClient", "username": node.to_string(), "password": password,
                           "roles": [{"rolename": role}]}),
        ];
        // Idempotent as a whole, so one retry covers an answer lost to a reconnect.
        let answers = match self.send(commands.clone(), Duration::from_secs(3)).await {
            Ok(a) => a,
            Err(_) => self.send(commands, Duration::from_secs(5)).await?,
        };
        match answers[4]["error"].as_str() {
            Some(e) => Err(format!("createClient: {e}")),
            None => Ok(()),
        }
    }
}
