//! The REST API over HTTP on loopback: every endpoint, with its 400/401/403/404/409/422 paths.
#![allow(clippy::unwrap_used)]

mod common;

use common::{TestCluster, TestRoot, capacity, sla};
use reqwest::{Method, StatusCode};
use serde_json::{Value, json};
use std::time::Duration;

#[tokio::test]
async fn login_refresh_and_token_checks() {
    let root = TestRoot::start().await;
    let anon = root.anonymous();

    // Public: health and docs. Everything else needs a token.
    assert_eq!(anon.get("/health").await.0, StatusCode::OK);
    let (s, doc) = anon.get("/docs/openapi.json").await;
    assert_eq!(s, StatusCode::OK);
    for path in [
        "/api/auth/login",
        "/api/application/{id}",
        "/api/service/{id}/instance",
    ] {
        assert!(
            doc["paths"].get(path).is_some(),
            "{path} missing from the OpenAPI document"
        );
    }
    assert!(doc["components"]["schemas"].get("ServiceView").is_some());
    let (s, page) = anon.get("/api/docs/").await;
    assert_eq!(s, StatusCode::OK);
    assert!(page.as_str().unwrap().contains("/docs/openapi.json"));
    for path in [
        "/api/applications/",
        "/api/clusters",
        "/api/users/",
        "/api/services",
    ] {
        let (s, b) = anon.get(path).await;
        assert_eq!(s, StatusCode::UNAUTHORIZED, "{path}: {b}");
        assert!(
            b["message"]
                .as_str()
                .unwrap()
                .contains("Missing authentication token")
        );
    }

    // Bad logins.
    let login = |body| anon.call(Method::POST, "/api/auth/login", Some(body));
    let (s, _) = login(json!({"username": "Admin", "password": "wrong"})).await;
    assert_eq!(s, StatusCode::UNAUTHORIZED);
    let (s, _) = login(json!({"username": "nobody", "password": "x"})).await;
    assert_eq!(s, StatusCode::UNAUTHORIZED);
    let (s, b) = login(json!({"username": "Admin"})).await;
    assert_eq!(s, StatusCode::BAD_REQUEST);
    assert!(b["message"].as_str().unwrap().contains("password"), "{b}");
    let (s, b) = login(json!({"username": 5, "password": "x"})).await;
    assert_eq!(
        (s, b["field"].as_str()),
        (StatusCode::BAD_REQUEST, Some("username"))
    );
    let (s, _) = anon.raw(Method::POST, "/api/auth/login", "{not json").await;
    assert_eq!(s, StatusCode::BAD_REQUEST);
    let (s, _) = login(json!({"username": "Admin", "password": common::ADMIN_PASSWORD, "organization_name": "nope"})).await;
    assert_eq!(s, StatusCode::NOT_FOUND);

    // A good login, with and without the trailing slash.
    let (s, pair) = anon
        .call(
            Method::POST,
            "/api/auth/login/",
            Some(json!({"username": "Admin", "password": common::ADMIN_PASSWORD})),
        )
        .await;
    assert_eq!(s, StatusCode::OK);
    let (access, refresh) = (
        pair["token"].as_str().unwrap(),
        pair["refresh_token"].as_str().unwrap(),
    );

    let mut with_refresh = root.anonymous();
    with_refresh.token = Some(refresh.into());
    let (s, b) = with_refresh
        .call(Method::POST, "/api/auth/refresh", None)
        .await;
    assert_eq!(s, StatusCode::OK, "{b}");
    let fresh = b["token"].as_str().unwrap().to_owned();
    // A refresh token is no access token, and the other way round.
    assert_eq!(
        with_refresh.get("/api/applications").await.0,
        StatusCode::UNAUTHORIZED
    );
    let mut with_access = root.anonymous();
    with_access.token = Some(access.into());
    assert_eq!(
        with_access
            .call(Method::POST, "/api/auth/refresh", None)
            .await
            .0,
        StatusCode::UNAUTHORIZED
    );
    with_access.token = Some(fresh);
    assert_eq!(with_access.get("/api/applications").await.0, StatusCode::OK);
    with_access.token = Some(format!("{access}x"));
    assert_eq!(
        with_access.get("/api/applications").await.0,
        StatusCode::UNAUTHORIZED
    );

    // Unknown endpoints are 404 in JSON.
    let (s, b) = root.admin().await.get("/api/nothing/here").await;
    assert_eq!(s, StatusCode::NOT_FOUND);
    assert!(b["message"].is_string());
}

