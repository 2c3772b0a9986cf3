//! Canopy's domain types, shared by every other crate.
//!
//! Nothing here does I/O or depends on an async runtime: these are the nouns of the system
//! (ids, statuses, resources, names, jobs) and the rules that belong to them. The one
//! exception is [`span`]: marks along the submit path, emitted through `tracing` (off unless
//! the `canopy_span=debug` filter is on), shared by the three daemons.

pub mod addressing;
pub mod autoscale;
pub mod ids;
pub mod job;
pub mod link;
pub mod logs;
pub mod naming;
pub mod overlay;
pub mod probe;
pub mod resources;
pub mod span;
pub mod status;

pub use ids::{
    ApplicationId, ClusterId, InstanceNumber, NodeId, OrganizationId, ServiceId, UserId,
};
pub use job::{Constraint, EnvVar, GeoPoint, PortMapping, Protocol, ServiceSpec};
pub use naming::JobName;
pub use resources::{Architecture, Resources, Virtualization};
pub use status::{InstanceStatus, StatusClass};
