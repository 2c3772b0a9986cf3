//! The MQTT broker the cluster and its workers meet on, behind [`NodeAuth`]:
//!
//! - [`EmbeddedBroker`] (`embedded.rs`): the `mqtt5` crate's broker inside the cluster process
//!   (default, `--mqtt-addr`), TCP_NODELAY on every connection, stopped with the cluster.
//!   [`access`] holds its credential table (SHA-256 of each password, changed at runtime by
//!   [`NodeAuth::allow`]) and its topic rules: the cluster's user anywhere, a worker only under
//!   `nodes/<its id>/` for publish, subscribe and its last will.
//! - [`DynsecAuth`] (`dynsec.rs`): an external Mosquitto (`--mqtt-url
//!   mqtt://USER:PASS@HOST:PORT`) with its dynamic-security plugin. The cluster's user must be a
//!   dynsec admin; each worker gets a client and a role that may publish and subscribe only
//!   under `nodes/<id>/`.
//!
//! [`NodeAuth`]: crate::control::NodeAuth
//! [`NodeAuth::allow`]: crate::control::NodeAuth::allow

pub mod access;
mod dynsec;
mod embedded;

pub use dynsec::{DYNSEC_RESPONSE_TOPIC, DYNSEC_TOPIC, DynsecAuth, DynsecWaiters, dynsec_response};
pub use embedded::EmbeddedBroker;
