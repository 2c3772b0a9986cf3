//! Layered configuration for every daemon (DESIGN.md §7): built-in defaults, then a TOML file,
//! then the environment, then flags, each layer overriding the one before.
//!
//! The file is named by `--config FILE` or `CANOPY_CONFIG_FILE`. Its keys are the daemon's flag
//! names without the leading `--` (`api-addr = "0.0.0.0:10000"`, `runtimes = ["wasm"]`,
//! `remove-on-exit = true`); an unknown key, a value of the wrong kind or one the flag would
//! refuse is an error naming the key. `--print-config` prints the resolved settings as TOML,
//! each with where it came from (secrets hidden), and exits.
//!
//! How: the file's values become the clap command's defaults ([`with_file`], pure), so clap's
//! own `env` and flag handling put the environment and the flags on top.

use clap::{Arg, ArgAction, ArgMatches, Command, FromArgMatches, parser::ValueSource};
use std::collections::BTreeSet;
use std::ffi::OsString;
use std::path::{Path, PathBuf};

/// The flag and environment variable that name the file.
pub const FILE_FLAG: &str = "config";
pub const FILE_ENV: &str = "CANOPY_CONFIG_FILE";
const PRINT_FLAG: &str = "print-config";

#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("{path}: {source}")]
    Read {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("{path}: not valid TOML: {message}")]
    Syntax { path: PathBuf, message: String },
    #[error("{path}: unknown key {key:?} (known keys: {known})")]
    UnknownKey {
        path: PathBuf,
        key: String,
        known: String,
    },
    #[error("{path}: key {key:?}: {message}")]
    Value {
        path: PathBuf,
        key: String,
        message: String,
    },
}

/// What [`with_file`] did: the command with the file's values as defaults, and which keys the
/// file set.
pub struct Layered {
    pub command: Command,
    pub from_file: BTreeSet<String>,
}

/// The file named on the command line (`--config FILE`, `--config=FILE`) or else by
/// `env_value` (the `CANOPY_CONFIG_FILE` variable).
pub fn file_path(args: &[OsString], env_value: Option<OsString>) -> Option<PathBuf> {
    let flag = format!("--{FILE_FLAG}");
    let prefix = format!("--{FILE_FLAG}=");
    let mut it = args.iter().skip(1);
    while let Some(a) = it.next() {
        let s = a.to_string_lossy();
        if s == "--" {
            break;
        }
        if s == flag {
            return it.next().map(PathBuf::from);
        }
        if let Some(v) = s.strip_prefix(&prefix) {
            return Some(PathBuf::from(v));
        }
    }
    env_value.filter(|v| !v.is_empty()).map(PathBuf::from)
}

/// Adds `--config` and `--print-config` to a daemon's command.
pub fn with_layer_flags(cmd: Command) -> Command {
    cmd.arg(
        Arg::new(FILE_FLAG)
            .long(FILE_FLAG)
            .env(FILE_ENV)
            .value_name("FILE")
            .help("TOML file of settings (keys: the flag names without --); environment and flags override it"),
    )
    .arg(
        Arg::new(PRINT_FLAG)
            .long(PRINT_FLAG)
            .action(ArgAction::SetTrue)
            .help("Print the resolved settings as TOML, with where each came from, and exit"),
    )
}

/// The flags a file may set: every long flag but help, version and the layer's own.
fn settable(cmd: &Command) -> impl Iterator<Item = &Arg> {
    cmd.get_arguments().filter(|a| {
        a.get_long().is_some()
            && !matches!(a.get_action(), ArgAction::Help | ArgAction::Version)
            && ![FILE_FLAG, PRINT_FLAG].contains(&a.get_id().as_str())
    })
}

fn key_of(arg: &Arg) -> &str {
    arg.get_long().unwrap_or(arg.get_id().as_str())
}

fn is_flag(arg: &Arg) -> bool {
    matches!(arg.get_action(), ArgAction::SetTrue | ArgAction::SetFalse)
}

fn is_multi(arg: &Arg) -> bool {
    matches!(arg.get_action(), ArgAction::Append) || arg.get_value_delimiter().is_some()
}

