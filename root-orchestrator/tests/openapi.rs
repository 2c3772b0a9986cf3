//! The OpenAPI document is exact: a real root's `/docs/openapi.json` drives every operation it
//! lists, with request bodies generated from the document's own schemas (valid ones, and
//! invalid ones: each required field missing, each field of every JSON type it must not have,
//! each constraint broken, the wrong top-level type, null, garbage, nothing, too much), path
//! parameters naming existing and unknown objects or not valid at all, and with and without a
//! token. No answer may be a 5xx (or no answer at all), every status must be one the document
//! lists for the operation, every JSON answer must fit the schema listed for its status, an
//! invalid body must be refused, and every operation must succeed at least once.
//!
//! Generation is deterministic: the same requests in the same order on every run.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use canopy_core::InstanceStatus;
use common::{ADMIN_PASSWORD, TestCluster, TestRoot, capacity, sla};
use reqwest::{Method, StatusCode};
use serde_json::{Map, Value, json};
use std::collections::{BTreeMap, BTreeSet, HashMap};

const ALICE_PASSWORD: &str = "pw-of-alice";

/// The document, with the validators compiled from it so far.
struct Doc {
    doc: Value,
    validators: HashMap<String, jsonschema::Validator>,
}

impl Doc {
    /// `schema` with every `$ref` at its top followed, and the name of the last component.
    fn resolve(&self, schema: &Value) -> (Option<String>, Value) {
        let mut name = None;
        let mut s = schema.clone();
        for _ in 0..16 {
            let Some(r) = s.get("$ref").and_then(Value::as_str) else {
                break;
            };
            let pointer = r.strip_prefix('#').expect("local references only");
            name = pointer.rsplit('/').next().map(str::to_owned);
            s = self
                .doc
                .pointer(pointer)
                .unwrap_or_else(|| panic!("{r} does not resolve"))
                .clone();
        }
        (name, s)
    }

    /// Whether `value` fits `schema` (references resolved in the document); the errors if not.
    fn check(&mut self, schema: &Value, value: &Value) -> Result<(), String> {
        let key = schema.to_string();
        if !self.validators.contains_key(&key) {
            let mut root = json!({
                "$schema": "https://json-schema.org/draft/2020-12/schema",
                "allOf": [schema],
            });
            root["components"] = self.doc["components"].clone();
            let v = jsonschema::draft202012::new(&root)
                .unwrap_or_else(|e| panic!("schema {schema} does not compile: {e}"));
            self.validators.insert(key.clone(), v);
        }
        let v = &self.validators[&key];
        let errors: Vec<String> = v
            .iter_errors(value)
            .take(3)
            .map(|e| format!("{} at {}", e, e.instance_path()))
            .collect();
        if errors.is_empty() {
            Ok(())
        } else {
            Err(errors.join("; "))
        }
    }

    /// Merges the parts of an `allOf` into one schema (properties and `required` joined).
    fn merge(&self, a: Value, b: &Value) -> Value {
        let (_, b) = self.resolve(b);
        let mut out = self.resolve(&a).1;
        let Some(bm) = b.as_object() else { return out };
        for (k, v) in bm {
            match k.as_str() {
                "properties" => {
                    let props = out["properties"].as_object().cloned().unwrap_or_default();
                    let mut merged = props.clone();
                    for (p, ps) in v.as_object().into_iter().flatten() {
                        let joined = match props.get(p) {
                            Some(old) => self.merge(old.clone(), ps),
                            None => ps.clone(),
                        };
                        merged.insert(p.clone(), joined);
                    }
                    out["properties"] = Value::Object(merged);
                }
                "required" => {
                    let mut r: Vec<Value> = out["required"].as_array().cloned().unwrap_or_default();
                    r.extend(v.as_array().into_iter().flatten().cloned());
                    out["required"] = Value::Array(r);
                }
                "items" if out.get("items").is_some() => {
                    out["items"] = self.merge(out["items"].clone(), v);
                }
                _ => out[k] = v.clone(),
            }
        }
        out
    }

