//! The OpenAPI document, generated from the handlers' annotations and the types in
//! [`super::views`], and a small page that lists it (no assets from the internet).
//!
//! [`document`] completes what utoipa generates with what holds for the whole API, so no
//! annotation repeats it:
//! - the SLA v2.0 JSON Schema (`canopy_sla::schema`) under `components.schemas`: `Sla` and
//!   its definitions as `Sla<Name>`, and `SlaServices` for `POST /api/service`;
//! - the error answers of the extractors in [`super`], as [`ErrorBody`]: 401 for every
//!   operation with a bearer token, 400 and 413 for every request body, 400 for every path
//!   parameter (it must be UTF-8), 503 for every operation that writes (the store failed —
//!   never the request's fault);
//! - a `maximum` on every unsigned integer (`int32`/`int64`/`uint32`/`uint64` with `minimum`
//!   0): what its Rust type holds, so `1e300`, an integer to JSON Schema, is outside it.
//!
//! The document is also what the API enforces: [`body_problems`] checks a request body against
//! the schema the document gives it, before serde reads it (see [`super::Body`]).

use super::views::*;
use super::{accounts, apps, clusters};
use crate::model::{Member, Role};
use axum::Json;
use axum::response::Html;
use serde_json::{Value, json};
use std::collections::BTreeMap;
use std::sync::LazyLock;
use utoipa::openapi::security::{HttpAuthScheme, HttpBuilder, SecurityScheme};
use utoipa::{Modify, OpenApi};

struct BearerAuth;

impl Modify for BearerAuth {
    fn modify(&self, openapi: &mut utoipa::openapi::OpenApi) {
        if let Some(c) = openapi.components.as_mut() {
            c.add_security_scheme(
                "bearerAuth",
                SecurityScheme::Http(
                    HttpBuilder::new()
                        .scheme(HttpAuthScheme::Bearer)
                        .bearer_format("JWT")
                        .build(),
                ),
            );
        }
    }
}

#[derive(OpenApi)]
#[openapi(
    info(title = "Canopy root api", description = "Oakestra-compatible root orchestrator API. Every path also answers with a trailing slash."),
    paths(
        accounts::login, accounts::refresh, accounts::register, accounts::permission,
        accounts::get_user, accounts::change_password, accounts::update_user, accounts::delete_user,
        accounts::get_quota, accounts::put_quota, accounts::delete_quota,
        accounts::list_users, accounts::list_organizations, accounts::create_organization,
        accounts::update_organization, accounts::delete_organization,
        apps::create_applications, apps::get_application, apps::update_application,
        apps::delete_application, apps::list_applications, apps::list_user_applications,
        apps::add_services, apps::get_service, apps::update_service, apps::rollout_status, apps::delete_service,
        apps::list_services, apps::list_all_services, apps::scale_up, apps::scale_down, apps::operate, apps::service_events,
        clusters::list_clusters, clusters::list_active_clusters, clusters::list_nodes,
        super::events::stream, super::logs::stream,
    ),
    components(schemas(Role, Member, ErrorBody, ProblemView, MessageBody, Oid, FeedItem)),
    modifiers(&BearerAuth)
)]
pub struct ApiDoc;

static DOCUMENT: LazyLock<Value> = LazyLock::new(document);

/// The document as `/docs/openapi.json` serves it.
pub fn document() -> Value {
    let mut doc = serde_json::to_value(ApiDoc::openapi()).unwrap_or_default();
    if let Some(schemas) = doc
        .pointer_mut("/components/schemas")
        .and_then(Value::as_object_mut)
    {
        schemas.extend(sla_schemas());
    }
    if let Some(components) = doc.get_mut("components") {
        bound_unsigned(components);
    }
    if let Some(paths) = doc.get_mut("paths").and_then(Value::as_object_mut) {
        for item in paths.values_mut().filter_map(Value::as_object_mut) {
            for (method, op) in item.iter_mut() {
                add_common_errors(method, op);
            }
        }
    }
    doc
}

/// The SLA schema as components: its `$defs` become `Sla<Name>`, its references with them.
fn sla_schemas() -> Vec<(String, Value)> {
    fn rename(v: &mut Value) {
        match v {
            Value::Object(map) => {
                if let Some(Value::String(r)) = map.get_mut("$ref")
                    && let Some(name) = r.strip_prefix("#/$defs/")
                {
                    *r = format!("#/components/schemas/Sla{name}");
                }
                map.values_mut().for_each(rename);
            }
            Value::Array(items) => items.iter_mut().for_each(rename),
            _ => {}
        }
    }
    let mut root = canopy_sla::schema::schema();
    rename(&mut root);
    let mut out = Vec::new();
    if let Some(map) = root.as_object_mut() {
        map.remove("$schema");
        if let Some(Value::Object(defs)) = map.remove("$defs") {
            out.extend(defs.into_iter().map(|(k, v)| (format!("Sla{k}"), v)));
        }
    }
    out.push(("Sla".to_owned(), root));
    out.push((
        "SlaServices".to_owned(),
        json!({
            "description": "An SLA v2.0 document with exactly one application, the existing one \
                the services are added to (its applicationID, name and namespace).",
            "allOf": [
                {"$ref": "#/components/schemas/Sla"},
                {"properties": {"applications": {"minItems": 1, "maxItems": 1, "items": {
                    "required": ["applicationID"],
                    "properties": {"applicationID": {"minLength": 1}}}}}}
            ]
        }),
    ));
    out
}