/// One TOML value as the strings clap would see for `arg`, or why it cannot be.
fn strings(arg: &Arg, value: &toml::Value) -> Result<Vec<String>, String> {
    fn scalar(v: &toml::Value) -> Result<String, String> {
        match v {
            toml::Value::String(s) => Ok(s.clone()),
            toml::Value::Integer(i) => Ok(i.to_string()),
            toml::Value::Float(f) => Ok(f.to_string()),
            toml::Value::Boolean(b) => Ok(b.to_string()),
            other => Err(format!(
                "expected a string, number or boolean, found {}",
                other.type_str()
            )),
        }
    }
    match value {
        toml::Value::Boolean(b) if is_flag(arg) => Ok(vec![b.to_string()]),
        other if is_flag(arg) => Err(format!(
            "expected a boolean (true or false), found {}",
            other.type_str()
        )),
        toml::Value::Array(items) if is_multi(arg) => items.iter().map(scalar).collect(),
        toml::Value::Array(_) => Err("expected one value, found an array".into()),
        other => scalar(other).map(|s| vec![s]),
    }
}

/// Checks `values` with the flag's own parser, so a bad value is reported against the file's
/// key rather than later against the flag.
fn check(cmd: &Command, arg: &Arg, values: &[String]) -> Result<(), String> {
    if is_flag(arg) {
        return Ok(());
    }
    let probe = arg
        .clone()
        .required(false)
        .env(None::<&str>)
        .default_value(None::<&str>);
    let mut argv = Vec::new();
    for v in values {
        argv.push(format!("--{}={v}", key_of(arg)));
    }
    Command::new(cmd.get_name().to_owned())
        .no_binary_name(true)
        .disable_help_flag(true)
        .disable_version_flag(true)
        .arg(probe)
        .try_get_matches_from(argv)
        .map(|_| ())
        .map_err(|e| {
            let text = e.render().to_string();
            let first = text.lines().next().unwrap_or_default();
            first.trim_start_matches("error: ").to_owned()
        })
}

/// Makes the file's values (`text`, read from `path`) the defaults of `cmd`. Pure.
pub fn with_file(cmd: Command, path: &Path, text: &str) -> Result<Layered, ConfigError> {
    let table: toml::Table = text
        .parse()
        .map_err(|e: toml::de::Error| ConfigError::Syntax {
            path: path.to_owned(),
            message: e.message().to_owned()
                + &e.span()
                    .map(|s| format!(" (at line {})", text[..s.start].lines().count().max(1)))
                    .unwrap_or_default(),
        })?;
    let mut updates = Vec::new();
    for (key, value) in &table {
        let Some(arg) = settable(&cmd).find(|a| key_of(a) == key) else {
            let known: Vec<&str> = settable(&cmd).map(key_of).collect();
            return Err(ConfigError::UnknownKey {
                path: path.to_owned(),
                key: key.clone(),
                known: known.join(", "),
            });
        };
        let value_error = |message| ConfigError::Value {
            path: path.to_owned(),
            key: key.clone(),
            message,
        };
        let values = strings(arg, value).map_err(value_error)?;
        check(&cmd, arg, &values).map_err(value_error)?;
        updates.push((arg.get_id().as_str().to_owned(), values));
    }
    let from_file = updates
        .iter()
        .filter_map(|(id, _)| {
            settable(&cmd)
                .find(|a| a.get_id().as_str() == id)
                .map(|a| key_of(a).to_owned())
        })
        .collect();
    let mut command = cmd;
    for (id, values) in updates {
        command = command.mut_arg(id, |a| a.required(false).default_values(values));
    }
    Ok(Layered { command, from_file })
}

