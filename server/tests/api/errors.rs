//! Bad input of every kind gets a clear 4xx with a machine-readable code — never a
//! 500, never a panic.

use reqwest::{Method, StatusCode};
use serde_json::json;

use crate::support::{TestServer, read};

#[tokio::test]
async fn bad_input_table() {
    let s = TestServer::start_with(&[("AEGIS_MAX_BODY_BYTES", "4096")]).await;
    let sponsor = s.sponsor("errors").await;
    let (agent, _) = s.agent(&sponsor, "target").await;
    let id = agent["id"].as_str().unwrap().to_owned();
    let token = sponsor.access.clone();

    struct Case {
        name: &'static str,
        method: Method,
        path: String,
        content_type: Option<&'static str>,
        body: Vec<u8>,
        auth: bool,
        status: StatusCode,
        code: &'static str,
    }
    let case = |name, method, path: &str, content_type, body: &[u8], status, code| Case {
        name,
        method,
        path: path.to_owned(),
        content_type,
        body: body.to_vec(),
        auth: true,
        status,
        code,
    };
    let json_ct = Some("application/json");
    let big = format!("{{\"name\": \"{}\"}}", "x".repeat(8192));
    let mut cases = vec![
        case(
            "malformed json",
            Method::POST,
            "/api/agents",
            json_ct,
            b"{\"name\": ",
            StatusCode::BAD_REQUEST,
            "invalid_json",
        ),
        case(
            "not json at all",
            Method::POST,
            "/api/agents",
            json_ct,
            b"name=x",
            StatusCode::BAD_REQUEST,
            "invalid_json",
        ),
        case(
            "wrong type",
            Method::POST,
            "/api/agents",
            json_ct,
            br#"{"name": 42}"#,
            StatusCode::UNPROCESSABLE_ENTITY,
            "invalid_request",
        ),
        case(
            "limit as string",
            Method::POST,
            "/api/agents",
            json_ct,
            br#"{"name": "a", "daily_limit_micros": "5"}"#,
            StatusCode::UNPROCESSABLE_ENTITY,
            "invalid_request",
        ),
        case(
            "limit as float",
            Method::POST,
            "/api/agents",
            json_ct,
            br#"{"name": "a", "daily_limit_micros": 1.5}"#,
            StatusCode::UNPROCESSABLE_ENTITY,
            "invalid_request",
        ),
        case(
            "unknown field",
            Method::POST,
            "/api/agents",
            json_ct,
            br#"{"name": "a", "admin": true}"#,
            StatusCode::UNPROCESSABLE_ENTITY,
            "invalid_request",
        ),
        case(
            "missing field",
            Method::POST,
            "/api/agents",
            json_ct,
            br#"{}"#,
            StatusCode::UNPROCESSABLE_ENTITY,
            "invalid_request",
        ),
        case(
            "array body",
            Method::POST,
            "/api/agents",
            json_ct,
            b"[]",
            StatusCode::UNPROCESSABLE_ENTITY,
            "invalid_request",
        ),
        // serde fills a struct from an array too: `["y"]` would create an agent named "y".
        case(
            "array standing in for an object",
            Method::POST,
            "/api/agents",
            json_ct,
            b" [\"y\"]",
            StatusCode::UNPROCESSABLE_ENTITY,
            "invalid_request",
        ),
        case(
            "no content type",
            Method::POST,
            "/api/agents",
            None,
            br#"{"name": "a"}"#,
            StatusCode::UNSUPPORTED_MEDIA_TYPE,
            "unsupported_media_type",
        ),
        case(
            "text content type",
            Method::POST,
            "/api/agents",
            Some("text/plain"),
            br#"{"name": "a"}"#,
            StatusCode::UNSUPPORTED_MEDIA_TYPE,
            "unsupported_media_type",
        ),
        case(
            "oversized body",
            Method::POST,
            "/api/agents",
            json_ct,
            big.as_bytes(),
            StatusCode::PAYLOAD_TOO_LARGE,
            "payload_too_large",
        ),
        case(
            "id not a uuid",
            Method::GET,
            "/api/agents/not-a-uuid",
            None,
            b"",
            StatusCode::BAD_REQUEST,
            "invalid_path",
        ),
        case(
            "patch bad id",
            Method::PATCH,
            "/api/agents/123",
            json_ct,
            b"{}",
            StatusCode::BAD_REQUEST,
            "invalid_path",
        ),
        case(
            "patch wrong type",
            Method::PATCH,
            &format!("/api/agents/{id}"),
            json_ct,
            br#"{"tags": "x"}"#,
            StatusCode::UNPROCESSABLE_ENTITY,
            "invalid_request",
        ),
        case(
            "suspend bad body",
            Method::POST,
            &format!("/api/agents/{id}/suspend"),
            json_ct,
            b"{oops",
            StatusCode::BAD_REQUEST,
            "invalid_json",
        ),
        case(
            "suspend unknown field",
            Method::POST,
            &format!("/api/agents/{id}/suspend"),
            json_ct,
            br#"{"why": "x"}"#,
            StatusCode::UNPROCESSABLE_ENTITY,
            "invalid_request",
        ),
        case(
            "suspend body without content type",
            Method::POST,
            &format!("/api/agents/{id}/suspend"),
            None,
            br#"{"reason": "x"}"#,
            StatusCode::UNSUPPORTED_MEDIA_TYPE,
            "unsupported_media_type",
        ),
        case(
            "suspend oversized body",
            Method::POST,
            &format!("/api/agents/{id}/suspend"),
            json_ct,
            big.as_bytes(),
            StatusCode::PAYLOAD_TOO_LARGE,
            "payload_too_large",
        ),
        case(
            "unknown endpoint",
            Method::GET,
            "/api/nothing-here",
            None,
            b"",
            StatusCode::NOT_FOUND,
            "not_found",
        ),
        case(
            "wrong method",
            Method::PUT,
            "/api/agents",
            json_ct,
            b"{}",
            StatusCode::METHOD_NOT_ALLOWED,
            "method_not_allowed",
        ),
        case(
            "register malformed",
            Method::POST,
            "/api/auth/register",
            json_ct,
            b"{",
            StatusCode::BAD_REQUEST,
            "invalid_json",
        ),
        case(
            "login wrong types",
            Method::POST,
            "/api/auth/login",
            json_ct,
            br#"{"email": [], "password": 1}"#,
            StatusCode::UNPROCESSABLE_ENTITY,
            "invalid_request",
        ),
        case(
            "refresh unknown field",
            Method::POST,
            "/api/auth/refresh",
            json_ct,
            br#"{"refresh_token": "x", "y": 1}"#,
            StatusCode::UNPROCESSABLE_ENTITY,
            "invalid_request",
        ),
    ];
    let mut unauthenticated =
        case("no token", Method::GET, "/api/agents", None, b"", StatusCode::UNAUTHORIZED, "unauthorized");
    unauthenticated.auth = false;
    cases.push(unauthenticated);

    for c in cases {
        let mut req = s.http.request(c.method.clone(), s.url(&c.path)).body(c.body.clone());
        if c.auth {
            req = req.bearer_auth(&token);
        }
        if let Some(ct) = c.content_type {
            req = req.header("content-type", ct);
        }
        let r = read(req.send().await.unwrap()).await;
        assert_eq!(r.status, c.status, "{}: {}", c.name, r.text);
        assert_eq!(r.code(), c.code, "{}", c.name);
        assert!(r.headers["content-type"].to_str().unwrap().starts_with("application/json"), "{}", c.name);
    }

    // Malformed Authorization headers are 401s too.
    for value in ["Bearer", "Basic dXNlcjpwYXNz", "Bearer not.a.jwt", "Token abc"] {
        let r =
            read(s.http.get(s.url("/api/agents")).header("authorization", value).send().await.unwrap()).await;
        assert_eq!(r.status, StatusCode::UNAUTHORIZED, "{value}");
    }
    // Nothing that was accepted was lost: the one valid agent is still there and intact.
    let list = s.get("/api/agents", &token).await;
    assert_eq!(list.body["items"].as_array().unwrap().len(), 1);
    let _ = json!(null);
}

