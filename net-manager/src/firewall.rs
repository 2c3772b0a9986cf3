//! The overlay's traffic accepted in iptables' `filter FORWARD` chain, whatever its policy.
//!
//! Docker (and many firewalls) set the `FORWARD` policy to `DROP`. Every overlay packet is
//! forwarded: between an instance and another on the same bridge (routed through the bridge's
//! address, or, with `br_netfilter` and `bridge-nf-call-iptables`, bridged after DNAT, which
//! passes `FORWARD` too), between the bridge and the VXLAN tunnel, between two bridges in
//! `--same-host` mode. An `accept` in the net manager's own nftables table would not help: a
//! packet must be accepted by every base chain on the hook, and another table's `drop` is
//! final. So the net manager puts its accept where the drop is, two rules per link (the bridge,
//! and the tunnel when it has one), each tagged with the link's comment:
//!
//! ```text
//! iptables -w -I FORWARD 1 -i <link> -m comment --comment canopy-net:<link> -j ACCEPT
//! iptables -w -I FORWARD 1 -o <link> -m comment --comment canopy-net:<link> -j ACCEPT
//! ```
//!
//! Always at the top of `FORWARD`, also when Docker's `DOCKER-USER` chain exists: it works
//! the same whether Docker started before the net manager or after it (Docker puts its jump
//! to `DOCKER-USER` above them, and what it jumps to only concerns Docker's own bridges), it
//! does not depend on Docker jumping to `DOCKER-USER` at all, and there is one place to look
//! for the rules and remove them. `DOCKER-USER` is where an administrator filters traffic to
//! Docker's containers; the overlay's is not theirs.
//!
//! Rules are inserted when missing (`-C` first), so applying again changes nothing, and
//! removed by their comment ([`tagged`] in `iptables -S FORWARD`), so a rule an earlier
//! version made goes too. When `iptables` is not installed, or its `filter` table cannot be
//! read (`iptables -S FORWARD` fails: iptables-legacy without the kernel's tables), there is
//! nothing to do ([`Outcome::Skipped`]). With iptables-nft (Debian's `iptables`), listing
//! always works, and the first insert makes the `ip filter` table with a `FORWARD` chain of
//! policy accept if there was none: harmless, and a firewall that starts later with policy
//! drop then finds the rules already there. After its rules are removed, a `filter` table of
//! iptables-nft that holds nothing but the three built-in chains with policy accept (what the
//! first insert made, or a table nobody uses) is deleted too ([`tidy_with`]), so a worker
//! that leaves leaves no table behind; anything else in it (a rule, a chain, a drop policy)
//! keeps it.
//!
//! What this does not cover: a pure-nftables firewall (firewalld's `inet firewalld`, a
//! hand-written `forward` chain with policy drop), and an `INPUT` policy of drop (the
//! resolver on the bridge's address, VXLAN and probes on the underlay).

use std::path::Path;
use std::process::{Command, Stdio};

/// The chain the rules go in.
pub const CHAIN: &str = "FORWARD";

/// What every rule's comment starts with; the link's name follows.
pub const COMMENT_PREFIX: &str = "canopy-net:";

#[derive(Debug, thiserror::Error)]
pub enum FirewallError {
    #[error("running iptables: {0}")]
    Run(std::io::Error),
    #[error("iptables {args} failed: {stderr}")]
    Refused { args: String, stderr: String },
}

/// What one run of `iptables` gave: its exit code (`None`: killed by a signal) and output.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Ran {
    pub code: Option<i32>,
    pub stdout: String,
    pub stderr: String,
}

impl Ran {
    fn ok(&self) -> bool {
        self.code == Some(0)
    }
}

/// What [`ensure`] or [`remove`] did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Outcome {
    /// Nothing to do here, and why (no `iptables`, no `filter` table).
    Skipped(String),
    /// Done: this many rules inserted or deleted (0: it was so already).
    Changed(usize),
}

/// The comment of link `link`'s rules.
pub fn comment(link: &str) -> String {
    format!("{COMMENT_PREFIX}{link}")
}

/// The two rules that accept link `link`'s traffic, in from it and out to it: the arguments
/// after `-C|-I|-D FORWARD`. The name must be one [`crate::plan::check_link_name`] accepts.
pub fn rules(link: &str) -> [Vec<String>; 2] {
    ["-i", "-o"].map(|dir| {
        [
            dir,
            link,
            "-m",
            "comment",
            "--comment",
            &comment(link),
            "-j",
            "ACCEPT",
        ]
        .map(str::to_owned)
        .to_vec()
    })
}