    /// A value that fits `schema`: only required properties, or (`full`) all of them. A
    /// property named in `hints` (`Component.property`) takes the hinted value.
    fn sample(&self, schema: &Value, full: bool, hints: &Hints, depth: usize) -> Value {
        let (name, s) = self.resolve(schema);
        if depth > 10 {
            return Value::Null;
        }
        if let Some(parts) = s.get("allOf").and_then(Value::as_array) {
            let merged = parts.iter().fold(json!({}), |acc, p| self.merge(acc, p));
            return self.sample_resolved(name, &merged, full, hints, depth);
        }
        self.sample_resolved(name, &s, full, hints, depth)
    }

    fn sample_resolved(
        &self,
        name: Option<String>,
        s: &Value,
        full: bool,
        hints: &Hints,
        depth: usize,
    ) -> Value {
        if let Some(c) = s.get("const") {
            return c.clone();
        }
        if let Some(e) = s.get("enum").and_then(Value::as_array) {
            return e[0].clone();
        }
        for key in ["oneOf", "anyOf"] {
            if let Some(options) = s.get(key).and_then(Value::as_array) {
                let pick = options
                    .iter()
                    .find(|o| o.get("type") != Some(&json!("null")))
                    .unwrap_or(&options[0]);
                return self.sample(pick, full, hints, depth + 1);
            }
        }
        let ty = match &s["type"] {
            Value::String(t) => t.clone(),
            Value::Array(ts) => ts
                .iter()
                .filter_map(Value::as_str)
                .find(|t| *t != "null")
                .unwrap_or("null")
                .to_owned(),
            _ => "object".to_owned(),
        };
        match ty.as_str() {
            "object" => {
                let required: BTreeSet<&str> = s["required"]
                    .as_array()
                    .into_iter()
                    .flatten()
                    .filter_map(Value::as_str)
                    .collect();
                let mut out = Map::new();
                for (k, sub) in s["properties"].as_object().into_iter().flatten() {
                    let hint = name.as_ref().and_then(|n| hints.get(&format!("{n}.{k}")));
                    if !(full || required.contains(k.as_str())) {
                        continue;
                    }
                    let v = match hint {
                        Some(h) => h.clone(),
                        None => self.sample(sub, full, hints, depth + 1),
                    };
                    out.insert(k.clone(), v);
                }
                Value::Object(out)
            }
            "array" => {
                let min = s["minItems"].as_u64().unwrap_or(0);
                let n = if full { min.max(1) } else { min };
                (0..n)
                    .map(|_| self.sample(&s["items"], full, hints, depth + 1))
                    .collect()
            }
            "string" => {
                let min = s["minLength"].as_u64().unwrap_or(1) as usize;
                let max = s["maxLength"].as_u64().map_or(usize::MAX, |m| m as usize);
                let base = "abc1".repeat(min / 4 + 1);
                Value::String(base[..min.max(4).min(max)].to_owned())
            }
            "integer" | "number" => {
                // 1 (or 0.5), within the bounds.
                let mut n: f64 = if ty == "integer" { 1.0 } else { 0.5 };
                if let Some(min) = s["minimum"].as_f64() {
                    n = n.max(min);
                }
                if let Some(max) = s["maximum"].as_f64() {
                    n = n.min(max);
                }
                if ty == "integer" {
                    json!(n as i64)
                } else {
                    json!(n)
                }
            }
            "boolean" => json!(true),
            _ => Value::Null,
        }
    }
}

type Hints = HashMap<String, Value>;

/// Values of each JSON type, for fields that must not have some of them.
fn every_type() -> Vec<Value> {
    vec![
        json!("text"),
        json!(7),
        json!(1.5),
        json!(true),
        json!(null),
        json!([]),
        json!({}),
    ]
}

/// Every value inside `v` as a JSON pointer (objects' fields and arrays' items), depth first.
fn pointers(v: &Value, at: String, out: &mut Vec<String>) {
    match v {
        Value::Object(m) => {
            for (k, x) in m {
                let p = format!("{at}/{}", k.replace('~', "~0").replace('/', "~1"));
                out.push(p.clone());
                pointers(x, p, out);
            }
        }
        Value::Array(items) => {
            for (i, x) in items.iter().enumerate() {
                let p = format!("{at}/{i}");
                out.push(p.clone());
                pointers(x, p, out);
            }
        }
        _ => {}
    }
}

