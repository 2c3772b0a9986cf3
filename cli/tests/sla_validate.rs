//! The real `canopy` binary on real files: exit codes and `FILE: PATH: MESSAGE` lines.
#![allow(clippy::unwrap_used)] // tests may panic: a panic is a failed test

use std::path::PathBuf;
use std::process::Command;

fn canopy() -> Command {
    Command::new(env!("CARGO_BIN_EXE_canopy"))
}

fn repo() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("..")
}

fn fixtures() -> PathBuf {
    std::env::var_os("CANOPY_SHARED_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| repo().join("../shared"))
        .join("oakestra-fixtures/sla")
}

fn in_dir(dir: &std::path::Path, prefix: &str) -> Vec<PathBuf> {
    let mut v: Vec<PathBuf> = std::fs::read_dir(dir)
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.file_name().unwrap().to_string_lossy().starts_with(prefix))
        .collect();
    v.sort();
    assert!(!v.is_empty(), "no {prefix}* files in {}", dir.display());
    v
}

#[test]
fn accepts_correct_fixtures_and_examples() {
    let mut files = in_dir(&fixtures(), "sla_correct_");
    files.extend(in_dir(&fixtures(), "example_curl"));
    files.extend(in_dir(&repo().join("sla-schemas/examples"), ""));
    let out = canopy()
        .arg("sla")
        .arg("validate")
        .args(&files)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stdout)
    );
    assert!(out.stdout.is_empty());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains(&format!("{0} of {0} file(s) valid", files.len())),
        "{err}"
    );
}

#[test]
fn rejects_each_flawed_fixture_with_path_lines() {
    for file in in_dir(&fixtures(), "sla_flawed_") {
        let out = canopy()
            .args(["sla", "validate"])
            .arg(&file)
            .output()
            .unwrap();
        assert_eq!(out.status.code(), Some(1), "{} accepted", file.display());
        let stdout = String::from_utf8(out.stdout).unwrap();
        assert!(!stdout.is_empty());
        let prefix = format!("{}: ", file.display());
        for line in stdout.lines() {
            let rest = line
                .strip_prefix(&prefix)
                .unwrap_or_else(|| panic!("bad line {line:?}"));
            let (path, message) = rest
                .split_once(": ")
                .unwrap_or_else(|| panic!("bad line {line:?}"));
            assert!(!path.is_empty() && !message.is_empty(), "{line:?}");
        }
    }
    let out = canopy()
        .args(["sla", "validate"])
        .arg(fixtures().join("sla_flawed_5.json"))
        .output()
        .unwrap();
    assert_eq!(
        String::from_utf8(out.stdout).unwrap(),
        format!(
            "{}: applications[0].microservices[0].microservice_name: must match ^[a-zA-Z0-9]{{1,30}}$\n",
            fixtures().join("sla_flawed_5.json").display()
        )
    );
}

#[test]
fn one_bad_file_among_good_ones_fails_and_missing_files_are_reported() {
    let dir = tempfile::tempdir().unwrap();
    let broken = dir.path().join("broken.json");
    std::fs::write(&broken, "{\n  \"sla_version\": \"v2.0\",\n}").unwrap();
    let missing = dir.path().join("missing.json");
    let good = fixtures().join("sla_correct_4.json");
    let out = canopy()
        .args(["sla", "validate"])
        .args([&good, &broken, &missing])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(1));
    let stdout = String::from_utf8(out.stdout).unwrap();
    assert!(
        stdout.contains(&format!(
            "{}: line 3, column 1: invalid JSON",
            broken.display()
        )),
        "{stdout}"
    );
    assert!(
        stdout.contains(&format!("{}: $: cannot read file", missing.display())),
        "{stdout}"
    );
    assert!(String::from_utf8_lossy(&out.stderr).contains("1 of 3 file(s) valid"));
}

#[test]
fn schema_command_prints_the_committed_schema() {
    let out = canopy().args(["sla", "schema"]).output().unwrap();
    assert!(out.status.success());
    let committed =
        std::fs::read_to_string(repo().join("sla-schemas/schemas/sla-v2.0.schema.json")).unwrap();
    assert_eq!(String::from_utf8(out.stdout).unwrap(), committed);
}