#[tokio::test]
async fn health_endpoint_answers() {
    let s = TestServer::start().await;
    let r = read(s.http.get(s.url("/healthz")).send().await.unwrap()).await;
    assert_eq!((r.status, r.body["status"].as_str()), (StatusCode::OK, Some("ok")));
}

/// Schema and behaviour agree on query parameters (issue #16, item 25): every list
/// endpoint documents `limit` as an integer 1..=200 and refuses anything else with
/// `400 invalid_limit`; the audit endpoints refuse a blank time, id or cursor
/// (a blank value is not a `date-time`, `uuid` or cursor) instead of ignoring it.
#[tokio::test]
async fn query_parameters_outside_the_documented_range_are_400() {
    let s = TestServer::start().await;
    let sponsor = s.sponsor("ranges").await;
    let spec = read(reqwest::get(s.url("/api/openapi.json")).await.unwrap()).await.body;
    for (path, code) in [
        ("/api/agents", "invalid_limit"),
        ("/api/approvals", "invalid_limit"),
        ("/api/audit", "invalid_limit"),
        ("/api/audit/export.csv", "invalid_limit"),
    ] {
        let limit = spec["paths"][path]["get"]["parameters"]
            .as_array()
            .unwrap()
            .iter()
            .find(|p| p["name"] == "limit")
            .unwrap_or_else(|| panic!("{path} documents no limit"))["schema"]
            .clone();
        assert_eq!(
            (limit["minimum"].as_f64(), limit["maximum"].as_f64()),
            (Some(1.0), Some(200.0)),
            "{path}"
        );
        for bad in ["0", "201", "2147483648"] {
            let r = s.get(&format!("{path}?limit={bad}"), &sponsor.access).await;
            assert_eq!((r.status, r.code()), (StatusCode::BAD_REQUEST, code), "{path}?limit={bad}");
        }
        for good in ["1", "200"] {
            let r = s.get(&format!("{path}?limit={good}"), &sponsor.access).await;
            assert_eq!(r.status, StatusCode::OK, "{path}?limit={good}: {}", r.text);
        }
    }
    for path in ["/api/audit", "/api/audit/export.csv"] {
        for (query, code) in [("to=", "invalid_to"), ("from=", "invalid_from"), ("agent=", "invalid_agent")] {
            let r = s.get(&format!("{path}?{query}"), &sponsor.access).await;
            assert_eq!((r.status, r.code()), (StatusCode::BAD_REQUEST, code), "{path}?{query}");
        }
    }
}

