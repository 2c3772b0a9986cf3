//! Applications, services and instances. A user sees and changes only their own; an admin any.

use super::views::*;
use super::{ApiError, ApiResult, ApiState, Body, SlaBody, problem_views};
use crate::control::rollout::Updated;
use crate::control::{Caller, Operation};
use axum::Json;
use axum::extract::{Path, State};
use axum::http::StatusCode;
use axum::response::Response;
use canopy_sla::{Sla, SlaError};

/// Validates an SLA body: 422 with every problem when it is not a valid SLA.
fn validated(value: &serde_json::Value) -> ApiResult<Sla> {
    match canopy_sla::validate_value(value) {
        Ok(v) => Ok(v.sla),
        Err(e) => {
            let problems = problem_views(e.problems());
            let message = match &e {
                SlaError::Syntax { .. } => "the SLA is not valid JSON".to_owned(),
                SlaError::Invalid { .. } => format!("the SLA is not valid: {e}"),
            };
            Err(ApiError {
                status: StatusCode::UNPROCESSABLE_ENTITY,
                body: ErrorBody {
                    message,
                    field: problems.first().map(|p| p.path.clone()),
                    problems,
                },
            })
        }
    }
}

/// Registers the applications of a full SLA with their services (no instance is deployed:
/// that is `POST /api/service/<id>/instance`). Answers with every application of the caller.
#[utoipa::path(post, path = "/api/application", tag = "applications",
    request_body(content = ref("#/components/schemas/Sla"), description = "An SLA v2.0 document"),
    responses((status = 200, body = Vec<ApplicationView>),
        (status = 400, description = "the body is not JSON, or not a JSON object", body = ErrorBody),
        (status = 403, description = "over the caller's quota (`field`: `quota.<what>`)", body = ErrorBody),
        (status = 409, description = "an application of that name exists", body = ErrorBody),
        (status = 422, description = "not a valid SLA (its schema or its rules): every problem listed", body = ErrorBody)),
    security(("bearerAuth" = [])))]
pub async fn create_applications(
    State(s): State<ApiState>,
    caller: Caller,
    SlaBody(body): SlaBody,
) -> ApiResult<Json<Vec<ApplicationView>>> {
    let sla = validated(&body)?;
    s.root.create_applications(&caller, &sla).await?;
    let apps = s.root.applications(&caller, Some(&caller.name)).await;
    Ok(Json(apps.iter().map(ApplicationView::from).collect()))
}

#[utoipa::path(get, path = "/api/application/{id}", tag = "applications", params(("id" = String, Path)),
    responses((status = 200, body = ApplicationView), (status = 404, body = ErrorBody)),
    security(("bearerAuth" = [])))]
pub async fn get_application(
    State(s): State<ApiState>,
    caller: Caller,
    Path(id): Path<String>,
) -> ApiResult<Json<ApplicationView>> {
    let a = s.root.application(&caller, &id).await?;
    Ok(Json(ApplicationView::from(&a)))
}

#[utoipa::path(put, path = "/api/application/{id}", tag = "applications", params(("id" = String, Path)),
    request_body = UpdateApplicationRequest,
    responses((status = 200, body = ApplicationView),
        (status = 400, description = "the body does not fit its schema, or microservices is not the current list", body = ErrorBody),
        (status = 404, body = ErrorBody),
        (status = 409, description = "renaming an application with services, or to a name in use", body = ErrorBody)),
    security(("bearerAuth" = [])))]
pub async fn update_application(
    State(s): State<ApiState>,
    caller: Caller,
    Path(id): Path<String>,
    Body(req): Body<UpdateApplicationRequest>,
) -> ApiResult<Json<ApplicationView>> {
    if let Some(list) = &req.microservices {
        let current = s.root.application(&caller, &id).await?.services;
        let sent: Vec<Option<&str>> = list
            .iter()
            .map(|v| {
                v.as_str()
                    .or_else(|| v.get("microserviceID").and_then(|x| x.as_str()))
            })
            .collect();
        let same = sent.len() == current.len()
            && sent
                .iter()
                .zip(&current)
                .all(|(a, b)| *a == Some(b.as_str()));
        if !same {
            return Err(ApiError::field(
                StatusCode::BAD_REQUEST,
                "microservices",
                "services are added with POST /api/service/ and removed with DELETE /api/service/<id>",
            ));
        }
    }
    let a = s
        .root
        .update_application(
            &caller,
            &id,
            req.application_name,
            req.application_namespace,
            req.application_desc,
        )
        .await?;
    Ok(Json(ApplicationView::from(&a)))
}

