//! The root's control plane: the state behind the REST API and the cluster link, kept in memory
//! and written through to the store before anything is acknowledged.
//!
//! One lock ([`Root::state`]) orders every change, so address allocation, instance numbers and
//! placements never race (the store has no compare-and-swap). A change is made in memory,
//! recorded in a [`Tx`], written to the store, and only then are its commands sent to clusters.
//!
//! Placement: a new instance is placed at once by [`crate::scheduler`]; if nothing fits, the
//! instance keeps the negative status and [`Root::tick`] tries again every tick. A cluster that
//! has not reported for the grace period is inactive; its instances are taken back (an undeploy
//! is queued for the cluster, delivered if it ever returns) and placed elsewhere.

use crate::auth;
use crate::metrics::Metrics;
use crate::model::{
    ADMIN_USER, Application, Cluster, Instance, Member, Organization, PendingCommand,
    ROOT_ORGANIZATION, Role, Service, User, collections as col, new_object_id, outbox_key,
    unix_now,
};
use crate::scheduler::{self, ClusterCandidate};
use canopy_core::addressing::{AddressError, Ipv4Pool};
use canopy_core::link::{
    ClusterReport, Command, CommandAck, CommandAction, InstanceReport, NodeSummary, Registration,
};
use canopy_core::naming::is_cluster_name;
use canopy_core::{ClusterId, InstanceNumber, InstanceStatus, ServiceId, StatusClass};
use canopy_sla::Sla;
use canopy_store::secrets;
use canopy_store::{SharedStore, StoreError};
use serde::Serialize;
use std::collections::{BTreeMap, HashMap};
use std::sync::Arc;
use std::time::{Duration, Instant};
use tokio::sync::{Mutex, mpsc};