/// The resolved settings as TOML, each line saying where its value came from. Pure.
pub fn render(cmd: &Command, matches: &ArgMatches, from_file: &BTreeSet<String>) -> String {
    let mut out = String::new();
    for arg in settable(cmd) {
        let id = arg.get_id().as_str();
        let key = key_of(arg);
        let raw: Vec<String> = matches
            .try_get_raw(id)
            .ok()
            .flatten()
            .map(|vs| vs.map(|v| v.to_string_lossy().into_owned()).collect())
            .unwrap_or_default();
        let source = match matches.value_source(id) {
            Some(ValueSource::CommandLine) => "flag",
            Some(ValueSource::EnvVariable) => "environment",
            Some(_) if from_file.contains(key) => "file",
            Some(_) => "default",
            None => {
                out.push_str(&format!("# {key} is not set\n"));
                continue;
            }
        };
        let value = if arg.is_hide_env_values_set() {
            toml::Value::String("<hidden>".into())
        } else if is_flag(arg) {
            toml::Value::Boolean(raw.first().is_some_and(|v| v == "true"))
        } else if is_multi(arg) {
            toml::Value::Array(raw.into_iter().map(toml::Value::String).collect())
        } else {
            toml::Value::String(raw.into_iter().next().unwrap_or_default())
        };
        out.push_str(&format!("{key} = {value}  # {source}\n"));
    }
    out
}

/// What a parse produced: the settings, or the text `--print-config` asked for.
pub enum Parsed<C> {
    Run(C),
    Print(String),
}

/// Parses `args` over the layers: `read` gives a file's text (the edge), clap reads the
/// environment.
pub fn parse_from<C: clap::CommandFactory + FromArgMatches>(
    args: Vec<OsString>,
    env_file: Option<OsString>,
    read: impl Fn(&Path) -> std::io::Result<String>,
) -> Result<Result<Parsed<C>, clap::Error>, ConfigError> {
    let base = with_layer_flags(C::command());
    let layered = match file_path(&args, env_file) {
        Some(path) => {
            let text = read(&path).map_err(|source| ConfigError::Read {
                path: path.clone(),
                source,
            })?;
            with_file(base, &path, &text)?
        }
        None => Layered {
            command: base,
            from_file: BTreeSet::new(),
        },
    };
    let mut command = layered.command;
    let matches = match command.try_get_matches_from_mut(args) {
        Ok(m) => m,
        Err(e) => return Ok(Err(e)),
    };
    if matches.get_flag(PRINT_FLAG) {
        return Ok(Ok(Parsed::Print(render(
            &command,
            &matches,
            &layered.from_file,
        ))));
    }
    Ok(C::from_arg_matches(&matches).map(Parsed::Run))
}

