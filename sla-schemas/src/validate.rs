//! SLA validation. Three passes, each reporting every problem it finds with its JSON path:
//!
//! 1. JSON syntax (line and column of the first error; nothing else can be checked without it);
//! 2. structure, against the JSON Schema generated from [`crate::types`];
//! 3. meaning: what Oakestra leaves to the worker (port syntax, addresses, `KEY=VALUE`
//!    environment), per-type constraint fields, duplicate names, `autoscale`'s bounds and
//!    targets, health probes (one check, a runtime with sockets).
//!
//! Unknown fields are accepted, as Oakestra accepts them, and reported as warnings.

use crate::schema::validator;
use crate::types::{
    Application, Autoscale, ConstraintSpec, ConstraintType, Microservice, Probe, Sla,
};
use canopy_core::Virtualization;
use canopy_core::job::{EnvVar, GeoPoint, PortMapping};
use canopy_core::probe::valid_path;
use jsonschema::error::{TypeKind, ValidationErrorKind};
use jsonschema::paths::LocationSegment;
use serde::Deserialize;
use serde_json::Value;
use std::collections::HashMap;
use std::fmt;
use std::net::{Ipv4Addr, Ipv6Addr};

/// One problem in an SLA: where (`applications[0].microservices[1].port`) and what.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct Problem {
    pub path: String,
    pub message: String,
}

impl Problem {
    fn new(path: impl Into<String>, message: impl Into<String>) -> Self {
        Problem {
            path: path.into(),
            message: message.into(),
        }
    }
}

impl fmt::Display for Problem {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}: {}", self.path, self.message)
    }
}

/// Why an SLA was refused.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum SlaError {
    /// The text is not JSON.
    #[error("line {line}, column {column}: invalid JSON: {message}")]
    Syntax {
        line: usize,
        column: usize,
        message: String,
    },
    /// The JSON is not a valid SLA; every problem found is listed.
    #[error("{} problem(s), first: {}", problems.len(), problems.first().map(|p| p.to_string()).unwrap_or_default())]
    Invalid {
        problems: Vec<Problem>,
        warnings: Vec<Problem>,
    },
}

impl SlaError {
    /// Every problem as `(path, message)`; a syntax error has the path `line L, column C`.
    pub fn problems(&self) -> Vec<Problem> {
        match self {
            SlaError::Syntax {
                line,
                column,
                message,
            } => vec![Problem::new(
                format!("line {line}, column {column}"),
                format!("invalid JSON: {message}"),
            )],
            SlaError::Invalid { problems, .. } => problems.clone(),
        }
    }
}

/// An SLA that passed validation, with the warnings found on the way.
#[derive(Debug, Clone, PartialEq)]
pub struct Validated {
    pub sla: Sla,
    pub warnings: Vec<Problem>,
}

/// Parses and validates SLA text.
pub fn parse(text: &str) -> Result<Validated, SlaError> {
    let value: Value = serde_json::from_str(text).map_err(|e| SlaError::Syntax {
        line: e.line(),
        column: e.column(),
        message: syntax_message(&e),
    })?;
    validate_value(&value)
}

fn syntax_message(e: &serde_json::Error) -> String {
    // serde_json appends " at line L column C"; we report those separately.
    let s = e.to_string();
    match s.rfind(" at line ") {
        Some(i) => s[..i].to_owned(),
        None => s,
    }
}

