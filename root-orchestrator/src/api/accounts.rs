//! Login, token refresh, users and organisations.

use super::views::*;
use super::{ApiError, ApiResult, ApiState, Body, verify_token};
use crate::auth::TokenType;
use crate::control::{Caller, NewUser};
use axum::Json;
use axum::extract::{Path, State};
use axum::http::HeaderMap;

#[utoipa::path(post, path = "/api/auth/login", tag = "auth", request_body = LoginRequest,
    responses((status = 200, body = TokenPair),
        (status = 401, description = "wrong user name or password", body = ErrorBody),
        (status = 404, description = "unknown organization", body = ErrorBody)))]
pub async fn login(
    State(s): State<ApiState>,
    Body(req): Body<LoginRequest>,
) -> ApiResult<Json<TokenPair>> {
    let org = req
        .organization_name
        .as_deref()
        .or(req.organization.as_deref());
    let crate::control::Login {
        roles,
        organization_id: org_id,
    } = s.root.login(&req.username, &req.password, org).await?;
    let token = s
        .keys
        .issue(&req.username, roles.clone(), &org_id, TokenType::Access)
        .map_err(crate::control::Error::from)?;
    let refresh_token = s
        .keys
        .issue(&req.username, roles, &org_id, TokenType::Refresh)
        .map_err(crate::control::Error::from)?;
    Ok(Json(TokenPair {
        token,
        refresh_token,
    }))
}

/// A new access token for the refresh token in the `Authorization: Bearer` header.
#[utoipa::path(post, path = "/api/auth/refresh", tag = "auth",
    responses((status = 200, body = AccessToken)),
    security(("bearerAuth" = [])))]
pub async fn refresh(
    State(s): State<ApiState>,
    headers: HeaderMap,
) -> ApiResult<Json<AccessToken>> {
    let claims = verify_token(&s.keys, &headers, TokenType::Refresh)?;
    if s.root.caller(&claims).await.is_none() {
        return Err(ApiError::unauthorized("the token's user no longer exists"));
    }
    let token = s
        .keys
        .issue(
            &claims.sub,
            claims.roles,
            &claims.organization,
            TokenType::Access,
        )
        .map_err(crate::control::Error::from)?;
    Ok(Json(AccessToken { token }))
}

#[utoipa::path(post, path = "/api/auth/register", tag = "users", request_body = RegisterRequest,
    responses((status = 200, body = UserView),
        (status = 400, description = "the name or the password breaks its rule", body = ErrorBody),
        (status = 403, description = "only admins add users", body = ErrorBody),
        (status = 409, description = "the name is taken", body = ErrorBody)),
    security(("bearerAuth" = [])))]
pub async fn register(
    State(s): State<ApiState>,
    caller: Caller,
    Body(req): Body<RegisterRequest>,
) -> ApiResult<Json<UserView>> {
    let roles = req.roles.clone();
    let u = s
        .root
        .create_user(
            &caller,
            NewUser {
                name: req.name,
                password: req.password,
                email: req.email,
                created_at: req.created_at,
                roles: req.roles,
            },
        )
        .await?;
    Ok(Json(UserView::new(&u, roles)))
}

#[utoipa::path(get, path = "/api/permission/{username}", tag = "users",
    params(("username" = String, Path)),
    responses((status = 200, body = PermissionView), (status = 403, body = ErrorBody),
        (status = 404, body = ErrorBody)),
    security(("bearerAuth" = [])))]
pub async fn permission(
    State(s): State<ApiState>,
    caller: Caller,
    Path(username): Path<String>,
) -> ApiResult<Json<PermissionView>> {
    let roles = s.root.user(&caller, &username).await?.roles;
    Ok(Json(PermissionView { roles }))
}

#[utoipa::path(get, path = "/api/user/{username}", tag = "users",
    params(("username" = String, Path)),
    responses((status = 200, body = UserView), (status = 403, body = ErrorBody),
        (status = 404, body = ErrorBody)),
    security(("bearerAuth" = [])))]
