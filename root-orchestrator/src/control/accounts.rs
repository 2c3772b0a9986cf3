//! Users, organisations, passwords and login.

use super::state::{Change, State};
use super::{Caller, Error, Now, Result, Root, conflict, new_id, not_found};
use crate::auth;
use crate::model::{
    ADMIN_USER, Member, Organization, ROOT_ORGANIZATION, Role, User, new_object_id,
};
use canopy_core::OrganizationId;
use canopy_core::naming::is_cluster_name;
use canopy_store::secrets;

/// A new user as the admin describes it.
#[derive(Debug, Clone)]
pub struct NewUser {
    pub name: String,
    pub password: String,
    pub email: String,
    pub created_at: String,
    pub roles: Vec<Role>,
}

/// A successful login: the user's roles in the organisation and the organisation's id.
#[derive(Debug, Clone, PartialEq)]
pub struct Login {
    pub roles: Vec<Role>,
    pub organization_id: String,
}

/// A user with their roles in the caller's organisation.
#[derive(Debug, Clone, PartialEq)]
pub struct UserRoles {
    pub user: User,
    pub roles: Vec<Role>,
}

/// A copy of the user `name`, to change and stage.
pub(super) fn user_copy(st: &State, name: &str) -> Result<User> {
    st.users
        .get(name)
        .cloned()
        .ok_or_else(|| not_found("user", name))
}

fn roles_in(org: Option<&Organization>, user_id: &str) -> Vec<Role> {
    org.and_then(|o| o.roles_of(user_id))
        .map(<[Role]>::to_vec)
        .unwrap_or_default()
}