/// Validates an already parsed JSON value.
pub fn validate_value(value: &Value) -> Result<Validated, SlaError> {
    let mut problems = schema_problems(validator(), value);
    // Unknown fields are collected as warnings whether or not the structure holds.
    let mut warnings = Vec::new();
    let typed: Result<Sla, _> =
        serde_ignored::deserialize(value, |p| warnings.push(unknown_field(&p)));
    if !problems.is_empty() {
        // Still check the meaning of every service that is sound on its own, so one run
        // reports all there is to fix.
        problems.extend(check_sound_services(value));
        problems.sort_by(|a, b| a.path.cmp(&b.path));
        problems.dedup();
        return Err(SlaError::Invalid { problems, warnings });
    }
    let sla = match typed {
        Ok(sla) => sla,
        Err(e) => {
            // The schema and the types agree, so this is a value the schema allows but Rust
            // cannot hold (e.g. a number beyond u64). Report it rather than panic.
            return Err(SlaError::Invalid {
                problems: vec![Problem::new("$", e.to_string())],
                warnings,
            });
        }
    };
    let problems = check_meaning(&sla);
    if problems.is_empty() {
        Ok(Validated { sla, warnings })
    } else {
        Err(SlaError::Invalid { problems, warnings })
    }
}

/// Every way `value` breaks the schema `validator` was built from, each with its path
/// (`a[0].b`; `$` for the value itself) and a message — the form SLA problems take, for any
/// JSON Schema.
pub fn schema_problems(validator: &jsonschema::Validator, value: &Value) -> Vec<Problem> {
    validator
        .iter_errors(value)
        .map(|e| schema_problem(&e))
        .collect()
}

/// Formats a JSON pointer location as `a[0].b`.
fn format_location<'a>(segments: impl Iterator<Item = LocationSegment<'a>>) -> String {
    let mut out = String::new();
    for seg in segments {
        match seg {
            LocationSegment::Property(name) => {
                if !out.is_empty() {
                    out.push('.');
                }
                out.push_str(&name);
            }
            LocationSegment::Index(i) => out.push_str(&format!("[{i}]")),
        }
    }
    if out.is_empty() { "$".to_owned() } else { out }
}

fn join(path: &str, field: &str) -> String {
    if path == "$" {
        field.to_owned()
    } else {
        format!("{path}.{field}")
    }
}

fn schema_problem(e: &jsonschema::ValidationError<'_>) -> Problem {
    let path = format_location(e.instance_path().iter());
    match e.kind() {
        ValidationErrorKind::Required { property } => {
            let name = property
                .as_str()
                .map(str::to_owned)
                .unwrap_or_else(|| property.to_string());
            Problem::new(join(&path, &name), "is required")
        }
        ValidationErrorKind::Pattern { pattern } => {
            Problem::new(path, format!("must match {pattern}"))
        }
        ValidationErrorKind::Type { kind } => {
            let expected = match kind {
                TypeKind::Single(t) => t.to_string(),
                TypeKind::Multiple(_) => "another type".to_owned(),
            };
            Problem::new(
                path,
                format!(
                    "must be of type {expected}, found {}",
                    json_type(e.instance())
                ),
            )
        }
        ValidationErrorKind::Constant { expected_value } => {
            let hint = if path == "sla_version" && e.instance().as_str() == Some("v1.0") {
                " (v1.0 is deprecated)"
            } else {
                ""
            };
            Problem::new(path, format!("must be {expected_value}{hint}"))
        }
        ValidationErrorKind::Enum { options } => {
            let list = options
                .as_array()
                .map(|a| {
                    a.iter()
                        .map(|v| {
                            v.as_str()
                                .map(str::to_owned)
                                .unwrap_or_else(|| v.to_string())
                        })
                        .collect::<Vec<_>>()
                        .join(", ")
                })
                .unwrap_or_else(|| options.to_string());
            Problem::new(path, format!("must be one of: {list}"))
        }
        ValidationErrorKind::MaxLength { limit: 0 } if path.ends_with("microserviceID") => {
            Problem::new(path, "must be empty: the server assigns service ids")
        }
        ValidationErrorKind::MaxLength { limit } => {
            Problem::new(path, format!("must be at most {limit} characters"))
        }
        ValidationErrorKind::MinLength { limit: 1 } => Problem::new(path, "must not be empty"),
        ValidationErrorKind::MinLength { limit } => {
            Problem::new(path, format!("must be at least {limit} characters"))
        }
        ValidationErrorKind::Minimum { limit } => {
            Problem::new(path, format!("must be at least {limit}"))
        }
        ValidationErrorKind::Maximum { limit } => {
            Problem::new(path, format!("must be at most {limit}"))
        }
        _ => Problem::new(path, e.to_string()),
    }
}