#[tokio::test]
async fn users_and_organizations_are_admin_business() {
    let root = TestRoot::start().await;
    let admin = root.admin().await;
    let alice = root.user("alice").await;

    // Register: admin only, names unique, fields named when wrong.
    let body = json!({"name": "bob", "password": "bobs-pw", "email": "b@x", "roles": []});
    let (s, _) = alice
        .call(Method::POST, "/api/auth/register", Some(body.clone()))
        .await;
    assert_eq!(s, StatusCode::FORBIDDEN);
    let (s, b) = admin
        .call(Method::POST, "/api/auth/register", Some(body.clone()))
        .await;
    assert_eq!(s, StatusCode::OK, "{b}");
    assert_eq!(b["_id"]["$oid"].as_str().unwrap().len(), 24);
    let (s, b) = admin
        .call(Method::POST, "/api/auth/register", Some(body))
        .await;
    assert_eq!(
        (s, b["field"].as_str()),
        (StatusCode::CONFLICT, Some("name"))
    );
    let (s, b) = admin
        .call(
            Method::POST,
            "/api/auth/register",
            Some(json!({"name": "bad name!", "password": "pw12"})),
        )
        .await;
    assert_eq!(
        (s, b["field"].as_str()),
        (StatusCode::BAD_REQUEST, Some("name"))
    );
    let (s, b) = admin
        .call(
            Method::POST,
            "/api/auth/register",
            Some(json!({"name": "carl", "password": "pw12", "roles": ["King"]})),
        )
        .await;
    assert_eq!(s, StatusCode::BAD_REQUEST);
    assert!(b["field"].as_str().unwrap().starts_with("roles"), "{b}");

    // Listing users: admin only.
    assert_eq!(alice.get("/api/users/").await.0, StatusCode::FORBIDDEN);
    let users = admin.ok("/api/users").await;
    let names: Vec<&str> = users
        .as_array()
        .unwrap()
        .iter()
        .map(|u| u["name"].as_str().unwrap())
        .collect();
    assert_eq!(names, ["Admin", "alice", "bob"]);
    assert!(
        users[0]["roles"]
            .as_array()
            .unwrap()
            .contains(&json!("Admin"))
    );
    assert!(
        users.to_string().find("argon2").is_none(),
        "password hashes must not leak"
    );

    // One's own user and permissions; not somebody else's.
    let me = alice.ok("/api/user/alice").await;
    assert_eq!(me["email"], "alice@example.org");
    assert_eq!(
        alice.ok("/api/permission/alice/").await["roles"],
        json!(["Application_Provider"])
    );
    assert_eq!(alice.get("/api/user/bob").await.0, StatusCode::FORBIDDEN);
    assert_eq!(admin.get("/api/user/nobody").await.0, StatusCode::NOT_FOUND);

    // Change one's password.
    let (s, _) = alice
        .call(
            Method::POST,
            "/api/user/alice",
            Some(json!({"oldPassword": "wrong", "newPassword": "new-pw"})),
        )
        .await;
    assert_eq!(s, StatusCode::UNAUTHORIZED);
    let (s, b) = alice
        .call(
            Method::POST,
            "/api/user/alice",
            Some(json!({"oldPassword": "pw-of-user", "newPassword": "new-pw"})),
        )
        .await;
    assert_eq!(s, StatusCode::OK, "{b}");
    let alice = root.login("alice", "new-pw").await;

    // Update (admin): e-mail and roles.
    let (s, _) = alice
        .call(Method::PUT, "/api/user/alice", Some(json!({"email": "x"})))
        .await;
    assert_eq!(s, StatusCode::FORBIDDEN);
    let (s, b) = admin
        .call(Method::PUT, "/api/user/alice", Some(json!({"email": "a@new", "roles": ["Application_Provider", "Infrastructure_Provider"]})))
        .await;
    assert_eq!(s, StatusCode::OK, "{b}");
    assert_eq!(b["email"], "a@new");
    assert_eq!(b["roles"].as_array().unwrap().len(), 2);

    // Delete (admin): answers with who remains; the deleted user's token stops working.
    let bob = root.login("bob", "bobs-pw").await;
    assert_eq!(
        alice.call(Method::DELETE, "/api/user/bob", None).await.0,
        StatusCode::FORBIDDEN
    );
    let (s, rest) = admin.call(Method::DELETE, "/api/user/bob/", None).await;
    assert_eq!(s, StatusCode::OK);
    assert_eq!(rest.as_array().unwrap().len(), 2);
    assert_eq!(
        bob.get("/api/applications").await.0,
        StatusCode::UNAUTHORIZED
    );
    assert_eq!(
        admin.call(Method::DELETE, "/api/user/bob", None).await.0,
        StatusCode::NOT_FOUND
    );
    assert_eq!(
        admin.call(Method::DELETE, "/api/user/Admin", None).await.0,
        StatusCode::CONFLICT
    );

    // Organisations.
    assert_eq!(
        alice.get("/api/organization/").await.0,
        StatusCode::FORBIDDEN
    );
    let orgs = admin.ok("/api/organization").await;
    assert_eq!(orgs[0]["name"], "root");
    let alice_id = me["_id"]["$oid"].as_str().unwrap();
    let (s, org) = admin
        .call(Method::POST, "/api/organization/", Some(json!({"name": "edge", "member": [{"user_id": alice_id, "roles": ["Application_Provider"]}]})))
        .await;
    assert_eq!(s, StatusCode::OK, "{org}");
    let org_id = org["_id"]["$oid"].as_str().unwrap();
    let (s, _) = admin
        .call(
            Method::POST,
            "/api/organization",
            Some(json!({"name": "edge"})),
        )
        .await;
    assert_eq!(s, StatusCode::CONFLICT);
    let (s, b) = admin
        .call(
            Method::POST,
            "/api/organization",
            Some(json!({"name": "other", "member": [{"user_id": "nope", "roles": []}]})),
        )
        .await;
    assert_eq!(
        (s, b["field"].as_str()),
        (StatusCode::UNPROCESSABLE_ENTITY, Some("member[0].user_id"))
    );
    let (s, b) = admin
        .call(
            Method::PUT,
            &format!("/api/organization/{org_id}"),
            Some(json!({"name": "edge2", "member": []})),
        )
        .await;
    assert_eq!((s, b["name"].as_str()), (StatusCode::OK, Some("edge2")));
    assert_eq!(
        admin
            .call(
                Method::PUT,
                "/api/organization/nope",
                Some(json!({"name": "x"}))
            )
            .await
            .0,
        StatusCode::NOT_FOUND
    );
    // Log in to a named organisation: roles come from that membership.
    let (s, _) = root
        .anonymous()
        .call(
            Method::POST,
            "/api/auth/login",
            Some(json!({"username": "alice", "password": "new-pw", "organization": "edge2"})),
        )
        .await;
    assert_eq!(s, StatusCode::OK);
    assert_eq!(
        admin
            .call(Method::DELETE, &format!("/api/organization/{org_id}"), None)
            .await
            .0,
        StatusCode::OK
    );
    assert_eq!(
        admin
            .call(Method::DELETE, &format!("/api/organization/{org_id}"), None)
            .await
            .0,
        StatusCode::NOT_FOUND
    );
}