/// The rules of `listing` (what `iptables -S FORWARD` prints) tagged with `link`'s comment,
/// as the arguments after `-D FORWARD` that delete each.
pub fn tagged(listing: &str, link: &str) -> Vec<Vec<String>> {
    let want = comment(link);
    listing
        .lines()
        .filter_map(|line| {
            let words = split(line);
            let rest = match words.as_slice() {
                [a, chain, rest @ ..] if a == "-A" && chain == CHAIN => rest,
                _ => return None,
            };
            rest.windows(2)
                .any(|w| w[0] == "--comment" && w[1] == want)
                .then(|| rest.to_vec())
        })
        .collect()
}

/// The words of one line of `iptables -S`: split at spaces, `"…"` kept together (with `\"`
/// and `\\` inside), quotes taken off.
fn split(line: &str) -> Vec<String> {
    let mut words = Vec::new();
    let mut word = String::new();
    let mut in_word = false;
    let mut quoted = false;
    let mut chars = line.chars();
    while let Some(c) = chars.next() {
        match c {
            '"' => {
                quoted = !quoted;
                in_word = true;
            }
            '\\' if quoted => {
                if let Some(n) = chars.next() {
                    word.push(n);
                }
            }
            c if c.is_whitespace() && !quoted => {
                if in_word {
                    words.push(std::mem::take(&mut word));
                    in_word = false;
                }
            }
            c => {
                word.push(c);
                in_word = true;
            }
        }
    }
    if in_word {
        words.push(word);
    }
    words
}

/// Runs one `iptables` command: the arguments after `iptables -w`.
pub type Runner<'a> = dyn FnMut(&[String]) -> std::io::Result<Ran> + 'a;

fn args(verb: &str, rule: &[String]) -> Vec<String> {
    let mut a = vec![verb.to_owned(), CHAIN.to_owned()];
    if verb == "-I" {
        a.push("1".to_owned());
    }
    a.extend(rule.iter().cloned());
    a
}

/// `iptables -S FORWARD`: the listing, or why there is nothing to do.
fn listing(run: &mut Runner<'_>) -> Result<Result<String, String>, FirewallError> {
    let list = ["-S", CHAIN].map(str::to_owned);
    match run(&list) {
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            Ok(Err("there is no iptables command".to_owned()))
        }
        Err(e) => Err(FirewallError::Run(e)),
        // nsenter's answer when it cannot find the command.
        Ok(r) if r.code == Some(127) => Ok(Err(format!(
            "there is no iptables command: {}",
            r.stderr.trim()
        ))),
        Ok(r) if !r.ok() => Ok(Err(format!(
            "iptables -S {CHAIN} failed: {}",
            r.stderr.trim()
        ))),
        Ok(r) => Ok(Ok(r.stdout)),
    }
}

fn must(run: &mut Runner<'_>, args: &[String]) -> Result<(), FirewallError> {
    let r = run(args).map_err(FirewallError::Run)?;
    if r.ok() {
        Ok(())
    } else {
        Err(FirewallError::Refused {
            args: args.join(" "),
            stderr: r.stderr.trim().to_owned(),
        })
    }
}

/// Makes `FORWARD` accept the traffic of each of `links` ([`rules`]), inserting at the top
/// what is missing (checked with `-C`), through `run`.
pub fn ensure_with(run: &mut Runner<'_>, links: &[&str]) -> Result<Outcome, FirewallError> {
    if let Err(why) = listing(run)? {
        return Ok(Outcome::Skipped(why));
    }
    let mut inserted = 0;
    for link in links {
        for rule in rules(link) {
            let present = run(&args("-C", &rule)).map_err(FirewallError::Run)?.ok();
            if !present {
                must(run, &args("-I", &rule))?;
                inserted += 1;
            }
        }
    }
    Ok(Outcome::Changed(inserted))
}

/// Deletes every rule of `FORWARD` tagged with one of `links`' comments, through `run`.
pub fn remove_with(run: &mut Runner<'_>, links: &[&str]) -> Result<Outcome, FirewallError> {
    let listing = match listing(run)? {
        Ok(l) => l,
        Err(why) => return Ok(Outcome::Skipped(why)),
    };
    let mut deleted = 0;
    for link in links {
        for rule in tagged(&listing, link) {
            must(run, &args("-D", &rule))?;
            deleted += 1;
        }
    }
    Ok(Outcome::Changed(deleted))
}