/// Deletes an application, its services and their instances.
#[utoipa::path(delete, path = "/api/application/{id}", tag = "applications", params(("id" = String, Path)),
    responses((status = 200, body = MessageBody), (status = 404, body = ErrorBody)),
    security(("bearerAuth" = [])))]
pub async fn delete_application(
    State(s): State<ApiState>,
    caller: Caller,
    Path(id): Path<String>,
) -> ApiResult<Json<MessageBody>> {
    s.root.delete_application(&caller, &id).await?;
    Ok(Json(MessageBody::new("application deleted")))
}

/// The caller's applications (every application for an admin).
#[utoipa::path(get, path = "/api/applications", tag = "applications",
    responses((status = 200, body = Vec<ApplicationView>)),
    security(("bearerAuth" = [])))]
pub async fn list_applications(
    State(s): State<ApiState>,
    caller: Caller,
) -> ApiResult<Json<Vec<ApplicationView>>> {
    let apps = s.root.applications(&caller, None).await;
    Ok(Json(apps.iter().map(ApplicationView::from).collect()))
}

/// The applications of one user, by user id (the caller's own, or any for an admin).
#[utoipa::path(get, path = "/api/applications/{userid}", tag = "applications", params(("userid" = String, Path)),
    responses((status = 200, body = Vec<ApplicationView>), (status = 403, body = ErrorBody),
        (status = 404, body = ErrorBody)),
    security(("bearerAuth" = [])))]
pub async fn list_user_applications(
    State(s): State<ApiState>,
    caller: Caller,
    Path(userid): Path<String>,
) -> ApiResult<Json<Vec<ApplicationView>>> {
    let name = s.root.user_name_by_id(&userid).await.ok_or_else(|| {
        ApiError::new(StatusCode::NOT_FOUND, format!("user {userid:?} not found"))
    })?;
    if !caller.admin && name != caller.name {
        return Err(crate::control::Error::Forbidden.into());
    }
    let apps = s.root.applications(&caller, Some(&name)).await;
    Ok(Json(apps.iter().map(ApplicationView::from).collect()))
}

/// Adds services to an existing application: the body is an SLA whose one application carries
/// `applicationID`.
#[utoipa::path(post, path = "/api/service", tag = "services",
    request_body(content = ref("#/components/schemas/SlaServices"),
        description = "An SLA v2.0 document with one application that has applicationID set"),
    responses((status = 200, body = AddServicesView),
        (status = 400, description = "the body is not JSON, or not a JSON object", body = ErrorBody),
        (status = 403, description = "over the owner's quota (`field`: `quota.<what>`)", body = ErrorBody),
        (status = 404, description = "no such application of the caller", body = ErrorBody),
        (status = 409, description = "a service of that name exists", body = ErrorBody),
        (status = 422, description = "not a valid SLA, or not one application with its applicationID, name and namespace: every problem listed", body = ErrorBody)),
    security(("bearerAuth" = [])))]
pub async fn add_services(
    State(s): State<ApiState>,
    caller: Caller,
    SlaBody(body): SlaBody,
) -> ApiResult<Json<AddServicesView>> {
    let sla = validated(&body)?;
    let ids = s.root.add_services(&caller, &sla).await?;
    let mut created = Vec::new();
    for id in &ids {
        let svc = s.root.service(&caller, id).await?;
        created.push(ServiceCreated {
            service_name: svc.spec.job_name.service().to_owned(),
            status: svc.status().0.as_str().to_owned(),
        });
    }
    Ok(Json(AddServicesView {
        job_id: ids.last().cloned().unwrap_or_default(),
        deployed_services: created,
        failed_services: Vec::new(),
    }))
}

#[utoipa::path(get, path = "/api/service/{id}", tag = "services", params(("id" = String, Path)),
    responses((status = 200, body = ServiceView), (status = 404, body = ErrorBody)),
    security(("bearerAuth" = [])))]
pub async fn get_service(
    State(s): State<ApiState>,
    caller: Caller,
    Path(id): Path<String>,
) -> ApiResult<Response> {
    let svc = s.root.service(&caller, &id).await?;
    Ok(json_body(s.jobs.one(&svc)))
}

