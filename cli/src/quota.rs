//! `canopy quota USER`: a user's quota and what they hold; with flags (admins), changes it.
//! A flag changes only its own limit (0: no limit); `--default` removes the user's quota, so
//! the root's default applies again.

use crate::client::Client;
use crate::table::Table;
use anyhow::Result;
use canopy_api::{Quota, QuotaView};
use clap::Args;

#[derive(Args)]
pub struct QuotaArgs {
    /// The user.
    pub user: String,
    /// Most applications (0: no limit).
    #[arg(long)]
    pub applications: Option<u64>,
    /// Most services.
    #[arg(long)]
    pub services: Option<u64>,
    /// Most instances, all services together.
    #[arg(long)]
    pub instances: Option<u64>,
    /// Most vCPUs asked for by all instances together.
    #[arg(long)]
    pub vcpus: Option<u64>,
    /// Most memory asked for by all instances together, MiB.
    #[arg(long)]
    pub memory_mb: Option<u64>,
    /// Remove the user's own quota: the root's default applies again.
    #[arg(long, conflicts_with_all = ["applications", "services", "instances", "vcpus", "memory_mb"])]
    pub default: bool,
}

impl QuotaArgs {
    fn changes(&self) -> bool {
        [
            self.applications,
            self.services,
            self.instances,
            self.vcpus,
            self.memory_mb,
        ]
        .iter()
        .any(Option::is_some)
    }
}

/// `current` with the limits the flags name changed (0: no limit).
pub fn merge(current: Quota, a: &QuotaArgs) -> Quota {
    let pick = |flag: Option<u64>, now: Option<u64>| match flag {
        Some(0) => None,
        Some(n) => Some(n),
        None => now,
    };
    Quota {
        applications: pick(a.applications, current.applications),
        services: pick(a.services, current.services),
        instances: pick(a.instances, current.instances),
        vcpus: pick(a.vcpus, current.vcpus),
        memory_mb: pick(a.memory_mb, current.memory_mb),
    }
}

/// The quota and the usage, one row per limit.
pub fn render(user: &str, v: &QuotaView) -> String {
    let mut t = Table::new(&["", "USED", "LIMIT"]);
    let limit = |l: Option<u64>| l.map_or_else(|| "-".to_owned(), |n| n.to_string());
    let q = &v.quota;
    let u = &v.usage;
    for (what, used, max) in [
        ("applications", u.applications, q.applications),
        ("services", u.services, q.services),
        ("instances", u.instances, q.instances),
        ("vcpus", u.vcpus, q.vcpus),
        ("memory_mb", u.memory_mb, q.memory_mb),
    ] {
        t.row(vec![what.to_owned(), used.to_string(), limit(max)]);
    }
    let whose = if v.default {
        "the root's default"
    } else {
        "set for this user"
    };
    format!("quota of {user} ({whose}; - is no limit)\n{}", t.render())
}

pub async fn run(client: &mut Client, a: QuotaArgs) -> Result<()> {
    let path = format!("/api/user/{}/quota", a.user);
    let view: QuotaView = if a.default {
        client.delete(&path).await?;
        client.get(&path).await?
    } else if a.changes() {
        let now: QuotaView = client.get(&path).await?;
        let body = serde_json::to_value(merge(now.quota, &a))?;
        client.put(&path, &body).await?
    } else {
        client.get(&path).await?
    };
    print!("{}", render(&a.user, &view));
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use canopy_api::Usage;

    fn args(services: Option<u64>, vcpus: Option<u64>) -> QuotaArgs {
        QuotaArgs {
            user: "carol".into(),
            applications: None,
            services,
            instances: None,
            vcpus,
            memory_mb: None,
            default: false,
        }
    }

    #[test]
    fn a_flag_changes_only_its_limit_and_zero_lifts_it() {
        let now = Quota {
            applications: Some(100),
            services: Some(500),
            instances: Some(1000),
            ..Quota::UNLIMITED
        };
        let q = merge(now, &args(Some(20), Some(8)));
        assert_eq!(q.services, Some(20));
        assert_eq!(q.vcpus, Some(8));
        assert_eq!((q.applications, q.instances), (Some(100), Some(1000)));
        assert_eq!(merge(now, &args(Some(0), None)).services, None);
        assert!(!args(None, None).changes());
    }

    #[test]
    fn the_table_shows_usage_against_each_limit() {
        let v = QuotaView {
            quota: Quota {
                services: Some(2),
                ..Quota::UNLIMITED
            },
            default: false,
            usage: Usage {
                services: 1,
                ..Usage::default()
            },
        };
        let out = render("carol", &v);
        assert!(
            out.starts_with("quota of carol (set for this user"),
            "{out}"
        );
        let row = out.lines().find(|l| l.starts_with("services")).unwrap();
        assert_eq!(
            row.split_whitespace().collect::<Vec<_>>(),
            ["services", "1", "2"]
        );
        let row = out.lines().find(|l| l.starts_with("vcpus")).unwrap();
        assert_eq!(
            row.split_whitespace().collect::<Vec<_>>(),
            ["vcpus", "0", "-"]
        );
    }
}