/// A stored row that no key opens (here: a parked request from before the
/// request-id column whose sealed data is damaged) never breaks a whole list, the
/// agent's poll or the janitor's expiry sweep: it shows as `req_unreadable`, the
/// other rows are served, and it still expires (issue #16, item 24).
#[tokio::test]
async fn one_undecryptable_row_never_breaks_a_list_or_the_sweep() {
    use entity::approvals;
    use sea_orm::sea_query::Expr;
    use sea_orm::{ColumnTrait, EntityTrait, QueryFilter};

    let mock = crate::mock::MockUpstream::start().await;
    let s =
        TestServer::start_with(&[("AEGIS_EGRESS_ALLOW", "127.0.0.1/32"), ("AEGIS_APPROVAL_TTL_SECS", "2")])
            .await;
    let sponsor = s.sponsor("careful").await;
    let (_, key) = crate::approvals::asking_agent(&s, &sponsor, "asker").await;
    let mut parked = Vec::new();
    for _ in 0..2 {
        let r =
            s.post("/api/proxy/execute", Some(&key), json!({"method": "GET", "url": mock.url("/x")})).await;
        assert_eq!(r.status, StatusCode::ACCEPTED, "{}", r.text);
        parked.push(r.body["approval_id"].as_str().unwrap().to_owned());
    }
    let damaged = &parked[0];
    let changed = approvals::Entity::update_many()
        .col_expr(approvals::Column::RequestId, Expr::value(Option::<String>::None))
        .col_expr(approvals::Column::RequestJson, Expr::value(r#"{"nonce":"00","sealed":"AA==","v":1}"#))
        .filter(approvals::Column::Id.eq(damaged.parse::<uuid::Uuid>().unwrap()))
        .exec(&s.running.services.db)
        .await
        .unwrap();
    assert_eq!(changed.rows_affected, 1);

    let list = s.get("/api/approvals", &sponsor.access).await;
    assert_eq!(list.status, StatusCode::OK, "{}", list.text);
    let items = list.body["items"].as_array().unwrap();
    assert_eq!(items.len(), 2, "{}", list.text);
    let shown = items.iter().find(|i| i["id"] == damaged.as_str()).unwrap();
    assert_eq!(shown["request_id"], "req_unreadable");
    let poll = s.get(&format!("/api/proxy/approvals/{damaged}"), &key).await;
    assert_eq!((poll.status, poll.body["request_id"].as_str()), (StatusCode::OK, Some("req_unreadable")));

    // After the TTL the janitor's sweep expires both, the damaged one included.
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(30);
    loop {
        let r = s.get("/api/approvals?status=expired", &sponsor.access).await;
        assert_eq!(r.status, StatusCode::OK, "{}", r.text);
        if r.body["items"].as_array().unwrap().len() == 2 {
            break;
        }
        assert!(std::time::Instant::now() < deadline, "not expired: {}", r.text);
        tokio::time::sleep(std::time::Duration::from_millis(200)).await;
    }
}