#[tokio::test]
async fn applications_belong_to_their_owner() {
    let root = TestRoot::start().await;
    let admin = root.admin().await;
    let alice = root.user("alice").await;
    let bob = root.user("bob").await;

    let apps = alice.create_app(sla("shop", "web")).await;
    assert_eq!(apps.len(), 1);
    let app = &apps[0];
    let id = app["applicationID"].as_str().unwrap();
    assert_eq!(app["_id"]["$oid"], id);
    assert_eq!(app["userId"], "alice");
    assert_eq!(app["microservices"].as_array().unwrap().len(), 1);

    // GET returns the application (Oakestra returns null here: not copied).
    let got = alice.ok(&format!("/api/application/{id}/")).await;
    assert_eq!(got["application_name"], "shop");
    // Others do not see it; an admin does.
    assert_eq!(
        bob.get(&format!("/api/application/{id}")).await.0,
        StatusCode::NOT_FOUND
    );
    assert_eq!(
        admin.ok(&format!("/api/application/{id}")).await["applicationID"],
        id
    );
    assert_eq!(
        alice
            .get("/api/application/000000000000000000000000")
            .await
            .0,
        StatusCode::NOT_FOUND
    );

    // Lists: own for users, all for admins; by user id too.
    bob.create_app(sla("blog", "web")).await;
    assert_eq!(
        alice
            .ok("/api/applications/")
            .await
            .as_array()
            .unwrap()
            .len(),
        1
    );
    assert_eq!(
        admin
            .ok("/api/applications")
            .await
            .as_array()
            .unwrap()
            .len(),
        2
    );
    let alice_id = alice.ok("/api/user/alice").await["_id"]["$oid"]
        .as_str()
        .unwrap()
        .to_owned();
    assert_eq!(
        alice.ok(&format!("/api/applications/{alice_id}")).await[0]["applicationID"],
        id
    );
    assert_eq!(
        bob.get(&format!("/api/applications/{alice_id}")).await.0,
        StatusCode::FORBIDDEN
    );

    // Duplicates are 409 (per user: bob may use the same names).
    let (s, b) = alice
        .call(Method::POST, "/api/application", Some(sla("shop", "other")))
        .await;
    assert_eq!(
        (s, b["field"].as_str()),
        (StatusCode::CONFLICT, Some("applications[0]"))
    );

    // Invalid SLA: 422 with every problem; not JSON: 400.
    let mut bad = sla("bad", "web");
    bad["applications"][0]["microservices"][0]["virtualization"] = json!("vmware");
    bad["applications"][0]["application_namespace"] = json!("way-too-long-and-with-dashes");
    let (s, b) = alice
        .call(Method::POST, "/api/application", Some(bad))
        .await;
    assert_eq!(s, StatusCode::UNPROCESSABLE_ENTITY, "{b}");
    let paths = common::problem_paths(&b);
    assert!(
        paths.iter().any(|p| p.ends_with("virtualization")),
        "{paths:?}"
    );
    assert!(
        paths.iter().any(|p| p.ends_with("application_namespace")),
        "{paths:?}"
    );
    let (s, _) = alice.raw(Method::POST, "/api/application", "[1,2").await;
    assert_eq!(s, StatusCode::BAD_REQUEST);
    // The failed attempts left nothing behind.
    assert_eq!(
        alice
            .ok("/api/applications")
            .await
            .as_array()
            .unwrap()
            .len(),
        1
    );

    // PUT: description and names; services are not changed this way.
    let (s, b) = alice
        .call(
            Method::PUT,
            &format!("/api/application/{id}"),
            Some(json!({"application_desc": "new text"})),
        )
        .await;
    assert_eq!(
        (s, b["application_desc"].as_str()),
        (StatusCode::OK, Some("new text"))
    );
    let (s, b) = alice
        .call(
            Method::PUT,
            &format!("/api/application/{id}"),
            Some(json!({"microservices": []})),
        )
        .await;
    assert_eq!(
        (s, b["field"].as_str()),
        (StatusCode::BAD_REQUEST, Some("microservices"))
    );
    let (s, b) = alice
        .call(
            Method::PUT,
            &format!("/api/application/{id}"),
            Some(json!({"application_name": "no-dash!"})),
        )
        .await;
    // The name rule is in the OpenAPI schema of the body, checked before anything else.
    assert_eq!(
        (s, b["field"].as_str()),
        (StatusCode::BAD_REQUEST, Some("application_name"))
    );
    assert_eq!(
        bob.call(
            Method::PUT,
            &format!("/api/application/{id}"),
            Some(json!({"application_desc": "x"}))
        )
        .await
        .0,
        StatusCode::NOT_FOUND
    );

    // DELETE removes the app and its services.
    let svc_id = app["microservices"][0].as_str().unwrap().to_owned();
    assert_eq!(
        bob.call(Method::DELETE, &format!("/api/application/{id}"), None)
            .await
            .0,
        StatusCode::NOT_FOUND
    );
    assert_eq!(
        alice
            .call(Method::DELETE, &format!("/api/application/{id}"), None)
            .await
            .0,
        StatusCode::OK
    );
    assert_eq!(
        alice.get(&format!("/api/service/{svc_id}")).await.0,
        StatusCode::NOT_FOUND
    );
    assert_eq!(
        alice.get(&format!("/api/application/{id}")).await.0,
        StatusCode::NOT_FOUND
    );
    // The same names can be used again.
    alice.create_app(sla("shop", "web")).await;
}

