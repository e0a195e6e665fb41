//! The API's own documentation: `/api/openapi.json` must describe exactly the routes
//! the server has, and `/docs` must render it as a self-contained page.

use reqwest::{Method, StatusCode};
use serde_json::Value;

use crate::support::{TestServer, read};

/// Every route registered in `server/src/http/mod.rs::router`, as the spec spells it
/// (`{*path}` is `{path}`; `ANY` is a route for every method).
///
/// FUTURE ENGINEERS: a route added to the router must be added here AND documented
/// (a `#[utoipa::path]` on its handler, listed in `server/src/http/openapi.rs`).
/// This test fails until all three agree.
const ROUTES: &[(&str, &str)] = &[
    ("GET", "/healthz"),
    ("GET", "/readyz"),
    ("GET", "/metrics"),
    ("GET", "/ws"),
    ("GET", "/docs"),
    ("GET", "/api/openapi.json"),
    ("POST", "/api/auth/register"),
    ("POST", "/api/auth/login"),
    ("POST", "/api/auth/refresh"),
    ("POST", "/api/auth/logout"),
    ("GET", "/api/auth/me"),
    ("GET", "/api/agents"),
    ("POST", "/api/agents"),
    ("GET", "/api/agents/{id}"),
    ("PATCH", "/api/agents/{id}"),
    ("DELETE", "/api/agents/{id}"),
    ("POST", "/api/agents/{id}/keys"),
    ("POST", "/api/agents/{id}/suspend"),
    ("POST", "/api/agents/{id}/resume"),
    ("GET", "/api/agents/{id}/trust"),
    ("GET", "/api/agents/{id}/tools"),
    ("GET", "/api/agents/{id}/wallet"),
    ("PUT", "/api/agents/{id}/wallet"),
    ("GET", "/api/agents/{id}/wallet/history"),
    ("GET", "/api/agent/me"),
    ("GET", "/api/policies"),
    ("POST", "/api/policies"),
    ("GET", "/api/policies/{id}"),
    ("PUT", "/api/policies/{id}"),
    ("GET", "/api/secrets"),
    ("POST", "/api/secrets"),
    ("GET", "/api/secrets/{id}"),
    ("PUT", "/api/secrets/{id}"),
    ("DELETE", "/api/secrets/{id}"),
    ("PUT", "/api/secrets/{id}/agents/{agent_id}"),
    ("DELETE", "/api/secrets/{id}/agents/{agent_id}"),
    ("GET", "/api/connections"),
    ("POST", "/api/connections"),
    ("PUT", "/api/connections/{id}"),
    ("PATCH", "/api/connections/{id}"),
    ("DELETE", "/api/connections/{id}"),
    ("GET", "/api/audit/{seq}/replay"),
    ("GET", "/api/audit"),
    ("GET", "/api/audit/export.csv"),
    ("GET", "/api/audit/verify"),
    ("GET", "/api/approvals"),
    ("GET", "/api/approvals/{id}"),
    ("POST", "/api/approvals/{id}/approve"),
    ("POST", "/api/approvals/{id}/reject"),
    ("GET", "/api/proxy/approvals/{id}"),
    ("POST", "/api/proxy/execute"),
    ("ANY", "/api/gw/{connection}"),
    ("ANY", "/api/gw/{connection}/{path}"),
    ("POST", "/api/policies/evaluate"),
    ("GET", "/api/auth/sessions"),
    ("DELETE", "/api/auth/sessions/{id}"),
    ("GET", "/api/dashboard/stats"),
    ("GET", "/api/usage"),
    ("GET", "/api/orgs"),
    ("GET", "/api/orgs/members"),
    ("PATCH", "/api/orgs/members/{id}"),
    ("DELETE", "/api/orgs/members/{id}"),
    ("GET", "/api/orgs/invitations"),
    ("POST", "/api/orgs/invitations"),
    ("POST", "/api/orgs/invitations/accept"),
    ("DELETE", "/api/orgs/invitations/{id}"),
    ("GET", "/api/orgs/settings"),
    ("PUT", "/api/orgs/settings"),
    ("GET", "/api/channels"),
    ("POST", "/api/channels"),
    ("PATCH", "/api/channels/{id}"),
    ("DELETE", "/api/channels/{id}"),
    ("GET", "/api/channels/{id}/deliveries"),
    ("POST", "/api/channels/{id}/test"),
    ("POST", "/api/slack/links"),
    ("POST", "/api/slack/channels/{id}/interactions"),
];