fn json_type(v: &Value) -> &'static str {
    match v {
        Value::Null => "null",
        Value::Bool(_) => "boolean",
        Value::Number(n) if n.is_i64() || n.is_u64() => "integer",
        Value::Number(_) => "number",
        Value::String(_) => "string",
        Value::Array(_) => "array",
        Value::Object(_) => "object",
    }
}

fn unknown_field(p: &serde_ignored::Path<'_>) -> Problem {
    fn fmt_path(p: &serde_ignored::Path<'_>, out: &mut String) {
        use serde_ignored::Path;
        match p {
            Path::Root => {}
            Path::Seq { parent, index } => {
                fmt_path(parent, out);
                out.push_str(&format!("[{index}]"));
            }
            Path::Map { parent, key } => {
                fmt_path(parent, out);
                if !out.is_empty() {
                    out.push('.');
                }
                out.push_str(key);
            }
            Path::Some { parent }
            | Path::NewtypeStruct { parent }
            | Path::NewtypeVariant { parent } => fmt_path(parent, out),
        }
    }
    let mut path = String::new();
    fmt_path(p, &mut path);
    let field = path.rsplit('.').next().unwrap_or_default();
    let hint = match field {
        "vcpu" => " (did you mean `vcpus`?)",
        "vgpu" => " (did you mean `vgpus`?)",
        "vtpu" => " (did you mean `vtpus`?)",
        "bandwith_in" => " (did you mean `bandwidth_in`?)",
        "bandwith_out" => " (did you mean `bandwidth_out`?)",
        "api_version" => " (did you mean `sla_version`?)",
        "ports" => " (did you mean `port`?)",
        "env" => " (did you mean `environment`?)",
        "command" => " (did you mean `cmd`?)",
        _ => "",
    };
    Problem::new(path, format!("unknown field, ignored{hint}"))
}

/// Checks what the schema cannot express.
fn check_meaning(sla: &Sla) -> Vec<Problem> {
    let mut problems = Vec::new();
    let mut apps: HashMap<(&str, &str), usize> = HashMap::new();
    for (i, app) in sla.applications.iter().enumerate() {
        let path = format!("applications[{i}]");
        if let Some(first) = apps.insert((&app.application_name, &app.application_namespace), i) {
            problems.push(Problem::new(
                format!("{path}.application_name"),
                format!(
                    "application {}.{} already appears at applications[{first}]",
                    app.application_name, app.application_namespace
                ),
            ));
        }
        check_application(app, &path, &mut problems);
    }
    problems
}

/// Meaning checks of each service that deserializes by itself, in an SLA whose structure failed.
fn check_sound_services(value: &Value) -> Vec<Problem> {
    let mut problems = Vec::new();
    let apps = value.get("applications").and_then(Value::as_array);
    for (i, app) in apps.into_iter().flatten().enumerate() {
        let services = app.get("microservices").and_then(Value::as_array);
        for (j, ms) in services.into_iter().flatten().enumerate() {
            if let Ok(ms) = Microservice::deserialize(ms) {
                check_microservice(
                    &ms,
                    &format!("applications[{i}].microservices[{j}]"),
                    &mut problems,
                );
            }
        }
    }
    problems
}

fn check_application(app: &Application, path: &str, problems: &mut Vec<Problem>) {
    let mut names: HashMap<(&str, &str), usize> = HashMap::new();
    for (j, ms) in app.microservices.iter().enumerate() {
        let path = format!("{path}.microservices[{j}]");
        if let Some(first) = names.insert((&ms.microservice_name, &ms.microservice_namespace), j) {
            problems.push(Problem::new(
                format!("{path}.microservice_name"),
                format!(
                    "service {}.{} already appears at microservices[{first}] of this application",
                    ms.microservice_name, ms.microservice_namespace
                ),
            ));
        }
        check_microservice(ms, &path, problems);
    }
}

