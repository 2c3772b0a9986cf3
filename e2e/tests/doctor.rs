//! `canopy doctor` through the real binary: a containerd that is not there is a failure with
//! the fix, and the exit code says so.

use canopy_e2e::bin_dir;
use std::process::Command;

#[test]
fn a_stopped_containerd_is_a_failure_with_the_fix() {
    let dir = tempfile::tempdir().expect("a temp dir");
    let socket = dir.path().join("containerd.sock");
    let out = Command::new(bin_dir().join("canopy"))
        .args(["doctor", "--containerd-socket"])
        .arg(&socket)
        .output()
        .expect("canopy runs");
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{stdout}{stderr}");
    let line = stdout
        .lines()
        .find(|l| l.contains("containerd"))
        .unwrap_or_default();
    assert!(
        line.starts_with("FAIL containerd")
            && line.contains(&format!("no socket at {}", socket.display()))
            && line.contains("systemctl start containerd"),
        "{stdout}"
    );
    assert!(stderr.contains("check(s) failed"), "{stderr}");
    // Every check printed a verdict.
    for l in stdout.lines() {
        assert!(
            ["OK   ", "WARN ", "FAIL "].iter().any(|p| l.starts_with(p)),
            "{l:?}"
        );
    }
}