const METHODS: [&str; 7] = ["get", "post", "put", "patch", "delete", "head", "options"];

async fn spec(s: &TestServer) -> Value {
    let r = read(s.http.get(s.url("/api/openapi.json")).send().await.unwrap()).await;
    assert_eq!(r.status, StatusCode::OK, "{}", r.text);
    let ct = r.headers["content-type"].to_str().unwrap();
    assert!(ct.starts_with("application/json"), "{ct}");
    assert!(r.body.is_object(), "not JSON: {}", &r.text[..r.text.len().min(200)]);
    r.body
}

/// `(METHOD, path)` for every operation in the spec.
fn operations(spec: &Value) -> Vec<(String, String)> {
    let mut ops = Vec::new();
    for (path, item) in spec["paths"].as_object().expect("paths") {
        for m in METHODS {
            if item.get(m).is_some() {
                ops.push((m.to_ascii_uppercase(), path.clone()));
            }
        }
    }
    ops
}

/// A concrete URL for a templated path.
fn concrete(path: &str) -> String {
    path.split('/')
        .map(|seg| match seg {
            "{id}" => uuid::Uuid::new_v4().to_string(),
            "{seq}" => "1".to_owned(),
            s if s.starts_with('{') => "x".to_owned(),
            s => s.to_owned(),
        })
        .collect::<Vec<_>>()
        .join("/")
}

#[tokio::test]
async fn the_spec_documents_only_routes_that_exist() {
    let s = TestServer::start().await;
    let spec = spec(&s).await;
    assert!(spec["openapi"].as_str().unwrap().starts_with("3."), "{}", spec["openapi"]);
    assert_eq!(spec["info"]["title"], "AEGIS API");
    assert_eq!(spec["info"]["version"], env!("CARGO_PKG_VERSION"));

    // The probe tells a missing route apart from one that merely refuses us.
    let missing = s.send(Method::GET, "/api/no-such-endpoint", None, None).await;
    assert_eq!((missing.status, missing.code()), (StatusCode::NOT_FOUND, "not_found"));
    let wrong = s.send(Method::DELETE, "/api/auth/me", None, None).await;
    assert_eq!((wrong.status, wrong.code()), (StatusCode::METHOD_NOT_ALLOWED, "method_not_allowed"));

    let ops = operations(&spec);
    assert!(ops.len() >= ROUTES.len(), "{} operations", ops.len());
    for (method, path) in &ops {
        let url = concrete(path);
        let request = s.http.request(Method::from_bytes(method.as_bytes()).unwrap(), s.url(&url));
        let r = read(request.send().await.unwrap()).await;
        let what = format!("{method} {url} -> {} {}", r.status, r.text.chars().take(200).collect::<String>());
        if path.starts_with("/api/gw/") {
            assert_eq!(r.status, StatusCode::UNAUTHORIZED, "{what}");
            continue;
        }
        assert_ne!(r.status, StatusCode::METHOD_NOT_ALLOWED, "{what}");
        let no_route = r.status == StatusCode::NOT_FOUND
            && (r.body["error"]["message"] == "endpoint not found" || !r.body.is_object());
        assert!(!no_route, "documented but not routed: {what}");
        // Anything that needs a caller says so; nothing documented is a server error.
        assert!(!r.status.is_server_error(), "{what}");
    }
}

#[tokio::test]
async fn every_registered_route_is_documented() {
    let s = TestServer::start().await;
    let spec = spec(&s).await;
    let paths = spec["paths"].as_object().unwrap();
    for (method, path) in ROUTES {
        let item = paths.get(*path).unwrap_or_else(|| panic!("{method} {path} is routed but not documented"));
        let methods: Vec<&str> =
            if *method == "ANY" { vec!["get", "post", "put", "patch", "delete"] } else { vec![*method] };
        for m in methods {
            let op = &item[m.to_ascii_lowercase()];
            assert!(op.is_object(), "{m} {path} is routed but not documented");
            assert!(op["summary"].as_str().is_some_and(|s| !s.is_empty()), "{m} {path} has no summary");
            assert!(
                op["responses"].as_object().is_some_and(|r| !r.is_empty()),
                "{m} {path} has no responses"
            );
        }
    }
    // And the other way round: the list above is complete.
    for path in paths.keys() {
        assert!(ROUTES.iter().any(|(_, p)| p == path), "{path} is documented but missing from ROUTES");
    }
}