/// A daemon's settings from its defaults, file, environment and flags; exits with a message
/// (status 2) on a bad file or flag, and after printing for `--print-config` or `--help`.
pub fn parse<C: clap::CommandFactory + FromArgMatches>() -> C {
    let args: Vec<OsString> = std::env::args_os().collect();
    match parse_from::<C>(args, std::env::var_os(FILE_ENV), |p| {
        std::fs::read_to_string(p)
    }) {
        Ok(Ok(Parsed::Run(c))) => c,
        Ok(Ok(Parsed::Print(text))) => {
            print!("{text}");
            std::process::exit(0)
        }
        Ok(Err(e)) => e.exit(),
        Err(e) => {
            eprintln!("error: {e}");
            std::process::exit(2)
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::Parser;

    #[derive(Debug, Parser)]
    struct Settings {
        #[arg(long, default_value = "0.0.0.0:10000")]
        api_addr: std::net::SocketAddr,
        #[arg(long)]
        cluster_addr: String,
        #[arg(long, default_value_t = 2.0)]
        report_interval_secs: f64,
        #[arg(long, value_delimiter = ',', default_value = "container,wasm")]
        runtimes: Vec<String>,
        #[arg(long, hide_env_values = true)]
        join_token: Option<String>,
        #[arg(long)]
        remove_on_exit: bool,
    }

    fn args(list: &[&str]) -> Vec<OsString> {
        std::iter::once("daemon")
            .chain(list.iter().copied())
            .map(OsString::from)
            .collect()
    }

    fn parse_with(list: &[&str], file: &str) -> Result<Parsed<Settings>, String> {
        let file = file.to_owned();
        match parse_from::<Settings>(args(list), None, move |_| Ok(file.clone())) {
            Ok(Ok(p)) => Ok(p),
            Ok(Err(e)) => Err(e.to_string()),
            Err(e) => Err(e.to_string()),
        }
    }

    fn settings(list: &[&str], file: &str) -> Settings {
        match parse_with(list, file) {
            Ok(Parsed::Run(s)) => s,
            Ok(Parsed::Print(t)) => panic!("printed {t}"),
            Err(e) => panic!("{e}"),
        }
    }

    #[test]
    fn the_file_is_found_by_flag_then_environment() {
        let env = Some(OsString::from("/env.toml"));
        assert_eq!(
            file_path(&args(&["--config", "/a.toml"]), env.clone()),
            Some("/a.toml".into())
        );
        assert_eq!(
            file_path(&args(&["--x", "--config=/b.toml"]), env.clone()),
            Some("/b.toml".into())
        );
        assert_eq!(file_path(&args(&[]), env), Some("/env.toml".into()));
        assert_eq!(file_path(&args(&["--", "--config", "/c"]), None), None);
        assert_eq!(file_path(&args(&[]), Some(OsString::new())), None);
    }

    #[test]
    fn defaults_then_file_then_flags() {
        let file = r#"
            cluster-addr = "10.0.0.1:10100"
            report-interval-secs = 0.5
            runtimes = ["wasm"]
            remove-on-exit = true
        "#;
        let s = settings(&["--config", "f.toml", "--report-interval-secs", "7"], file);
        assert_eq!(s.api_addr.to_string(), "0.0.0.0:10000", "default kept");
        assert_eq!(
            s.cluster_addr, "10.0.0.1:10100",
            "file fills a required flag"
        );
        assert_eq!(s.runtimes, vec!["wasm"], "file replaces a default");
        assert!(s.remove_on_exit, "file sets a switch");
        assert_eq!(s.report_interval_secs, 7.0, "a flag beats the file");
    }

    #[test]
    fn without_a_file_the_required_flags_stay_required() {
        let err = parse_with(&[], "").err().unwrap_or_default();
        assert!(err.contains("--cluster-addr"), "{err}");
    }

    #[test]
    fn bad_files_name_the_key() {
        let cases = [
            ("clustr-addr = \"x\"", "unknown key \"clustr-addr\""),
            (
                "api-addr = 10000",
                "key \"api-addr\": invalid value '10000'",
            ),
            (
                "report-interval-secs = \"soon\"",
                "key \"report-interval-secs\"",
            ),
            (
                "remove-on-exit = \"yes\"",
                "key \"remove-on-exit\": expected a boolean",
            ),
            (
                "cluster-addr = [\"a\", \"b\"]",
                "key \"cluster-addr\": expected one value",
            ),
            (
                "runtimes = [{ a = 1 }]",
                "key \"runtimes\": expected a string",
            ),
            ("cluster-addr = \n", "not valid TOML"),
            ("help = true", "unknown key \"help\""),
        ];
        for (file, want) in cases {
            let err = parse_with(&["--config", "bad.toml"], file)
                .err()
                .unwrap_or_default();
            assert!(err.starts_with("bad.toml: "), "{file}: {err}");
            assert!(err.contains(want), "{file}: {err} lacks {want}");
        }
    }

    #[test]
    fn an_unreadable_file_is_named() {
        let r = parse_from::<Settings>(args(&["--config", "/nope.toml"]), None, |_| {
            Err(std::io::Error::from(std::io::ErrorKind::NotFound))
        });
        let err = r.err().map(|e| e.to_string()).unwrap_or_default();
        assert!(err.starts_with("/nope.toml: "), "{err}");
    }

    #[test]
    fn print_config_says_where_each_value_came_from() {
        let file = "cluster-addr = \"c:1\"\njoin-token = \"s3cret\"\n";
        let Ok(Parsed::Print(text)) = parse_with(
            &["--config", "f.toml", "--print-config", "--runtimes", "wasm"],
            file,
        ) else {
            panic!("expected printed settings")
        };
        assert!(
            text.contains("api-addr = \"0.0.0.0:10000\"  # default"),
            "{text}"
        );
        assert!(text.contains("cluster-addr = \"c:1\"  # file"), "{text}");
        assert!(text.contains("runtimes = [\"wasm\"]  # flag"), "{text}");
        assert!(text.contains("join-token = \"<hidden>\"  # file"), "{text}");
        assert!(!text.contains("s3cret"), "{text}");
        let reparsed: toml::Table = text.parse().expect("the output is TOML");
        assert!(reparsed.contains_key("remove-on-exit"));
    }
}
