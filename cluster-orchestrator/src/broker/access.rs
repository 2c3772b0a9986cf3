//! Who may connect to the embedded broker and which topics each connection may use.
//!
//! - A connection names a user and a password; the password's SHA-256 must match the user's
//!   entry in the credential table (the cluster's own user, and one entry per worker added by
//!   [`Access::allow`] at registration or at start-up). Anonymous clients are refused.
//! - The cluster's user may publish and subscribe anywhere (it subscribes `nodes/+/…` and
//!   publishes to every worker).
//! - A worker may publish, subscribe and set its last will only under `nodes/<its id>/`. A
//!   CONNECT whose will names another topic is refused ("not authorized"); the broker checks
//!   the will again when it publishes it.

use crate::model::sha256_hex;
use canopy_store::secrets::constant_time_eq;
use mqtt5::broker::{AuthProvider, AuthResult};
use mqtt5::packet::connect::ConnectPacket;
use mqtt5::protocol::v5::reason_codes::ReasonCode;
use std::collections::HashMap;
use std::future::Future;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::RwLock;

/// Whom a connection speaks for.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Principal<'a> {
    Cluster,
    Node(&'a str),
}

/// Whether `who` may publish to `topic` or subscribe to the filter `topic`: the cluster
/// anywhere, a worker only under `nodes/<its id>/` (node ids hold no wildcard characters, so a
/// filter with that prefix never reaches another worker's topics).
pub fn permits(who: &Principal<'_>, topic: &str) -> bool {
    match who {
        Principal::Cluster => true,
        Principal::Node(id) => topic
            .strip_prefix("nodes/")
            .and_then(|rest| rest.strip_prefix(id))
            .is_some_and(|rest| rest.starts_with('/')),
    }
}

/// Whether worker `id` may connect as `client_id`: its id, or its id and `-` and more (the
/// node engine connects as `<id>-ne`), so no worker can take over another's session.
pub fn own_client_id(id: &str, client_id: &str) -> bool {
    client_id
        .strip_prefix(id)
        .is_some_and(|rest| rest.is_empty() || rest.starts_with('-'))
}

/// The credential table and the topic rules, as the broker's authentication provider.
pub struct Access {
    cluster_user: String,
    /// User name → SHA-256 of the password.
    credentials: RwLock<HashMap<String, String>>,
}

impl Access {
    pub fn new(cluster_user: &str, cluster_password: &str) -> Access {
        Access {
            cluster_user: cluster_user.to_owned(),
            credentials: RwLock::new(HashMap::from([(
                cluster_user.to_owned(),
                sha256_hex(cluster_password),
            )])),
        }
    }

    /// Admits `user` with a password given as its SHA-256 (replacing an earlier one).
    pub fn allow_hash(&self, user: &str, hash: String) -> Result<(), String> {
        if user == self.cluster_user {
            return Err(format!("{user:?} is the cluster's own user"));
        }
        self.credentials
            .write()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .insert(user.to_owned(), hash);
        Ok(())
    }

    fn principal<'a>(&self, user: Option<&'a str>) -> Option<Principal<'a>> {
        match user? {
            u if u == self.cluster_user => Some(Principal::Cluster),
            u => Some(Principal::Node(u)),
        }
    }

    fn check_password(&self, user: &str, password: &[u8]) -> bool {
        let Ok(password) = std::str::from_utf8(password) else {
            return false;
        };
        self.credentials
            .read()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .get(user)
            .is_some_and(|h| constant_time_eq(h, &sha256_hex(password)))
    }

    /// The answer to a CONNECT.
    pub fn admit(&self, connect: &ConnectPacket) -> AuthResult {
        let (Some(user), Some(password)) = (&connect.username, &connect.password) else {
            return AuthResult::fail(ReasonCode::BadUsernameOrPassword);
        };
        if !self.check_password(user, password) {
            return AuthResult::fail(ReasonCode::BadUsernameOrPassword);
        }
        if let Some(Principal::Node(id)) = self.principal(Some(user))
            && !own_client_id(id, &connect.client_id)
        {
            // Another worker's client id would take over (and end) that worker's session.
            tracing::warn!(user, client_id = %connect.client_id, "MQTT connection refused: a client id that is not the worker's own");
            return AuthResult::fail(ReasonCode::ClientIdentifierNotValid);
        }
        if let (Some(will), Some(who)) = (&connect.will, self.principal(Some(user)))
            && !permits(&who, &will.topic)
        {
            tracing::warn!(user, topic = %will.topic, "MQTT connection refused: last will on a topic the user may not publish to");
            return AuthResult::fail(ReasonCode::NotAuthorized);
        }
        AuthResult::success_with_user(user.clone())
    }

    fn authorized(&self, user: Option<&str>, topic: &str, what: &str) -> bool {
        let ok = self.principal(user).is_some_and(|who| permits(&who, topic));
        if !ok {
            tracing::warn!(user, topic, "MQTT {what} refused");
        }
        ok
    }
}