#[tokio::test]
async fn services_instances_and_addresses() {
    let root = TestRoot::start().await;
    let alice = root.user("alice").await;
    let bob = root.user("bob").await;
    let app = alice.create_app(sla("shop", "web")).await.remove(0);
    let app_id = app["applicationID"].as_str().unwrap().to_owned();
    let web = alice.service_of(&app).await;
    let web_id = web["microserviceID"].as_str().unwrap().to_owned();
    assert_eq!(web["job_name"], "shop.test.web.test");
    assert_eq!(web["microservice_name"], "web");
    assert_eq!(web["image"], "localhost:5000/busybox:latest");
    assert!(web["RR_ip"].as_str().unwrap().starts_with("10.30."));
    assert_eq!(web["instance_list"], json!([]));

    // Add a service with a pinned address.
    let mut add = sla("shop", "db");
    add["applications"][0]["applicationID"] = json!(app_id);
    add["applications"][0]["microservices"][0]["addresses"] = json!({"rr_ip": "10.30.99.1"});
    let (s, b) = alice
        .call(Method::POST, "/api/service/", Some(add.clone()))
        .await;
    assert_eq!(s, StatusCode::OK, "{b}");
    assert_eq!(b["deployed_services"][0]["service_name"], "db");
    let db_id = b["job_id"].as_str().unwrap().to_owned();
    assert_eq!(
        alice.ok(&format!("/api/service/{db_id}")).await["RR_ip"],
        "10.30.99.1"
    );
    // The same name again: 409. The same address for another service: 409. Outside: 422.
    let (s, _) = alice
        .call(Method::POST, "/api/service", Some(add.clone()))
        .await;
    assert_eq!(s, StatusCode::CONFLICT);
    add["applications"][0]["microservices"][0]["microservice_name"] = json!("cache");
    let (s, b) = alice
        .call(Method::POST, "/api/service", Some(add.clone()))
        .await;
    assert_eq!(s, StatusCode::CONFLICT, "{b}");
    assert!(
        b["field"].as_str().unwrap().ends_with("addresses.rr_ip"),
        "{b}"
    );
    add["applications"][0]["microservices"][0]["addresses"] = json!({"rr_ip": "10.31.0.1"});
    let (s, b) = alice
        .call(Method::POST, "/api/service", Some(add.clone()))
        .await;
    assert_eq!(s, StatusCode::UNPROCESSABLE_ENTITY, "{b}");
    // Someone else's application, or none: 404; no applicationID: 422.
    add["applications"][0]["microservices"][0]["addresses"] = json!({});
    assert_eq!(
        bob.call(Method::POST, "/api/service", Some(add.clone()))
            .await
            .0,
        StatusCode::NOT_FOUND
    );
    add["applications"][0]["applicationID"] = json!("");
    assert_eq!(
        alice.call(Method::POST, "/api/service", Some(add)).await.0,
        StatusCode::UNPROCESSABLE_ENTITY
    );

    // Lists.
    let list = alice.ok(&format!("/api/services/{app_id}/")).await;
    assert_eq!(list.as_array().unwrap().len(), 2);
    assert_eq!(
        bob.get(&format!("/api/services/{app_id}")).await.0,
        StatusCode::NOT_FOUND
    );
    assert_eq!(bob.ok("/api/services").await, json!([]));
    assert_eq!(
        bob.get(&format!("/api/service/{web_id}")).await.0,
        StatusCode::NOT_FOUND
    );

    // Scale up with no cluster: the instance waits with Oakestra's negative status.
    let n = alice.scale_up(&web_id).await;
    assert_eq!(n, 0);
    let svc = alice.ok(&format!("/api/service/{web_id}")).await;
    assert_eq!(svc["status"], "NoActiveClusterWithCapacity");
    let inst = &svc["instance_list"][0];
    assert_eq!(inst["status"], "NoActiveClusterWithCapacity");
    assert!(inst["instance_ip"].as_str().unwrap().starts_with("10.30."));
    assert_eq!(alice.scale_up(&web_id).await, 1);
    assert_eq!(
        bob.call(
            Method::POST,
            &format!("/api/service/{web_id}/instance"),
            None
        )
        .await
        .0,
        StatusCode::NOT_FOUND
    );

    // A cluster arrives: waiting instances are placed.
    let mut cluster =
        TestCluster::join(root.grpc, &root.cluster_token, "c1", capacity(8, 8000)).await;
    let clusters = alice.ok("/api/clusters/").await;
    assert_eq!(clusters[0]["cluster_name"], "c1");
    alice.wait_instance(&web_id, 0, "CLUSTER_SCHEDULED").await;
    alice.wait_instance(&web_id, 1, "CLUSTER_SCHEDULED").await;
    assert_eq!(
        alice
            .ok("/api/clusters/active")
            .await
            .as_array()
            .unwrap()
            .len(),
        1
    );
    let (c1, c2) = (cluster.command().await, cluster.command().await);
    for c in [&c1, &c2] {
        cluster.ack(c.id, Ok(())).await;
    }

    // Scale down: the instance goes, an undeploy goes to the cluster, the address returns.
    let ip1 = alice.ok(&format!("/api/service/{web_id}")).await["instance_list"][1]["instance_ip"]
        .clone();
    assert_eq!(
        alice
            .call(
                Method::DELETE,
                &format!("/api/service/{web_id}/instance/1"),
                None
            )
            .await
            .0,
        StatusCode::OK
    );
    let undeploy = cluster.command().await;
    assert!(
        format!("{:?}", undeploy.action).contains("Undeploy"),
        "{undeploy:?}"
    );
    assert_eq!(
        alice
            .call(
                Method::DELETE,
                &format!("/api/service/{web_id}/instance/1"),
                None
            )
            .await
            .0,
        StatusCode::NOT_FOUND
    );
    assert_eq!(
        alice
            .call(
                Method::DELETE,
                &format!("/api/service/{web_id}/instance/x"),
                None
            )
            .await
            .0,
        StatusCode::BAD_REQUEST
    );
    let svc = alice.ok(&format!("/api/service/{web_id}")).await;
    assert_eq!(svc["instance_list"].as_array().unwrap().len(), 1);
    assert_ne!(svc["instance_list"][0]["instance_ip"], ip1);

    // PUT on a service takes a microservice (a rolling update: tests/rollout.rs); one that
    // is not valid is refused with every problem at its path within the body.
    let (s, b) = alice
        .call(
            Method::PUT,
            &format!("/api/service/{web_id}"),
            Some(json!({"microservice_name": "web"})),
        )
        .await;
    assert_eq!(s, StatusCode::UNPROCESSABLE_ENTITY, "{b}");
    let paths = common::problem_paths(&b);
    assert!(paths.iter().any(|p| p == "code" || p == "body"), "{b}");
    assert!(paths.iter().all(|p| !p.starts_with("applications")), "{b}");

    // Delete a service: undeployed everywhere, gone from its application, address free again.
    assert_eq!(
        bob.call(Method::DELETE, &format!("/api/service/{db_id}"), None)
            .await
            .0,
        StatusCode::NOT_FOUND
    );
    assert_eq!(
        alice
            .call(Method::DELETE, &format!("/api/service/{db_id}/"), None)
            .await
            .0,
        StatusCode::OK
    );
    assert_eq!(
        alice
            .call(Method::DELETE, &format!("/api/service/{db_id}"), None)
            .await
            .0,
        StatusCode::NOT_FOUND
    );
    let app_now = alice.ok(&format!("/api/application/{app_id}")).await;
    assert_eq!(app_now["microservices"], json!([web_id]));
    let mut again = sla("shop", "db2");
    again["applications"][0]["applicationID"] = json!(app_id);
    again["applications"][0]["microservices"][0]["addresses"] = json!({"rr_ip": "10.30.99.1"});
    let (s, b) = alice.call(Method::POST, "/api/service", Some(again)).await;
    assert_eq!(
        s,
        StatusCode::OK,
        "released address can be pinned again: {b}"
    );

    // Metrics count requests, decisions, clusters and instances.
    let text = reqwest::get(format!("{}/metrics", root.metrics))
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    for needle in [
        "canopy_root_http_requests_total{method=\"POST\",route=\"/api/service/{id}/instance\",status=\"200\"}",
        "canopy_root_schedule_decisions_total{result=\"placed\"}",
        "canopy_root_clusters{state=\"active\"}",
        "canopy_root_instances{status=\"CLUSTER_SCHEDULED\"} 1",
    ] {
        assert!(text.contains(needle), "{needle} missing from\n{text}");
    }
}