pub async fn get_user(
    State(s): State<ApiState>,
    caller: Caller,
    Path(username): Path<String>,
) -> ApiResult<Json<UserView>> {
    let u = s.root.user(&caller, &username).await?;
    Ok(Json(UserView::new(&u.user, u.roles)))
}

/// Changes one's own password.
#[utoipa::path(post, path = "/api/user/{username}", tag = "users", request_body = ChangePasswordRequest,
    params(("username" = String, Path)),
    responses((status = 200, body = MessageBody),
        (status = 400, description = "the new password breaks its rule", body = ErrorBody),
        (status = 401, description = "no valid bearer token, or oldPassword is wrong", body = ErrorBody),
        (status = 403, description = "not one's own user", body = ErrorBody)),
    security(("bearerAuth" = [])))]
pub async fn change_password(
    State(s): State<ApiState>,
    caller: Caller,
    Path(username): Path<String>,
    Body(req): Body<ChangePasswordRequest>,
) -> ApiResult<Json<MessageBody>> {
    s.root
        .change_password(&caller, &username, &req.old_password, &req.new_password)
        .await?;
    Ok(Json(MessageBody::new("password changed")))
}

#[utoipa::path(put, path = "/api/user/{username}", tag = "users", request_body = UpdateUserRequest,
    params(("username" = String, Path)),
    responses((status = 200, body = UserView),
        (status = 403, body = ErrorBody), (status = 404, body = ErrorBody)),
    security(("bearerAuth" = [])))]
pub async fn update_user(
    State(s): State<ApiState>,
    caller: Caller,
    Path(username): Path<String>,
    Body(req): Body<UpdateUserRequest>,
) -> ApiResult<Json<UserView>> {
    s.root
        .update_user(&caller, &username, req.email, req.roles)
        .await?;
    let u = s.root.user(&caller, &username).await?;
    Ok(Json(UserView::new(&u.user, u.roles)))
}

/// Deletes a user; answers with the users that remain.
#[utoipa::path(delete, path = "/api/user/{username}", tag = "users",
    params(("username" = String, Path)),
    responses((status = 200, body = Vec<UserView>), (status = 403, body = ErrorBody),
        (status = 404, body = ErrorBody), (status = 409, body = ErrorBody)),
    security(("bearerAuth" = [])))]
pub async fn delete_user(
    State(s): State<ApiState>,
    caller: Caller,
    Path(username): Path<String>,
) -> ApiResult<Json<Vec<UserView>>> {
    s.root.delete_user(&caller, &username).await?;
    list_users(State(s), caller).await
}

/// A user's quota (theirs, or the root's default) and what they hold (Canopy extension).
#[utoipa::path(get, path = "/api/user/{username}/quota", tag = "users",
    params(("username" = String, Path)),
    responses((status = 200, body = QuotaView), (status = 403, body = ErrorBody),
        (status = 404, body = ErrorBody)),
    security(("bearerAuth" = [])))]
pub async fn get_quota(
    State(s): State<ApiState>,
    caller: Caller,
    Path(username): Path<String>,
) -> ApiResult<Json<QuotaView>> {
    Ok(Json(s.root.quota(&caller, &username).await?))
}

/// Sets a user's quota (admins only); a missing field has no limit. What the user holds
/// already stays, even above it; only growth is refused (403 naming `quota.<what>`).
#[utoipa::path(put, path = "/api/user/{username}/quota", tag = "users", request_body = Quota,
    params(("username" = String, Path)),
    responses((status = 200, body = QuotaView),
        (status = 403, body = ErrorBody), (status = 404, body = ErrorBody)),
    security(("bearerAuth" = [])))]
pub async fn put_quota(
    State(s): State<ApiState>,
    caller: Caller,
    Path(username): Path<String>,
    Body(quota): Body<Quota>,
) -> ApiResult<Json<QuotaView>> {
    Ok(Json(
        s.root.set_quota(&caller, &username, Some(quota)).await?,
    ))
}

