//! Quotas: what a user may hold at most (applications, services, instances, and the vCPUs and
//! memory their instances ask for). An admin sets a user's quota; a user without one has the
//! root's default (`--quota-*`), except admins of the root organisation, who have no limit
//! unless one is set for them. Every change that adds something is checked against the
//! owner's quota before anything is staged; a change that only removes is never refused, even
//! when the owner is above a quota lowered since.

use super::state::{Change, State};
use super::{Caller, Error, Result, Root, not_found};
use crate::model::{ROOT_ORGANIZATION, Role};
use canopy_api::{Quota, QuotaView, Usage};
use canopy_core::Resources;

/// What `owner` holds in `st`. Sums saturate: an SLA may ask for up to `u64::MAX` MB per
/// instance, and counting must not overflow (a limit is below the saturated sum anyway).
pub(super) fn usage(st: &State, owner: &str) -> Usage {
    let mut u = Usage {
        applications: st.apps.values().filter(|a| a.owner == owner).count() as u64,
        ..Usage::default()
    };
    for s in st.services.values().filter(|s| s.owner == owner) {
        let n = s.instances.len() as u64;
        u.services = u.services.saturating_add(1);
        u.instances = u.instances.saturating_add(n);
        let vcpus = n.saturating_mul(u64::from(s.spec.resources.vcpus));
        u.vcpus = u.vcpus.saturating_add(vcpus);
        let memory = n.saturating_mul(s.spec.resources.memory_mb);
        u.memory_mb = u.memory_mb.saturating_add(memory);
    }
    u
}

/// `before` plus `services` new services (no instances yet) and `applications` applications.
pub(super) fn with_services(before: Usage, applications: u64, services: u64) -> Usage {
    Usage {
        applications: before.applications.saturating_add(applications),
        services: before.services.saturating_add(services),
        ..before
    }
}

/// `before` plus one instance asking for `r`.
pub(super) fn with_instance(before: Usage, r: &Resources) -> Usage {
    Usage {
        instances: before.instances.saturating_add(1),
        vcpus: before.vcpus.saturating_add(u64::from(r.vcpus)),
        memory_mb: before.memory_mb.saturating_add(r.memory_mb),
        ..before
    }
}

/// Refuses `after` when a count that grows from `before` goes over its limit; names the first
/// such field (`quota.services`, …) with the numbers.
pub(super) fn check(limit: &Quota, before: &Usage, after: &Usage) -> Result<()> {
    let rows = [
        (
            "applications",
            limit.applications,
            before.applications,
            after.applications,
        ),
        ("services", limit.services, before.services, after.services),
        (
            "instances",
            limit.instances,
            before.instances,
            after.instances,
        ),
        ("vcpus", limit.vcpus, before.vcpus, after.vcpus),
        (
            "memory_mb",
            limit.memory_mb,
            before.memory_mb,
            after.memory_mb,
        ),
    ];
    for (what, max, was, will) in rows {
        if let Some(max) = max
            && will > was
            && will > max
        {
            return Err(Error::QuotaExceeded {
                field: format!("quota.{what}"),
                message: format!(
                    "this would make {will} {what} (now {was}); the owner's quota is {max}"
                ),
            });
        }
    }
    Ok(())
}

/// Whether `name` is an admin of the root organisation.
fn is_admin(st: &State, name: &str) -> bool {
    let Some(u) = st.users.get(name) else {
        return false;
    };
    st.orgs
        .values()
        .find(|o| o.name == ROOT_ORGANIZATION)
        .and_then(|o| o.roles_of(&u.id))
        .is_some_and(|r| r.contains(&Role::Admin))
}

/// The quota that applies to `owner`, and whether it is the default.
pub(super) fn limit_of(st: &State, default: &Quota, owner: &str) -> (Quota, bool) {
    match st.users.get(owner).and_then(|u| u.quota) {
        Some(q) => (q, false),
        None if is_admin(st, owner) => (Quota::UNLIMITED, true),
        None => (*default, true),
    }
}

impl Root {
    /// Refuses a change that would take `owner` from what it holds to `grow(usage)` beyond
    /// its quota.
    pub(super) fn admit(
        &self,
        st: &State,
        owner: &str,
        grow: impl Fn(Usage) -> Usage,
    ) -> Result<()> {
        let (limit, _) = limit_of(st, &self.settings.default_quota, owner);
        if limit == Quota::UNLIMITED {
            return Ok(());
        }
        let before = usage(st, owner);
        check(&limit, &before, &grow(before))
    }

    /// The quota of user `name` and their usage: the user themself or an admin.
    pub async fn quota(&self, caller: &Caller, name: &str) -> Result<QuotaView> {
        if !caller.may_touch(name) {
            return Err(Error::Forbidden);
        }
        let st = self.state.lock().await;
        self.quota_view(&st, name)
    }

    fn quota_view(&self, st: &State, name: &str) -> Result<QuotaView> {
        if !st.users.contains_key(name) {
            return Err(not_found("user", name));
        }
        let (quota, default) = limit_of(st, &self.settings.default_quota, name);
        Ok(QuotaView {
            quota,
            default,
            usage: usage(st, name),
        })
    }

    /// Sets (or, with `None`, removes: the default applies again) the quota of user `name`.
    /// Admins only. What the user holds already stays, even above the new quota.
    pub async fn set_quota(
        &self,
        caller: &Caller,
        name: &str,
        quota: Option<Quota>,
    ) -> Result<QuotaView> {
        caller.require_admin()?;
        let mut st = self.state.lock().await;
        let mut u = super::accounts::user_copy(&st, name)?;
        u.quota = quota;
        let mut change = Change::new(&st);
        change.put_user(u)?;
        self.commit(&mut st, change).await?;
        self.quota_view(&st, name)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn usage_of(services: u64, instances: u64, vcpus: u64) -> Usage {
        Usage {
            applications: 1,
            services,
            instances,
            vcpus,
            memory_mb: 64 * instances,
        }
    }

    #[test]
    fn growing_past_a_limit_is_refused_naming_it() {
        let limit = Quota {
            services: Some(3),
            vcpus: Some(4),
            ..Quota::UNLIMITED
        };
        let before = usage_of(2, 0, 0);
        assert!(check(&limit, &before, &with_services(before, 0, 1)).is_ok());
        let Err(Error::QuotaExceeded { field, message }) =
            check(&limit, &before, &with_services(before, 0, 2))
        else {
            panic!("4 services over a quota of 3 is refused");
        };
        assert_eq!(field, "quota.services");
        assert!(
            message.contains("4 services (now 2)") && message.contains("is 3"),
            "{message}"
        );
        let r = Resources {
            vcpus: 3,
            memory_mb: 64,
            vgpus: 0,
        };
        let one = usage_of(2, 1, 3);
        let Err(Error::QuotaExceeded { field, .. }) = check(&limit, &one, &with_instance(one, &r))
        else {
            panic!("6 vcpus over 4");
        };
        assert_eq!(field, "quota.vcpus");
    }

    #[test]
    fn what_does_not_grow_is_never_refused() {
        let limit = Quota {
            applications: Some(0),
            services: Some(0),
            instances: Some(0),
            vcpus: Some(0),
            memory_mb: Some(0),
        };
        // Above every limit (lowered since), and not growing: allowed.
        let before = usage_of(5, 5, 5);
        assert!(check(&limit, &before, &before).is_ok());
        let fewer = Usage {
            instances: 4,
            ..before
        };
        assert!(check(&limit, &before, &fewer).is_ok());
        assert!(check(&Quota::UNLIMITED, &before, &with_services(before, 9, 9000)).is_ok());
    }
}
