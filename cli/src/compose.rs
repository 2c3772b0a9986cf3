//! Compose files as applications: a docker-compose file becomes one SLA application (pure;
//! `canopy convert` prints it, `canopy apply` deploys it with each service's replicas).
//!
//! Mapped, per service: `image` → `code`; `entrypoint` and `command` → `cmd` (the entrypoint
//! first; a string is split as compose splits it, at spaces outside quotes); `environment`
//! (list or map) → `environment`; `ports` (`HOST:CONTAINER[/udp]`, long form with `published`)
//! → `port`; `deploy.replicas` → the instances `apply` asks for; `deploy.resources.limits`
//! `cpus` (rounded up to whole vCPUs) and `memory` (`512M`, `1g`, bytes) → `vcpus`, `memory`.
//! Every other key, anywhere, is a warning with its path (`services.db.volumes`), as is a
//! value Canopy cannot express (a port without a host port, a host address on a port).

use anyhow::{Result, anyhow, bail};
use serde_json::{Map, Value, json};
use std::collections::BTreeMap;
use yaml_rust2::{Yaml, YamlLoader};

/// A compose file as an SLA.
#[derive(Debug)]
pub struct Converted {
    pub sla: Value,
    /// Instances wanted per service name (as in the SLA).
    pub replicas: BTreeMap<String, u32>,
    /// What was not mapped, each with its path.
    pub warnings: Vec<String>,
}

/// Whether `path` names a compose file (by its name) rather than an SLA.
pub fn is_compose(path: &std::path::Path) -> bool {
    path.extension()
        .and_then(|e| e.to_str())
        .is_some_and(|e| e.eq_ignore_ascii_case("yml") || e.eq_ignore_ascii_case("yaml"))
}

/// SLA names are 1–30 letters and digits.
fn sla_name(s: &str) -> String {
    s.chars()
        .filter(char::is_ascii_alphanumeric)
        .take(30)
        .collect()
}

/// Converts compose `text`; `default_name` names the application when the file has no
/// `name`.
pub fn convert(text: &str, default_name: &str) -> Result<Converted> {
    let docs = YamlLoader::load_from_str(text).map_err(|e| anyhow!("not YAML: {e}"))?;
    let doc = docs.first().map(to_json).unwrap_or(Value::Null);
    let Value::Object(top) = doc else {
        bail!("a compose file is a mapping with `services`");
    };
    let mut warnings = Vec::new();
    let mut name = default_name.to_owned();
    let mut services = None;
    for (key, value) in &top {
        match key.as_str() {
            "services" => services = Some(value),
            "name" => name = value.as_str().unwrap_or(default_name).to_owned(),
            "version" => warnings.push("version: ignored (obsolete in compose files)".into()),
            other => warnings.push(format!("{other}: not mapped")),
        }
    }
    let app = sla_name(&name);
    if app.is_empty() {
        bail!("name: {name:?} has no letters or digits to name the application");
    }
    if app != name {
        warnings.push(format!(
            "name: {name:?} becomes {app:?} (letters and digits only)"
        ));
    }
    let Some(Value::Object(services)) = services else {
        bail!("services: missing, or not a mapping of services");
    };
    let mut list = Vec::new();
    let mut replicas = BTreeMap::new();
    for (svc_name, svc) in services {
        let path = format!("services.{svc_name}");
        let name = sla_name(svc_name);
        if name.is_empty() {
            bail!("{path}: the name has no letters or digits");
        }
        if &name != svc_name {
            warnings.push(format!("{path}: named {name:?} (letters and digits only)"));
        }
        let (ms, n) = service(svc, &path, &name, &app, &mut warnings)?;
        if replicas.insert(name.clone(), n).is_some() {
            bail!("{path}: another service is also named {name:?}");
        }
        list.push(ms);
    }
    let sla = json!({
        "sla_version": "v2.0",
        "customerID": "Admin",
        "applications": [{
            "application_name": app,
            "application_namespace": "compose",
            "application_desc": format!("from compose file {name}"),
            "microservices": list,
        }]
    });
    Ok(Converted {
        sla,
        replicas,
        warnings,
    })
}