impl Root {
    /// Creates the `root` organisation and the `Admin` user if they are missing. Returns the
    /// admin password when one had to be set (`password` is used if given, else generated).
    pub async fn bootstrap_admin(&self, password: Option<&str>) -> Result<Option<String>> {
        let mut st = self.state.lock().await;
        let mut change = Change::new(&st);
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
                    created_at: format!("{}", Now::read().unix as u64),
                    quota: None,
                };
                let id = u.id.clone();
                change.put_user(u)?;
                created = Some(pw);
                id
            }
        };
        if !st.orgs.values().any(|o| o.name == ROOT_ORGANIZATION) {
            change.put_org(Organization {
                id: new_object_id(),
                name: ROOT_ORGANIZATION.into(),
                members: vec![Member {
                    user_id: admin_id,
                    roles: Role::ALL.to_vec(),
                }],
            })?;
        }
        self.commit(&mut st, change).await?;
        Ok(created)
    }

    /// Checks credentials; returns the user's roles in the organisation and its id.
    pub async fn login(
        &self,
        name: &str,
        password: &str,
        organization: Option<&str>,
    ) -> Result<Login> {
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
        if !verify_blocking(password, hash).await {
            return Err(Error::BadCredentials);
        }
        Ok(Login {
            roles: roles_in(Some(&org), &user_id),
            organization_id: org.id,
        })
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
        let mut change = Change::new(&st);
        let u = User {
            id: new_object_id(),
            name: new.name,
            password_hash: hash,
            email: new.email,
            quota: None,
            created_at: new.created_at,
        };
        change.put_user(u.clone())?;
        if let Some(org) = st.org(&caller.organization) {
            let mut org = org.clone();
            org.members.push(Member {
                user_id: u.id.clone(),
                roles: new.roles,
            });
            change.put_org(org)?;
        }
        self.commit(&mut st, change).await?;
        Ok(u)
    }

    /// A user and their roles in the caller's organisation. Users see themselves; admins anyone.
    pub async fn user(&self, caller: &Caller, name: &str) -> Result<UserRoles> {
        if !caller.may_touch(name) {
            return Err(Error::Forbidden);
        }
        let st = self.state.lock().await;
        let u = st.users.get(name).ok_or_else(|| not_found("user", name))?;
        Ok(UserRoles {
            user: u.clone(),
            roles: roles_in(st.org(&caller.organization), &u.id),
        })
    }

    pub async fn users(&self, caller: &Caller) -> Result<Vec<UserRoles>> {
        caller.require_admin()?;
        let st = self.state.lock().await;
        let org = st.org(&caller.organization);
        Ok(st
            .users
            .values()
            .map(|u| UserRoles {
                user: u.clone(),
                roles: roles_in(org, &u.id),
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
        if !verify_blocking(old, current).await {
            return Err(Error::BadCredentials);
        }
        let hash = hash_blocking(new.to_owned()).await?;
        let mut st = self.state.lock().await;
        let mut u = user_copy(&st, name)?;
        u.password_hash = hash;
        let mut change = Change::new(&st);
        change.put_user(u)?;
        self.commit(&mut st, change).await
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
        let mut u = user_copy(&st, name)?;
        if let Some(e) = email {
            u.email = e;
        }
        let mut change = Change::new(&st);
        change.put_user(u.clone())?;
        if let Some(roles) = roles
            && let Some(org) = st.org(&caller.organization)
        {
            let mut org = org.clone();
            match org.members.iter_mut().find(|m| m.user_id == u.id) {
                Some(m) => m.roles = roles,
                None => org.members.push(Member {
                    user_id: u.id.clone(),
                    roles,
                }),
            }
            change.put_org(org)?;
        }
        self.commit(&mut st, change).await?;
        Ok(u)
    }

    pub async fn delete_user(&self, caller: &Caller, name: &str) -> Result<()> {
        caller.require_admin()?;
        if name == ADMIN_USER {
            return Err(conflict("name", "the Admin user cannot be deleted"));
        }
        let mut st = self.state.lock().await;
        let u = st.users.get(name).ok_or_else(|| not_found("user", name))?;
        let mut change = Change::new(&st);
        change.delete_user(name);
        for org in st.orgs.values() {
            if org.members.iter().any(|m| m.user_id == u.id) {
                let mut org = org.clone();
                org.members.retain(|m| m.user_id != u.id);
                change.put_org(org)?;
            }
        }
        self.commit(&mut st, change).await
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
            && st.org(id).is_none()
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
        let key: OrganizationId = match id {
            Some(id) => OrganizationId::parse(id).map_err(|_| not_found("organization", id))?,
            None => new_id()?,
        };
        let o = Organization {
            id: key.to_string(),
            name,
            members,
        };
        let mut change = Change::new(&st);
        change.put_org(o.clone())?;
        self.commit(&mut st, change).await?;
        Ok(o)
    }

    pub async fn delete_organization(&self, caller: &Caller, id: &str) -> Result<()> {
        caller.require_admin()?;
        let key = OrganizationId::parse(id).map_err(|_| not_found("organization", id))?;
        let mut st = self.state.lock().await;
        match st.orgs.get(&key) {
            None => return Err(not_found("organization", id)),
            Some(o) if o.name == ROOT_ORGANIZATION => {
                return Err(conflict("name", "the root organization cannot be deleted"));
            }
            Some(_) => {}
        }
        let mut change = Change::new(&st);
        change.delete_org(&key);
        self.commit(&mut st, change).await
    }
}

/// User, organisation and cluster names: a DNS-label-like word.
pub(super) fn check_label(field: &str, value: &str) -> Result<()> {
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
    // Characters, not bytes, as the OpenAPI document's minLength/maxLength count them.
    let n = p.chars().count();
    if !(4..=1024).contains(&n) {
        return Err(Error::BadRequest {
            field: field.into(),
            message: "must be 4 to 1024 characters".into(),
        });
    }
    Ok(())
}

/// Argon2 is slow on purpose: hashing and checking run off the async threads.
async fn hash_blocking(password: String) -> Result<String> {
    tokio::task::spawn_blocking(move || auth::hash_password(&password))
        .await
        .map_err(|e| Error::Auth(auth::AuthError::Hash(e.to_string())))?
        .map_err(Error::from)
}

async fn verify_blocking(password: &str, hash: String) -> bool {
    let pw = password.to_owned();
    tokio::task::spawn_blocking(move || auth::verify_password(&pw, &hash))
        .await
        .unwrap_or(false)
}