#[tokio::test]
async fn key_schemas_and_security_are_described() {
    let s = TestServer::start().await;
    let spec = spec(&s).await;
    let schemas = &spec["components"]["schemas"];
    for name in [
        "AgentView",
        "NewAgent",
        "AgentCreated",
        "AuthResponse",
        "ExecuteRequest",
        "ExecuteAllowed",
        "ExecuteDenied",
        "ExecuteFailed",
        "SecretView",
        "NewSecret",
        "Injection",
        "ConnectionView",
        "PolicyView",
        "PolicyInput",
        "AuditRecord",
        "SponsorVerifyReport",
        "ReplayReport",
        "ErrorBody",
    ] {
        assert!(schemas[name].is_object(), "no schema {name}");
    }
    let execute = &schemas["ExecuteRequest"]["properties"];
    for field in
        ["method", "url", "headers", "body", "body_base64", "secret", "cost_micros", "idempotency_key"]
    {
        assert!(execute[field].is_object(), "ExecuteRequest.{field} missing");
    }
    assert_eq!(schemas["ErrorBody"]["properties"]["error"]["$ref"], "#/components/schemas/ErrorDetail");
    let detail = &schemas["ErrorDetail"]["properties"];
    assert!(detail["code"].is_object() && detail["message"].is_object());
    for field in ["decision", "stage", "reason", "request_id", "audit_seq"] {
        assert!(schemas["ExecuteDenied"]["properties"][field].is_object(), "ExecuteDenied.{field}");
    }
    assert!(schemas["ExecuteAllowed"]["properties"]["upstream"].is_object());

    let schemes = &spec["components"]["securitySchemes"];
    assert_eq!(schemes["sponsor_token"]["scheme"], "bearer");
    assert_eq!(schemes["agent_key"]["scheme"], "bearer");
    assert_eq!(
        (&schemes["agent_api_key"]["in"], &schemes["agent_api_key"]["name"]),
        (&"header".into(), &"x-api-key".into())
    );

    let paths = &spec["paths"];
    let security = |m: &str, p: &str| paths[p][m]["security"].to_string();
    assert!(security("get", "/api/agents").contains("sponsor_token"));
    assert!(security("post", "/api/proxy/execute").contains("agent_key"));
    assert!(security("post", "/api/proxy/execute").contains("agent_api_key"));
    assert_eq!(paths["/api/auth/login"]["post"]["security"], Value::Null, "login is public");
    let execute = &paths["/api/proxy/execute"]["post"]["responses"];
    for status in ["200", "401", "403", "502", "503", "504"] {
        assert!(execute[status].is_object(), "execute lacks {status}");
    }
    let list = paths["/api/agents"]["get"]["parameters"].to_string();
    assert!(list.contains("\"limit\"") && list.contains("\"cursor\""), "{list}");
}

#[tokio::test]
async fn the_docs_page_is_self_contained_html() {
    let s = TestServer::start().await;
    let spec = spec(&s).await;
    let r = read(s.http.get(s.url("/docs")).send().await.unwrap()).await;
    assert_eq!(r.status, StatusCode::OK);
    let ct = r.headers["content-type"].to_str().unwrap();
    assert!(ct.starts_with("text/html"), "{ct}");
    assert!(r.headers["content-security-policy"].to_str().unwrap().contains("default-src 'none'"));
    let html = r.text;
    for path in spec["paths"].as_object().unwrap().keys() {
        assert!(html.contains(&format!(">{path}</code>")), "{path} not on the page");
    }
    for name in ["ExecuteRequest", "AgentView", "ErrorBody"] {
        assert!(
            html.contains(&format!("id=\"schema-{}\"", name.to_lowercase())),
            "schema {name} not on the page"
        );
    }

    // Offline: no scripts at all, and no asset from another host.
    let lower = html.to_ascii_lowercase();
    assert!(!lower.contains("<script"), "scripts on the page");
    for marker in ["src=", "<link", "@import", "url("] {
        for (i, _) in lower.match_indices(marker) {
            let around = &lower[i..(i + 200).min(lower.len())];
            let tag_end = around.find('>').unwrap_or(around.len());
            let tag = &around[..tag_end];
            assert!(
                !tag.contains("http://") && !tag.contains("https://") && !tag.contains("//"),
                "external asset: {tag}"
            );
        }
    }

    // Text from the spec is escaped: the API description's `<access token>` shows as text.
    assert!(html.contains("Bearer &lt;access token&gt;"));
    assert!(!html.contains("<access token>"));
    assert!(html.contains("&quot;error&quot;"), "JSON in the page is escaped");
}