fn check_microservice(ms: &Microservice, path: &str, problems: &mut Vec<Problem>) {
    let mut push =
        |field: String, msg: String| problems.push(Problem::new(format!("{path}.{field}"), msg));

    if let Err(e) = PortMapping::parse_list(&ms.port) {
        push("port".into(), e);
    }
    for (k, entry) in ms.environment.iter().enumerate() {
        if let Err(e) = EnvVar::parse(entry) {
            push(format!("environment[{k}]"), e);
        }
    }
    let a = &ms.addresses;
    for (field, value, v6) in [
        ("rr_ip", &a.rr_ip, false),
        ("rr_ip_v6", &a.rr_ip_v6, true),
        ("closest_ip", &a.closest_ip, false),
        ("closest_ip_v6", &a.closest_ip_v6, true),
    ] {
        let Some(ip) = value else { continue };
        let ok = if v6 {
            ip.parse::<Ipv6Addr>().is_ok()
        } else {
            ip.parse::<Ipv4Addr>().is_ok()
        };
        if !ok {
            let kind = if v6 { "IPv6" } else { "IPv4" };
            push(
                format!("addresses.{field}"),
                format!("{ip:?} is not an {kind} address"),
            );
        }
    }
    check_code(ms, &mut push);
    if let Some(a) = &ms.autoscale {
        check_autoscale(ms, a, &mut push);
    }
    for (field, probe) in [
        ("readiness_probe", &ms.readiness_probe),
        ("liveness_probe", &ms.liveness_probe),
    ] {
        if let Some(p) = probe {
            check_probe(ms, field, p, &mut push);
        }
    }
    for (k, c) in ms.constraints.iter().enumerate() {
        for (field, msg) in constraint_problems(c) {
            push(format!("constraints[{k}].{field}"), msg);
        }
    }
}

fn check_code(ms: &Microservice, push: &mut impl FnMut(String, String)) {
    let code = ms.code.trim();
    match ms.virtualization {
        Virtualization::Container => {
            for prefix in ["docker-archive:", "oci-archive:"] {
                if let Some(p) = code.strip_prefix(prefix)
                    && !p.starts_with('/')
                {
                    push(
                        "code".into(),
                        format!(
                            "{prefix} needs an absolute path, e.g. {prefix}/srv/images/app.tar"
                        ),
                    );
                }
            }
            if code.chars().any(char::is_whitespace) {
                push(
                    "code".into(),
                    "an image reference must not contain whitespace".into(),
                );
            }
        }
        Virtualization::Unikernel => {
            let kernels = code.split(',').filter(|s| !s.trim().is_empty()).count();
            if !ms.arch.is_empty() && kernels != ms.arch.len() {
                push(
                    "code".into(),
                    format!(
                        "lists {kernels} kernel(s) but arch lists {} architecture(s); give one kernel per architecture",
                        ms.arch.len()
                    ),
                );
            }
        }
        Virtualization::Wasm => {}
    }
}

/// What the schema cannot say about `autoscale`: the order of `min` and `max`, a target to
/// aim for, something to measure memory against.
fn check_autoscale(ms: &Microservice, a: &Autoscale, push: &mut impl FnMut(String, String)) {
    if a.max < a.min {
        push(
            "autoscale.max".into(),
            format!("must be at least min ({})", a.min),
        );
    }
    if a.target_cpu_percent.is_none() && a.target_memory_percent.is_none() {
        push(
            "autoscale".into(),
            "needs target_cpu_percent and/or target_memory_percent".into(),
        );
    }
    if a.target_memory_percent.is_some() && ms.memory == 0 {
        push(
            "autoscale.target_memory_percent".into(),
            "is a percentage of the service's memory; set memory (MB)".into(),
        );
    }
    if ms.one_shot {
        push(
            "autoscale".into(),
            "does not apply to a one_shot service (its instances end by themselves)".into(),
        );
    }
}