type Answer<'a, T> = Pin<Box<dyn Future<Output = T> + Send + 'a>>;

impl AuthProvider for Access {
    fn authenticate<'a>(
        &'a self,
        connect: &'a ConnectPacket,
        _client_addr: SocketAddr,
    ) -> Answer<'a, mqtt5::error::Result<AuthResult>> {
        Box::pin(async move { Ok(self.admit(connect)) })
    }

    fn authorize_publish<'a>(
        &'a self,
        _client_id: &str,
        user_id: Option<&'a str>,
        topic: &'a str,
    ) -> Answer<'a, bool> {
        Box::pin(async move { self.authorized(user_id, topic, "publish") })
    }

    fn authorize_subscribe<'a>(
        &'a self,
        _client_id: &str,
        user_id: Option<&'a str>,
        topic_filter: &'a str,
    ) -> Answer<'a, bool> {
        Box::pin(async move { self.authorized(user_id, topic_filter, "subscribe") })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use mqtt5::{Properties, QoS, WillMessage};

    #[test]
    fn a_node_connects_only_under_its_own_client_id() {
        assert!(own_client_id("aa01", "aa01-ne"));
        assert!(own_client_id("aa01", "aa01"));
        assert!(!own_client_id("aa01", "bb02-ne"));
        assert!(!own_client_id("aa01", "aa012-ne"));
        assert!(!own_client_id("aa01", "x-aa01"));
    }

    #[test]
    fn a_node_stays_under_its_own_prefix() {
        let a = Principal::Node("aa01");
        for ok in [
            "nodes/aa01/job",
            "nodes/aa01/will",
            "nodes/aa01/#",
            "nodes/aa01/+",
            "nodes/aa01/logs/data",
        ] {
            assert!(permits(&a, ok), "{ok}");
        }
        for no in [
            "nodes/bb02/job",
            "nodes/bb02/#",
            "nodes/aa012/job",
            "nodes/aa01",
            "nodes/+/job",
            "nodes/#",
            "#",
            "+/aa01/job",
            "$share/g/nodes/aa01/job",
            "$SYS/#",
            "$CONTROL/dynamic-security/v1",
            "",
        ] {
            assert!(!permits(&a, no), "{no}");
        }
        assert!(permits(&Principal::Cluster, "#"));
        assert!(permits(&Principal::Cluster, "nodes/+/job"));
    }

    fn connect(user: &str, password: &str, will: Option<&str>) -> ConnectPacket {
        ConnectPacket {
            protocol_version: 4,
            clean_start: true,
            keep_alive: 5,
            client_id: format!("{user}-ne"),
            username: Some(user.into()),
            password: Some(password.as_bytes().to_vec()),
            will: will.map(|t| WillMessage::new(t, b"{}".to_vec()).with_qos(QoS::AtLeastOnce)),
            properties: Properties::default(),
            will_properties: Properties::default(),
        }
    }

    #[test]
    fn credentials_and_wills_are_checked_at_connect() {
        let access = Access::new("canopy-cluster", "cluster-pw");
        access.allow_hash("aa01", sha256_hex("node-pw")).unwrap();
        let code = |c: &ConnectPacket| {
            let r = access.admit(c);
            (r.authenticated, r.reason_code)
        };
        assert_eq!(
            code(&connect("aa01", "node-pw", Some("nodes/aa01/will"))),
            (true, ReasonCode::Success)
        );
        assert_eq!(
            code(&connect("aa01", "node-pw", Some("nodes/bb02/will"))),
            (false, ReasonCode::NotAuthorized)
        );
        assert_eq!(
            code(&connect("aa01", "wrong", None)),
            (false, ReasonCode::BadUsernameOrPassword)
        );
        assert_eq!(
            code(&connect("bb02", "node-pw", None)),
            (false, ReasonCode::BadUsernameOrPassword)
        );
        let mut anonymous = connect("aa01", "node-pw", None);
        anonymous.username = None;
        assert!(!access.admit(&anonymous).authenticated);
        assert!(
            access
                .admit(&connect("canopy-cluster", "cluster-pw", None))
                .authenticated
        );
        assert!(
            access
                .allow_hash("canopy-cluster", sha256_hex("x"))
                .is_err()
        );
        // A new password replaces the old one at once.
        access.allow_hash("aa01", sha256_hex("new-pw")).unwrap();
        assert!(
            !access
                .admit(&connect("aa01", "node-pw", None))
                .authenticated
        );
        assert!(access.admit(&connect("aa01", "new-pw", None)).authenticated);
    }
}
