//! Applications, services and instances: an SLA becomes services with specs, a service is
//! scaled up (a new instance is placed at once) and down.

use super::state::{Change, InstanceKey, State, event};
use super::{Caller, Error, Now, Result, Root, conflict, new_id, not_found, quota};
use crate::model::{Application, Instance, Service, ServiceEvent};
use canopy_core::addressing::AddressError;
use canopy_core::span::{self, Hop};
use canopy_core::{ApplicationId, ClusterId, InstanceNumber, ServiceId};
use canopy_sla::Sla;
use canopy_store::StoreError;
use std::collections::{BTreeMap, BTreeSet};

/// The application `id` names, if `caller` may see it; else it is not found (also when `id`
/// cannot be an id at all).
fn owned_app<'a>(
    st: &'a State,
    caller: &Caller,
    id: &str,
) -> Result<(ApplicationId, &'a Application)> {
    let key = ApplicationId::parse(id).map_err(|_| not_found("application", id))?;
    match st.apps.get(&key) {
        Some(a) if caller.may_touch(&a.owner) => Ok((key, a)),
        _ => Err(not_found("application", id)),
    }
}

/// The service `id` names, if `caller` may see it; else it is not found (also when `id`
/// cannot be an id at all).
pub(super) fn owned_service<'a>(
    st: &'a State,
    caller: &Caller,
    id: &str,
) -> Result<(ServiceId, &'a Service)> {
    let key = ServiceId::parse(id).map_err(|_| not_found("service", id))?;
    match st.services.get(&key) {
        Some(s) if caller.may_touch(&s.owner) => Ok((key, s)),
        _ => Err(not_found("service", id)),
    }
}

impl Root {
    /// Registers every application of a validated SLA with its services, for `caller`.
    /// All or nothing: any conflict refuses the whole SLA.
    pub async fn create_applications(&self, caller: &Caller, sla: &Sla) -> Result<()> {
        let now = Now::read().unix;
        let mut st = self.state.lock().await;
        for (i, app) in sla.applications.iter().enumerate() {
            let clash = st.apps.values().any(|a| {
                a.owner == caller.name
                    && a.name == app.application_name
                    && a.namespace == app.application_namespace
            });
            let twice = sla.applications[..i].iter().any(|b| {
                b.application_name == app.application_name
                    && b.application_namespace == app.application_namespace
            });
            if clash || twice {
                return Err(conflict(
                    format!("applications[{i}]"),
                    format!(
                        "application {}.{} already exists",
                        app.application_name, app.application_namespace
                    ),
                ));
            }
        }
        let services: usize = sla.applications.iter().map(|a| a.microservices.len()).sum();
        self.admit(&st, &caller.name, |u| {
            quota::with_services(u, sla.applications.len() as u64, services as u64)
        })?;
        let mut change = Change::new(&st);
        let mut taken = taken_names(&st);
        let why = format!("SLA applied by {}", caller.name);
        for (i, app) in sla.applications.iter().enumerate() {
            let id: ApplicationId = new_id()?;
            let mut a = Application {
                id: id.to_string(),
                name: app.application_name.clone(),
                namespace: app.application_namespace.clone(),
                description: app.application_desc.clone(),
                owner: caller.name.clone(),
                services: Vec::new(),
            };
            let path = format!("applications[{i}]");
            add_services_to(
                &st,
                &mut change,
                &mut taken,
                &mut a,
                app,
                &path,
                (&why, now),
            )?;
            change.put_app(id, a)?;
        }
        self.commit(&mut st, change).await
    }

    /// Adds the services of an SLA whose one application names an existing application.
    /// Returns the new service ids.
    pub async fn add_services(&self, caller: &Caller, sla: &Sla) -> Result<Vec<String>> {
        let [app] = sla.applications.as_slice() else {
            return Err(Error::Unprocessable {
                field: "applications".into(),
                message: "must hold exactly one application, the one to add services to".into(),
            });
        };
        if app.application_id.is_empty() {
            return Err(Error::Unprocessable {
                field: "applications[0].applicationID".into(),
                message: "names the application to add services to; it is missing".into(),
            });
        }
        let mut st = self.state.lock().await;
        let (id, existing) = owned_app(&st, caller, &app.application_id)?;
        if existing.name != app.application_name || existing.namespace != app.application_namespace
        {
            return Err(Error::Unprocessable {
                field: "applications[0].application_name".into(),
                message: format!(
                    "application {} is {}.{}, not {}.{}",
                    existing.id,
                    existing.name,
                    existing.namespace,
                    app.application_name,
                    app.application_namespace
                ),
            });
        }
        let owner = existing.owner.clone();
        self.admit(&st, &owner, |u| {
            quota::with_services(u, 0, app.microservices.len() as u64)
        })?;
        let mut a = existing.clone();
        let before = a.services.len();
        let mut change = Change::new(&st);
        let mut taken = taken_names(&st);
        let why = format!("service added by {}", caller.name);
        let now = Now::read().unix;
        let cause = (why.as_str(), now);
        add_services_to(
            &st,
            &mut change,
            &mut taken,
            &mut a,
            app,
            "applications[0]",
            cause,
        )?;
        let added = a.services[before..].to_vec();
        change.put_app(id, a)?;
        self.commit(&mut st, change).await?;
        Ok(added)
    }