/// Validates a microservice body as part of its application's SLA: 422 with every problem,
/// at paths within the body.
fn validated_microservice(
    app: &crate::model::Application,
    owner: &str,
    body: serde_json::Value,
) -> ApiResult<Sla> {
    const WITHIN: &str = "applications[0].microservices[0]";
    let doc = serde_json::json!({
        "sla_version": "v2.0",
        "customerID": owner,
        "applications": [{
            "application_name": app.name,
            "application_namespace": app.namespace,
            "application_desc": app.description,
            "microservices": [body],
        }]
    });
    validated(&doc).map_err(|mut e| {
        let within = |p: &str| match p.strip_prefix(WITHIN) {
            Some("") => "body".to_owned(),
            Some(rest) => rest.trim_start_matches('.').to_owned(),
            None => p.to_owned(),
        };
        for p in &mut e.body.problems {
            p.path = within(&p.path);
        }
        e.body.field = e.body.problems.first().map(|p| p.path.clone());
        e.body.message = e.body.message.replace(WITHIN, "body");
        e
    })
}

/// Updates a service in place (a Canopy extension; Oakestra answers 501): the body is the
/// microservice as an SLA gives it. A change starts a rolling update (one instance at a
/// time, each new one ready before an old one goes; rolled back by itself when a new one
/// fails or is late); the same service again changes nothing. Its name, namespace and pinned
/// addresses cannot change.
#[utoipa::path(put, path = "/api/service/{id}", tag = "services", params(("id" = String, Path)),
    request_body(content = ref("#/components/schemas/SlaMicroservice"), description = "the microservice, as in an SLA"),
    responses((status = 200, body = RolloutView, description = "the rollout it started (`changed`), or the latest one when nothing changed"),
        (status = 400, description = "the body is not JSON, or not a JSON object", body = ErrorBody),
        (status = 404, body = ErrorBody),
        (status = 409, description = "an update of the service is in progress, or the name or a pinned address would change", body = ErrorBody),
        (status = 422, description = "not a valid microservice: every problem listed, at paths within the body", body = ErrorBody)),
    security(("bearerAuth" = [])))]
pub async fn update_service(
    State(s): State<ApiState>,
    caller: Caller,
    Path(id): Path<String>,
    SlaBody(body): SlaBody,
) -> ApiResult<Json<RolloutView>> {
    let svc = s.root.service(&caller, &id).await?;
    let app = s.root.application(&caller, &svc.application_id).await?;
    let sla = validated_microservice(&app, &svc.owner, body)?;
    let a = &sla.applications[0];
    let updated = s
        .root
        .update_service(&caller, &id, a, &a.microservices[0])
        .await?;
    let svc = s.root.service(&caller, &id).await?;
    Ok(Json(rollout_view(&svc, updated != Updated::Unchanged)))
}

/// A service's latest rolling update: where it stands, or `none`.
#[utoipa::path(get, path = "/api/service/{id}/rollout", tag = "services", params(("id" = String, Path)),
    responses((status = 200, body = RolloutView), (status = 404, body = ErrorBody)),
    security(("bearerAuth" = [])))]
pub async fn rollout_status(
    State(s): State<ApiState>,
    caller: Caller,
    Path(id): Path<String>,
) -> ApiResult<Json<RolloutView>> {
    let svc = s.root.service(&caller, &id).await?;
    Ok(Json(rollout_view(&svc, false)))
}

/// Deletes a service and undeploys its instances.
#[utoipa::path(delete, path = "/api/service/{id}", tag = "services", params(("id" = String, Path)),
    responses((status = 200, body = MessageBody), (status = 404, body = ErrorBody)),
    security(("bearerAuth" = [])))]
pub async fn delete_service(
    State(s): State<ApiState>,
    caller: Caller,
    Path(id): Path<String>,
) -> ApiResult<Json<MessageBody>> {
    s.root.delete_service(&caller, &id).await?;
    Ok(Json(MessageBody::new("service deleted")))
}

/// The services of one application.
#[utoipa::path(get, path = "/api/services/{appid}", tag = "services", params(("appid" = String, Path)),
    responses((status = 200, body = Vec<ServiceView>), (status = 404, body = ErrorBody)),
    security(("bearerAuth" = [])))]
pub async fn list_services(
    State(s): State<ApiState>,
    caller: Caller,
    Path(appid): Path<String>,
) -> ApiResult<Response> {
    let list = s.root.services(&caller, Some(&appid), |l| s.jobs.list(l));
    Ok(json_body(list.await?))
}