/// Removes a user's own quota: the root's default applies again (admins only).
#[utoipa::path(delete, path = "/api/user/{username}/quota", tag = "users",
    params(("username" = String, Path)),
    responses((status = 200, body = QuotaView), (status = 403, body = ErrorBody),
        (status = 404, body = ErrorBody)),
    security(("bearerAuth" = [])))]
pub async fn delete_quota(
    State(s): State<ApiState>,
    caller: Caller,
    Path(username): Path<String>,
) -> ApiResult<Json<QuotaView>> {
    Ok(Json(s.root.set_quota(&caller, &username, None).await?))
}

#[utoipa::path(get, path = "/api/users", tag = "users",
    responses((status = 200, body = Vec<UserView>), (status = 403, body = ErrorBody)),
    security(("bearerAuth" = [])))]
pub async fn list_users(
    State(s): State<ApiState>,
    caller: Caller,
) -> ApiResult<Json<Vec<UserView>>> {
    let users = s.root.users(&caller).await?;
    Ok(Json(
        users
            .iter()
            .map(|u| UserView::new(&u.user, u.roles.clone()))
            .collect(),
    ))
}

#[utoipa::path(get, path = "/api/organization", tag = "organizations",
    responses((status = 200, body = Vec<OrganizationView>), (status = 403, body = ErrorBody)),
    security(("bearerAuth" = [])))]
pub async fn list_organizations(
    State(s): State<ApiState>,
    caller: Caller,
) -> ApiResult<Json<Vec<OrganizationView>>> {
    let orgs = s.root.organizations(&caller).await?;
    Ok(Json(orgs.iter().map(OrganizationView::from).collect()))
}

#[utoipa::path(post, path = "/api/organization", tag = "organizations", request_body = OrganizationRequest,
    responses((status = 200, body = OrganizationView),
        (status = 400, description = "the name breaks its rule", body = ErrorBody),
        (status = 403, body = ErrorBody), (status = 409, description = "the name is taken", body = ErrorBody),
        (status = 422, description = "a member names no user", body = ErrorBody)),
    security(("bearerAuth" = [])))]
pub async fn create_organization(
    State(s): State<ApiState>,
    caller: Caller,
    Body(req): Body<OrganizationRequest>,
) -> ApiResult<Json<OrganizationView>> {
    let o = s
        .root
        .put_organization(&caller, None, req.name, req.member)
        .await?;
    Ok(Json(OrganizationView::from(&o)))
}

#[utoipa::path(put, path = "/api/organization/{id}", tag = "organizations", request_body = OrganizationRequest,
    params(("id" = String, Path)),
    responses((status = 200, body = OrganizationView),
        (status = 400, description = "the name breaks its rule", body = ErrorBody),
        (status = 403, body = ErrorBody), (status = 404, body = ErrorBody),
        (status = 409, description = "the name is taken", body = ErrorBody),
        (status = 422, description = "a member names no user", body = ErrorBody)),
    security(("bearerAuth" = [])))]
pub async fn update_organization(
    State(s): State<ApiState>,
    caller: Caller,
    Path(id): Path<String>,
    Body(req): Body<OrganizationRequest>,
) -> ApiResult<Json<OrganizationView>> {
    let o = s
        .root
        .put_organization(&caller, Some(&id), req.name, req.member)
        .await?;
    Ok(Json(OrganizationView::from(&o)))
}

#[utoipa::path(delete, path = "/api/organization/{id}", tag = "organizations",
    params(("id" = String, Path)),
    responses((status = 200, body = MessageBody), (status = 403, body = ErrorBody),
        (status = 404, body = ErrorBody), (status = 409, body = ErrorBody)),
    security(("bearerAuth" = [])))]
pub async fn delete_organization(
    State(s): State<ApiState>,
    caller: Caller,
    Path(id): Path<String>,
) -> ApiResult<Json<MessageBody>> {
    s.root.delete_organization(&caller, &id).await?;
    Ok(Json(MessageBody::new("organization deleted")))
}