fn service(
    svc: &Value,
    path: &str,
    name: &str,
    app: &str,
    warnings: &mut Vec<String>,
) -> Result<(Value, u32)> {
    let Value::Object(keys) = svc else {
        bail!("{path}: a service is a mapping");
    };
    let mut ms = Map::new();
    ms.insert("microservice_name".into(), json!(name));
    ms.insert("microservice_namespace".into(), json!(app));
    ms.insert("virtualization".into(), json!("container"));
    let mut entrypoint = Vec::new();
    let mut command = Vec::new();
    let mut replicas = 1;
    for (key, value) in keys {
        let at = format!("{path}.{key}");
        match key.as_str() {
            "image" => {
                let image = value
                    .as_str()
                    .ok_or_else(|| anyhow!("{at}: must be text"))?;
                ms.insert("code".into(), json!(image));
            }
            "entrypoint" => entrypoint = words(value, &at)?,
            "command" => command = words(value, &at)?,
            "environment" => {
                ms.insert("environment".into(), json!(environment(value, &at)?));
            }
            "ports" => {
                let ports = ports(value, &at, warnings)?;
                if !ports.is_empty() {
                    ms.insert("port".into(), json!(ports.join(";")));
                }
            }
            "deploy" => replicas = deploy(value, &at, &mut ms, warnings)?,
            _ => warnings.push(format!("{at}: not mapped")),
        }
    }
    if !ms.contains_key("code") {
        bail!("{path}.image: missing (services are deployed from an image; `build` is not mapped)");
    }
    entrypoint.extend(command);
    if !entrypoint.is_empty() {
        ms.insert("cmd".into(), json!(entrypoint));
    }
    Ok((Value::Object(ms), replicas))
}

/// A command as compose reads it: a list, or a string split at spaces outside quotes.
fn words(v: &Value, at: &str) -> Result<Vec<String>> {
    match v {
        Value::Array(items) => items
            .iter()
            .map(|i| scalar(i).ok_or_else(|| anyhow!("{at}: every item must be text")))
            .collect(),
        Value::String(s) => split(s).ok_or_else(|| anyhow!("{at}: unbalanced quotes in {s:?}")),
        Value::Null => Ok(Vec::new()),
        _ => bail!("{at}: must be a list or text"),
    }
}

/// Splits at whitespace outside single or double quotes (a backslash escapes the next
/// character outside single quotes); `None` when a quote is not closed.
fn split(s: &str) -> Option<Vec<String>> {
    let mut out = Vec::new();
    let mut word = String::new();
    let mut in_word = false;
    let mut quote: Option<char> = None;
    let mut chars = s.chars();
    while let Some(c) = chars.next() {
        match (quote, c) {
            (Some(q), c) if c == q => quote = None,
            (Some('"') | None, '\\') => {
                word.extend(chars.next());
                in_word = true;
            }
            (Some(_), c) => word.push(c),
            (None, '"' | '\'') => {
                quote = Some(c);
                in_word = true;
            }
            (None, c) if c.is_whitespace() => {
                if in_word {
                    out.push(std::mem::take(&mut word));
                    in_word = false;
                }
            }
            (None, c) => {
                word.push(c);
                in_word = true;
            }
        }
    }
    if quote.is_some() {
        return None;
    }
    if in_word {
        out.push(word);
    }
    Some(out)
}

fn scalar(v: &Value) -> Option<String> {
    match v {
        Value::String(s) => Some(s.clone()),
        Value::Number(n) => Some(n.to_string()),
        Value::Bool(b) => Some(b.to_string()),
        _ => None,
    }
}

fn environment(v: &Value, at: &str) -> Result<Vec<String>> {
    match v {
        Value::Array(items) => items
            .iter()
            .map(|i| scalar(i).ok_or_else(|| anyhow!("{at}: every item must be KEY=VALUE")))
            .collect(),
        Value::Object(map) => Ok(map
            .iter()
            .map(|(k, v)| format!("{k}={}", scalar(v).unwrap_or_default()))
            .collect()),
        _ => bail!("{at}: must be a list of KEY=VALUE or a mapping"),
    }
}

/// Compose ports as the SLA's `HOST:CONTAINER[/udp]` entries.
fn ports(v: &Value, at: &str, warnings: &mut Vec<String>) -> Result<Vec<String>> {
    let Value::Array(items) = v else {
        bail!("{at}: must be a list");
    };
    let mut out = Vec::new();
    for (i, item) in items.iter().enumerate() {
        let at = format!("{at}[{i}]");
        let (host, container, protocol) = match item {
            Value::Object(long) => {
                for k in long.keys() {
                    if !matches!(k.as_str(), "target" | "published" | "protocol") {
                        warnings.push(format!("{at}.{k}: not mapped"));
                    }
                }
                let get = |k: &str| long.get(k).and_then(scalar);
                let Some(target) = get("target") else {
                    bail!("{at}.target: missing");
                };
                (get("published"), target, get("protocol"))
            }
            other => {
                let Some(text) = scalar(other) else {
                    bail!("{at}: must be HOST:CONTAINER or a mapping");
                };
                let (ports, protocol) = match text.split_once('/') {
                    Some((p, proto)) => (p.to_owned(), Some(proto.to_owned())),
                    None => (text.clone(), None),
                };
                let parts: Vec<&str> = ports.split(':').collect();
                match parts.as_slice() {
                    [container] => (None, (*container).to_owned(), protocol),
                    [host, container] => {
                        (Some((*host).to_owned()), (*container).to_owned(), protocol)
                    }
                    [ip, host, container] => {
                        warnings.push(format!(
                            "{at}: host address {ip} not mapped (published on every worker address)"
                        ));
                        (Some((*host).to_owned()), (*container).to_owned(), protocol)
                    }
                    _ => bail!("{at}: {text:?} is not HOST:CONTAINER"),
                }
            }
        };
        let Some(host) = host.filter(|h| !h.is_empty()) else {
            warnings.push(format!(
                "{at}: container port {container} has no host port: not published"
            ));
            continue;
        };
        let proto = match protocol.as_deref() {
            None | Some("tcp") => "",
            Some("udp") => "/udp",
            Some(p) => bail!("{at}: protocol {p:?} must be tcp or udp"),
        };
        out.push(format!("{host}:{container}{proto}"));
    }
    Ok(out)
}

