//! SLA validation against Oakestra's own test fixtures, our examples, and precise error paths.
#![allow(clippy::unwrap_used)] // tests may panic: a panic is a failed test

use canopy_sla::{Problem, SlaError, parse, schema};
use std::path::{Path, PathBuf};

fn crate_dir() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

/// Oakestra's SLA fixtures live in `../shared/oakestra-fixtures/sla` next to the repository.
fn fixture_dir() -> PathBuf {
    let dir = std::env::var_os("CANOPY_SHARED_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| crate_dir().join("../../shared"))
        .join("oakestra-fixtures/sla");
    assert!(
        dir.is_dir(),
        "Oakestra fixtures not found at {}",
        dir.display()
    );
    dir
}

fn files(dir: &Path, prefix: &str) -> Vec<PathBuf> {
    let mut v: Vec<PathBuf> = std::fs::read_dir(dir)
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| {
            let name = p.file_name().unwrap().to_string_lossy();
            name.starts_with(prefix) && name.ends_with(".json")
        })
        .collect();
    v.sort();
    v
}

fn problems_of(path: &Path) -> Vec<Problem> {
    match parse(&std::fs::read_to_string(path).unwrap()) {
        Ok(_) => vec![],
        Err(e) => e.problems(),
    }
}

#[test]
fn accepts_oakestra_correct_fixtures() {
    let dir = fixture_dir();
    let mut good = files(&dir, "sla_correct_");
    good.extend(files(&dir, "example_curl"));
    assert_eq!(
        good.len(),
        5,
        "expected 4 correct fixtures and example_curl.json"
    );
    for f in good {
        assert_eq!(problems_of(&f), vec![], "{} rejected", f.display());
    }
}

#[test]
fn rejects_oakestra_flawed_fixtures() {
    let flawed = files(&fixture_dir(), "sla_flawed_");
    assert_eq!(flawed.len(), 5);
    for f in flawed {
        assert!(!problems_of(&f).is_empty(), "{} accepted", f.display());
    }
}

fn has(problems: &[Problem], path: &str, message_part: &str) -> bool {
    problems
        .iter()
        .any(|p| p.path == path && p.message.contains(message_part))
}

#[test]
fn flawed_fixture_1_reports_every_problem_with_its_path() {
    let p = problems_of(&fixture_dir().join("sla_flawed_1.json"));
    let ms = "applications[0].microservices[0]";
    for (path, msg) in [
        ("sla_version", "is required"),
        (
            "applications[0].application_name",
            "must match ^[a-zA-Z0-9]{1,30}$",
        ),
        ("applications[0].application_namespace", "is required"),
        (&format!("{ms}.microserviceID"), "must be empty"),
        (
            &format!("{ms}.microservice_name"),
            "must match ^[a-zA-Z0-9]{1,30}$",
        ),
        (&format!("{ms}.microservice_namespace"), "is required"),
        (
            &format!("{ms}.connectivity[0].target_microservice_id"),
            "must be of type string, found integer",
        ),
        (
            &format!("{ms}.connectivity[1].target_microservice_id"),
            "must be of type string",
        ),
    ] {
        assert!(has(&p, path, msg), "missing `{path}: {msg}` in {p:#?}");
    }
}

#[test]
fn flawed_fixtures_2_to_5_name_their_fields() {
    let d = fixture_dir();
    let ms = "applications[0].microservices[0]";
    let p = problems_of(&d.join("sla_flawed_2.json"));
    assert!(
        has(
            &p,
            &format!("{ms}.microservice_name"),
            "must be of type string"
        ),
        "{p:#?}"
    );
    assert!(
        has(
            &p,
            &format!("{ms}.port"),
            "must be of type string, found integer"
        ),
        "{p:#?}"
    );
    let p = problems_of(&d.join("sla_flawed_3.json"));
    for f in ["sla_version", "customerID", "applications"] {
        assert!(has(&p, f, "is required"), "{p:#?}");
    }
    let p = problems_of(&d.join("sla_flawed_4.json"));
    assert!(
        has(
            &p,
            &format!("{ms}.connectivity[0].con_constraints[0].type"),
            "is required"
        ),
        "{p:#?}"
    );
    let p = problems_of(&d.join("sla_flawed_5.json"));
    assert_eq!(
        p,
        vec![Problem {
            path: format!("{ms}.microservice_name"),
            message: "must match ^[a-zA-Z0-9]{1,30}$".into()
        }]
    );
}

fn sla_with_service(extra: &str) -> String {
    format!(
        r#"{{"sla_version":"v2.0","customerID":"Admin","applications":[{{
            "application_name":"app","application_namespace":"ns","microservices":[
              {{"microservice_name":"a","microservice_namespace":"ns","virtualization":"container","code":"img"}},
              {{"microservice_name":"b","microservice_namespace":"ns","virtualization":"container","code":"img"{extra}}}
            ]}}]}}"#
    )
}