/// What the schema cannot say about a probe: exactly one check, one that Canopy runs, on a
/// runtime with sockets, with a path it can send.
fn check_probe(ms: &Microservice, field: &str, p: &Probe, push: &mut impl FnMut(String, String)) {
    let checks = [p.http.is_some(), p.tcp.is_some(), p.exec.is_some()];
    match checks.iter().filter(|c| **c).count() {
        0 => push(field.into(), "needs one of http, tcp or exec".into()),
        1 => {}
        _ => push(
            field.into(),
            "has more than one of http, tcp and exec; give exactly one".into(),
        ),
    }
    if let Some(command) = &p.exec {
        if command.first().is_none_or(|c| c.is_empty()) {
            push(
                format!("{field}.exec"),
                "must name a command to run, e.g. [\"sh\", \"-c\", \"test -f /tmp/ready\"]".into(),
            );
        }
        if ms.virtualization != Virtualization::Container {
            push(
                format!("{field}.exec"),
                "runs a command inside a container; a unikernel or wasm instance has none: use http or tcp".into(),
            );
        }
    }
    if let Some(h) = &p.http
        && !valid_path(&h.path)
    {
        push(
            format!("{field}.http.path"),
            format!(
                "{:?} must start with / and hold no spaces or control characters",
                h.path
            ),
        );
    }
    if ms.virtualization == Virtualization::Wasm {
        push(
            field.into(),
            "a wasm instance has no sockets to probe; probes need container or unikernel".into(),
        );
    }
}

/// Per-type requirements of a constraint, as `(field, message)`.
fn constraint_problems(c: &ConstraintSpec) -> Vec<(&'static str, String)> {
    let mut out = Vec::new();
    let missing = |s: &Option<String>| s.as_deref().is_none_or(|s| s.trim().is_empty());
    let positive = |t: Option<f64>| t.is_some_and(|t| t > 0.0);
    match c.kind {
        ConstraintType::Direct => {
            if missing(&c.cluster) && missing(&c.node) {
                out.push((
                    "cluster",
                    "a direct constraint needs `cluster` and/or `node`".to_owned(),
                ));
            }
            if let Some(nodes) = &c.node
                && nodes.split(';').any(|n| n.trim().is_empty())
                && !nodes.trim().is_empty()
            {
                out.push((
                    "node",
                    format!("{nodes:?} has an empty entry; use node1;node2"),
                ));
            }
        }
        ConstraintType::Clusters => {
            if c.allowed.is_empty() {
                out.push((
                    "allowed",
                    "a clusters constraint needs a non-empty `allowed` list".to_owned(),
                ));
            }
        }
        ConstraintType::Geo => {
            match c.location.as_deref().map(GeoPoint::parse) {
                None => out.push((
                    "location",
                    "a geo constraint needs `location` as \"LAT,LON\"".to_owned(),
                )),
                Some(Err(e)) => out.push(("location", e)),
                Some(Ok(_)) => {}
            }
            if !positive(c.threshold) {
                out.push((
                    "threshold",
                    "a geo constraint needs `threshold` (radius in km) above 0".to_owned(),
                ));
            }
        }
        ConstraintType::Latency => {
            if missing(&c.area) {
                out.push(("area", "a latency constraint needs `area`".to_owned()));
            }
            if !positive(c.threshold) {
                out.push((
                    "threshold",
                    "a latency constraint needs `threshold` (ms) above 0".to_owned(),
                ));
            }
        }
        ConstraintType::Addons => {
            if c.needs.is_empty() {
                out.push((
                    "needs",
                    "an addons constraint needs a non-empty `needs` list".to_owned(),
                ));
            }
        }
    }
    out
}