/// Every service the caller may see (all for an admin).
#[utoipa::path(get, path = "/api/services", tag = "services",
    responses((status = 200, body = Vec<ServiceView>)),
    security(("bearerAuth" = [])))]
pub async fn list_all_services(State(s): State<ApiState>, caller: Caller) -> ApiResult<Response> {
    Ok(json_body(
        s.root.services(&caller, None, |l| s.jobs.list(l)).await?,
    ))
}

/// Deploys one more instance of a service.
#[utoipa::path(post, path = "/api/service/{id}/instance", tag = "services", params(("id" = String, Path)),
    responses((status = 200, body = ScaleUpView),
        (status = 403, description = "over the owner's quota (`field`: `quota.<what>`)", body = ErrorBody),
        (status = 404, body = ErrorBody),
        (status = 409, description = "no instance address left", body = ErrorBody)),
    security(("bearerAuth" = [])))]
pub async fn scale_up(
    State(s): State<ApiState>,
    caller: Caller,
    Path(id): Path<String>,
) -> ApiResult<Json<ScaleUpView>> {
    let n = s.root.scale_up(&caller, &id).await?;
    Ok(Json(ScaleUpView {
        message: "ok".into(),
        instance_number: n.0,
    }))
}

/// Removes one instance of a service.
#[utoipa::path(delete, path = "/api/service/{id}/instance/{n}", tag = "services",
    params(("id" = String, Path), ("n" = u32, Path, description = "instance number")),
    responses((status = 200, body = MessageBody),
        (status = 400, description = "n is not an instance number", body = ErrorBody),
        (status = 404, body = ErrorBody)),
    security(("bearerAuth" = [])))]
pub async fn scale_down(
    State(s): State<ApiState>,
    caller: Caller,
    Path((id, n)): Path<(String, String)>,
) -> ApiResult<Json<MessageBody>> {
    s.root
        .scale_down(&caller, &id, instance_number(&n)?)
        .await?;
    Ok(Json(MessageBody::new("ok")))
}

/// What was done to a service: its latest events (at most 100), oldest first (a Canopy
/// extension).
#[utoipa::path(get, path = "/api/service/{id}/events", tag = "services", params(("id" = String, Path)),
    responses((status = 200, body = Vec<ServiceEvent>), (status = 404, body = ErrorBody)),
    security(("bearerAuth" = [])))]
pub async fn service_events(
    State(s): State<ApiState>,
    caller: Caller,
    Path(id): Path<String>,
) -> ApiResult<Json<Vec<ServiceEvent>>> {
    Ok(Json(s.root.service_events(&caller, &id).await?))
}

pub(super) fn instance_number(n: &str) -> ApiResult<u32> {
    n.parse().map_err(|_| {
        ApiError::field(
            StatusCode::BAD_REQUEST,
            "instance_number",
            format!("{n:?} is not an instance number"),
        )
    })
}

/// Stops, starts or restarts one instance (a Canopy extension). A stopped instance keeps its
/// number and address on no worker, across failover and restarts, until it is started.
#[utoipa::path(post, path = "/api/service/{id}/instance/{n}/{operation}", tag = "services",
    params(("id" = String, Path), ("n" = u32, Path, description = "instance number"),
        ("operation" = String, Path, description = "stop, start or restart")),
    responses((status = 200, body = OperationView),
        (status = 400, description = "n is not an instance number", body = ErrorBody),
        (status = 404, description = "no such service, instance or operation", body = ErrorBody),
        (status = 409, description = "the instance is COMPLETED or UNDEPLOYED", body = ErrorBody)),
    security(("bearerAuth" = [])))]
pub async fn operate(
    State(s): State<ApiState>,
    caller: Caller,
    Path((id, n, operation)): Path<(String, String, String)>,
) -> ApiResult<Json<OperationView>> {
    let n = instance_number(&n)?;
    let op = Operation::parse(&operation).ok_or_else(|| {
        ApiError::field(
            StatusCode::NOT_FOUND,
            "operation",
            format!("{operation:?} is not stop, start or restart"),
        )
    })?;
    let status = s.root.operate(&caller, &id, n, op).await?;
    Ok(Json(OperationView {
        instance_number: n,
        status: status.as_str().to_owned(),
    }))
}