    pub async fn applications(&self, caller: &Caller, owner: Option<&str>) -> Vec<Application> {
        let st = self.state.lock().await;
        st.apps
            .values()
            .filter(|a| caller.may_touch(&a.owner) && owner.is_none_or(|o| o == a.owner))
            .cloned()
            .collect()
    }

    /// The user name behind a user id (Oakestra's `GET /api/applications/<userid>`).
    pub async fn user_name_by_id(&self, id: &str) -> Option<String> {
        let st = self.state.lock().await;
        st.users
            .values()
            .find(|u| u.id == id)
            .map(|u| u.name.clone())
    }

    pub async fn application(&self, caller: &Caller, id: &str) -> Result<Application> {
        let st = self.state.lock().await;
        owned_app(&st, caller, id).map(|(_, a)| a.clone())
    }

    /// Renames or re-describes an application.
    pub async fn update_application(
        &self,
        caller: &Caller,
        id: &str,
        name: Option<String>,
        namespace: Option<String>,
        description: Option<String>,
    ) -> Result<Application> {
        for (field, v) in [
            ("application_name", &name),
            ("application_namespace", &namespace),
        ] {
            if let Some(v) = v
                && !canopy_core::naming::is_valid_name(v)
            {
                return Err(Error::Unprocessable {
                    field: field.into(),
                    message: format!("{v:?} must match {}", canopy_core::naming::NAME_PATTERN),
                });
            }
        }
        let mut st = self.state.lock().await;
        let (key, a) = owned_app(&st, caller, id)?;
        let mut a = a.clone();
        if name.is_some() || namespace.is_some() {
            let n = name.unwrap_or_else(|| a.name.clone());
            let ns = namespace.unwrap_or_else(|| a.namespace.clone());
            if (n != a.name || ns != a.namespace) && !a.services.is_empty() {
                return Err(conflict(
                    "application_name",
                    "an application with services cannot be renamed: its services' names derive from it",
                ));
            }
            if st
                .apps
                .values()
                .any(|o| o.id != a.id && o.owner == a.owner && o.name == n && o.namespace == ns)
            {
                return Err(conflict(
                    "application_name",
                    format!("application {n}.{ns} already exists"),
                ));
            }
            a.name = n;
            a.namespace = ns;
        }
        if let Some(d) = description {
            a.description = d;
        }
        let mut change = Change::new(&st);
        change.put_app(key, a.clone())?;
        self.commit(&mut st, change).await?;
        Ok(a)
    }

    pub async fn delete_application(&self, caller: &Caller, id: &str) -> Result<()> {
        let mut st = self.state.lock().await;
        let (key, a) = owned_app(&st, caller, id)?;
        let mut change = Change::new(&st);
        for sid in a
            .services
            .iter()
            .filter_map(|s| ServiceId::parse(s.as_str()).ok())
        {
            remove_service(&st, &mut change, &sid)?;
        }
        change.delete_app(&key);
        self.commit(&mut st, change).await
    }

    pub async fn service(&self, caller: &Caller, id: &str) -> Result<Service> {
        let st = self.state.lock().await;
        owned_service(&st, caller, id).map(|(_, s)| s.clone())
    }

    /// Every service of `app` (all the caller may see with `None`), as `render` makes them
    /// from the state, under the lock (nothing is copied that `render` does not take).
    pub async fn services<R>(
        &self,
        caller: &Caller,
        app: Option<&str>,
        render: impl FnOnce(&[&Service]) -> R,
    ) -> Result<R> {
        let st = self.state.lock().await;
        let list: Vec<&Service> = match app {
            Some(id) => owned_app(&st, caller, id)?
                .1
                .services
                .iter()
                .filter_map(|s| ServiceId::parse(s.as_str()).ok())
                .filter_map(|id| st.services.get(&id))
                .collect(),
            None => st
                .services
                .values()
                .filter(|s| caller.may_touch(&s.owner))
                .collect(),
        };
        Ok(render(&list))
    }