/// `body` with the value at `pointer` removed (`None`) or replaced.
fn mutate(body: &Value, pointer: &str, with: Option<Value>) -> Value {
    let mut out = body.clone();
    let (parent, last) = pointer.rsplit_once('/').unwrap();
    let last = last.replace("~1", "/").replace("~0", "~");
    match (out.pointer_mut(parent), with) {
        (Some(Value::Object(m)), None) => {
            m.remove(&last);
        }
        (Some(Value::Array(a)), None) => {
            a.remove(last.parse::<usize>().unwrap());
        }
        (Some(Value::Object(m)), Some(w)) => {
            m.insert(last, w);
        }
        (Some(Value::Array(a)), Some(w)) => {
            a[last.parse::<usize>().unwrap()] = w;
        }
        _ => {}
    }
    out
}

/// Invalid variants of a valid `body`: each field missing, of each other type, and breaking
/// the usual constraints; then the wrong top-level types. Some may still fit the schema: the
/// caller checks which do.
fn variants(body: &Value) -> Vec<Value> {
    let mut ps = Vec::new();
    pointers(body, String::new(), &mut ps);
    let mut out = Vec::new();
    for p in &ps {
        out.push(mutate(body, p, None));
        for v in every_type() {
            out.push(mutate(body, p, Some(v)));
        }
        for v in [
            json!(""),
            json!("not a name!"),
            json!("x".repeat(1100)),
            json!(-1),
            json!(u64::MAX),
            json!(1e300),
        ] {
            out.push(mutate(body, p, Some(v)));
        }
        out.push(mutate(body, p, Some(json!({"extra": 1}))));
    }
    if let Value::Object(m) = body {
        let mut extra = m.clone();
        extra.insert("an_unknown_field".into(), json!(1));
        out.push(Value::Object(extra));
    }
    out.extend(every_type());
    out.push(json!([body]));
    out
}

/// Bodies that are not JSON values at all, or too large: each must be refused.
fn raw_bodies(max: usize) -> Vec<(&'static str, Vec<u8>)> {
    vec![
        ("empty", Vec::new()),
        ("truncated", b"{\"a\": ".to_vec()),
        ("garbage", b"\x00\xff\xfe garbage {".to_vec()),
        ("not UTF-8 in a string", b"{\"name\": \"\xff\"}".to_vec()),
        ("deeply nested", "[".repeat(100_000).into_bytes()),
        ("two values", b"{} {}".to_vec()),
        (
            "over the limit",
            format!("{{\"x\": \"{}\"}}", "a".repeat(max + 1)).into_bytes(),
        ),
    ]
}

/// One operation of the document.
struct Op {
    method: Method,
    path: String,
    op: Value,
}

impl Op {
    fn name(&self) -> String {
        format!("{} {}", self.method, self.path)
    }

    fn params(&self, place: &str) -> Vec<String> {
        self.op["parameters"]
            .as_array()
            .into_iter()
            .flatten()
            .filter(|p| p["in"] == place)
            .map(|p| p["name"].as_str().unwrap().to_owned())
            .collect()
    }

    fn secured(&self) -> bool {
        self.op["security"]
            .as_array()
            .is_some_and(|s| !s.is_empty())
    }

    fn body_schema(&self) -> Option<&Value> {
        self.op
            .pointer("/requestBody/content/application~1json/schema")
    }

    /// Runs first reads, then changes, then deletes (children before parents), so the objects
    /// the path parameters name exist for as many operations as can be.
    fn order(&self) -> (u8, u8, String) {
        // An update starts a rolling update, which replaces the instances other operations
        // use: it goes after the instances' own deletes.
        if self.method == Method::PUT && self.path == "/api/service/{id}" {
            return (2, 0, "~".into());
        }
        let rank = if self.method == Method::GET {
            0
        } else if self.method == Method::DELETE {
            2
        } else {
            1
        };
        let within = if rank < 2 {
            0
        } else {
            [
                "instance",
                "quota",
                "service",
                "application",
                "user",
                "organization",
            ]
            .iter()
            .position(|w| self.path.contains(w))
            .unwrap_or(9) as u8
        };
        (rank, within, self.path.clone())
    }
}