/// What `iptables -S` prints for a `filter` table with nothing in it.
const EMPTY_FILTER: [&str; 3] = ["-P INPUT ACCEPT", "-P FORWARD ACCEPT", "-P OUTPUT ACCEPT"];

/// Deletes iptables-nft's `ip filter` table (through `drop_table`: `nft delete table ip
/// filter`) when `iptables -S` (through `run`) shows nothing in it but [`EMPTY_FILTER`].
/// Returns whether it did. iptables-legacy's tables belong to the kernel and stay; a table
/// that is already gone is fine.
pub fn tidy_with(
    run: &mut Runner<'_>,
    drop_table: &mut dyn FnMut() -> std::io::Result<Ran>,
) -> Result<bool, FirewallError> {
    let nft_backed = match run(&["-V".to_owned()]) {
        Ok(r) if r.ok() => r.stdout.contains("nf_tables"),
        _ => return Ok(false),
    };
    let listing = run(&["-S".to_owned()]).map_err(FirewallError::Run)?;
    let mut lines: Vec<&str> = listing.stdout.lines().map(str::trim).collect();
    lines.retain(|l| !l.is_empty());
    let mut empty = EMPTY_FILTER.to_vec();
    lines.sort_unstable();
    empty.sort_unstable();
    if !nft_backed || !listing.ok() || lines != empty {
        return Ok(false);
    }
    Ok(drop_table().map_err(FirewallError::Run)?.ok())
}

/// Runs `iptables -w args…`, in the network namespace at `ns` when given (through
/// `nsenter --net`, so this process never changes namespace).
pub fn iptables(ns: Option<&Path>, args: &[String]) -> std::io::Result<Ran> {
    let mut a = vec!["-w".to_owned()];
    a.extend_from_slice(args);
    run_tool(ns, "iptables", &a)
}

/// Runs `program args…`, in the network namespace at `ns` when given.
fn run_tool(ns: Option<&Path>, program: &str, args: &[String]) -> std::io::Result<Ran> {
    let mut cmd = match ns {
        Some(ns) => {
            let mut c = Command::new("nsenter");
            c.arg(format!("--net={}", ns.display())).arg(program);
            c
        }
        None => Command::new(program),
    };
    let out = cmd.args(args).stdin(Stdio::null()).output()?;
    Ok(Ran {
        code: out.status.code(),
        stdout: String::from_utf8_lossy(&out.stdout).into_owned(),
        stderr: String::from_utf8_lossy(&out.stderr).into_owned(),
    })
}

/// [`ensure_with`] with `iptables` in the namespace at `ns` (`None`: this process's own).
pub fn ensure(ns: Option<&Path>, links: &[&str]) -> Result<Outcome, FirewallError> {
    ensure_with(&mut |a: &[String]| iptables(ns, a), links)
}