#[tokio::test]
async fn no_input_crashes_the_daemon() {
    let root = TestRoot::start().await;
    let admin = root.admin().await;
    let app = admin.create_app(sla("shop", "web")).await.remove(0);
    let app_id = app["applicationID"].as_str().unwrap().to_owned();
    let svc = app["microservices"][0].as_str().unwrap().to_owned();
    let bodies = [
        "",
        "null",
        "[]",
        "{}",
        "\"text\"",
        "{\"sla_version\": 5}",
        "{\"applications\": [{}]}",
        "{\"name\": {\"deep\": [1, 2, {\"x\": null}]}}",
        "\u{0}\u{1}\u{2}",
        "{\"username\": \"\u{1F600}\", \"password\": \"\"}",
    ];
    let paths = [
        (Method::POST, "/api/auth/login".to_owned()),
        (Method::POST, "/api/auth/refresh".to_owned()),
        (Method::POST, "/api/auth/register".to_owned()),
        (Method::POST, "/api/user/Admin".to_owned()),
        (Method::PUT, "/api/user/Admin".to_owned()),
        (Method::POST, "/api/organization".to_owned()),
        (Method::PUT, "/api/organization/x".to_owned()),
        (Method::POST, "/api/application".to_owned()),
        (Method::PUT, format!("/api/application/{app_id}")),
        (Method::POST, "/api/service".to_owned()),
        (Method::POST, format!("/api/service/{svc}/instance/../..")),
        (
            Method::DELETE,
            format!("/api/service/{svc}/instance/99999999999"),
        ),
        (Method::GET, "/api/application/%00%ff".to_owned()),
    ];
    for (method, path) in &paths {
        for body in bodies {
            let (s, b) = admin.raw(method.clone(), path, body).await;
            assert!(
                s.is_client_error() || s.is_success(),
                "{method} {path} with {body:?}: {s} {b}"
            );
        }
    }
    // Still serving, state intact.
    assert_eq!(
        admin.ok(&format!("/api/application/{app_id}")).await["application_name"],
        "shop"
    );
}