/// What a request was, for the failure list.
struct Sent<'a> {
    op: &'a Op,
    path: String,
    what: String,
}

/// Sends requests and checks every answer against the document.
struct Driver {
    doc: Doc,
    http: reqwest::Client,
    base: String,
    failures: Vec<String>,
    succeeded: BTreeSet<String>,
    sent: usize,
}

impl Driver {
    /// Sends one request and checks its answer; returns the status and the JSON body.
    async fn send(
        &mut self,
        sent: &Sent<'_>,
        token: Option<&str>,
        body: Option<Vec<u8>>,
        headers: &[(&str, &str)],
    ) -> Option<(StatusCode, Value)> {
        self.sent += 1;
        let mut req = self.http.request(
            sent.op.method.clone(),
            format!("{}{}", self.base, sent.path),
        );
        if let Some(t) = token {
            req = req.header("authorization", format!("Bearer {t}"));
        }
        for (k, v) in headers {
            req = req.header(*k, *v);
        }
        if let Some(b) = body {
            req = req.header("content-type", "application/json").body(b);
        }
        let what = format!("{} {} ({})", sent.op.method, sent.path, sent.what);
        let resp = match req.send().await {
            Ok(r) => r,
            Err(e) => {
                self.failures.push(format!("{what}: no answer: {e}"));
                return None;
            }
        };
        let status = resp.status();
        let media = resp
            .headers()
            .get("content-type")
            .and_then(|v| v.to_str().ok())
            .unwrap_or("")
            .split(';')
            .next()
            .unwrap_or("")
            .trim()
            .to_owned();
        let documented = sent.op.op["responses"].get(status.as_str()).cloned();
        if status.is_server_error() {
            self.failures.push(format!("{what}: {status}"));
        }
        let Some(documented) = documented else {
            let text = resp.text().await.unwrap_or_default();
            self.failures
                .push(format!("{what}: {status} is not documented: {text:.200}"));
            return Some((status, Value::Null));
        };
        if status.is_success() {
            self.succeeded.insert(sent.op.name());
        }
        let content = documented["content"]
            .as_object()
            .cloned()
            .unwrap_or_default();
        if media == "text/event-stream" {
            // A stream that does not end: its headers are the answer.
            if !content.contains_key("text/event-stream") {
                self.failures.push(format!(
                    "{what}: an event stream, documented as {content:?}"
                ));
            }
            return Some((status, Value::Null));
        }
        let text = resp.text().await.unwrap_or_default();
        if media == "text/plain" {
            // An instance's log: text the document names, nothing to validate.
            if !content.contains_key("text/plain") {
                self.failures
                    .push(format!("{what}: text, documented as {content:?}"));
            }
            return Some((status, Value::String(text)));
        }
        let Some(schema) = content.get(&media).map(|c| c["schema"].clone()) else {
            if !content.is_empty() {
                self.failures.push(format!(
                    "{what}: {status} answered {media:?}, documented {:?}: {text:.200}",
                    content.keys().collect::<Vec<_>>()
                ));
            }
            return Some((status, Value::Null));
        };
        let value: Value = match serde_json::from_str(&text) {
            Ok(v) => v,
            Err(e) => {
                self.failures.push(format!(
                    "{what}: {status} body is not JSON ({e}): {text:.200}"
                ));
                return Some((status, Value::Null));
            }
        };
        if let Err(e) = self.doc.check(&schema, &value) {
            self.failures.push(format!(
                "{what}: {status} body breaks the document: {e}; body {:.300}",
                value.to_string()
            ));
        }
        Some((status, value))
    }
}

impl Driver {
    /// A body the document allows is not refused as malformed: the only 400 it may get is
    /// about what it means (microservices that are not the application's current list).
    fn allowed_body(&mut self, sent: &Sent<'_>, status: StatusCode, body: &Value) {
        if status == StatusCode::BAD_REQUEST && body["field"] != "microservices" {
            self.failures.push(format!(
                "{} {} ({}): a body the document allows was refused: {body:.200}",
                sent.op.method, sent.path, sent.what
            ));
        }
    }
}