    pub async fn delete_service(&self, caller: &Caller, id: &str) -> Result<()> {
        let mut st = self.state.lock().await;
        let (key, s) = owned_service(&st, caller, id)?;
        let app = ApplicationId::parse(s.application_id.as_str())
            .ok()
            .and_then(|a| st.apps.get_key_value(&a));
        let mut change = Change::new(&st);
        remove_service(&st, &mut change, &key)?;
        if let Some((app_id, a)) = app {
            let mut a = a.clone();
            a.services.retain(|s| s != id);
            change.put_app(app_id.clone(), a)?;
        }
        self.commit(&mut st, change).await
    }

    /// The latest events of a service, oldest first.
    pub async fn service_events(&self, caller: &Caller, id: &str) -> Result<Vec<ServiceEvent>> {
        let st = self.state.lock().await;
        let (key, _) = owned_service(&st, caller, id)?;
        Ok(st.events.get(&key).cloned().unwrap_or_default())
    }

    /// Adds one instance to a service and places it. Returns its number.
    pub async fn scale_up(&self, caller: &Caller, id: &str) -> Result<InstanceNumber> {
        let now = Now::read();
        let mut st = self.state.lock().await;
        let (key, _) = owned_service(&st, caller, id)?;
        let mut change = Change::new(&st);
        let why = format!("requested by {}", caller.name);
        let n = self.stage_scale_up(&st, &mut change, &key, ("scale up", why), now)?;
        let durable = self.enqueue(&mut st, change);
        // Accepted: in memory, its write queued. Marked before the write is awaited: the
        // committer sends the deploy as soon as the write is durable, before this wakes.
        if span::enabled()
            && let Some(s) = st.services.get(&key)
        {
            span::mark(Hop::RootAccepted, &s.spec.job_name, n.0);
        }
        self.settle(st, durable).await?;
        Ok(n)
    }

    /// Stages one more instance of service `key` (within its owner's quota), placed at once,
    /// and the event `(what, why)` saying so. Returns its number.
    pub(super) fn stage_scale_up(
        &self,
        st: &State,
        change: &mut Change,
        key: &ServiceId,
        (what, why): (&str, String),
        now: Now,
    ) -> Result<InstanceNumber> {
        let s = st
            .services
            .get(key)
            .ok_or_else(|| not_found("service", key.as_str()))?;
        self.admit(st, &s.owner, |u| quota::with_instance(u, &s.spec.resources))?;
        let (key, instance) = stage_new_instance(self, st, change, key, s, now)?;
        let n = key.number;
        let mut doc = s.document();
        doc.next_instance = n.0 + 1;
        // A rolling update keeps the new count.
        if let Some(r) = doc.rollout.as_mut().filter(|r| r.active()) {
            r.replicas += 1;
        }
        change.put_service(key.service.clone(), doc)?;
        let outcome = placed(&instance);
        change.record(
            st,
            &key.service,
            event(now.unix, Some(n), what, why, outcome),
        )?;
        change.put_instance(key, instance)?;
        Ok(n)
    }

    /// Removes one instance of a service (undeploying it where it runs).
    pub async fn scale_down(&self, caller: &Caller, id: &str, n: u32) -> Result<()> {
        let mut st = self.state.lock().await;
        let (key, _) = owned_service(&st, caller, id)?;
        let mut change = Change::new(&st);
        let why = format!("requested by {}", caller.name);
        let at = Now::read().unix;
        let n = InstanceNumber(n);
        stage_scale_down(&st, &mut change, &key, n, ("scale down", why), at)?;
        self.commit(&mut st, change).await
    }
}

/// Stages a new instance of service `id` (`s`), of its current revision, with the next
/// number and an address, placed at once if a cluster fits. The caller stages the service's
/// `next_instance` (the number + 1) and the instance.
pub(super) fn stage_new_instance(
    root: &Root,
    st: &State,
    change: &mut Change,
    id: &ServiceId,
    s: &Service,
    now: Now,
) -> Result<(InstanceKey, Instance)> {
    let n = InstanceNumber(s.next_instance);
    let ip = change.allocate(st).map_err(|e| Error::Conflict {
        field: "instance_ip".into(),
        message: e.to_string(),
    })?;
    let key = InstanceKey::new(id.clone(), n);
    let mut instance = Instance::new(n, ip, now.unix);
    instance.revision = s.revision;
    root.place_copy(st, change, &key, &mut instance, None, now)?;
    Ok((key, instance))
}

/// Stages the removal of instance `key` (`inst`): it is forgotten, its address released, and
/// its cluster told to undeploy it.
pub(super) fn stage_removal(change: &mut Change, key: &InstanceKey, inst: &Instance) -> Result<()> {
    change.delete_instance(key.clone(), inst);
    if let Some(c) = &inst.cluster_id {
        change.undeploy(c.clone(), &key.service, Some(inst.number))?;
    }
    Ok(())
}