/// Gives every unsigned integer schema under `v` the largest value its type holds.
fn bound_unsigned(v: &mut Value) {
    match v {
        Value::Object(map) => {
            let max = match map.get("format").and_then(Value::as_str) {
                Some("int32" | "uint32") => Some(json!(u32::MAX)),
                Some("int64" | "uint64") => Some(json!(u64::MAX)),
                _ => None,
            };
            if let Some(max) = max
                && map.get("minimum").and_then(Value::as_f64) == Some(0.0)
            {
                map.entry("maximum").or_insert(max);
            }
            map.values_mut().for_each(bound_unsigned);
        }
        Value::Array(items) => items.iter_mut().for_each(bound_unsigned),
        _ => {}
    }
}

/// Adds the answers every operation of its kind can give (see the module's documentation),
/// unless its annotation already describes them.
fn add_common_errors(method: &str, op: &mut Value) {
    let secured = op
        .get("security")
        .and_then(Value::as_array)
        .is_some_and(|s| !s.is_empty());
    let has_body = op.get("requestBody").is_some();
    let path_params = op
        .get("parameters")
        .and_then(Value::as_array)
        .is_some_and(|ps| ps.iter().any(|p| p["in"] == "path"));
    if let Some(body) = op.get_mut("requestBody") {
        body["required"] = Value::Bool(true);
    }
    let mut add = Vec::new();
    if secured {
        add.push((
            "401",
            "no valid bearer token: missing, expired, of the wrong type, or its user is gone",
        ));
    }
    if has_body {
        add.push((
            "400",
            "the body is not JSON or does not fit its schema (`field` names where)",
        ));
        add.push(("413", "the body is larger than --max-body-bytes"));
    }
    if path_params {
        add.push(("400", "a path parameter is not valid"));
    }
    if method != "get" {
        add.push(("503", "the store failed (never the request's fault)"));
    }
    let Some(responses) = op.get_mut("responses").and_then(Value::as_object_mut) else {
        return;
    };
    for (status, description) in add {
        let answer = responses.entry(status).or_insert_with(|| {
            json!({
                "content": {"application/json": {
                    "schema": {"$ref": "#/components/schemas/ErrorBody"}}}
            })
        });
        if answer
            .get("description")
            .and_then(Value::as_str)
            .unwrap_or("")
            .is_empty()
        {
            answer["description"] = json!(description);
        }
    }
}

/// A validator per request body schema the document names (`components.schemas.<Name>`).
static REQUEST_BODIES: LazyLock<BTreeMap<String, jsonschema::Validator>> = LazyLock::new(|| {
    let mut out = BTreeMap::new();
    let ops = DOCUMENT["paths"]
        .as_object()
        .into_iter()
        .flat_map(|paths| paths.values())
        .filter_map(Value::as_object)
        .flat_map(|item| item.values());
    for op in ops {
        let Some(name) = op
            .pointer("/requestBody/content/application~1json/schema/$ref")
            .and_then(Value::as_str)
            .and_then(|r| r.strip_prefix("#/components/schemas/"))
        else {
            continue;
        };
        let schema = json!({
            "$schema": "https://json-schema.org/draft/2020-12/schema",
            "$ref": format!("#/components/schemas/{name}"),
            "components": DOCUMENT["components"],
        });
        match jsonschema::draft202012::new(&schema) {
            Ok(v) => {
                out.insert(name.to_owned(), v);
            }
            // Generated from our own types: a defect of the build, which the OpenAPI test
            // catches (a body that breaks the document would then be let through).
            Err(e) => tracing::error!(schema = name, error = %e, "request schema does not compile"),
        }
    }
    out
});

/// How `value` breaks the document's schema `components.schemas.<name>` (empty: it fits;
/// `None`: the document has no request body of that name).
pub fn body_problems(name: &str, value: &Value) -> Option<Vec<canopy_sla::Problem>> {
    REQUEST_BODIES
        .get(name)
        .map(|v| canopy_sla::schema_problems(v, value))
}

pub async fn openapi_json() -> Json<&'static Value> {
    Json(&DOCUMENT)
}

const PAGE: &str = r#"<!doctype html>
<html><head><meta charset="utf-8"><title>Canopy root api</title>
<style>body{font-family:sans-serif;max-width:60em;margin:2em auto}code{background:#eee;padding:0 .3em}
li{margin:.2em 0}.m{display:inline-block;width:4.5em;font-weight:bold}</style></head>
<body><h1>Canopy root api</h1>
<p>The machine-readable document is <a href="/docs/openapi.json"><code>/docs/openapi.json</code></a>.
Log in with <code>POST /api/auth/login</code> and send <code>Authorization: Bearer &lt;token&gt;</code>.</p>
<ul id="ops"></ul>
<script>
fetch('/docs/openapi.json').then(r => r.json()).then(doc => {
  const ul = document.getElementById('ops');
  for (const [path, item] of Object.entries(doc.paths)) {
    for (const [method, op] of Object.entries(item)) {
      const li = document.createElement('li');
      li.innerHTML = '<span class="m"></span><code></code> ';
      li.children[0].textContent = method.toUpperCase();
      li.children[1].textContent = path;
      li.append(op.summary || op.description || '');
      ul.append(li);
    }
  }
});
</script></body></html>"#;

pub async fn page() -> Html<&'static str> {
    Html(PAGE)
}