/// `deploy`: replicas, and the resource limits; returns the replicas.
fn deploy(
    v: &Value,
    at: &str,
    ms: &mut Map<String, Value>,
    warnings: &mut Vec<String>,
) -> Result<u32> {
    let Value::Object(keys) = v else {
        bail!("{at}: must be a mapping");
    };
    let mut replicas = 1;
    for (key, value) in keys {
        let at = format!("{at}.{key}");
        match key.as_str() {
            "replicas" => {
                replicas = value
                    .as_u64()
                    .and_then(|n| u32::try_from(n).ok())
                    .ok_or_else(|| anyhow!("{at}: must be a whole number"))?;
            }
            "resources" => {
                let Value::Object(res) = value else {
                    bail!("{at}: must be a mapping");
                };
                for (k, v) in res {
                    if k != "limits" {
                        warnings.push(format!("{at}.{k}: not mapped"));
                        continue;
                    }
                    let Value::Object(limits) = v else {
                        bail!("{at}.limits: must be a mapping");
                    };
                    for (k, v) in limits {
                        let at = format!("{at}.limits.{k}");
                        match k.as_str() {
                            "cpus" => {
                                let cpus = scalar(v)
                                    .and_then(|s| s.parse::<f64>().ok())
                                    .filter(|c| c.is_finite() && *c > 0.0)
                                    .ok_or_else(|| anyhow!("{at}: must be a positive number"))?;
                                let whole = cpus.ceil() as u64;
                                if (whole as f64 - cpus).abs() > f64::EPSILON {
                                    warnings.push(format!(
                                        "{at}: {cpus} rounded up to {whole} whole vCPU(s)"
                                    ));
                                }
                                ms.insert("vcpus".into(), json!(whole));
                            }
                            "memory" => {
                                let mb = memory_mb(v).ok_or_else(|| {
                                    anyhow!("{at}: must be a size such as 512M or 1g")
                                })?;
                                ms.insert("memory".into(), json!(mb));
                            }
                            _ => warnings.push(format!("{at}: not mapped")),
                        }
                    }
                }
            }
            _ => warnings.push(format!("{at}: not mapped")),
        }
    }
    Ok(replicas)
}

/// A compose size (`512M`, `1g`, `1.5gb`, `268435456` bytes) in MiB, rounded up.
fn memory_mb(v: &Value) -> Option<u64> {
    let s = scalar(v)?.trim().to_ascii_lowercase();
    let digits = s
        .find(|c: char| !(c.is_ascii_digit() || c == '.'))
        .unwrap_or(s.len());
    let (n, unit) = s.split_at(digits);
    let n: f64 = n.parse().ok()?;
    let factor = match unit.trim_end_matches('b') {
        "" => 1.0 / (1024.0 * 1024.0),
        "k" => 1.0 / 1024.0,
        "m" => 1.0,
        "g" => 1024.0,
        _ => return None,
    };
    let mb = (n * factor).ceil();
    (mb.is_finite() && mb >= 1.0).then_some(mb as u64)
}