/// An SLA of application `app` with `n` services `s0`…, each asking for 1 vCPU and 100 MB.
fn sla_with_services(app: &str, n: usize) -> Value {
    let mut doc = sla(app, "s0");
    let one = doc["applications"][0]["microservices"][0].clone();
    doc["applications"][0]["microservices"] = Value::Array(
        (0..n)
            .map(|i| {
                let mut s = one.clone();
                s["microservice_name"] = json!(format!("s{i}"));
                s
            })
            .collect(),
    );
    doc
}

#[tokio::test]
async fn quotas_are_set_by_admins_and_checked_before_anything_is_stored() {
    let root = TestRoot::start().await;
    let admin = root.admin().await;
    let carol = root.user("carol").await;

    // The root's default applies (--quota-* flags); admins have none.
    let q = carol.ok("/api/user/carol/quota").await;
    assert_eq!(q["default"], true, "{q}");
    assert_eq!(q["quota"]["services"], 500, "{q}");
    assert_eq!(q["quota"]["instances"], 1000, "{q}");
    assert!(
        q["quota"].get("vcpus").is_none(),
        "no default vCPU limit: {q}"
    );
    assert_eq!(q["usage"]["services"], 0);
    assert_eq!(admin.ok("/api/user/Admin/quota").await["quota"], json!({}));
    // Only admins set quotas; a user sees only their own.
    let limit = json!({"applications": 2, "services": 2, "instances": 1, "vcpus": 4});
    let (s, b) = carol
        .call(Method::PUT, "/api/user/carol/quota", Some(limit.clone()))
        .await;
    assert_eq!(s, StatusCode::FORBIDDEN, "{b}");
    assert_eq!(
        carol.get("/api/user/Admin/quota").await.0,
        StatusCode::FORBIDDEN
    );
    let (s, b) = admin
        .call(
            Method::PUT,
            "/api/user/carol/quota",
            Some(json!({"services": "two"})),
        )
        .await;
    assert_eq!(s, StatusCode::BAD_REQUEST, "{b}");
    assert_eq!(b["field"], "services", "{b}");
    let (s, b) = admin
        .call(Method::PUT, "/api/user/nobody/quota", Some(limit.clone()))
        .await;
    assert_eq!(s, StatusCode::NOT_FOUND, "{b}");
    let (s, b) = admin
        .call(Method::PUT, "/api/user/carol/quota", Some(limit.clone()))
        .await;
    assert_eq!(s, StatusCode::OK, "{b}");
    assert_eq!(b["default"], false);
    assert_eq!(b["quota"], limit);

    // Three services over a quota of two: 403 naming the quota, and nothing stored.
    let (s, b) = carol
        .call(
            Method::POST,
            "/api/application",
            Some(sla_with_services("big", 3)),
        )
        .await;
    assert_eq!(s, StatusCode::FORBIDDEN, "{b}");
    assert_eq!(b["field"], "quota.services", "{b}");
    assert!(b["message"].as_str().unwrap().contains("3 services"), "{b}");
    assert_eq!(carol.ok("/api/applications").await, json!([]));
    assert_eq!(
        carol.ok("/api/user/carol/quota").await["usage"]["services"],
        0
    );

    // Two fit; a third added to the application does not.
    let app = carol
        .create_app(sla_with_services("fits", 2))
        .await
        .remove(0);
    let app_id = app["applicationID"].as_str().unwrap().to_owned();
    let mut add = sla("fits", "extra");
    add["applications"][0]["applicationID"] = json!(app_id);
    let (s, b) = carol
        .call(Method::POST, "/api/service", Some(add.clone()))
        .await;
    assert_eq!(
        (s, b["field"].clone()),
        (StatusCode::FORBIDDEN, json!("quota.services")),
        "{b}"
    );
    // An admin acting on carol's application is held to carol's quota too.
    let (s, b) = admin
        .call(Method::POST, "/api/service", Some(add.clone()))
        .await;
    assert_eq!(
        (s, b["field"].clone()),
        (StatusCode::FORBIDDEN, json!("quota.services")),
        "{b}"
    );

    // One instance fits; a second does not.
    let svc = carol.service_of(&app).await;
    let svc_id = svc["microserviceID"].as_str().unwrap().to_owned();
    assert_eq!(carol.scale_up(&svc_id).await, 0);
    let (s, b) = carol
        .call(
            Method::POST,
            &format!("/api/service/{svc_id}/instance"),
            None,
        )
        .await;
    assert_eq!(
        (s, b["field"].clone()),
        (StatusCode::FORBIDDEN, json!("quota.instances")),
        "{b}"
    );
    let q = carol.ok("/api/user/carol/quota").await;
    assert_eq!(
        q["usage"],
        json!({"applications": 1, "services": 2, "instances": 1, "vcpus": 1, "memory_mb": 100})
    );

    // Lowered below what carol holds: what she has stays, and shrinking is allowed.
    let (s, _) = admin
        .call(
            Method::PUT,
            "/api/user/carol/quota",
            Some(json!({"services": 1})),
        )
        .await;
    assert_eq!(s, StatusCode::OK);
    let other = carol.ok(&format!("/api/services/{app_id}")).await[1]["microserviceID"]
        .as_str()
        .unwrap()
        .to_owned();
    let (s, b) = carol
        .call(Method::DELETE, &format!("/api/service/{other}"), None)
        .await;
    assert_eq!(s, StatusCode::OK, "{b}");
    // No instance limit any more: a second instance now fits.
    assert_eq!(carol.scale_up(&svc_id).await, 1);

    // Back to the default; an SLA over its 500 services is refused at once.
    let (s, b) = admin
        .call(Method::DELETE, "/api/user/carol/quota", None)
        .await;
    assert_eq!(
        (s, b["default"].clone()),
        (StatusCode::OK, json!(true)),
        "{b}"
    );
    let (s, b) = carol
        .call(
            Method::POST,
            "/api/application",
            Some(sla_with_services("huge", 600)),
        )
        .await;
    assert_eq!(
        (s, b["field"].clone()),
        (StatusCode::FORBIDDEN, json!("quota.services")),
        "{b}"
    );
    root.stop().await;
}

