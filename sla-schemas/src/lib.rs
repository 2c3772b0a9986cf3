//! SLA v2.0: the deployment descriptor users send, as Oakestra defines it.
//!
//! - [`types`]: the serde types, the one definition of the format;
//! - [`schema`]: the JSON Schema generated from the types (committed under `schemas/`);
//! - [`validate`]: parsing and validation that report every problem with its JSON path;
//! - [`spec`]: turning an accepted service into the domain's `ServiceSpec`.

pub mod schema;
pub mod spec;
pub mod types;
pub mod validate;

pub use types::{Application, Microservice, SLA_VERSION, Sla};
pub use validate::{Problem, SlaError, Validated, parse, schema_problems, validate_value};