#[test]
fn semantic_checks_name_the_field() {
    let ms = "applications[0].microservices[1]";
    let cases: &[(&str, &str, &str)] = &[
        (r#","port":"80;70000""#, "port", "1 to 65535"),
        (r#","port":"80/sctp""#, "port", "tcp or udp"),
        (r#","port":"80;;90""#, "port", "empty entry"),
        (
            r#","addresses":{"rr_ip":"10.30.300.1"}"#,
            "addresses.rr_ip",
            "not an IPv4 address",
        ),
        (
            r#","addresses":{"rr_ip_v6":"10.30.0.1"}"#,
            "addresses.rr_ip_v6",
            "not an IPv6 address",
        ),
        (
            r#","environment":["OK=1","BROKEN"]"#,
            "environment[1]",
            "KEY=VALUE",
        ),
        (
            r#","virtualization":"crosvm""#,
            "virtualization",
            "must be one of: container, unikernel, wasm, docker",
        ),
        (r#","memory":-5"#, "memory", "must be at least 0"),
        (r#","code":"""#, "code", "must not be empty"),
        (
            r#","code":"docker-archive:images/app.tar""#,
            "code",
            "absolute path",
        ),
        (
            r#","constraints":[{"type":"direct"}]"#,
            "constraints[0].cluster",
            "cluster",
        ),
        (
            r#","constraints":[{"type":"geo","location":"48.1","threshold":10}]"#,
            "constraints[0].location",
            "LAT,LON",
        ),
        (
            r#","constraints":[{"type":"geo","location":"48.1,11.5"}]"#,
            "constraints[0].threshold",
            "radius",
        ),
        (
            r#","constraints":[{"type":"clusters"}]"#,
            "constraints[0].allowed",
            "non-empty",
        ),
        (
            r#","constraints":[{"type":"addons","needs":[]}]"#,
            "constraints[0].needs",
            "non-empty",
        ),
        (
            r#","constraints":[{"type":"latency","threshold":5}]"#,
            "constraints[0].area",
            "area",
        ),
        (
            r#","constraints":[{"type":"nearby"}]"#,
            "constraints[0].type",
            "must be one of",
        ),
        (
            r#","constraints":[{"type":"geo","location":"1,1","threshold":1,"rigidness":2}]"#,
            "constraints[0].rigidness",
            "at most 1",
        ),
        (r#","arch":["x86_64"]"#, "arch[0]", "amd64"),
        (
            r#","one_shot":"yes""#,
            "one_shot",
            "must be of type boolean",
        ),
        (
            r#","microservice_name":"a""#,
            "microservice_name",
            "already appears at microservices[0]",
        ),
        (
            r#","autoscale":{"min":3,"max":2,"target_cpu_percent":50}"#,
            "autoscale.max",
            "at least min (3)",
        ),
        (
            r#","autoscale":{"min":0,"max":2,"target_cpu_percent":50}"#,
            "autoscale.min",
            "at least 1",
        ),
        (
            r#","autoscale":{"max":2,"target_cpu_percent":50}"#,
            "autoscale.min",
            "is required",
        ),
        (
            r#","autoscale":{"min":1,"max":2,"target_cpu_percent":150}"#,
            "autoscale.target_cpu_percent",
            "at most 100",
        ),
        (
            r#","autoscale":{"min":1,"max":2,"target_cpu_percent":0}"#,
            "autoscale.target_cpu_percent",
            "at least 1",
        ),
        (
            r#","autoscale":{"min":1,"max":2}"#,
            "autoscale",
            "needs target_cpu_percent and/or target_memory_percent",
        ),
        (
            r#","autoscale":{"min":1,"max":2,"target_memory_percent":80}"#,
            "autoscale.target_memory_percent",
            "set memory",
        ),
        (
            r#","one_shot":true,"autoscale":{"min":1,"max":2,"target_cpu_percent":50}"#,
            "autoscale",
            "one_shot",
        ),
        (
            r#","autoscale":{"min":1,"max":2,"target_cpu_percent":50,"cooldown_secs":-1}"#,
            "autoscale.cooldown_secs",
            "at least 0",
        ),
        (
            r#","autoscale":{"min":1,"max":2,"target_cpu_percent":50,"up_window_secs":100000}"#,
            "autoscale.up_window_secs",
            "at most 86400",
        ),
    ];
    for (extra, field, msg) in cases {
        let problems = parse(&sla_with_service(extra)).unwrap_err().problems();
        assert!(
            has(&problems, &format!("{ms}.{field}"), msg),
            "{extra}: {problems:#?}"
        );
    }
}

#[test]
fn autoscale_is_kept_apart_from_the_spec() {
    let extra = r#","memory":64,"autoscale":{"min":1,"max":3,"target_cpu_percent":50,"target_memory_percent":80,"down_window_secs":300}"#;
    let v = parse(&sla_with_service(extra)).unwrap();
    assert!(v.warnings.is_empty(), "{:?}", v.warnings);
    let ms = &v.sla.applications[0].microservices[1];
    let a = canopy_sla::spec::autoscale(ms).unwrap();
    assert_eq!((a.min, a.max), (1, 3));
    assert_eq!(
        (a.target_cpu_percent, a.target_memory_percent),
        (Some(50), Some(80))
    );
    let w = a
        .windows
        .or(canopy_core::autoscale::ResolvedWindows::default());
    assert_eq!(w.down.as_secs(), 300);
    assert_eq!(w.up.as_secs(), 30, "the default");
    assert!(canopy_sla::spec::autoscale(&v.sla.applications[0].microservices[0]).is_none());
}

#[test]
fn probes_are_checked_with_their_paths() {
    let ms = "applications[0].microservices[1]";
    let cases = [
        (
            r#","readiness_probe":{}"#,
            "readiness_probe",
            "needs one of http, tcp or exec",
        ),
        (
            r#","liveness_probe":{"http":{"port":80},"tcp":{"port":80}}"#,
            "liveness_probe",
            "more than one",
        ),
        (
            r#","readiness_probe":{"http":{"port":0}}"#,
            "readiness_probe.http.port",
            "at least 1",
        ),
        (
            r#","readiness_probe":{"http":{"port":70000}}"#,
            "readiness_probe.http.port",
            "at most 65535",
        ),
        (
            r#","readiness_probe":{"http":{"path":"healthz","port":80}}"#,
            "readiness_probe.http.path",
            "must start with /",
        ),
        (
            r#","readiness_probe":{"tcp":{}}"#,
            "readiness_probe.tcp.port",
            "is required",
        ),
        (
            r#","liveness_probe":{"tcp":{"port":80},"period_secs":0}"#,
            "liveness_probe.period_secs",
            "at least 1",
        ),
        (
            r#","liveness_probe":{"tcp":{"port":80},"failure_threshold":0}"#,
            "liveness_probe.failure_threshold",
            "at least 1",
        ),
        (
            r#","liveness_probe":{"exec":[]}"#,
            "liveness_probe.exec",
            "must name a command",
        ),
    ];
    // An exec probe of a container is fine.
    parse(&sla_with_service(
        r#","liveness_probe":{"exec":["sh","-c","true"]}"#,
    ))
    .unwrap();
    for (extra, path, message) in cases {
        let e = parse(&sla_with_service(extra)).unwrap_err();
        let p = e.problems();
        assert!(has(&p, &format!("{ms}.{path}"), message), "{extra}: {p:#?}");
    }
    let wasm = r#"{"sla_version":"v2.0","customerID":"Admin","applications":[{
        "application_name":"app","application_namespace":"ns","microservices":[
          {"microservice_name":"w","microservice_namespace":"ns","virtualization":"wasm",
           "code":"m.wasm","liveness_probe":{"tcp":{"port":80}}}]}]}"#;
    let p = parse(wasm).unwrap_err().problems();
    assert!(
        has(
            &p,
            "applications[0].microservices[0].liveness_probe",
            "no sockets"
        ),
        "{p:#?}"
    );
}

#[test]
fn probes_reach_the_spec_with_defaults() {
    use canopy_core::probe::{Probe, ProbeCheck};
    let extra = r#","readiness_probe":{"http":{"port":8080},"period_secs":2},"liveness_probe":{"tcp":{"port":8080},"failure_threshold":5,"initial_delay_secs":3}"#;
    let v = parse(&sla_with_service(extra)).unwrap();
    let app = &v.sla.applications[0];
    let spec = canopy_sla::spec::service_spec(app, &app.microservices[1]).unwrap();
    let mut ready = Probe::new(ProbeCheck::Http {
        path: "/".into(),
        port: 8080,
    });
    ready.period_secs = 2;
    assert_eq!(spec.readiness_probe, Some(ready));
    let mut live = Probe::new(ProbeCheck::Tcp { port: 8080 });
    live.failure_threshold = 5;
    live.initial_delay_secs = 3;
    assert_eq!(spec.liveness_probe, Some(live));
    let plain = canopy_sla::spec::service_spec(app, &app.microservices[0]).unwrap();
    assert_eq!((plain.readiness_probe, plain.liveness_probe), (None, None));
}

#[test]
fn every_problem_is_reported_not_just_the_first() {
    let extra = r#","port":"x","environment":["=1"],"addresses":{"rr_ip":"nope"}"#;
    let problems = parse(&sla_with_service(extra)).unwrap_err().problems();
    assert_eq!(problems.len(), 3, "{problems:#?}");
}

#[test]
fn meaning_is_checked_even_when_structure_fails() {
    let extra = r#","microservice_name":"bad name","port":"80:99999""#;
    let problems = parse(&sla_with_service(extra)).unwrap_err().problems();
    let ms = "applications[0].microservices[1]";
    assert!(
        has(&problems, &format!("{ms}.microservice_name"), "must match"),
        "{problems:#?}"
    );
    assert!(
        has(&problems, &format!("{ms}.port"), "1 to 65535"),
        "{problems:#?}"
    );
}

#[test]
fn unikernel_needs_one_kernel_per_arch() {
    let extra =
        r#","virtualization":"unikernel","code":"http://h/k1.tar.gz","arch":["amd64","arm64"]"#;
    let p = parse(&sla_with_service(extra)).unwrap_err().problems();
    assert!(
        has(
            &p,
            "applications[0].microservices[1].code",
            "one kernel per architecture"
        ),
        "{p:#?}"
    );
}

#[test]
fn malformed_json_reports_line_and_column() {
    let err = parse("{\n  \"sla_version\": \"v2.0\",\n  \"customerID\": ,\n}").unwrap_err();
    match err {
        SlaError::Syntax { line, column, .. } => assert_eq!((line, column), (3, 17)),
        other => panic!("expected a syntax error, got {other:?}"),
    }
}

#[test]
fn sla_version_other_than_v2_is_refused() {
    let text = sla_with_service("").replace("v2.0", "v1.0");
    let p = parse(&text).unwrap_err().problems();
    assert!(has(&p, "sla_version", "deprecated"), "{p:#?}");
}

#[test]
fn unknown_fields_are_warnings_with_hints() {
    let v = parse(&sla_with_service(r#","vcpu":2"#)).unwrap();
    assert_eq!(
        v.warnings,
        vec![Problem {
            path: "applications[0].microservices[1].vcpu".into(),
            message: "unknown field, ignored (did you mean `vcpus`?)".into()
        }]
    );
}

#[test]
fn examples_are_valid_and_cover_every_kind() {
    let dir = crate_dir().join("examples");
    let examples = files(&dir, "");
    for name in [
        "container.json",
        "container-ports-rr-ip.json",
        "client-server.json",
        "one-shot.json",
        "wasm.json",
        "unikernel.json",
        "constraints.json",
        "autoscale.json",
        "probes.json",
    ] {
        assert!(dir.join(name).is_file(), "missing example {name}");
    }
    for f in examples {
        let text = std::fs::read_to_string(&f).unwrap();
        let v = parse(&text).unwrap_or_else(|e| panic!("{}: {:#?}", f.display(), e.problems()));
        assert!(v.warnings.is_empty(), "{}: {:?}", f.display(), v.warnings);
        for app in &v.sla.applications {
            for ms in &app.microservices {
                canopy_sla::spec::service_spec(app, ms).unwrap();
            }
        }
    }
}

/// The committed schema must be what the types generate. Regenerate with
/// `CANOPY_UPDATE_GOLDEN=1 cargo test -p canopy-sla --test validation golden`.
#[test]
fn golden_schema_matches_types() {
    let path = crate_dir().join("schemas").join(schema::SCHEMA_FILE);
    let generated = schema::schema_text();
    if std::env::var_os("CANOPY_UPDATE_GOLDEN").is_some() {
        std::fs::write(&path, &generated).unwrap();
    }
    let committed = std::fs::read_to_string(&path).unwrap_or_default();
    assert!(
        committed == generated,
        "{} is out of date; regenerate it with CANOPY_UPDATE_GOLDEN=1 cargo test -p canopy-sla golden",
        path.display()
    );
}

#[test]
fn committed_schema_agrees_with_the_validator_on_fixtures() {
    // The committed file alone (as a third-party tool would use it) must accept the correct
    // fixtures and reject the structurally flawed ones.
    let path = crate_dir().join("schemas").join(schema::SCHEMA_FILE);
    let schema: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(path).unwrap()).unwrap();
    let v = jsonschema::validator_for(&schema).unwrap();
    let d = fixture_dir();
    for f in files(&d, "") {
        let doc: serde_json::Value =
            serde_json::from_str(&std::fs::read_to_string(&f).unwrap()).unwrap();
        let name = f.file_name().unwrap().to_string_lossy().to_string();
        assert_eq!(v.is_valid(&doc), !name.starts_with("sla_flawed"), "{name}");
    }
}