/// Objects the path parameters can name, made before the operations run.
struct Fixtures {
    alice_token: String,
    alice_id: String,
    admin_refresh: String,
    org_id: String,
    app_id: String,
    service_id: String,
    instance: String,
}

impl Fixtures {
    /// The existing object for a path parameter of `path`.
    fn existing(&self, path: &str, param: &str) -> String {
        match param {
            "username" => "alice".into(),
            "userid" => self.alice_id.clone(),
            "appid" => self.app_id.clone(),
            "n" => self.instance.clone(),
            "operation" => "restart".into(),
            "id" if path.starts_with("/api/organization") => self.org_id.clone(),
            "id" if path.starts_with("/api/application") => self.app_id.clone(),
            "id" if path.starts_with("/api/service") => self.service_id.clone(),
            other => panic!("no fixture for path parameter {other} of {path}"),
        }
    }
}

/// Path parameter values that name nothing, or are not valid at all (percent-encoded).
fn unknown_values(param: &str) -> Vec<String> {
    let mut v: Vec<String> = [
        "nothing",
        "000000000000000000000000",
        "%FF%FE",
        "%00",
        "a%2Fb",
        "%C3%BC",
    ]
    .map(str::to_owned)
    .to_vec();
    v.push("x".repeat(300));
    if param == "n" {
        v.extend(["0", "99", "-1", "4294967296", "1.5"].map(str::to_owned));
    }
    if param == "operation" {
        v.extend(["STOP", "delete"].map(str::to_owned));
    }
    v
}

fn fill(path: &str, values: &BTreeMap<String, String>) -> String {
    let mut out = path.to_owned();
    for (k, v) in values {
        out = out.replace(&format!("{{{k}}}"), v);
    }
    out
}

/// The SLA examples of `sla-schemas`, sorted by file name.
fn examples() -> Vec<Value> {
    let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../sla-schemas/examples");
    let mut files: Vec<_> = std::fs::read_dir(dir)
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.extension().is_some_and(|x| x == "json"))
        .collect();
    files.sort();
    files
        .iter()
        .map(|p| serde_json::from_slice(&std::fs::read(p).unwrap()).unwrap())
        .collect()
}

async fn fixtures(root: &TestRoot) -> Fixtures {
    let admin = root.admin().await;
    let (s, b) = admin
        .call(
            Method::POST,
            "/api/auth/register",
            Some(json!({"name": "alice", "password": ALICE_PASSWORD, "roles": ["Application_Provider"]})),
        )
        .await;
    assert_eq!(s, StatusCode::OK, "{b}");
    let alice_id = b["_id"]["$oid"].as_str().unwrap().to_owned();
    let alice = root.login("alice", ALICE_PASSWORD).await;
    let (s, b) = admin
        .call(
            Method::POST,
            "/api/organization",
            Some(json!({"name": "lab", "member": [{"user_id": alice_id, "roles": []}]})),
        )
        .await;
    assert_eq!(s, StatusCode::OK, "{b}");
    let org_id = b["_id"]["$oid"].as_str().unwrap().to_owned();
    // Alice's service asks for the most the SLA schema allows: what is counted for her quota
    // must not overflow.
    let mut doc = sla("shop", "web");
    doc["applications"][0]["microservices"][0]["memory"] = json!(u64::MAX);
    doc["applications"][0]["microservices"][0]["vcpus"] = json!(u32::MAX);
    let app = alice.create_app(doc).await;
    let app_id = app[0]["applicationID"].as_str().unwrap().to_owned();
    let service_id = alice.service_of(&app[0]).await["microserviceID"]
        .as_str()
        .unwrap()
        .to_owned();
    let instance = alice.scale_up(&service_id).await.to_string();
    alice.scale_up(&service_id).await;
    // A cluster with room for it runs instance `instance` and answers log requests, so the
    // log stream has a worker to come from.
    let mut cluster = TestCluster::join(
        root.grpc,
        &root.cluster_token,
        "c1",
        capacity(u32::MAX, u64::MAX),
    )
    .await;
    cluster.command().await;
    let n: u32 = instance.parse().unwrap();
    cluster
        .report(&service_id, n, InstanceStatus::Running)
        .await;
    alice.wait_instance(&service_id, n, "RUNNING").await;
    cluster.answer_logs("a line of the log\n");
    let (s, pair) = root
        .anonymous()
        .call(
            Method::POST,
            "/api/auth/login",
            Some(json!({"username": "Admin", "password": ADMIN_PASSWORD})),
        )
        .await;
    assert_eq!(s, StatusCode::OK);
    Fixtures {
        alice_token: alice.token.clone().unwrap(),
        alice_id,
        admin_refresh: pair["refresh_token"].as_str().unwrap().to_owned(),
        org_id,
        app_id,
        service_id,
        instance,
    }
}