/// YAML as JSON: mapping keys as text, numbers as numbers.
fn to_json(y: &Yaml) -> Value {
    match y {
        Yaml::Real(s) => s
            .parse::<f64>()
            .map_or(Value::String(s.clone()), |f| json!(f)),
        Yaml::Integer(i) => json!(i),
        Yaml::String(s) => json!(s),
        Yaml::Boolean(b) => json!(b),
        Yaml::Array(a) => Value::Array(a.iter().map(to_json).collect()),
        Yaml::Hash(h) => Value::Object(
            h.iter()
                .map(|(k, v)| {
                    let key = match to_json(k) {
                        Value::String(s) => s,
                        other => other.to_string(),
                    };
                    (key, to_json(v))
                })
                .collect(),
        ),
        Yaml::Alias(_) | Yaml::Null | Yaml::BadValue => Value::Null,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const FILE: &str = r#"
version: "3.8"
name: shop-front
services:
  web:
    image: localhost:5000/busybox:latest
    entrypoint: ["sh", "-c"]
    command: "httpd -f -p 80"
    environment:
      GREETING: hi
      COUNT: 3
    ports:
      - "8080:80"
      - "127.0.0.1:5353:53/udp"
      - "9000"
      - target: 81
        published: 8081
        mode: host
    deploy:
      replicas: 2
      resources:
        limits: {cpus: "0.5", memory: 256M}
        reservations: {memory: 64M}
      restart_policy: {condition: on-failure}
    volumes: ["./data:/data"]
  db_1:
    image: localhost:5000/busybox:latest
    command: ["sleep", "3600"]
    environment: ["A=1", "B=two words"]
    depends_on: [web]
networks:
  default: {}
"#;

    #[test]
    fn a_compose_file_becomes_one_application_and_lists_what_it_left_out() {
        let c = convert(FILE, "unused").unwrap();
        let app = &c.sla["applications"][0];
        assert_eq!(app["application_name"], "shopfront");
        let ms = app["microservices"].as_array().unwrap();
        let web = ms.iter().find(|m| m["microservice_name"] == "web").unwrap();
        assert_eq!(web["code"], "localhost:5000/busybox:latest");
        assert_eq!(web["cmd"], json!(["sh", "-c", "httpd", "-f", "-p", "80"]));
        let mut env: Vec<&str> = web["environment"]
            .as_array()
            .unwrap()
            .iter()
            .map(|v| v.as_str().unwrap())
            .collect();
        env.sort_unstable();
        assert_eq!(env, ["COUNT=3", "GREETING=hi"]);
        assert_eq!(web["port"], "8080:80;5353:53/udp;8081:81");
        assert_eq!(
            (web["vcpus"].clone(), web["memory"].clone()),
            (json!(1), json!(256))
        );
        let db = ms.iter().find(|m| m["microservice_name"] == "db1").unwrap();
        assert_eq!(db["cmd"], json!(["sleep", "3600"]));
        assert_eq!(db["environment"], json!(["A=1", "B=two words"]));
        assert_eq!(
            c.replicas,
            BTreeMap::from([("db1".into(), 1), ("web".into(), 2)])
        );
        // The SLA it makes is valid.
        canopy_sla::validate_value(&c.sla).unwrap();
        for w in [
            "version: ignored",
            "networks: not mapped",
            "name: \"shop-front\" becomes \"shopfront\"",
            "services.web.volumes: not mapped",
            "services.web.deploy.restart_policy: not mapped",
            "services.web.deploy.resources.reservations: not mapped",
            "services.web.deploy.resources.limits.cpus: 0.5 rounded up to 1",
            "services.web.ports[1]: host address 127.0.0.1 not mapped",
            "services.web.ports[2]: container port 9000 has no host port",
            "services.web.ports[3].mode: not mapped",
            "services.db_1: named \"db1\"",
            "services.db_1.depends_on: not mapped",
        ] {
            assert!(
                c.warnings.iter().any(|x| x.starts_with(w)),
                "{w} missing in {:#?}",
                c.warnings
            );
        }
        assert_eq!(c.warnings.len(), 12, "{:#?}", c.warnings);
    }

    #[test]
    fn bad_compose_files_are_refused_naming_the_path() {
        for (text, want) in [
            (
                "services: {web: {command: x}}",
                "services.web.image: missing",
            ),
            (
                "services: {web: {image: a, ports: [\"1:2:3:4\"]}}",
                "services.web.ports[0]",
            ),
            (
                "services: {web: {image: a, deploy: {replicas: two}}}",
                "services.web.deploy.replicas",
            ),
            (
                "services: {web: {image: a, command: \"sh -c 'x\"}}",
                "services.web.command: unbalanced",
            ),
            ("[1, 2]", "a compose file is a mapping"),
            ("name: x", "services: missing"),
            (
                "services: {web: {image: a, deploy: {resources: {limits: {memory: lots}}}}}",
                "limits.memory",
            ),
        ] {
            let e = convert(text, "app").unwrap_err().to_string();
            assert!(e.contains(want), "{text}: {e}");
        }
    }

    #[test]
    fn commands_split_as_compose_splits_them() {
        assert_eq!(split("a  b").unwrap(), ["a", "b"]);
        assert_eq!(
            split(r#"sh -c "echo 'hi there'""#).unwrap(),
            ["sh", "-c", "echo 'hi there'"]
        );
        assert_eq!(split(r"a\ b ''").unwrap(), ["a b", ""]);
        assert!(split("'open").is_none());
        assert_eq!(memory_mb(&json!("1g")), Some(1024));
        assert_eq!(memory_mb(&json!("1.5GB")), Some(1536));
        assert_eq!(memory_mb(&json!(268_435_456)), Some(256));
        assert_eq!(memory_mb(&json!("12q")), None);
    }
}
