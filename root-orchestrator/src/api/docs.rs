//! The OpenAPI document, generated from the handlers' annotations and the types in
//! [`super::views`], and a small page that lists it (no assets from the internet).

use super::views::*;
use super::{accounts, apps, clusters};
use crate::model::{Member, Role};
use axum::Json;
use axum::response::Html;
use utoipa::openapi::security::{HttpAuthScheme, HttpBuilder, SecurityScheme};
use utoipa::{Modify, OpenApi};

struct BearerAuth;

impl Modify for BearerAuth {
    fn modify(&self, openapi: &mut utoipa::openapi::OpenApi) {
        if let Some(c) = openapi.components.as_mut() {
            c.add_security_scheme(
                "bearerAuth",
                SecurityScheme::Http(
                    HttpBuilder::new()
                        .scheme(HttpAuthScheme::Bearer)
                        .bearer_format("JWT")
                        .build(),
                ),
            );
        }
    }
}

#[derive(OpenApi)]
#[openapi(
    info(title = "Canopy root api", description = "Oakestra-compatible root orchestrator API. Every path also answers with a trailing slash."),
    paths(
        accounts::login, accounts::refresh, accounts::register, accounts::permission,
        accounts::get_user, accounts::change_password, accounts::update_user, accounts::delete_user,
        accounts::get_quota, accounts::put_quota, accounts::delete_quota,
        accounts::list_users, accounts::list_organizations, accounts::create_organization,
        accounts::update_organization, accounts::delete_organization,
        apps::create_applications, apps::get_application, apps::update_application,
        apps::delete_application, apps::list_applications, apps::list_user_applications,
        apps::add_services, apps::get_service, apps::update_service, apps::delete_service,
        apps::list_services, apps::list_all_services, apps::scale_up, apps::scale_down, apps::operate, apps::service_events,
        clusters::list_clusters, clusters::list_active_clusters, clusters::list_nodes,
        super::events::stream, super::logs::stream,
    ),
    components(schemas(Role, Member, ErrorBody, ProblemView, MessageBody, Oid)),
    modifiers(&BearerAuth)
)]
pub struct ApiDoc;

pub async fn openapi_json() -> Json<utoipa::openapi::OpenApi> {
    Json(ApiDoc::openapi())
}

const PAGE: &str = r#"<!doctype html>
<html><head><meta charset="utf-8"><title>Canopy root api</title>
<style>body{font-family:sans-serif;max-width:60em;margin:2em auto}code{background:#eee;padding:0 .3em}
li{margin:.2em 0}.m{display:inline-block;width:4.5em;font-weight:bold}</style></head>
<body><h1>Canopy root api</h1>
<p>The machine-readable document is <a href="/docs/openapi.json"><code>/docs/openapi.json</code></a>.
Log in with <code>POST /api/auth/login</code> and send <code>Authorization: Bearer &lt;token&gt;</code>.</p>
<ul id="ops"></ul>
<script>
fetch('/docs/openapi.json').then(r => r.json()).then(doc => {
  const ul = document.getElementById('ops');
  for (const [path, item] of Object.entries(doc.paths)) {
    for (const [method, op] of Object.entries(item)) {
      const li = document.createElement('li');
      li.innerHTML = '<span class="m"></span><code></code> ';
      li.children[0].textContent = method.toUpperCase();
      li.children[1].textContent = path;
      li.append(op.summary || op.description || '');
      ul.append(li);
    }
  }
});
</script></body></html>"#;

pub async fn page() -> Html<&'static str> {
    Html(PAGE)
}
