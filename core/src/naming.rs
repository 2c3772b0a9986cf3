//! Naming rules: the name pattern Oakestra enforces, the fully qualified job name
//! `app.appns.svc.svcns` and the instance name `app.appns.svc.svcns.instance.N`.

use crate::ids::InstanceNumber;
use serde::{Deserialize, Serialize};
use std::fmt;

/// Application, namespace and service names: 1 to 30 ASCII letters or digits.
pub const NAME_PATTERN: &str = "^[a-zA-Z0-9]{1,30}$";
/// Longest name accepted.
pub const NAME_MAX_LEN: usize = 30;

/// Whether `s` matches [`NAME_PATTERN`].
pub fn is_valid_name(s: &str) -> bool {
    !s.is_empty() && s.len() <= NAME_MAX_LEN && s.bytes().all(|b| b.is_ascii_alphanumeric())
}

/// A name part that breaks [`NAME_PATTERN`].
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{part} {value:?} must match {NAME_PATTERN}")]
pub struct NameError {
    pub part: &'static str,
    pub value: String,
}

/// The fully qualified name of a service: `<app>.<appns>.<svc>.<svcns>`. Unique system-wide.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(try_from = "String", into = "String")]
pub struct JobName {
    app: String,
    app_ns: String,
    service: String,
    service_ns: String,
}

impl JobName {
    pub fn new(
        app: &str,
        app_ns: &str,
        service: &str,
        service_ns: &str,
    ) -> Result<Self, NameError> {
        for (part, value) in [
            ("application_name", app),
            ("application_namespace", app_ns),
            ("microservice_name", service),
            ("microservice_namespace", service_ns),
        ] {
            if !is_valid_name(value) {
                return Err(NameError {
                    part,
                    value: value.to_owned(),
                });
            }
        }
        Ok(JobName {
            app: app.to_owned(),
            app_ns: app_ns.to_owned(),
            service: service.to_owned(),
            service_ns: service_ns.to_owned(),
        })
    }

    pub fn app(&self) -> &str {
        &self.app
    }
    pub fn app_namespace(&self) -> &str {
        &self.app_ns
    }
    pub fn service(&self) -> &str {
        &self.service
    }
    pub fn service_namespace(&self) -> &str {
        &self.service_ns
    }

    /// The name of one instance: `<job>.instance.<n>` (Oakestra's task and namespace name).
    pub fn instance_name(&self, n: InstanceNumber) -> String {
        format!("{self}.instance.{n}")
    }

    /// Splits an instance name back into job name and number.
    pub fn parse_instance_name(s: &str) -> Result<(JobName, InstanceNumber), NameError> {
        let bad = || NameError {
            part: "instance name",
            value: s.to_owned(),
        };
        let (job, n) = s.rsplit_once(".instance.").ok_or_else(bad)?;
        let n: u32 = n.parse().map_err(|_| bad())?;
        Ok((job.parse()?, InstanceNumber(n)))
    }
}

impl fmt::Display for JobName {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "{}.{}.{}.{}",
            self.app, self.app_ns, self.service, self.service_ns
        )
    }
}

impl std::str::FromStr for JobName {
    type Err = NameError;
    fn from_str(s: &str) -> Result<Self, NameError> {
        let parts: Vec<&str> = s.split('.').collect();
        match parts.as_slice() {
            [a, b, c, d] => JobName::new(a, b, c, d),
            _ => Err(NameError {
                part: "job name",
                value: s.to_owned(),
            }),
        }
    }
}

impl TryFrom<String> for JobName {
    type Error = NameError;
    fn try_from(s: String) -> Result<Self, NameError> {
        s.parse()
    }
}

impl From<JobName> for String {
    fn from(j: JobName) -> String {
        j.to_string()
    }
}

/// Cluster and worker names: 1 to 63 ASCII letters, digits, `-` or `_` (a DNS label, roughly).
pub fn is_cluster_name(s: &str) -> bool {
    !s.is_empty()
        && s.len() <= 63
        && s.bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn name_rule() {
        assert!(is_valid_name("ExampleApplication33"));
        assert!(is_valid_name(&"a".repeat(30)));
        assert!(!is_valid_name(&"a".repeat(31)));
        assert!(!is_valid_name(""));
        assert!(!is_valid_name("test.special.char"));
        assert!(!is_valid_name("Micro A (4)"));
        assert!(!is_valid_name("näme"));
    }

    #[test]
    fn job_and_instance_names_round_trip() {
        let j = JobName::new("clientserver", "test", "nginx", "test").unwrap();
        assert_eq!(j.to_string(), "clientserver.test.nginx.test");
        assert_eq!(
            "clientserver.test.nginx.test".parse::<JobName>().unwrap(),
            j
        );
        let inst = j.instance_name(InstanceNumber(3));
        assert_eq!(inst, "clientserver.test.nginx.test.instance.3");
        assert_eq!(
            JobName::parse_instance_name(&inst).unwrap(),
            (j, InstanceNumber(3))
        );
    }

    #[test]
    fn bad_job_names_name_the_part() {
        let e = JobName::new("app", "ns", "bad.name", "ns").unwrap_err();
        assert_eq!(e.part, "microservice_name");
        assert!("a.b.c".parse::<JobName>().is_err());
        assert!(JobName::parse_instance_name("a.b.c.d.instance.x").is_err());
    }
}