#[tokio::test]
async fn request_bodies_have_a_size_cap() {
    let root = TestRoot::start_with(|c| c.max_body_bytes = 64 * 1024).await;
    let admin = root.admin().await;
    // Within the cap: a normal SLA. Over it: 413 naming the body, before it is parsed.
    let big = sla_with_services("capped", 400);
    assert!(big.to_string().len() > 64 * 1024);
    let (s, b) = admin
        .call(Method::POST, "/api/application", Some(big))
        .await;
    assert_eq!(s, StatusCode::PAYLOAD_TOO_LARGE, "{b}");
    assert_eq!(b["field"], "body", "{b}");
    let (s, b) = admin
        .call(
            Method::POST,
            "/api/application",
            Some(sla_with_services("fine", 3)),
        )
        .await;
    assert_eq!(s, StatusCode::OK, "{b}");
    // Nothing but the small SLA was stored.
    let apps = admin.ok("/api/applications").await;
    assert_eq!(apps.as_array().unwrap().len(), 1, "{apps}");
    root.stop().await;
}

#[tokio::test]
async fn stop_start_and_restart_an_instance() {
    use canopy_core::InstanceStatus;
    use canopy_core::link::CommandAction;
    let root = TestRoot::start().await;
    let alice = root.user("alice").await;
    let bob = root.user("bob").await;
    let (mut cluster, id) = common::running_instance(&root, &alice, "ops").await;
    let ip =
        alice.ok(&format!("/api/service/{id}")).await["instance_list"][0]["instance_ip"].clone();
    let op = |who: &common::Api, n: u32, what: &str| {
        let (who, path) = (
            who.clone(),
            format!("/api/service/{id}/instance/{n}/{what}"),
        );
        async move { who.call(Method::POST, &path, None).await }
    };

    // Someone else's instance is not found; an unknown operation or instance is refused.
    assert_eq!(op(&bob, 0, "stop").await.0, StatusCode::NOT_FOUND);
    let (s, b) = op(&alice, 0, "pause").await;
    assert_eq!(
        (s, b["field"].clone()),
        (StatusCode::NOT_FOUND, json!("operation")),
        "{b}"
    );
    assert_eq!(op(&alice, 7, "stop").await.0, StatusCode::NOT_FOUND);
    let (s, b) = op(&alice, 0, "x").await;
    assert_eq!(s, StatusCode::NOT_FOUND, "{b}");

    // Stop: the cluster is told to undeploy it; it stays STOPPED, whatever the cluster says.
    let (s, b) = op(&alice, 0, "stop").await;
    assert_eq!(
        (s, b["status"].clone()),
        (StatusCode::OK, json!("STOPPED")),
        "{b}"
    );
    let undeploy = cluster.command().await;
    assert!(
        matches!(&undeploy.action, CommandAction::Undeploy { instance: Some(n), .. } if n.0 == 0),
        "{undeploy:?}"
    );
    cluster.ack(undeploy.id, Ok(())).await;
    cluster.report(&id, 0, InstanceStatus::Running).await;
    // A report from a copy the root no longer placed there is answered with an undeploy.
    let again = cluster.command().await;
    assert!(
        matches!(again.action, CommandAction::Undeploy { .. }),
        "{again:?}"
    );
    cluster.ack(again.id, Ok(())).await;
    let inst = &alice.ok(&format!("/api/service/{id}")).await["instance_list"][0];
    assert_eq!(inst["status"], "STOPPED", "{inst}");
    assert_eq!(inst["cluster_id"], Value::Null, "{inst}");
    assert_eq!(inst["instance_ip"], ip);
    assert_eq!(op(&alice, 0, "stop").await.1["status"], "STOPPED");
    cluster.no_command(Duration::from_millis(700)).await;

    // Start: placed again with its address.
    let (s, b) = op(&alice, 0, "start").await;
    assert_eq!(
        (s, b["status"].clone()),
        (StatusCode::OK, json!("CLUSTER_SCHEDULED")),
        "{b}"
    );
    let deploy = cluster.command().await;
    let CommandAction::Deploy {
        instance,
        instance_ip,
        ..
    } = &deploy.action
    else {
        panic!("{deploy:?}");
    };
    assert_eq!(
        (instance.0, instance_ip.map(|a| a.to_string())),
        (0, ip.as_str().map(str::to_owned))
    );
    cluster.ack(deploy.id, Ok(())).await;
    cluster.report(&id, 0, InstanceStatus::Running).await;
    alice.wait_instance(&id, 0, "RUNNING").await;
    // Starting a running instance does nothing.
    assert_eq!(op(&alice, 0, "start").await.1["status"], "RUNNING");
    cluster.no_command(Duration::from_millis(500)).await;

    // Restart: undeploy, then deploy, in that order, to the cluster.
    let (s, b) = op(&alice, 0, "restart").await;
    assert_eq!(s, StatusCode::OK, "{b}");
    let first = cluster.command().await;
    let second = cluster.command().await;
    assert!(
        matches!(first.action, CommandAction::Undeploy { .. }),
        "{first:?}"
    );
    assert!(
        matches!(second.action, CommandAction::Deploy { .. }),
        "{second:?}"
    );

    // Every operation is an event of the service: when, what, why, how it ended.
    let events = alice.ok(&format!("/api/service/{id}/events")).await;
    assert_eq!(
        alice.event_whats(&id).await,
        [
            "create", "scale up", "stop", "stop", "start", "start", "restart"
        ],
        "{events}"
    );
    let seqs: Vec<u64> = events
        .as_array()
        .unwrap()
        .iter()
        .map(|e| e["seq"].as_u64().unwrap())
        .collect();
    assert_eq!(seqs, [0, 1, 2, 3, 4, 5, 6]);
    let stop = &events[2];
    assert_eq!(
        (stop["instance"].clone(), stop["why"].clone()),
        (json!(0), json!("requested by alice"))
    );
    assert_eq!(stop["outcome"], "STOPPED");
    assert!(
        events[1]["outcome"]
            .as_str()
            .unwrap()
            .starts_with("CLUSTER_SCHEDULED on cluster "),
        "{events}"
    );
    assert!(
        events[0]["outcome"]
            .as_str()
            .unwrap()
            .contains("rr_ip 10.30."),
        "{events}"
    );
    assert_eq!(events[3]["outcome"], "nothing to do: already STOPPED");
    assert!(events[6]["at"].as_f64().unwrap() >= events[0]["at"].as_f64().unwrap());
    assert_eq!(
        bob.get(&format!("/api/service/{id}/events")).await.0,
        StatusCode::NOT_FOUND
    );
    root.stop().await;
}

#[tokio::test]
async fn a_service_keeps_its_latest_hundred_events() {
    let root = TestRoot::start().await;
    let alice = root.user("alice").await;
    let app = alice.create_app(sla("busy", "web")).await.remove(0);
    let id = alice.service_of(&app).await["microserviceID"]
        .as_str()
        .unwrap()
        .to_owned();
    // 1 create + 60 × (scale up, scale down) = 121 events: seq 0 … 120.
    for n in 0..60 {
        assert_eq!(alice.scale_up(&id).await, n);
        let (s, b) = alice
            .call(
                Method::DELETE,
                &format!("/api/service/{id}/instance/{n}"),
                None,
            )
            .await;
        assert_eq!(s, StatusCode::OK, "{b}");
    }
    let events = alice.ok(&format!("/api/service/{id}/events")).await;
    let list = events.as_array().unwrap();
    assert_eq!(list.len(), 100);
    assert_eq!(
        (list[0]["seq"].clone(), list[99]["seq"].clone()),
        (json!(21), json!(120))
    );
    assert_eq!(list[99]["what"], "scale down");
    assert_eq!(list[99]["instance"], 59);
    root.stop().await;
}