#[tokio::test]
async fn every_operation_answers_as_the_document_says() {
    let started = std::time::Instant::now();
    let root = TestRoot::start().await;
    let admin = root.admin().await;
    let admin_token = admin.token.clone().unwrap();
    let fx = fixtures(&root).await;
    let (s, doc) = root.anonymous().get("/docs/openapi.json").await;
    assert_eq!(s, StatusCode::OK);

    let mut ops: Vec<Op> = Vec::new();
    for (path, item) in doc["paths"].as_object().unwrap() {
        for (method, op) in item.as_object().unwrap() {
            ops.push(Op {
                method: method.to_uppercase().parse().unwrap(),
                path: path.clone(),
                op: op.clone(),
            });
        }
    }
    ops.sort_by_key(Op::order);
    let mut d = Driver {
        doc: Doc {
            doc: doc.clone(),
            validators: HashMap::new(),
        },
        http: reqwest::Client::new(),
        base: root.api.clone(),
        failures: Vec::new(),
        succeeded: BTreeSet::new(),
        sent: 0,
    };

    // Hints: values a generated body needs to be accepted (credentials, existing objects).
    let hints: Hints = [
        ("LoginRequest.username", json!("Admin")),
        ("LoginRequest.password", json!(ADMIN_PASSWORD)),
        ("ChangePasswordRequest.oldPassword", json!(ALICE_PASSWORD)),
        ("ChangePasswordRequest.newPassword", json!(ALICE_PASSWORD)),
        ("Member.user_id", json!(fx.alice_id)),
        (
            "UpdateApplicationRequest.microservices",
            json!([fx.service_id]),
        ),
        ("UpdateApplicationRequest.application_name", json!("shop")),
        (
            "UpdateApplicationRequest.application_namespace",
            json!("test"),
        ),
        ("SlaApplication.applicationID", json!(fx.app_id)),
        ("SlaApplication.application_name", json!("shop")),
        ("SlaApplication.application_namespace", json!("test")),
        (
            "SlaMicroservice.code",
            json!("localhost:5000/busybox:latest"),
        ),
    ]
    .into_iter()
    .map(|(k, v)| (k.to_owned(), v))
    .collect();
    // … and for one operation only.
    let op_hints = [
        (
            "PUT /api/organization/{id}",
            "OrganizationRequest.name",
            json!("lab"),
        ),
        // An update keeps the service's name.
        (
            "PUT /api/service/{id}",
            "SlaMicroservice.microservice_name",
            json!("web"),
        ),
        (
            "PUT /api/service/{id}",
            "SlaMicroservice.microservice_namespace",
            json!("test"),
        ),
    ];
    let max_body = root.config.max_body_bytes;

    for op in &ops {
        let token_for_op = if op.path == "/api/auth/refresh" {
            fx.admin_refresh.clone()
        } else {
            admin_token.clone()
        };
        let token = op.secured().then_some(token_for_op.as_str());
        let mut hints = hints.clone();
        for (name, k, v) in &op_hints {
            if *name == op.name() {
                hints.insert((*k).to_owned(), v.clone());
            }
        }
        let path_params = op.params("path");
        let existing: BTreeMap<String, String> = path_params
            .iter()
            .map(|p| (p.clone(), fx.existing(&op.path, p)))
            .collect();
        let path = fill(&op.path, &existing);

        // Valid bodies: minimal and full from the schema, and the SLA examples.
        let mut valid: Vec<Value> = Vec::new();
        if let Some(schema) = op.body_schema().cloned() {
            let (_, resolved) = d.doc.resolve(&schema);
            if resolved.get("properties").is_none() && resolved.get("allOf").is_none() {
                d.failures.push(format!(
                    "{}: the request body's schema names no fields: {resolved}",
                    op.name()
                ));
            }
            for full in [false, true] {
                let v = d.doc.sample(&schema, full, &hints, 0);
                if let Err(e) = d.doc.check(&schema, &v) {
                    panic!(
                        "{}: the generated body {v} breaks its schema: {e}",
                        op.name()
                    );
                }
                valid.push(v);
            }
            if op.path == "/api/application" {
                valid.extend(examples());
            }
            if op.path == "/api/service" {
                let mut add = sla("shop", "extra");
                add["applications"][0]["applicationID"] = json!(fx.app_id);
                valid.push(add);
            }
            for (i, v) in valid.iter().enumerate() {
                assert!(
                    d.doc.check(&schema, v).is_ok(),
                    "{}: valid body {i}",
                    op.name()
                );
            }
        }

        // 1. Valid bodies (or none) with the token and existing objects.
        let bodies: Vec<Option<Vec<u8>>> = if valid.is_empty() {
            vec![None, Some(b"\x00 ignored garbage".to_vec())]
        } else {
            valid
                .iter()
                .map(|v| Some(v.to_string().into_bytes()))
                .collect()
        };
        for (i, body) in bodies.iter().enumerate() {
            let sent = Sent {
                op,
                path: path.clone(),
                what: format!("valid body {i}"),
            };
            if let Some((s, b)) = d.send(&sent, token, body.clone(), &[]).await {
                d.allowed_body(&sent, s, &b);
            }
        }
        let valid_body = bodies[0].clone();

        // 2. Invalid bodies, each checked against the schema first: one that breaks it must be
        // refused with 400 or 422.
        if let Some(schema) = op.body_schema().cloned() {
            let mut seen = BTreeSet::new();
            let full = valid[1].clone();
            for v in variants(&full) {
                let text = v.to_string();
                if !seen.insert(text.clone()) {
                    continue;
                }
                let invalid = d.doc.check(&schema, &v).is_err();
                let sent = Sent {
                    op,
                    path: path.clone(),
                    what: format!(
                        "{} body {text:.120}",
                        if invalid { "invalid" } else { "variant" }
                    ),
                };
                let Some((s, b)) = d.send(&sent, token, Some(text.into_bytes()), &[]).await else {
                    continue;
                };
                if !invalid {
                    d.allowed_body(&sent, s, &b);
                } else if !matches!(s.as_u16(), 400 | 422) {
                    d.failures.push(format!(
                        "{} {}: a body that breaks the schema was not refused: {s} {b:.200}",
                        op.method, sent.what
                    ));
                }
            }
            for (what, raw) in raw_bodies(max_body) {
                let sent = Sent {
                    op,
                    path: path.clone(),
                    what: format!("{what} body"),
                };
                if let Some((s, b)) = d.send(&sent, token, Some(raw), &[]).await
                    && !matches!(s.as_u16(), 400 | 413)
                {
                    d.failures.push(format!(
                        "{} {} {}: not refused: {s} {b:.200}",
                        op.method, path, sent.what
                    ));
                }
            }
        }

        // 3. Path parameters that name nothing or are not valid, one at a time.
        for p in &path_params {
            for bad in unknown_values(p) {
                let mut values = existing.clone();
                values.insert(p.clone(), bad.clone());
                let sent = Sent {
                    op,
                    path: fill(&op.path, &values),
                    what: format!("{p} = {bad:.40}"),
                };
                if let Some((s, b)) = d.send(&sent, token, valid_body.clone(), &[]).await
                    && s.is_success()
                    && !(p == "n" && bad.parse::<u32>().ok() == existing[p].parse().ok())
                {
                    d.failures.push(format!(
                        "{}: {p} = {bad:.40} succeeded: {b:.200}",
                        op.name()
                    ));
                }
            }
        }

        // 4. Query and header parameters with values they do not take.
        for place in ["query", "header"] {
            for p in op.params(place) {
                let (url, headers) = if place == "query" {
                    (format!("{path}?{p}=%FF-not-one"), vec![])
                } else {
                    (path.clone(), vec![(p.clone(), "not-one".to_owned())])
                };
                let headers: Vec<(&str, &str)> = headers
                    .iter()
                    .map(|(k, v)| (k.as_str(), v.as_str()))
                    .collect();
                let sent = Sent {
                    op,
                    path: url,
                    what: format!("{place} {p}"),
                };
                d.send(&sent, token, valid_body.clone(), &headers).await;
            }
        }

        // 5. Tokens: none, garbage, the other type, another user's.
        if op.secured() {
            let other_type = if op.path == "/api/auth/refresh" {
                admin_token.clone()
            } else {
                fx.admin_refresh.clone()
            };
            for (what, t) in [
                ("no token", None),
                ("a garbage token", Some("garbage.token.here")),
                ("the other type of token", Some(other_type.as_str())),
            ] {
                let sent = Sent {
                    op,
                    path: path.clone(),
                    what: what.to_owned(),
                };
                if let Some((s, _)) = d.send(&sent, t, valid_body.clone(), &[]).await
                    && s != StatusCode::UNAUTHORIZED
                {
                    d.failures
                        .push(format!("{}: {what}: {s}, not 401", op.name()));
                }
            }
            let sent = Sent {
                op,
                path: path.clone(),
                what: "alice's token".to_owned(),
            };
            for body in &bodies {
                d.send(&sent, Some(&fx.alice_token), body.clone(), &[])
                    .await;
            }
        }
    }

    // Methods a documented path does not have: 405 with Allow, in JSON; unknown paths: 404.
    let error_schema = json!({"$ref": "#/components/schemas/ErrorBody"});
    for (path, item) in doc["paths"].as_object().unwrap() {
        // Any value for the path parameters: the method is refused before they are read.
        let url = format!("{}{}", root.api, path.replace(['{', '}'], ""));
        for m in ["GET", "POST", "PUT", "DELETE", "PATCH"] {
            if item.get(m.to_lowercase()).is_some() {
                continue;
            }
            d.sent += 1;
            let resp = d
                .http
                .request(m.parse().unwrap(), &url)
                .bearer_auth(&admin_token)
                .send()
                .await
                .unwrap();
            let (status, allow) = (resp.status(), resp.headers().get("allow").cloned());
            let body: Value = resp.json().await.unwrap_or(Value::Null);
            if status != StatusCode::METHOD_NOT_ALLOWED
                || allow.is_none()
                || d.doc.check(&error_schema, &body).is_err()
            {
                d.failures
                    .push(format!("{m} {path}: {status} (Allow {allow:?}) {body}"));
            }
        }
    }
    for p in ["/api/nothing", "/api", "/api/service/x/y/z/w/v"] {
        let (s, b) = admin.get(p).await;
        if s != StatusCode::NOT_FOUND || d.doc.check(&error_schema, &b).is_err() {
            d.failures.push(format!("GET {p}: {s} {b}"));
        }
    }

    for op in &ops {
        if !d.succeeded.contains(&op.name()) {
            d.failures
                .push(format!("{}: no request succeeded", op.name()));
        }
    }
    let elapsed = started.elapsed();
    eprintln!("{} requests in {elapsed:?}", d.sent);
    assert!(
        d.failures.is_empty(),
        "{} of {} requests broke the document:\n{}",
        d.failures.len(),
        d.sent,
        d.failures
            .iter()
            .take(60)
            .cloned()
            .collect::<Vec<_>>()
            .join("\n")
    );
    // Still serving, the fixtures intact where nothing deleted them.
    assert_eq!(admin.get("/health").await.0, StatusCode::OK);
    root.stop().await;
}