/// [`remove_with`] with `iptables` in the namespace at `ns` (`None`: this process's own),
/// then [`tidy_with`] with `nft` there.
pub fn remove(ns: Option<&Path>, links: &[&str]) -> Result<Outcome, FirewallError> {
    let out = remove_with(&mut |a: &[String]| iptables(ns, a), links)?;
    if matches!(out, Outcome::Changed(n) if n > 0) {
        let drop_table = || {
            let a = ["delete", "table", "ip", "filter"].map(str::to_owned);
            run_tool(ns, "nft", &a)
        };
        tidy_with(&mut |a: &[String]| iptables(ns, a), &mut { drop_table })?;
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ran(code: i32, stdout: &str) -> std::io::Result<Ran> {
        Ok(Ran {
            code: Some(code),
            stdout: stdout.to_owned(),
            stderr: if code == 0 { "" } else { "nope" }.to_owned(),
        })
    }

    /// A fake iptables: a FORWARD chain as `-S` prints it, `-C`, `-I` and `-D` on it; every
    /// call recorded.
    struct Fake {
        rules: Vec<Vec<String>>,
        calls: Vec<String>,
    }

    impl Fake {
        fn new(rules: &[&str]) -> Fake {
            Fake {
                rules: rules.iter().map(|r| split(r)).collect(),
                calls: Vec::new(),
            }
        }

        fn run(&mut self, a: &[String]) -> std::io::Result<Ran> {
            self.calls.push(a.join(" "));
            let spec = |skip: usize| a[skip..].to_vec();
            match a[0].as_str() {
                "-S" => {
                    let mut out = String::from("-P FORWARD DROP\n");
                    for r in &self.rules {
                        let words: Vec<String> = r
                            .iter()
                            .map(|w| {
                                if w.starts_with(COMMENT_PREFIX) {
                                    format!("\"{w}\"")
                                } else {
                                    w.clone()
                                }
                            })
                            .collect();
                        out.push_str(&format!("-A FORWARD {}\n", words.join(" ")));
                    }
                    ran(0, &out)
                }
                "-C" => ran(if self.rules.contains(&spec(2)) { 0 } else { 1 }, ""),
                "-I" => {
                    assert_eq!(a[2], "1", "inserted at the top");
                    self.rules.insert(0, spec(3));
                    ran(0, "")
                }
                "-D" => match self.rules.iter().position(|r| *r == spec(2)) {
                    Some(i) => {
                        self.rules.remove(i);
                        ran(0, "")
                    }
                    None => ran(1, ""),
                },
                other => panic!("unexpected {other}"),
            }
        }
    }

    #[test]
    fn the_rules_of_a_link() {
        let [i, o] = rules("canopy0");
        assert_eq!(
            i.join(" "),
            "-i canopy0 -m comment --comment canopy-net:canopy0 -j ACCEPT"
        );
        assert_eq!(
            o.join(" "),
            "-o canopy0 -m comment --comment canopy-net:canopy0 -j ACCEPT"
        );
    }

    #[test]
    fn tagged_rules_are_found_by_their_comment_only() {
        let listing = "-P FORWARD DROP\n\
            -A FORWARD -j DOCKER-USER\n\
            -A FORWARD -o canopy0 -m comment --comment \"canopy-net:canopy0\" -j ACCEPT\n\
            -A FORWARD -i canopy0 -m comment --comment \"canopy-net:canopy0\" -j ACCEPT\n\
            -A FORWARD -i canopy.vx -m comment --comment \"canopy-net:canopy.vx\" -j ACCEPT\n\
            -A FORWARD -i canopy0 -m comment --comment \"canopy-net:canopy00\" -j ACCEPT\n\
            -A FORWARD -i x -m comment --comment \"a \\\"quoted\\\" canopy-net:canopy0\" -j ACCEPT\n\
            -A DOCKER-USER -i canopy0 -m comment --comment \"canopy-net:canopy0\" -j ACCEPT\n";
        let found = tagged(listing, "canopy0");
        assert_eq!(found.len(), 2, "{found:?}");
        assert_eq!(found[0].join(" "), rules("canopy0")[1].join(" "));
        assert_eq!(found[1].join(" "), rules("canopy0")[0].join(" "));
        assert_eq!(tagged(listing, "canopy.vx").len(), 1);
        assert!(tagged(listing, "other").is_empty());
    }

    #[test]
    fn words_of_a_listing_line() {
        assert_eq!(
            split(r#"-A FORWARD -m comment --comment "a \"b\" c" -j ACCEPT"#),
            [
                "-A",
                "FORWARD",
                "-m",
                "comment",
                "--comment",
                "a \"b\" c",
                "-j",
                "ACCEPT"
            ]
        );
        assert_eq!(split("  -P   FORWARD DROP "), ["-P", "FORWARD", "DROP"]);
        assert_eq!(split(r#"--comment """#), ["--comment", ""]);
    }

    #[test]
    fn ensuring_inserts_what_is_missing_once() {
        let mut fw = Fake::new(&["-j DOCKER-USER"]);
        let out = ensure_with(&mut |a: &[String]| fw.run(a), &["br0", "vx0"]).unwrap();
        assert_eq!(out, Outcome::Changed(4));
        assert_eq!(fw.rules.len(), 5);
        assert!(
            fw.calls
                .iter()
                .any(|c| c == "-I FORWARD 1 -i br0 -m comment --comment canopy-net:br0 -j ACCEPT")
        );
        fw.calls.clear();
        let again = ensure_with(&mut |a: &[String]| fw.run(a), &["br0", "vx0"]).unwrap();
        assert_eq!(again, Outcome::Changed(0));
        assert!(
            fw.calls.iter().all(|c| !c.starts_with("-I")),
            "{:?}",
            fw.calls
        );
        assert_eq!(fw.rules.len(), 5);
    }

    #[test]
    fn removing_deletes_every_tagged_rule_and_only_those() {
        let mut fw = Fake::new(&["-j DOCKER-USER"]);
        ensure_with(&mut |a: &[String]| fw.run(a), &["br0", "vx0"]).unwrap();
        // One an earlier version made, another way.
        fw.rules.push(split(
            "-i br0 -o br0 -m comment --comment canopy-net:br0 -j ACCEPT",
        ));
        let out = remove_with(&mut |a: &[String]| fw.run(a), &["br0"]).unwrap();
        assert_eq!(out, Outcome::Changed(3));
        assert_eq!(fw.rules.len(), 3, "{:?}", fw.rules);
        assert!(fw.rules.iter().all(|r| !r.contains(&comment("br0"))));
        let out = remove_with(&mut |a: &[String]| fw.run(a), &["br0", "vx0"]).unwrap();
        assert_eq!(out, Outcome::Changed(2));
        assert_eq!(fw.rules, vec![split("-j DOCKER-USER")]);
        let out = remove_with(&mut |a: &[String]| fw.run(a), &["br0", "vx0"]).unwrap();
        assert_eq!(out, Outcome::Changed(0));
    }

    #[test]
    fn without_iptables_or_its_table_there_is_nothing_to_do() {
        let missing = |_: &[String]| -> std::io::Result<Ran> {
            Err(std::io::Error::from(std::io::ErrorKind::NotFound))
        };
        let out = ensure_with(&mut { missing }, &["br0"]).unwrap();
        assert!(matches!(out, Outcome::Skipped(ref w) if w.contains("no iptables")));
        let out = remove_with(&mut { missing }, &["br0"]).unwrap();
        assert!(matches!(out, Outcome::Skipped(ref w) if w.contains("no iptables")));
        let mut calls = 0;
        let mut no_table = |_: &[String]| {
            calls += 1;
            Ok(Ran {
                code: Some(3),
                stdout: String::new(),
                stderr: "iptables v1.8.9 (legacy): can't initialize iptables table `filter'\n"
                    .to_owned(),
            })
        };
        let out = ensure_with(&mut no_table, &["br0"]).unwrap();
        assert!(matches!(out, Outcome::Skipped(ref w) if w.contains("can't initialize")));
        assert_eq!(calls, 1, "nothing more is tried");
        let nsenter = |_: &[String]| ran(127, "");
        let out = ensure_with(&mut { nsenter }, &["br0"]).unwrap();
        assert!(matches!(out, Outcome::Skipped(_)), "{out:?}");
    }

    #[test]
    fn an_empty_nft_filter_table_is_deleted_and_anything_else_kept() {
        let tidy = |version: &str, listing: &str| {
            let (version, listing) = (version.to_owned(), listing.to_owned());
            let mut run = |a: &[String]| match a[0].as_str() {
                "-V" => ran(0, &version),
                "-S" => ran(0, &listing),
                other => panic!("unexpected {other}"),
            };
            let mut dropped = 0;
            let did = tidy_with(&mut run, &mut || {
                dropped += 1;
                ran(0, "")
            })
            .unwrap();
            assert_eq!(did, dropped == 1);
            did
        };
        let nft = "iptables v1.8.9 (nf_tables)\n";
        let empty = "-P INPUT ACCEPT\n-P FORWARD ACCEPT\n-P OUTPUT ACCEPT\n";
        assert!(tidy(nft, empty));
        assert!(
            !tidy("iptables v1.8.9 (legacy)\n", empty),
            "legacy tables stay"
        );
        assert!(!tidy(
            nft,
            "-P INPUT ACCEPT\n-P FORWARD DROP\n-P OUTPUT ACCEPT\n"
        ));
        assert!(!tidy(nft, &format!("{empty}-N DOCKER-USER\n")));
        assert!(!tidy(nft, &format!("{empty}-A INPUT -j ACCEPT\n")));
    }

    #[test]
    fn a_refused_insert_is_an_error_naming_it() {
        let mut run = |a: &[String]| match a[0].as_str() {
            "-S" => ran(0, "-P FORWARD DROP\n"),
            "-C" => ran(1, ""),
            _ => ran(2, ""),
        };
        let e = ensure_with(&mut run, &["br0"]).unwrap_err();
        assert!(
            e.to_string()
                .starts_with("iptables -I FORWARD 1 -i br0 -m comment"),
            "{e}"
        );
    }
}