/// Stages the removal of instance `n` of service `key` (undeployed where it is placed) and the
/// event `(what, why)` saying so. A rolling update keeps the new count.
pub(super) fn stage_scale_down(
    st: &State,
    change: &mut Change,
    key: &ServiceId,
    n: InstanceNumber,
    (what, why): (&str, String),
    at: f64,
) -> Result<()> {
    let s = st
        .services
        .get(key)
        .ok_or_else(|| not_found("service", key.as_str()))?;
    let inst = s
        .instances
        .get(&n)
        .ok_or_else(|| not_found("instance", &n.to_string()))?;
    stage_removal(change, &InstanceKey::new(key.clone(), n), inst)?;
    if let Some(r) = s.rollout.as_ref().filter(|r| r.active())
        && inst.status != canopy_core::InstanceStatus::Stopped
    {
        let mut doc = s.document();
        doc.rollout = Some(crate::model::Rollout {
            replicas: r.replicas.saturating_sub(1),
            ..r.clone()
        });
        change.put_service(key.clone(), doc)?;
    }
    let outcome = format!("removed (it was {})", inst.status);
    change.record(st, key, event(at, Some(n), what, why, outcome))
}

/// Where an instance stands after a placement, for an event's outcome.
pub(super) fn placed(i: &Instance) -> String {
    match &i.cluster_id {
        Some(c) => format!("{} on cluster {c}", i.status),
        // Why it waits, when it cannot be placed.
        None if i.status.class() == canopy_core::StatusClass::NegativeScheduling => {
            format!("{}: {}", i.status, i.detail)
        }
        None => i.status.to_string(),
    }
}

/// Every service name in use (`job_name`s are unique across the root).
fn taken_names(st: &State) -> BTreeSet<String> {
    st.services
        .values()
        .map(|s| s.spec.job_name.to_string())
        .collect()
}

/// Stages the microservices of `app` as new services of `a`, appending their ids to it.
fn add_services_to(
    st: &State,
    change: &mut Change,
    taken: &mut BTreeSet<String>,
    a: &mut Application,
    app: &canopy_sla::Application,
    path: &str,
    (why, at): (&str, f64),
) -> Result<()> {
    for (j, ms) in app.microservices.iter().enumerate() {
        let path = format!("{path}.microservices[{j}]");
        let spec =
            canopy_sla::spec::service_spec(app, ms).map_err(|message| Error::Unprocessable {
                field: path.clone(),
                message,
            })?;
        let name = spec.job_name.to_string();
        if !taken.insert(name.clone()) {
            return Err(conflict(
                format!("{path}.microservice_name"),
                format!("service {name} already exists"),
            ));
        }
        let rr_ip = match spec.rr_ip {
            Some(ip) => {
                change
                    .reserve(st, ip)
                    .map_err(|e| address_error(&path, "rr_ip", e))?;
                ip
            }
            None => change
                .allocate(st)
                .map_err(|e| address_error(&path, "rr_ip", e))?,
        };
        if let Some(ip) = spec.closest_ip {
            change
                .reserve(st, ip)
                .map_err(|e| address_error(&path, "closest_ip", e))?;
        }
        let sla = serde_json::to_value(ms).map_err(|e| StoreError::Backend(e.to_string()))?;
        let id: ServiceId = new_id()?;
        let s = Service {
            id: id.to_string(),
            application_id: a.id.clone(),
            owner: a.owner.clone(),
            sla,
            spec,
            rr_ip,
            next_instance: 0,
            revision: 0,
            rollout: None,
            autoscale: canopy_sla::spec::autoscale(ms),
            instances: BTreeMap::new(),
        };
        a.services.push(s.id.clone());
        let outcome = format!("registered as {} with rr_ip {rr_ip}", s.spec.job_name);
        change.put_service(id.clone(), s)?;
        change.record(st, &id, event(at, None, "create", why, outcome))?;
    }
    Ok(())
}

fn address_error(path: &str, which: &str, e: AddressError) -> Error {
    let field = format!("{path}.addresses.{which}");
    match e {
        AddressError::Taken(_) | AddressError::Exhausted(_) => Error::Conflict {
            field,
            message: e.to_string(),
        },
        AddressError::OutsideRange { .. } => Error::Unprocessable {
            field,
            message: e.to_string(),
        },
    }
}

/// Stages the removal of a service: its instances are undeployed where they were placed,
/// addresses released.
fn remove_service(st: &State, change: &mut Change, id: &ServiceId) -> Result<()> {
    let Some(s) = st.services.get(id) else {
        return Ok(());
    };
    change.delete_service(st, id, s);
    let mut clusters: Vec<&ClusterId> = Vec::new();
    for i in s.instances.values() {
        if let Some(c) = &i.cluster_id
            && !clusters.contains(&c)
        {
            clusters.push(c);
        }
    }
    for c in clusters {
        change.undeploy(c.clone(), id, None)?;
    }
    Ok(())
}