/// What can go wrong in a control-plane operation; [`crate::api`] maps each to an HTTP status.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("{what} {id:?} not found")]
    NotFound { what: &'static str, id: String },
    #[error("{field}: {message}")]
    Conflict { field: String, message: String },
    /// Well-formed but unacceptable (HTTP 422).
    #[error("{field}: {message}")]
    Unprocessable { field: String, message: String },
    #[error("{field}: {message}")]
    BadRequest { field: String, message: String },
    #[error("invalid credentials")]
    BadCredentials,
    #[error("You have not enough permissions!")]
    Forbidden,
    #[error(transparent)]
    Store(#[from] StoreError),
    #[error(transparent)]
    Auth(#[from] auth::AuthError),
}

fn not_found(what: &'static str, id: &str) -> Error {
    Error::NotFound {
        what,
        id: id.to_owned(),
    }
}

fn conflict(field: impl Into<String>, message: impl Into<String>) -> Error {
    Error::Conflict {
        field: field.into(),
        message: message.into(),
    }
}

pub type Result<T, E = Error> = std::result::Result<T, E>;

/// Who is asking: the user name and whether the token carries `Admin`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Caller {
    pub name: String,
    pub admin: bool,
    pub organization: String,
}

impl Caller {
    fn may_touch(&self, owner: &str) -> bool {
        self.admin || self.name == owner
    }

    pub fn require_admin(&self) -> Result<()> {
        if self.admin {
            Ok(())
        } else {
            Err(Error::Forbidden)
        }
    }
}

/// Tunables of the control plane.
#[derive(Debug, Clone)]
pub struct Settings {
    /// A cluster that has not reported for this long is inactive and loses its instances.
    pub cluster_grace: Duration,
    /// How often [`Root::tick`] runs.
    pub tick: Duration,
}

impl Default for Settings {
    fn default() -> Self {
        Settings {
            cluster_grace: Duration::from_secs(30),
            tick: Duration::from_millis(500),
        }
    }
}

/// Something to send down a cluster session.
#[derive(Debug, Clone, PartialEq)]
pub enum Outbound {
    Command(Command),
}

struct SessionHandle {
    generation: u64,
    tx: mpsc::UnboundedSender<Outbound>,
}

struct ClusterEntry {
    doc: Cluster,
    /// The last report without its node list and usage (those are kept apart: the scheduler
    /// copies reports).
    report: Option<ClusterReport>,
    nodes: Vec<NodeSummary>,
    last_seen: Instant,
    last_report_unix: f64,
}

impl ClusterEntry {
    fn active(&self, grace: Duration) -> bool {
        self.report.is_some() && self.last_seen.elapsed() <= grace
    }
}

struct State {
    users: BTreeMap<String, User>,
    orgs: BTreeMap<String, Organization>,
    apps: BTreeMap<String, Application>,
    services: BTreeMap<String, Service>,
    clusters: BTreeMap<ClusterId, ClusterEntry>,
    outbox: BTreeMap<u64, PendingCommand>,
    next_command: u64,
    pool: Ipv4Pool,
}

/// Writes and sends collected while the state is changed, applied by [`Root::commit`].
#[derive(Default)]
struct Tx {
    puts: Vec<(&'static str, String, serde_json::Value)>,
    deletes: Vec<(&'static str, String)>,
    sends: Vec<(ClusterId, Command)>,
}

impl Tx {
    fn put<T: Serialize>(&mut self, collection: &'static str, key: &str, value: &T) -> Result<()> {
        let doc = canopy_store::encode(collection, key, value)?;
        self.puts.push((collection, key.to_owned(), doc));
        Ok(())
    }

    fn delete(&mut self, collection: &'static str, key: &str) {
        self.deletes.push((collection, key.to_owned()));
    }
}

fn instance_key(service_id: &str, n: u32) -> String {
    format!("{service_id}:{n:010}")
}

/// An instance as stored: the instance and the service it belongs to.
#[derive(Serialize, serde::Deserialize)]
struct StoredInstance {
    service_id: String,
    #[serde(flatten)]
    instance: Instance,
}

/// A cluster as the API shows it.
#[derive(Debug, Clone)]
pub struct ClusterView {
    pub doc: Cluster,
    pub report: Option<ClusterReport>,
    pub active: bool,
    /// Unix seconds of the last report; 0 if none since the root started.
    pub last_report: f64,
}

/// A new user as the admin describes it.
#[derive(Debug, Clone)]
pub struct NewUser {
    pub name: String,
    pub password: String,
    pub email: String,
    pub created_at: String,
    pub roles: Vec<Role>,
}

/// The root's control plane.
pub struct Root {
    store: SharedStore,
    state: Mutex<State>,
    sessions: std::sync::Mutex<HashMap<ClusterId, SessionHandle>>,
    session_generation: std::sync::atomic::AtomicU64,
    settings: Settings,
    pub metrics: Metrics,
}

impl Root {
    /// Loads the state from `store`.
    pub async fn open(store: SharedStore, settings: Settings) -> Result<Arc<Root>> {
        let mut st = State {
            users: BTreeMap::new(),
            orgs: BTreeMap::new(),
            apps: BTreeMap::new(),
            services: BTreeMap::new(),
            clusters: BTreeMap::new(),
            outbox: BTreeMap::new(),
            next_command: 0,
            pool: Ipv4Pool::service_addresses(),
        };
        for (_, u) in canopy_store::Collection::<User>::new(store.clone(), col::USERS)
            .list()
            .await?
        {
            st.users.insert(u.name.clone(), u);
        }
        for (_, o) in
            canopy_store::Collection::<Organization>::new(store.clone(), col::ORGANIZATIONS)
                .list()
                .await?
        {
            st.orgs.insert(o.id.clone(), o);
        }
        for (_, a) in canopy_store::Collection::<Application>::new(store.clone(), col::APPLICATIONS)
            .list()
            .await?
        {
            st.apps.insert(a.id.clone(), a);
        }
        for (_, s) in canopy_store::Collection::<Service>::new(store.clone(), col::SERVICES)
            .list()
            .await?
        {
            // A pinned or allocated service address that no longer fits the pool is kept anyway.
            let _ = st.pool.reserve(s.rr_ip);
            st.services.insert(s.id.clone(), s);
        }
        for (key, i) in
            canopy_store::Collection::<StoredInstance>::new(store.clone(), col::INSTANCES)
                .list()
                .await?
        {
            match st.services.get_mut(&i.service_id) {
                Some(s) => {
                    let _ = st.pool.reserve(i.instance.ip);
                    s.instances.insert(i.instance.number.0, i.instance);
                }
                None => tracing::warn!(key, "instance of an unknown service ignored"),
            }
        }
        let now = Instant::now();
        for (_, c) in canopy_store::Collection::<Cluster>::new(store.clone(), col::CLUSTERS)
            .list()
            .await?
        {
            st.clusters.insert(
                c.id.clone(),
                ClusterEntry {
                    doc: c,
                    report: None,
                    nodes: Vec::new(),
                    // A restarted root gives every cluster the full grace period to come back.
                    last_seen: now,
                    last_report_unix: 0.0,
                },
            );
        }
        for (_, p) in canopy_store::Collection::<PendingCommand>::new(store.clone(), col::OUTBOX)
            .list()
            .await?
        {
            st.outbox.insert(p.command.id, p);
        }
        let clock_micros = (unix_now() * 1e6) as u64;
        st.next_command = st
            .outbox
            .keys()
            .next_back()
            .map_or(0, |id| id + 1)
            .max(clock_micros);
        let root = Arc::new(Root {
            store,
            state: Mutex::new(st),
            sessions: std::sync::Mutex::new(HashMap::new()),
            session_generation: std::sync::atomic::AtomicU64::new(0),
            settings,
            metrics: Metrics::default(),
        });
        root.refresh_gauges().await;
        Ok(root)
    }

    pub fn settings(&self) -> &Settings {
        &self.settings
    }

    async fn commit(&self, tx: Tx) -> Result<()> {
        for (collection, key, doc) in &tx.puts {
            self.store.put(collection, key, doc).await?;
        }
        for (collection, key) in &tx.deletes {
            self.store.delete(collection, key).await?;
        }
        if !tx.sends.is_empty() {
            let sessions = self.sessions_lock();
            for (cluster, command) in tx.sends {
                if let Some(s) = sessions.get(&cluster) {
                    let _ = s.tx.send(Outbound::Command(command));
                }
            }
        }
        Ok(())
    }

    fn sessions_lock(&self) -> std::sync::MutexGuard<'_, HashMap<ClusterId, SessionHandle>> {
        self.sessions
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    // ---------------------------------------------------------------- users and organisations

    /// Creates the `root` organisation and the `Admin` user if they are missing. Returns the
    /// admin password when one had to be set (`password` is used if given, else generated).
    pub async fn bootstrap_admin(&self, password: Option<&str>) -> Result<Option<String>> {
        let mut st = self.state.lock().await;
        let mut tx = Tx::default();
        let mut created = None;
        let admin_id = match st.users.get(ADMIN_USER) {
            Some(u) => u.id.clone(),
            None => {
                let pw = password
                    .filter(|p| !p.is_empty())
                    .map_or_else(|| secrets::random_token(12), str::to_owned);
                let hash = hash_blocking(pw.clone()).await?;
                let u = User {
                    id: new_object_id(),
                    name: ADMIN_USER.into(),
                    password_hash: hash,
                    email: String::new(),
                    created_at: format!("{}", unix_now() as u64),
                };
                tx.put(col::USERS, &u.name, &u)?;
                let id = u.id.clone();
                st.users.insert(u.name.clone(), u);
                created = Some(pw);
                id
            }
        };
        if !st.orgs.values().any(|o| o.name == ROOT_ORGANIZATION) {
            let o = Organization {
                id: new_object_id(),
                name: ROOT_ORGANIZATION.into(),
                members: vec![Member {
                    user_id: admin_id,
                    roles: Role::ALL.to_vec(),
                }],
            };
            tx.put(col::ORGANIZATIONS, &o.id, &o)?;
            st.orgs.insert(o.id.clone(), o);
        }
        self.commit(tx).await?;
        Ok(created)
    }

    /// Checks credentials; returns the user's roles in the organisation and its id.
    pub async fn login(
        &self,
        name: &str,
        password: &str,
        organization: Option<&str>,
    ) -> Result<(Vec<Role>, String)> {
        let org_name = organization
            .filter(|o| !o.is_empty())
            .unwrap_or(ROOT_ORGANIZATION);
        let (hash, user_id, org) = {
            let st = self.state.lock().await;
            let org = st
                .orgs
                .values()
                .find(|o| o.name == org_name)
                .cloned()
                .ok_or_else(|| not_found("organization", org_name))?;
            match st.users.get(name) {
                Some(u) => (u.password_hash.clone(), u.id.clone(), org),
                None => return Err(Error::BadCredentials),
            }
        };
        let pw = password.to_owned();
        let ok = tokio::task::spawn_blocking(move || auth::verify_password(&pw, &hash))
            .await
            .unwrap_or(false);
        if !ok {
            return Err(Error::BadCredentials);
        }
        let roles = org
            .roles_of(&user_id)
            .map(<[Role]>::to_vec)
            .unwrap_or_default();
        Ok((roles, org.id))
    }

    /// The caller behind a verified token, if its user still exists.
    pub async fn caller(&self, claims: &auth::Claims) -> Option<Caller> {
        let st = self.state.lock().await;
        st.users.get(&claims.sub).map(|_| Caller {
            name: claims.sub.clone(),
            admin: claims.is_admin(),
            organization: claims.organization.clone(),
        })
    }

    pub async fn create_user(&self, caller: &Caller, new: NewUser) -> Result<User> {
        caller.require_admin()?;
        check_label("name", &new.name)?;
        check_password("password", &new.password)?;
        let hash = hash_blocking(new.password.clone()).await?;
        let mut st = self.state.lock().await;
        if st.users.contains_key(&new.name) {
            return Err(conflict(
                "name",
                format!("user {:?} already exists", new.name),
            ));
        }
        let mut tx = Tx::default();
        let u = User {
            id: new_object_id(),
            name: new.name,
            password_hash: hash,
            email: new.email,
            created_at: new.created_at,
        };
        tx.put(col::USERS, &u.name, &u)?;
        if let Some(org) = st.orgs.get_mut(&caller.organization) {
            org.members.push(Member {
                user_id: u.id.clone(),
                roles: new.roles,
            });
            tx.put(col::ORGANIZATIONS, &org.id, &*org)?;
        }
        st.users.insert(u.name.clone(), u.clone());
        self.commit(tx).await?;
        Ok(u)
    }

    /// A user and their roles in the caller's organisation. Users see themselves; admins anyone.
    pub async fn user(&self, caller: &Caller, name: &str) -> Result<(User, Vec<Role>)> {
        if !caller.may_touch(name) {
            return Err(Error::Forbidden);
        }
        let st = self.state.lock().await;
        let u = st.users.get(name).ok_or_else(|| not_found("user", name))?;
        let roles = st
            .orgs
            .get(&caller.organization)
            .and_then(|o| o.roles_of(&u.id))
            .map(<[Role]>::to_vec)
            .unwrap_or_default();
        Ok((u.clone(), roles))
    }

    pub async fn users(&self, caller: &Caller) -> Result<Vec<(User, Vec<Role>)>> {
        caller.require_admin()?;
        let st = self.state.lock().await;
        let org = st.orgs.get(&caller.organization);
        Ok(st
            .users
            .values()
            .map(|u| {
                let roles = org
                    .and_then(|o| o.roles_of(&u.id))
                    .map(<[Role]>::to_vec)
                    .unwrap_or_default();
                (u.clone(), roles)
            })
            .collect())
    }

    pub async fn change_password(
        &self,
        caller: &Caller,
        name: &str,
        old: &str,
        new: &str,
    ) -> Result<()> {
        if caller.name != name {
            return Err(Error::Forbidden);
        }
        check_password("newPassword", new)?;
        let current = {
            let st = self.state.lock().await;
            st.users
                .get(name)
                .map(|u| u.password_hash.clone())
                .ok_or_else(|| not_found("user", name))?
        };
        let old = old.to_owned();
        let ok = tokio::task::spawn_blocking(move || auth::verify_password(&old, &current))
            .await
            .unwrap_or(false);
        if !ok {
            return Err(Error::BadCredentials);
        }
        let hash = hash_blocking(new.to_owned()).await?;
        let mut st = self.state.lock().await;
        let u = st
            .users
            .get_mut(name)
            .ok_or_else(|| not_found("user", name))?;
        u.password_hash = hash;
        let mut tx = Tx::default();
        tx.put(col::USERS, name, &*u)?;
        self.commit(tx).await
    }

    /// Updates e-mail and, when given, the user's roles in the caller's organisation.
    pub async fn update_user(
        &self,
        caller: &Caller,
        name: &str,
        email: Option<String>,
        roles: Option<Vec<Role>>,
    ) -> Result<User> {
        caller.require_admin()?;
        let mut st = self.state.lock().await;
        let mut tx = Tx::default();
        let u = st
            .users
            .get_mut(name)
            .ok_or_else(|| not_found("user", name))?;
        if let Some(e) = email {
            u.email = e;
        }
        tx.put(col::USERS, name, &*u)?;
        let (uid, user) = (u.id.clone(), u.clone());
        if let Some(roles) = roles
            && let Some(org) = st.orgs.get_mut(&caller.organization)
        {
            match org.members.iter_mut().find(|m| m.user_id == uid) {
                Some(m) => m.roles = roles,
                None => org.members.push(Member {
                    user_id: uid,
                    roles,
                }),
            }
            tx.put(col::ORGANIZATIONS, &org.id, &*org)?;
        }
        self.commit(tx).await?;
        Ok(user)
    }

    pub async fn delete_user(&self, caller: &Caller, name: &str) -> Result<()> {
        caller.require_admin()?;
        if name == ADMIN_USER {
            return Err(conflict("name", "the Admin user cannot be deleted"));
        }
        let mut st = self.state.lock().await;
        let u = st
            .users
            .remove(name)
            .ok_or_else(|| not_found("user", name))?;
        let mut tx = Tx::default();
        tx.delete(col::USERS, name);
        for org in st.orgs.values_mut() {
            let before = org.members.len();
            org.members.retain(|m| m.user_id != u.id);
            if org.members.len() != before {
                tx.put(col::ORGANIZATIONS, &org.id, &*org)?;
            }
        }
        self.commit(tx).await
    }

    pub async fn organizations(&self, caller: &Caller) -> Result<Vec<Organization>> {
        caller.require_admin()?;
        Ok(self.state.lock().await.orgs.values().cloned().collect())
    }

    /// Creates (`id == None`) or replaces an organisation.
    pub async fn put_organization(
        &self,
        caller: &Caller,
        id: Option<&str>,
        name: String,
        members: Vec<Member>,
    ) -> Result<Organization> {
        caller.require_admin()?;
        check_label("name", &name)?;
        let mut st = self.state.lock().await;
        if let Some(id) = id
            && !st.orgs.contains_key(id)
        {
            return Err(not_found("organization", id));
        }
        if st
            .orgs
            .values()
            .any(|o| o.name == name && Some(o.id.as_str()) != id)
        {
            return Err(conflict(
                "name",
                format!("organization {name:?} already exists"),
            ));
        }
        for (i, m) in members.iter().enumerate() {
            if !st.users.values().any(|u| u.id == m.user_id) {
                return Err(Error::Unprocessable {
                    field: format!("member[{i}].user_id"),
                    message: format!("no user has id {:?}", m.user_id),
                });
            }
        }
        let o = Organization {
            id: id.map_or_else(new_object_id, str::to_owned),
            name,
            members,
        };
        let mut tx = Tx::default();
        tx.put(col::ORGANIZATIONS, &o.id, &o)?;
        st.orgs.insert(o.id.clone(), o.clone());
        self.commit(tx).await?;
        Ok(o)
    }

    pub async fn delete_organization(&self, caller: &Caller, id: &str) -> Result<()> {
        caller.require_admin()?;
        let mut st = self.state.lock().await;
        match st.orgs.get(id) {
            None => return Err(not_found("organization", id)),
            Some(o) if o.name == ROOT_ORGANIZATION => {
                return Err(conflict("name", "the root organization cannot be deleted"));
            }
            Some(_) => {}
        }
        st.orgs.remove(id);
        let mut tx = Tx::default();
        tx.delete(col::ORGANIZATIONS, id);
        self.commit(tx).await
    }

    // ---------------------------------------------------------------- applications and services

    /// Registers every application of a validated SLA with its services, for `caller`.
    /// All or nothing: any conflict refuses the whole SLA.
    pub async fn create_applications(&self, caller: &Caller, sla: &Sla) -> Result<()> {
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
        let mut work = st.clone_for_update();
        let mut tx = Tx::default();
        for (i, app) in sla.applications.iter().enumerate() {
            let a = Application {
                id: new_object_id(),
                name: app.application_name.clone(),
                namespace: app.application_namespace.clone(),
                description: app.application_desc.clone(),
                owner: caller.name.clone(),
                services: Vec::new(),
            };
            work.apps.insert(a.id.clone(), a.clone());
            add_services_to(
                &mut work,
                &mut tx,
                &a.id,
                app,
                &format!("applications[{i}]"),
            )?;
            let a = &work.apps[&a.id];
            tx.put(col::APPLICATIONS, &a.id, a)?;
        }
        self.commit(tx).await?;
        st.adopt(work);
        Ok(())
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
        let existing = st
            .apps
            .get(&app.application_id)
            .filter(|a| caller.may_touch(&a.owner))
            .ok_or_else(|| not_found("application", &app.application_id))?;
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
        let before = existing.services.len();
        let mut work = st.clone_for_update();
        let mut tx = Tx::default();
        add_services_to(
            &mut work,
            &mut tx,
            &app.application_id,
            app,
            "applications[0]",
        )?;
        let a = &work.apps[&app.application_id];
        tx.put(col::APPLICATIONS, &a.id, a)?;
        let added = a.services[before..].to_vec();
        self.commit(tx).await?;
        st.adopt(work);
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
        st.apps
            .get(id)
            .filter(|a| caller.may_touch(&a.owner))
            .cloned()
            .ok_or_else(|| not_found("application", id))
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
        let mut a = st
            .apps
            .get(id)
            .filter(|a| caller.may_touch(&a.owner))
            .cloned()
            .ok_or_else(|| not_found("application", id))?;
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
        let mut tx = Tx::default();
        tx.put(col::APPLICATIONS, &a.id, &a)?;
        self.commit(tx).await?;
        st.apps.insert(a.id.clone(), a.clone());
        Ok(a)
    }

    pub async fn delete_application(&self, caller: &Caller, id: &str) -> Result<()> {
        let mut st = self.state.lock().await;
        let a = st
            .apps
            .get(id)
            .filter(|a| caller.may_touch(&a.owner))
            .cloned()
            .ok_or_else(|| not_found("application", id))?;
        let mut tx = Tx::default();
        for sid in &a.services {
            remove_service(&mut st, &mut tx, sid)?;
        }
        st.apps.remove(id);
        tx.delete(col::APPLICATIONS, id);
        self.commit(tx).await
    }

    pub async fn service(&self, caller: &Caller, id: &str) -> Result<Service> {
        let st = self.state.lock().await;
        st.services
            .get(id)
            .filter(|s| caller.may_touch(&s.owner))
            .cloned()
            .ok_or_else(|| not_found("service", id))
    }

    /// Services of one application, or every service the caller may see.
    pub async fn services(&self, caller: &Caller, app: Option<&str>) -> Result<Vec<Service>> {
        let st = self.state.lock().await;
        let ids: Vec<String> = match app {
            Some(id) => st
                .apps
                .get(id)
                .filter(|a| caller.may_touch(&a.owner))
                .ok_or_else(|| not_found("application", id))?
                .services
                .clone(),
            None => st
                .services
                .values()
                .filter(|s| caller.may_touch(&s.owner))
                .map(|s| s.id.clone())
                .collect(),
        };
        Ok(ids
            .iter()
            .filter_map(|id| st.services.get(id).cloned())
            .collect())
    }

    pub async fn delete_service(&self, caller: &Caller, id: &str) -> Result<()> {
        let mut st = self.state.lock().await;
        let s = st
            .services
            .get(id)
            .filter(|s| caller.may_touch(&s.owner))
            .ok_or_else(|| not_found("service", id))?;
        let app_id = s.application_id.clone();
        let mut tx = Tx::default();
        remove_service(&mut st, &mut tx, id)?;
        if let Some(a) = st.apps.get_mut(&app_id) {
            a.services.retain(|s| s != id);
            tx.put(col::APPLICATIONS, &a.id, &*a)?;
        }
        self.commit(tx).await
    }

    /// Adds one instance to a service and places it. Returns its number.
    pub async fn scale_up(&self, caller: &Caller, id: &str) -> Result<InstanceNumber> {
        let mut st = self.state.lock().await;
        let s = st
            .services
            .get(id)
            .filter(|s| caller.may_touch(&s.owner))
            .ok_or_else(|| not_found("service", id))?;
        let n = s.next_instance;
        let ip = st.pool.allocate().map_err(|e| Error::Conflict {
            field: "instance_ip".into(),
            message: e.to_string(),
        })?;
        let mut tx = Tx::default();
        let s = st
            .services
            .get_mut(id)
            .ok_or_else(|| not_found("service", id))?;
        s.next_instance = n + 1;
        s.instances.insert(n, Instance::new(InstanceNumber(n), ip));
        tx.put(col::SERVICES, id, &*s)?;
        let candidates = self.candidates(&st);
        self.place(&mut st, &mut tx, &candidates, id, n);
        put_instance(&mut tx, &st, id, n)?;
        self.commit(tx).await?;
        Ok(InstanceNumber(n))
    }

    /// Removes one instance of a service (undeploying it where it runs).
    pub async fn scale_down(&self, caller: &Caller, id: &str, n: u32) -> Result<()> {
        let mut st = self.state.lock().await;
        let s = st
            .services
            .get_mut(id)
            .filter(|s| caller.may_touch(&s.owner))
            .ok_or_else(|| not_found("service", id))?;
        let inst = s
            .instances
            .remove(&n)
            .ok_or_else(|| not_found("instance", &n.to_string()))?;
        let mut tx = Tx::default();
        tx.delete(col::INSTANCES, &instance_key(id, n));
        st.pool.release(inst.ip);
        if let Some(c) = inst.cluster_id {
            st.undeploy(&mut tx, c, id, Some(inst.number))?;
        }
        self.commit(tx).await
    }

    // ---------------------------------------------------------------- placement

    fn candidates(&self, st: &State) -> Vec<ClusterCandidate> {
        st.clusters
            .values()
            .map(|e| ClusterCandidate {
                id: e.doc.id.clone(),
                name: e.doc.name.clone(),
                active: e.active(self.settings.cluster_grace),
                location: e.doc.location,
                report: e.report.clone().unwrap_or_default(),
            })
            .collect()
    }

    /// Runs the scheduler for instance `n` of service `id`, leaving out the clusters in
    /// `exclude` and those that refused the instance before. `None` if there is no such instance.
    fn decide(
        &self,
        st: &State,
        candidates: &[ClusterCandidate],
        id: &str,
        n: u32,
        exclude: &[ClusterId],
    ) -> Option<Result<ClusterId, scheduler::Rejection>> {
        let s = st.services.get(id)?;
        let refused = &s.instances.get(&n)?.refused_by;
        let allowed: Vec<ClusterCandidate> = candidates
            .iter()
            .filter(|c| !exclude.contains(&c.id) && !refused.contains(&c.id))
            .cloned()
            .collect();
        let decision = scheduler::schedule(&s.spec, &allowed);
        self.metrics.schedule_decision(decision.is_ok());
        Some(decision)
    }

    /// Places instance `n` of service `id`: `CLUSTER_SCHEDULED` and a deploy command, or the
    /// scheduler's negative status. The caller stores the instance.
    fn place(
        &self,
        st: &mut State,
        tx: &mut Tx,
        candidates: &[ClusterCandidate],
        id: &str,
        n: u32,
    ) {
        match self.decide(st, candidates, id, n, &[]) {
            Some(Ok(cluster)) => st.assign(tx, id, n, cluster),
            Some(Err(rejection)) => {
                if let Some(inst) = st.instance_mut(id, n)
                    && (inst.status != rejection.status || inst.detail != rejection.detail)
                {
                    inst.set_status(rejection.status, rejection.detail);
                }
            }
            None => {}
        }
    }

    /// Periodic work: clusters that stopped reporting lose their instances, and instances that
    /// wait for a cluster are placed when one fits. Also refreshes the gauges.
    pub async fn tick(&self) -> Result<()> {
        let mut st = self.state.lock().await;
        let mut tx = Tx::default();
        let grace = self.settings.cluster_grace;
        let gone: Vec<ClusterId> = st
            .clusters
            .values()
            .filter(|e| e.last_seen.elapsed() > grace)
            .map(|e| e.doc.id.clone())
            .collect();
        let mut touched: Vec<(String, u32)> = Vec::new();
        for s in st.services.values_mut() {
            for inst in s.instances.values_mut() {
                let lost = inst.cluster_id.as_ref().is_some_and(|c| gone.contains(c));
                if (lost && !inst.status.is_terminal()) || inst.awaits_cluster() {
                    touched.push((s.id.clone(), inst.number.0));
                }
            }
        }
        let candidates = self.candidates(&st);
        for (sid, n) in touched {
            let Some(inst) = st.services.get(&sid).and_then(|s| s.instances.get(&n)) else {
                continue;
            };
            let before = inst.clone();
            if let Some(old) = before.cluster_id.clone() {
                tracing::warn!(cluster = %old, service = %sid, instance = n,
                    "cluster stopped reporting; moving the instance");
                st.undeploy(&mut tx, old.clone(), &sid, Some(InstanceNumber(n)))?;
                if let Some(i) = st.instance_mut(&sid, n) {
                    i.cluster_id = None;
                    i.node_id = None;
                    i.set_status(
                        InstanceStatus::Requested,
                        format!("cluster {old} stopped reporting"),
                    );
                }
                self.metrics.reschedule();
            }
            self.place(&mut st, &mut tx, &candidates, &sid, n);
            let after = st.services.get(&sid).and_then(|s| s.instances.get(&n));
            if after.is_some_and(|a| a.status != before.status || a.cluster_id != before.cluster_id)
            {
                put_instance(&mut tx, &st, &sid, n)?;
            }
        }
        self.commit(tx).await
    }

    /// Sets the cluster and instance gauges from the current state.
    pub async fn refresh_gauges(&self) {
        let st = self.state.lock().await;
        let grace = self.settings.cluster_grace;
        let active = st.clusters.values().filter(|e| e.active(grace)).count();
        let mut by_status: BTreeMap<InstanceStatus, i64> = BTreeMap::new();
        for s in st.services.values() {
            for i in s.instances.values() {
                *by_status.entry(i.status).or_default() += 1;
            }
        }
        self.metrics
            .set_clusters(active as i64, (st.clusters.len() - active) as i64);
        self.metrics.set_instances(&by_status);
        self.metrics.set_addresses(st.pool.in_use() as i64);
    }

    pub async fn clusters(&self, only_active: bool) -> Vec<ClusterView> {
        let st = self.state.lock().await;
        let grace = self.settings.cluster_grace;
        st.clusters
            .values()
            .filter(|e| !only_active || e.active(grace))
            .map(|e| ClusterView {
                doc: e.doc.clone(),
                report: e.report.clone(),
                active: e.active(grace),
                last_report: e.last_report_unix,
            })
            .collect()
    }

    // ---------------------------------------------------------------- cluster link

    /// Registers a cluster (the join token was checked by the caller). The same name, or the
    /// id the cluster already holds, keeps its identity. Returns the id and a session token.
    pub async fn register_cluster(&self, reg: &Registration) -> Result<(ClusterId, String)> {
        check_label("cluster_name", &reg.cluster_name)?;
        let mut st = self.state.lock().await;
        let by_id = reg
            .cluster_id
            .as_ref()
            .filter(|id| st.clusters.contains_key(*id))
            .cloned();
        let by_name = st
            .clusters
            .values()
            .find(|e| e.doc.name == reg.cluster_name)
            .map(|e| e.doc.id.clone());
        if let (Some(a), Some(b)) = (&by_id, &by_name)
            && a != b
        {
            return Err(conflict(
                "cluster_name",
                format!("name {:?} belongs to cluster {b}", reg.cluster_name),
            ));
        }
        let id = match by_id.or(by_name) {
            Some(id) => id,
            None => match &reg.cluster_id {
                Some(id) => id.clone(),
                None => ClusterId::parse(new_object_id())
                    .map_err(|e| StoreError::Backend(e.to_string()))?,
            },
        };
        let token = secrets::random_token(16);
        let last_acked_seq = st.clusters.get(&id).map_or(0, |e| e.doc.last_acked_seq);
        let doc = Cluster {
            id: id.clone(),
            name: reg.cluster_name.clone(),
            location: reg.location,
            session_token: token.clone(),
            last_acked_seq,
            registered_at: unix_now(),
            version: reg.version.clone(),
        };
        let mut tx = Tx::default();
        tx.put(col::CLUSTERS, id.as_str(), &doc)?;
        self.commit(tx).await?;
        match st.clusters.get_mut(&id) {
            Some(e) => e.doc = doc,
            None => {
                st.clusters.insert(
                    id.clone(),
                    ClusterEntry {
                        doc,
                        report: None,
                        nodes: Vec::new(),
                        last_seen: Instant::now(),
                        last_report_unix: 0.0,
                    },
                );
            }
        }
        tracing::info!(cluster = %id, name = %reg.cluster_name, "cluster registered");
        Ok((id, token))
    }

    /// Opens a session for a registered cluster: checks the session token, returns the last
    /// stored report sequence number, a generation (to close exactly this session) and the
    /// channel of outbound messages, pre-filled with every unacknowledged command.
    pub async fn open_session(
        &self,
        cluster: &ClusterId,
        session_token: &str,
    ) -> Result<(u64, u64, mpsc::UnboundedReceiver<Outbound>)> {
        let mut st = self.state.lock().await;
        let e = st
            .clusters
            .get_mut(cluster)
            .ok_or_else(|| not_found("cluster", cluster.as_str()))?;
        if !secrets::constant_time_eq(&e.doc.session_token, session_token) {
            return Err(Error::BadCredentials);
        }
        e.last_seen = Instant::now();
        let seq = e.doc.last_acked_seq;
        let (tx, rx) = mpsc::unbounded_channel();
        for p in st.outbox.values().filter(|p| &p.cluster_id == cluster) {
            let _ = tx.send(Outbound::Command(p.command.clone()));
        }
        let generation = self
            .session_generation
            .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        self.sessions_lock()
            .insert(cluster.clone(), SessionHandle { generation, tx });
        Ok((seq, generation, rx))
    }

    pub fn close_session(&self, cluster: &ClusterId, generation: u64) {
        let mut sessions = self.sessions_lock();
        if sessions
            .get(cluster)
            .is_some_and(|s| s.generation == generation)
        {
            sessions.remove(cluster);
        }
    }

    /// A cluster's resource report: it is alive and has this much room.
    pub async fn cluster_report(&self, cluster: &ClusterId, mut report: ClusterReport) {
        let usage = std::mem::take(&mut report.usage);
        let nodes = std::mem::take(&mut report.nodes);
        let mut st = self.state.lock().await;
        let Some(e) = st.clusters.get_mut(cluster) else {
            return;
        };
        e.report = Some(report);
        e.nodes = nodes;
        e.last_seen = Instant::now();
        e.last_report_unix = unix_now();
        // Live figures and log tails: kept in memory, written with the next status change.
        for u in usage {
            if let Some(i) = st
                .services
                .get_mut(u.service_id.as_str())
                .and_then(|s| s.instances.get_mut(&u.instance.0))
                .filter(|i| i.cluster_id.as_ref() == Some(cluster))
            {
                i.cpu_percent = u.cpu_percent;
                i.memory_mb = u.memory_mb;
                i.logs = u.logs;
            }
        }
    }

    /// Every worker of every cluster, from the clusters' last reports.
    pub async fn nodes(&self) -> Vec<(ClusterView, NodeSummary)> {
        let st = self.state.lock().await;
        let grace = self.settings.cluster_grace;
        let mut out = Vec::new();
        for e in st.clusters.values() {
            let view = ClusterView {
                doc: e.doc.clone(),
                report: None,
                active: e.active(grace),
                last_report: e.last_report_unix,
            };
            for n in &e.nodes {
                out.push((view.clone(), n.clone()));
            }
        }
        out
    }

    /// Applies one instance status report; returns the sequence number to acknowledge.
    pub async fn instance_report(&self, cluster: &ClusterId, r: InstanceReport) -> Result<u64> {
        let mut st = self.state.lock().await;
        let Some(e) = st.clusters.get_mut(cluster) else {
            return Err(not_found("cluster", cluster.as_str()));
        };
        e.last_seen = Instant::now();
        if r.seq <= e.doc.last_acked_seq {
            return Ok(e.doc.last_acked_seq);
        }
        e.doc.last_acked_seq = r.seq;
        let mut tx = Tx::default();
        tx.put(col::CLUSTERS, cluster.as_str(), &e.doc)?;
        let sid = r.service_id.as_str().to_owned();
        let n = r.instance.0;
        let ours = st
            .services
            .get(&sid)
            .and_then(|s| s.instances.get(&n))
            .is_some_and(|i| i.cluster_id.as_ref() == Some(cluster));
        if !ours {
            // Unknown here, or placed elsewhere since (failover): the cluster must drop it.
            if r.status != InstanceStatus::Undeployed {
                st.undeploy(&mut tx, cluster.clone(), &sid, Some(r.instance))?;
            }
        } else {
            if let Some(i) = st
                .services
                .get_mut(&sid)
                .and_then(|s| s.instances.get_mut(&n))
            {
                i.set_status(r.status, r.detail.clone());
                if r.status == InstanceStatus::Running {
                    i.refused_by.clear();
                } else if r.status.class() == StatusClass::NegativeScheduling
                    && !i.refused_by.contains(cluster)
                {
                    i.refused_by.push(cluster.clone());
                }
                i.node_id = r.node_id.clone();
                i.cpu_percent = r.cpu_percent;
                i.memory_mb = r.memory_mb;
            }
            if r.status.class() == StatusClass::NegativeScheduling {
                // The cluster has no worker for it: move it to a cluster that has not refused
                // it yet, if one fits; otherwise the cluster's answer stands.
                let candidates = self.candidates(&st);
                let others = [cluster.clone()];
                if let Some(Ok(to)) = self.decide(&st, &candidates, &sid, n, &others) {
                    st.undeploy(&mut tx, cluster.clone(), &sid, Some(r.instance))?;
                    st.assign(&mut tx, &sid, n, to);
                    self.metrics.reschedule();
                }
            }
            put_instance(&mut tx, &st, &sid, n)?;
        }
        self.commit(tx).await?;
        Ok(r.seq)
    }

    /// A cluster acknowledged a command: it leaves the outbox. A refused deploy marks the
    /// instance `FAILED` with the cluster's reason.
    pub async fn command_ack(&self, cluster: &ClusterId, ack: CommandAck) -> Result<()> {
        let mut st = self.state.lock().await;
        let Some(p) = st.outbox.get(&ack.id) else {
            return Ok(());
        };
        if &p.cluster_id != cluster {
            return Ok(());
        }
        let p = p.clone();
        st.outbox.remove(&ack.id);
        let mut tx = Tx::default();
        tx.delete(col::OUTBOX, &outbox_key(ack.id));
        if let (
            Err(reason),
            CommandAction::Deploy {
                service_id,
                instance,
                ..
            },
        ) = (&ack.result, &p.command.action)
        {
            let (sid, n) = (service_id.as_str().to_owned(), instance.0);
            if let Some(i) = st
                .services
                .get_mut(&sid)
                .and_then(|s| s.instances.get_mut(&n))
                .filter(|i| i.cluster_id.as_ref() == Some(cluster))
            {
                i.set_status(
                    InstanceStatus::Failed,
                    format!("cluster {cluster} refused the deployment: {reason}"),
                );
                put_instance(&mut tx, &st, &sid, n)?;
            }
        }
        self.commit(tx).await
    }

    /// Unacknowledged commands, oldest first (for tests and diagnostics).
    pub async fn pending_commands(&self) -> Vec<PendingCommand> {
        self.state.lock().await.outbox.values().cloned().collect()
    }

    /// Runs [`Root::tick`] every tick until `shutdown` resolves.
    pub async fn run_ticker(self: Arc<Self>, shutdown: impl std::future::Future<Output = ()>) {
        let mut every = tokio::time::interval(self.settings.tick);
        every.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        tokio::pin!(shutdown);
        loop {
            tokio::select! {
                _ = &mut shutdown => return,
                _ = every.tick() => {
                    if let Err(e) = self.tick().await {
                        tracing::error!(error = %e, "control loop tick failed");
                    }
                }
            }
        }
    }
}

impl State {
    /// A copy of what a multi-object creation changes, so a refusal halfway leaves no trace.
    fn clone_for_update(&self) -> Work {
        Work {
            apps: self.apps.clone(),
            services: BTreeMap::new(),
            taken_names: self
                .services
                .values()
                .map(|s| s.spec.job_name.to_string())
                .collect(),
            pool: self.pool.clone(),
        }
    }

    fn adopt(&mut self, work: Work) {
        self.apps = work.apps;
        self.services.extend(work.services);
        self.pool = work.pool;
    }

    fn instance_mut(&mut self, id: &str, n: u32) -> Option<&mut Instance> {
        self.services.get_mut(id)?.instances.get_mut(&n)
    }

    /// Puts instance `n` of service `id` on `cluster` and queues its deploy.
    fn assign(&mut self, tx: &mut Tx, id: &str, n: u32, cluster: ClusterId) {
        let Some(spec) = self.services.get(id).map(|s| s.spec.clone()) else {
            return;
        };
        let Some(inst) = self.instance_mut(id, n) else {
            return;
        };
        inst.cluster_id = Some(cluster.clone());
        inst.node_id = None;
        inst.set_status(InstanceStatus::ClusterScheduled, "");
        let action = CommandAction::Deploy {
            service_id: service_id(id),
            instance: inst.number,
            spec: Box::new(spec),
            instance_ip: Some(inst.ip),
        };
        if let Err(e) = self.queue(tx, cluster, action) {
            tracing::error!(error = %e, "cannot encode a deploy command");
        }
    }

    /// Queues an undeploy of one instance (or, with `None`, every instance) of service `id`.
    fn undeploy(
        &mut self,
        tx: &mut Tx,
        cluster: ClusterId,
        id: &str,
        instance: Option<InstanceNumber>,
    ) -> Result<()> {
        let action = CommandAction::Undeploy {
            service_id: service_id(id),
            instance,
        };
        self.queue(tx, cluster, action)
    }

    /// Queues a command for a cluster: stored in the outbox, sent after the commit.
    fn queue(&mut self, tx: &mut Tx, cluster: ClusterId, action: CommandAction) -> Result<()> {
        let id = self.next_command;
        self.next_command += 1;
        let p = PendingCommand {
            cluster_id: cluster.clone(),
            command: Command { id, action },
        };
        tx.put(col::OUTBOX, &outbox_key(id), &p)?;
        tx.sends.push((cluster, p.command.clone()));
        self.outbox.insert(id, p);
        Ok(())
    }
}

/// The part of the state that creating applications and services changes.
struct Work {
    apps: BTreeMap<String, Application>,
    services: BTreeMap<String, Service>,
    taken_names: std::collections::BTreeSet<String>,
    pool: Ipv4Pool,
}

fn add_services_to(
    work: &mut Work,
    tx: &mut Tx,
    app_id: &str,
    app: &canopy_sla::Application,
    path: &str,
) -> Result<()> {
    for (j, ms) in app.microservices.iter().enumerate() {
        let path = format!("{path}.microservices[{j}]");
        let spec =
            canopy_sla::spec::service_spec(app, ms).map_err(|message| Error::Unprocessable {
                field: path.clone(),
                message,
            })?;
        let name = spec.job_name.to_string();
        if !work.taken_names.insert(name.clone()) {
            return Err(conflict(
                format!("{path}.microservice_name"),
                format!("service {name} already exists"),
            ));
        }
        let rr_ip = match spec.rr_ip {
            Some(ip) => {
                work.pool.reserve(ip).map_err(|e| address_error(&path, e))?;
                ip
            }
            None => work.pool.allocate().map_err(|e| address_error(&path, e))?,
        };
        let sla = serde_json::to_value(ms).map_err(|e| StoreError::Backend(e.to_string()))?;
        let s = Service {
            id: new_object_id(),
            application_id: app_id.to_owned(),
            owner: work
                .apps
                .get(app_id)
                .map(|a| a.owner.clone())
                .unwrap_or_default(),
            sla,
            spec,
            rr_ip,
            next_instance: 0,
            instances: BTreeMap::new(),
        };
        tx.put(col::SERVICES, &s.id, &s)?;
        if let Some(a) = work.apps.get_mut(app_id) {
            a.services.push(s.id.clone());
        }
        work.services.insert(s.id.clone(), s);
    }
    Ok(())
}

fn address_error(path: &str, e: AddressError) -> Error {
    let field = format!("{path}.addresses.rr_ip");
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

/// Removes a service: its instances are undeployed where they were placed, addresses released.
fn remove_service(st: &mut State, tx: &mut Tx, id: &str) -> Result<()> {
    let Some(s) = st.services.remove(id) else {
        return Ok(());
    };
    tx.delete(col::SERVICES, id);
    st.pool.release(s.rr_ip);
    let mut clusters: Vec<ClusterId> = Vec::new();
    for i in s.instances.values() {
        tx.delete(col::INSTANCES, &instance_key(id, i.number.0));
        st.pool.release(i.ip);
        if let Some(c) = &i.cluster_id
            && !clusters.contains(c)
        {
            clusters.push(c.clone());
        }
    }
    for c in clusters {
        st.undeploy(tx, c, id, None)?;
    }
    Ok(())
}

fn put_instance(tx: &mut Tx, st: &State, sid: &str, n: u32) -> Result<()> {
    if let Some(i) = st.services.get(sid).and_then(|s| s.instances.get(&n)) {
        tx.put(
            col::INSTANCES,
            &instance_key(sid, n),
            &StoredInstance {
                service_id: sid.to_owned(),
                instance: i.clone(),
            },
        )?;
    }
    Ok(())
}

/// Service ids are made by [`new_object_id`], so they always parse.
fn service_id(id: &str) -> ServiceId {
    ServiceId::parse(id).unwrap_or_else(|_| {
        // Unreachable for ids this root created; keep a stable, valid stand-in.
        #[allow(clippy::unwrap_used)]
        ServiceId::parse("invalid").unwrap()
    })
}

/// User, organisation and cluster names: a DNS-label-like word.
fn check_label(field: &str, value: &str) -> Result<()> {
    if is_cluster_name(value) {
        Ok(())
    } else {
        Err(Error::BadRequest {
            field: field.into(),
            message: "must be 1 to 63 letters, digits, '-' or '_'".into(),
        })
    }
}

fn check_password(field: &str, p: &str) -> Result<()> {
    if p.len() < 4 || p.len() > 1024 {
        return Err(Error::BadRequest {
            field: field.into(),
            message: "must be 4 to 1024 characters".into(),
        });
    }
    Ok(())
}

async fn hash_blocking(password: String) -> Result<String> {
    tokio::task::spawn_blocking(move || auth::hash_password(&password))
        .await
        .map_err(|e| Error::Auth(auth::AuthError::Hash(e.to_string())))?
        .map_err(Error::from)
}
