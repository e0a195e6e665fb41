//! Organizations (issue #20): invitations, members and roles, and the route × role
//! test — every sponsor route of the spec, asked by each role and by an outsider.

use reqwest::{Method, StatusCode};
use serde_json::{Value, json};

use crate::support::{Response, Sponsor, TestServer, read};

/// `method path` as `sponsor`, acting in `org` (`X-AEGIS-Org`) when given.
async fn act(
    s: &TestServer,
    who: &Sponsor,
    org: Option<&str>,
    method: Method,
    path: &str,
    body: Option<Value>,
) -> Response {
    let mut req = s.http.request(method, s.url(path)).bearer_auth(&who.access);
    if let Some(org) = org {
        req = req.header("x-aegis-org", org);
    }
    if let Some(body) = body {
        req = req.json(&body);
    }
    read(req.send().await.unwrap()).await
}

async fn invite(s: &TestServer, by: &Sponsor, org: Option<&str>, email: &str, role: &str) -> Response {
    act(s, by, org, Method::POST, "/api/orgs/invitations", Some(json!({"email": email, "role": role}))).await
}

async fn accept(s: &TestServer, who: &Sponsor, token: &str) -> Response {
    act(s, who, None, Method::POST, "/api/orgs/invitations/accept", Some(json!({"token": token}))).await
}

/// `POST /api/approvals/{id}/approve` as `who`, acting in `org`.
async fn approve_in(s: &TestServer, who: &Sponsor, org: &str, id: &str) -> Response {
    act(s, who, Some(org), Method::POST, &format!("/api/approvals/{id}/approve"), Some(json!({}))).await
}

/// The owner's policy `ask`: every call waits for approval.
async fn ask_policy(s: &TestServer, owner: &Sponsor) {
    let r = s
        .post(
            "/api/policies",
            Some(&owner.access),
            json!({"name": "ask", "source": crate::approvals::ASK_ALWAYS}),
        )
        .await;
    assert_eq!(r.status, StatusCode::CREATED, "{}", r.text);
}

/// A new person who joins `owner`'s organization as `role`.
pub async fn member(s: &TestServer, owner: &Sponsor, role: &str) -> Sponsor {
    let person = s.sponsor(role).await;
    let r = invite(s, owner, None, &person.email, role).await;
    assert_eq!(r.status, StatusCode::CREATED, "{}", r.text);
    let r = accept(s, &person, r.body["token"].as_str().unwrap()).await;
    assert_eq!(r.status, StatusCode::OK, "{}", r.text);
    assert_eq!(r.body["role"], role, "{}", r.text);
    person
}

/// The organization's audit records of `kind`, details parsed.
async fn audit_details(s: &TestServer, who: &Sponsor, org: Option<&str>, kind: &str) -> Vec<Value> {
    let r = act(s, who, org, Method::GET, "/api/audit?limit=200", None).await;
    assert_eq!(r.status, StatusCode::OK, "{}", r.text);
    r.body["items"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|i| i["kind"] == kind)
        .map(|i| serde_json::from_str(i["detail"].as_str().unwrap()).unwrap())
        .collect()
}

#[tokio::test]
async fn orgs_an_invitation_joins_the_inviting_organization_with_its_role() {
    let s = TestServer::start().await;
    let owner = s.sponsor("owner").await;
    let (agent, _) = s.agent(&owner, "shared-bot").await;

    // Every account founded its own organization, with its own id, as its owner.
    let r = s.get("/api/orgs", &owner.access).await;
    assert_eq!(r.status, StatusCode::OK, "{}", r.text);
    assert_eq!(r.body.as_array().unwrap().len(), 1, "{}", r.text);
    assert_eq!(
        (r.body[0]["id"].as_str(), r.body[0]["role"].as_str()),
        (Some(owner.id.as_str()), Some("owner"))
    );
    assert_eq!(r.body[0]["default"], true);

    let colleague = s.sponsor("colleague").await;
    let stranger = s.sponsor("stranger").await;
    let r = invite(&s, &owner, None, &colleague.email.to_uppercase(), "approver").await;
    assert_eq!(r.status, StatusCode::CREATED, "{}", r.text);
    let token = r.body["token"].as_str().unwrap().to_owned();
    assert!(token.starts_with("inv_") && token.len() > 40, "{token}");
    assert!(r.body["invite_url"].as_str().unwrap().ends_with(&format!("/join?token={token}")), "{}", r.text);
    let expires = chrono::DateTime::parse_from_rfc3339(r.body["expires_at"].as_str().unwrap()).unwrap();
    let days = (expires.with_timezone(&chrono::Utc) - chrono::Utc::now()).num_hours();
    assert!((167..=168).contains(&days), "expires in {days} h");
    // The invitations list never shows the token.
    let r = s.get("/api/orgs/invitations", &owner.access).await;
    assert_eq!(r.body[0]["status"], "pending", "{}", r.text);
    assert!(!r.text.contains(&token), "{}", r.text);

    // A forwarded link joins no one: the invitation is for the colleague's address.
    let r = accept(&s, &stranger, &token).await;
    assert_eq!((r.status, r.code()), (StatusCode::FORBIDDEN, "invitation_email_mismatch"), "{}", r.text);
    let r = accept(&s, &stranger, "inv_0000").await;
    assert_eq!((r.status, r.code()), (StatusCode::NOT_FOUND, "invitation_not_found"), "{}", r.text);

    let r = accept(&s, &colleague, &token).await;
    assert_eq!(r.status, StatusCode::OK, "{}", r.text);
    assert_eq!((r.body["id"].as_str(), r.body["role"].as_str()), (Some(owner.id.as_str()), Some("approver")));
    // Single use.
    let r = accept(&s, &colleague, &token).await;
    assert_eq!((r.status, r.code()), (StatusCode::NOT_FOUND, "invitation_not_found"), "{}", r.text);

    // The colleague belongs to two organizations; their own stays the default.
    let r = s.get("/api/orgs", &colleague.access).await;
    let orgs = r.body.as_array().unwrap();
    assert_eq!(orgs.len(), 2, "{}", r.text);
    assert_eq!(
        (orgs[0]["id"].as_str(), orgs[0]["default"].as_bool()),
        (Some(colleague.id.as_str()), Some(true))
    );
    assert_eq!(
        (orgs[1]["id"].as_str(), orgs[1]["role"].as_str()),
        (Some(owner.id.as_str()), Some("approver"))
    );

    // Acting in the owner's organization, they see its agents; in their own, not.
    let r = act(&s, &colleague, Some(&owner.id), Method::GET, "/api/agents", None).await;
    assert_eq!(r.status, StatusCode::OK, "{}", r.text);
    assert_eq!(r.body["items"][0]["id"], agent["id"], "{}", r.text);
    let r = s.get("/api/agents", &colleague.access).await;
    assert_eq!(r.body["items"], json!([]), "{}", r.text);
    let r = act(
        &s,
        &colleague,
        Some(&owner.id),
        Method::GET,
        &format!("/api/agents/{}", agent["id"].as_str().unwrap()),
        None,
    )
    .await;
    assert_eq!(r.status, StatusCode::OK, "{}", r.text);
    // …but as an approver they cannot change them.
    let r = act(&s, &colleague, Some(&owner.id), Method::POST, "/api/agents", Some(json!({"name": "mine"})))
        .await;
    assert_eq!((r.status, r.code()), (StatusCode::FORBIDDEN, "forbidden_role"), "{}", r.text);

    // Members, and the audit names who did what, with their role.
    let r = s.get("/api/orgs/members", &owner.access).await;
    let members: Vec<(String, String)> = r
        .body
        .as_array()
        .unwrap()
        .iter()
        .map(|m| (m["email"].as_str().unwrap().to_owned(), m["role"].as_str().unwrap().to_owned()))
        .collect();
    assert_eq!(
        members,
        [(owner.email.clone(), "owner".to_owned()), (colleague.email.clone(), "approver".to_owned())]
    );
    let invited = audit_details(&s, &owner, None, "org.invitation_created").await;
    assert_eq!(invited.len(), 1);
    assert_eq!(invited[0]["by"], json!({"member": owner.id, "role": "owner"}));
    assert_eq!(invited[0]["email"], colleague.email);
    let joined = audit_details(&s, &owner, None, "org.member_joined").await;
    assert_eq!(joined[0]["by"], json!({"member": colleague.id, "role": "approver"}));
    assert!(!serde_json::to_string(&invited).unwrap().contains(&token), "the token is not in the audit");
    let r = s.get("/api/orgs/invitations", &owner.access).await;
    assert_eq!(r.body[0]["status"], "accepted", "{}", r.text);

    // A member accepting another invitation is refused, and that invitation stays
    // usable (the refused acceptance did not spend it).
    let r = invite(&s, &owner, None, &colleague.email, "viewer").await;
    let again = r.body["token"].as_str().unwrap().to_owned();
    let r = accept(&s, &colleague, &again).await;
    assert_eq!((r.status, r.code()), (StatusCode::CONFLICT, "already_member"), "{}", r.text);
    let r = s.get("/api/orgs/invitations", &owner.access).await;
    assert_eq!(r.body[0]["status"], "pending", "{}", r.text);

    // A revoked invitation's link stops working.
    let later = s.sponsor("later").await;
    let r = invite(&s, &owner, None, &later.email, "viewer").await;
    let (id, token) =
        (r.body["id"].as_str().unwrap().to_owned(), r.body["token"].as_str().unwrap().to_owned());
    let r = act(&s, &owner, None, Method::DELETE, &format!("/api/orgs/invitations/{id}"), None).await;
    assert_eq!(r.status, StatusCode::NO_CONTENT, "{}", r.text);
    let r = accept(&s, &later, &token).await;
    assert_eq!((r.status, r.code()), (StatusCode::NOT_FOUND, "invitation_not_found"), "{}", r.text);
}

#[tokio::test]
async fn orgs_roles_change_members_leave_and_the_last_owner_stays() {
    let s = TestServer::start().await;
    let owner = s.sponsor("owner").await;
    let admin = member(&s, &owner, "admin").await;
    let viewer = member(&s, &owner, "viewer").await;
    let org = owner.id.as_str();
    let path = |who: &Sponsor| format!("/api/orgs/members/{}", who.id);

    // The last owner can neither leave nor be demoted.
    let r = act(&s, &owner, None, Method::DELETE, &path(&owner), None).await;
    assert_eq!((r.status, r.code()), (StatusCode::CONFLICT, "last_owner"), "{}", r.text);
    let r = act(&s, &owner, None, Method::PATCH, &path(&owner), Some(json!({"role": "admin"}))).await;
    assert_eq!((r.status, r.code()), (StatusCode::CONFLICT, "last_owner"), "{}", r.text);

    // An admin invites, but not above their own role, and does not manage members.
    let r = invite(&s, &admin, Some(org), "new-owner@example.com", "owner").await;
    assert_eq!((r.status, r.code()), (StatusCode::FORBIDDEN, "forbidden_role"), "{}", r.text);
    let r = invite(&s, &admin, Some(org), "new-admin@example.com", "admin").await;
    assert_eq!(r.status, StatusCode::CREATED, "{}", r.text);
    let r = act(&s, &admin, Some(org), Method::PATCH, &path(&admin), Some(json!({"role": "owner"}))).await;
    assert_eq!((r.status, r.code()), (StatusCode::FORBIDDEN, "forbidden_role"), "{}", r.text);
    let r = act(&s, &admin, Some(org), Method::DELETE, &path(&viewer), None).await;
    assert_eq!((r.status, r.code()), (StatusCode::FORBIDDEN, "forbidden_role"), "{}", r.text);
    // A viewer invites no one.
    let r = invite(&s, &viewer, Some(org), "x@example.com", "viewer").await;
    assert_eq!((r.status, r.code()), (StatusCode::FORBIDDEN, "forbidden_role"), "{}", r.text);

    // The owner promotes the admin; then the first owner may leave.
    let r = act(&s, &owner, None, Method::PATCH, &path(&admin), Some(json!({"role": "owner"}))).await;
    assert_eq!((r.status, r.body["role"].as_str()), (StatusCode::OK, Some("owner")), "{}", r.text);
    let changed = audit_details(&s, &owner, None, "org.member_role_changed").await;
    assert_eq!(changed[0]["by"], json!({"member": owner.id, "role": "owner"}));
    assert_eq!((changed[0]["from"].as_str(), changed[0]["to"].as_str()), (Some("admin"), Some("owner")));
    let r = act(&s, &owner, None, Method::DELETE, &path(&owner), None).await;
    assert_eq!(r.status, StatusCode::NO_CONTENT, "{}", r.text);

    // Gone: the organization is not theirs to act in any more, not even by header,
    // and they belong to none (their account still works).
    let r = act(&s, &owner, Some(org), Method::GET, "/api/agents", None).await;
    assert_eq!((r.status, r.code()), (StatusCode::NOT_FOUND, "org_not_found"), "{}", r.text);
    let r = s.get("/api/agents", &owner.access).await;
    assert_eq!((r.status, r.code()), (StatusCode::FORBIDDEN, "no_organization"), "{}", r.text);
    let r = s.get("/api/orgs", &owner.access).await;
    assert_eq!((r.status, r.body.clone()), (StatusCode::OK, json!([])), "{}", r.text);
    assert_eq!(s.get("/api/auth/me", &owner.access).await.status, StatusCode::OK);

    // The new owner removes the viewer, whose access ends at once.
    let r = act(&s, &admin, Some(org), Method::DELETE, &path(&viewer), None).await;
    assert_eq!(r.status, StatusCode::NO_CONTENT, "{}", r.text);
    let r = act(&s, &viewer, Some(org), Method::GET, "/api/agents", None).await;
    assert_eq!((r.status, r.code()), (StatusCode::NOT_FOUND, "org_not_found"), "{}", r.text);
    let removed = audit_details(&s, &admin, Some(org), "org.member_removed").await;
    assert_eq!(removed[0]["by"], json!({"member": admin.id, "role": "owner"}));
    assert_eq!(removed[0]["member"], json!(viewer.id));
    let r = act(&s, &admin, Some(org), Method::GET, "/api/orgs/members", None).await;
    assert_eq!(r.body.as_array().unwrap().len(), 1, "{}", r.text);
}

/// What each sponsor route needs of the caller's role. The test below checks that
/// this table names every sponsor route of the spec, so a new route must be added
/// here (and so is checked) to pass.
#[derive(Clone, Copy, Debug, PartialEq)]
enum Needs {
    /// Acting as a person: no role (sign-out, sessions, accepting an invitation).
    Personal,
    Read,
    Decide,
    Write,
    Invite,
    Members,
    Settings,
}

const ROUTES: &[(&str, &str, Needs)] = &[
    ("GET", "/api/auth/me", Needs::Personal),
    ("POST", "/api/auth/logout", Needs::Personal),
    ("GET", "/api/auth/sessions", Needs::Personal),
    ("DELETE", "/api/auth/sessions/{id}", Needs::Personal),
    ("GET", "/api/orgs", Needs::Personal),
    ("POST", "/api/orgs/invitations/accept", Needs::Personal),
    ("GET", "/api/agents", Needs::Read),
    ("POST", "/api/agents", Needs::Write),
    ("GET", "/api/agents/{id}", Needs::Read),
    ("PATCH", "/api/agents/{id}", Needs::Write),
    ("DELETE", "/api/agents/{id}", Needs::Write),
    ("POST", "/api/agents/{id}/keys", Needs::Write),
    ("POST", "/api/agents/{id}/suspend", Needs::Write),
    ("POST", "/api/agents/{id}/resume", Needs::Write),
    ("GET", "/api/agents/{id}/trust", Needs::Read),
    ("GET", "/api/agents/{id}/tools", Needs::Read),
    ("GET", "/api/agents/{id}/wallet", Needs::Read),
    ("PUT", "/api/agents/{id}/wallet", Needs::Write),
    ("GET", "/api/agents/{id}/wallet/history", Needs::Read),
    ("GET", "/api/policies", Needs::Read),
    ("POST", "/api/policies", Needs::Write),
    ("GET", "/api/policies/{id}", Needs::Read),
    ("PUT", "/api/policies/{id}", Needs::Write),
    ("POST", "/api/policies/evaluate", Needs::Write),
    ("GET", "/api/secrets", Needs::Read),
    ("POST", "/api/secrets", Needs::Write),
    ("GET", "/api/secrets/{id}", Needs::Read),
    ("PUT", "/api/secrets/{id}", Needs::Write),
    ("DELETE", "/api/secrets/{id}", Needs::Write),
    ("PUT", "/api/secrets/{id}/agents/{agent_id}", Needs::Write),
    ("DELETE", "/api/secrets/{id}/agents/{agent_id}", Needs::Write),
    ("GET", "/api/connections", Needs::Read),
    ("POST", "/api/connections", Needs::Write),
    ("PUT", "/api/connections/{id}", Needs::Write),
    ("PATCH", "/api/connections/{id}", Needs::Write),
    ("DELETE", "/api/connections/{id}", Needs::Write),
    ("GET", "/api/audit", Needs::Read),
    ("GET", "/api/audit/{seq}/replay", Needs::Read),
    ("GET", "/api/audit/export.csv", Needs::Read),
    ("GET", "/api/audit/verify", Needs::Read),
    ("GET", "/api/approvals", Needs::Read),
    ("GET", "/api/approvals/{id}", Needs::Read),
    ("POST", "/api/approvals/{id}/approve", Needs::Decide),
    ("POST", "/api/approvals/{id}/reject", Needs::Decide),
    ("GET", "/api/dashboard/stats", Needs::Read),
    ("GET", "/api/usage", Needs::Read),
    ("GET", "/api/orgs/members", Needs::Read),
    ("PATCH", "/api/orgs/members/{id}", Needs::Members),
    ("DELETE", "/api/orgs/members/{id}", Needs::Members),
    ("GET", "/api/orgs/invitations", Needs::Read),
    ("POST", "/api/orgs/invitations", Needs::Invite),
    ("DELETE", "/api/orgs/invitations/{id}", Needs::Invite),
    ("GET", "/api/orgs/settings", Needs::Read),
    ("PUT", "/api/orgs/settings", Needs::Settings),
    ("GET", "/api/channels", Needs::Read),
    ("POST", "/api/channels", Needs::Write),
    ("PATCH", "/api/channels/{id}", Needs::Write),
    ("DELETE", "/api/channels/{id}", Needs::Write),
    ("GET", "/api/channels/{id}/deliveries", Needs::Read),
    ("POST", "/api/channels/{id}/test", Needs::Write),
    ("POST", "/api/slack/links", Needs::Read),
];

/// The role matrix, written out independently of the server's.
fn allowed(role: &str, needs: Needs) -> bool {
    match needs {
        Needs::Personal | Needs::Read => true,
        Needs::Decide => role != "viewer",
        Needs::Write | Needs::Invite => role == "owner" || role == "admin",
        Needs::Members | Needs::Settings => role == "owner",
    }
}

/// A body the API parses but a role that passed the check cannot act on (nothing
/// changes): an invalid value where there is no id, any valid body where the id
/// is one that does not exist.
fn probe_body(method: &str, path: &str) -> Option<Value> {
    Some(match (method, path) {
        ("POST", "/api/agents") => json!({"name": ""}),
        ("POST", "/api/policies") => json!({"name": "", "source": ""}),
        ("POST", "/api/policies/evaluate") => {
            json!({"agent_id": uuid::Uuid::new_v4(), "method": "GET", "url": "https://example.com/"})
        }
        ("POST", "/api/secrets") => {
            json!({"name": "", "value": "", "allowed_hosts": [], "inject": {"header": "X-Key"}})
        }
        ("POST", "/api/connections") | ("PUT", "/api/connections/{id}") => {
            json!({"name": "", "base_url": "not a url"})
        }
        ("POST", "/api/orgs/invitations") => json!({"email": "not an address", "role": "viewer"}),
        ("PATCH", "/api/orgs/members/{id}") => json!({"role": "viewer"}),
        ("PUT", "/api/orgs/settings") => json!({"approvers_required": 0}),
        ("POST", "/api/channels") => {
            json!({"kind": "webhook", "url": "https://127.0.0.1/", "events": ["agent.created"]})
        }
        ("PATCH", "/api/channels/{id}") => json!({"enabled": true}),
        ("POST", "/api/slack/links") => json!({"token": "slk_unknown"}),
        ("PUT", "/api/policies/{id}") => json!({"description": "x"}),
        ("PUT", "/api/secrets/{id}") => json!({"value": "x"}),
        ("PUT", "/api/agents/{id}/wallet") => json!({"daily_limit_micros": 1}),
        ("PATCH", "/api/agents/{id}") | ("PATCH", "/api/connections/{id}") => json!({}),
        ("POST", "/api/approvals/{id}/approve") | ("POST", "/api/approvals/{id}/reject") => json!({}),
        ("POST", "/api/agents/{id}/suspend") => json!({"reason": "probe"}),
        _ => return None,
    })
}

/// The sponsor operations the spec documents: (METHOD, path).
async fn sponsor_operations(s: &TestServer) -> Vec<(String, String)> {
    let r = read(s.http.get(s.url("/api/openapi.json")).send().await.unwrap()).await;
    let mut ops = Vec::new();
    for (path, item) in r.body["paths"].as_object().unwrap() {
        for (method, op) in item.as_object().unwrap() {
            let sponsor = op["security"]
                .as_array()
                .is_some_and(|s| s.iter().any(|req| req.get("sponsor_token").is_some()));
            if sponsor && path.starts_with("/api/") {
                ops.push((method.to_uppercase(), path.clone()));
            }
        }
    }
    ops.sort();
    ops
}

#[tokio::test]
async fn orgs_every_route_answers_each_role_as_its_role_allows() {
    let s = TestServer::start().await;
    let owner = s.sponsor("owner").await;
    let org = owner.id.clone();
    let (agent, _) = s.agent(&owner, "bot").await;
    let agent = agent["id"].as_str().unwrap().to_owned();
    let r = s
        .post(
            "/api/policies",
            Some(&owner.access),
            json!({"name": "p", "source": "package aegis\ndecision := \"allow\""}),
        )
        .await;
    assert_eq!(r.status, StatusCode::CREATED, "{}", r.text);
    let policy = r.body["id"].as_str().unwrap().to_owned();
    let r = s
        .post(
            "/api/secrets",
            Some(&owner.access),
            json!({"name": "key", "value": "sk-never-shown", "allowed_hosts": ["api.example.com"], "inject": {"header": "X-Key"}}),
        )
        .await;
    assert_eq!(r.status, StatusCode::CREATED, "{}", r.text);
    let secret = r.body["id"].as_str().unwrap().to_owned();
    let r = s
        .post(
            "/api/channels",
            Some(&owner.access),
            json!({"kind": "webhook", "url": "https://hooks.example.com/aegis", "events": ["breaker.held"]}),
        )
        .await;
    assert_eq!(r.status, StatusCode::CREATED, "{}", r.text);
    let channel = r.body["id"].as_str().unwrap().to_owned();
    let r = s.get("/api/audit?limit=1", &owner.access).await;
    let seq = r.body["items"][0]["seq"].as_i64().unwrap().to_string();
    let mut people = vec![("owner", owner)];
    for role in ["admin", "approver", "viewer"] {
        let person = member(&s, &people[0].1, role).await;
        people.push((role, person));
    }
    let outsider = s.sponsor("outsider").await;

    // The table and the spec name the same routes.
    let ops = sponsor_operations(&s).await;
    let mut table: Vec<(String, String)> =
        ROUTES.iter().map(|(m, p, _)| (m.to_string(), p.to_string())).collect();
    table.sort();
    assert_eq!(ops, table, "every sponsor route of the spec is in ROUTES with what it needs, and only those");

    // Path parameters: the organization's real ids where a read should find them,
    // ids that do not exist where an allowed write would otherwise change something.
    let real = |path: &str| -> String {
        let id = if path.starts_with("/api/agents/") {
            agent.clone()
        } else if path.starts_with("/api/policies/") {
            policy.clone()
        } else if path.starts_with("/api/secrets/") {
            secret.clone()
        } else if path.starts_with("/api/channels/") {
            channel.clone()
        } else {
            uuid::Uuid::new_v4().to_string()
        };
        path.replace("{id}", &id).replace("{agent_id}", &agent).replace("{seq}", &seq)
    };
    let absent = |path: &str| {
        path.replace("{id}", &uuid::Uuid::new_v4().to_string())
            .replace("{agent_id}", &agent)
            .replace("{seq}", &seq)
    };
    let org_ids = [agent.as_str(), policy.as_str(), secret.as_str(), channel.as_str()];

    let mut checked = 0;
    for &(method, path, needs) in ROUTES {
        let m = Method::from_bytes(method.as_bytes()).unwrap();
        let write = method != "GET";
        // Sign-out and ending a session would end the test's own sessions.
        if needs == Needs::Personal && write && path != "/api/orgs/invitations/accept" {
            continue;
        }
        let body = || match path {
            "/api/orgs/invitations/accept" => Some(json!({"token": "inv_unknown"})),
            _ => probe_body(method, path),
        };
        let url = if write { absent(path) } else { real(path) };
        for (role, person) in &people {
            let r = act(&s, person, Some(&org), m.clone(), &url, body()).await;
            let what = format!(
                "{role}: {method} {url} -> {} {}",
                r.status,
                r.text.chars().take(200).collect::<String>()
            );
            assert!(!r.status.is_server_error(), "{what}");
            if allowed(role, needs) {
                assert_ne!(r.status, StatusCode::FORBIDDEN, "{what}");
                if !write && !url.contains("/approvals/") && !url.contains("/replay") {
                    assert!(r.status.is_success() || r.status == StatusCode::TOO_MANY_REQUESTS, "{what}");
                }
                if write && needs != Needs::Personal {
                    // Passed the role check, then refused for the probe's own sake.
                    assert!(r.status.is_client_error(), "{what}");
                }
            } else {
                assert_eq!((r.status, r.code()), (StatusCode::FORBIDDEN, "forbidden_role"), "{what}");
            }
            checked += 1;
        }

        // A member of another organization: its ids are not found in their own…
        if needs != Needs::Personal {
            let url = real(path);
            let r = act(&s, &outsider, None, m.clone(), &url, body()).await;
            let what = format!(
                "outsider: {method} {url} -> {} {}",
                r.status,
                r.text.chars().take(200).collect::<String>()
            );
            if path.contains('{') {
                assert_eq!(r.status, StatusCode::NOT_FOUND, "{what}");
            } else {
                assert!(!r.status.is_server_error(), "{what}");
                for id in org_ids {
                    assert!(!r.text.contains(id), "another organization's id in {what}");
                }
            }
        }
        // …and naming that organization gets them nowhere.
        let r = act(&s, &outsider, Some(&org), m.clone(), &real(path), body()).await;
        assert_eq!(
            (r.status, r.code()),
            (StatusCode::NOT_FOUND, "org_not_found"),
            "outsider in the org: {method} {path} -> {}",
            r.text
        );
        checked += 1;
    }
    assert!(checked > 200, "{checked} requests");

    // Nothing a refused or probing request did changed the organization.
    let r = s.get(&format!("/api/agents/{agent}"), &people[0].1.access).await;
    assert_eq!(r.body["status"], "active", "{}", r.text);
    let r = s.get("/api/agents", &people[0].1.access).await;
    assert_eq!(r.body["items"].as_array().unwrap().len(), 1, "{}", r.text);
    let r = s.get("/api/orgs/members", &people[0].1.access).await;
    assert_eq!(r.body.as_array().unwrap().len(), 4, "{}", r.text);
}

#[tokio::test]
async fn orgs_members_act_in_the_organization_and_the_audit_names_them() {
    let mock = crate::mock::MockUpstream::start().await;
    let s = TestServer::start_with(&[("AEGIS_EGRESS_ALLOW", "127.0.0.1/32")]).await;
    let owner = s.sponsor("owner").await;
    let admin = member(&s, &owner, "admin").await;
    let approver = member(&s, &owner, "approver").await;
    let viewer = member(&s, &owner, "viewer").await;
    let org = Some(owner.id.as_str());

    // The admin makes an agent in the organization (the owner's policy applies).
    ask_policy(&s, &owner).await;
    let r =
        act(&s, &admin, org, Method::POST, "/api/agents", Some(json!({"name": "team-bot", "policy": "ask"})))
            .await;
    assert_eq!(r.status, StatusCode::CREATED, "{}", r.text);
    let key = r.body["api_key"].as_str().unwrap().to_owned();
    let agent = r.body["agent"]["id"].as_str().unwrap().to_owned();
    let r = s.get(&format!("/api/agents/{agent}"), &owner.access).await;
    assert_eq!(r.status, StatusCode::OK, "the organization's agent, the owner's to see: {}", r.text);
    let created = audit_details(&s, &owner, None, "agent.created").await;
    assert_eq!(created[0]["by"], json!({"member": admin.id, "role": "admin"}));

    // Its call is parked; the viewer sees it but cannot decide; the approver approves.
    let r = s.execute(&key, json!({"method": "POST", "url": mock.url("/counted"), "body": "{}"})).await;
    assert_eq!(r.status, StatusCode::ACCEPTED, "{}", r.text);
    let approval = r.body["approval_id"].as_str().unwrap().to_owned();
    let r = act(&s, &viewer, org, Method::GET, &format!("/api/approvals/{approval}"), None).await;
    assert_eq!(r.status, StatusCode::OK, "{}", r.text);
    let r =
        act(&s, &viewer, org, Method::POST, &format!("/api/approvals/{approval}/approve"), Some(json!({})))
            .await;
    assert_eq!((r.status, r.code()), (StatusCode::FORBIDDEN, "forbidden_role"), "{}", r.text);
    assert_eq!(mock.hits(), 0);
    let r = act(
        &s,
        &approver,
        org,
        Method::POST,
        &format!("/api/approvals/{approval}/approve"),
        Some(json!({"reason": "fine"})),
    )
    .await;
    assert_eq!(r.status, StatusCode::OK, "{}", r.text);
    assert_eq!(r.body["decided_by"], approver.id.as_str(), "{}", r.text);
    assert_eq!(mock.hits(), 1, "performed once, by the approver's decision");
    let approved = audit_details(&s, &owner, None, "approval.approved").await;
    assert_eq!(
        (approved[0]["approver"].as_str(), approved[0]["approver_role"].as_str()),
        (Some(approver.id.as_str()), Some("approver"))
    );

    // Every change to the organization's secrets, policies and connections is audited
    // in its own transaction, naming the member; never a secret's value.
    let write = |method: Method, path: String, body: Option<Value>| {
        let (s, admin) = (&s, &admin);
        async move { act(s, admin, org, method, &path, body).await }
    };
    let value = "sk-audit-by-member-0123456789";
    let r = write(
        Method::POST,
        "/api/secrets".into(),
        Some(json!({"name": "team-key", "value": value, "allowed_hosts": ["http://127.0.0.1:*"],
                    "inject": {"header": "X-Api-Key", "format": "{secret}"}})),
    )
    .await;
    assert_eq!(r.status, StatusCode::CREATED, "{}", r.text);
    let secret = r.body["id"].as_str().unwrap().to_owned();
    let rotated = "sk-audit-by-member-rotated-9876";
    let r = write(Method::PUT, format!("/api/secrets/{secret}"), Some(json!({"value": rotated}))).await;
    assert_eq!(r.status, StatusCode::OK, "{}", r.text);
    let grant = format!("/api/secrets/{secret}/agents/{agent}");
    assert_eq!(write(Method::PUT, grant.clone(), None).await.status, StatusCode::OK);
    assert_eq!(write(Method::DELETE, grant, None).await.status, StatusCode::OK);
    let source = crate::approvals::ASK_ALWAYS;
    let r =
        write(Method::POST, "/api/policies".into(), Some(json!({"name": "team", "source": source}))).await;
    assert_eq!(r.status, StatusCode::CREATED, "{}", r.text);
    let policy = r.body["id"].as_str().unwrap().to_owned();
    let r = write(Method::PUT, format!("/api/policies/{policy}"), Some(json!({"description": "v2"}))).await;
    assert_eq!(r.status, StatusCode::OK, "{}", r.text);
    let connection =
        json!({"name": "team-api", "base_url": mock.url("/echo/cap-token"), "secret": "team-key"});
    let r = write(Method::POST, "/api/connections".into(), Some(connection)).await;
    assert_eq!(r.status, StatusCode::CREATED, "{}", r.text);
    let conn = r.body["id"].as_str().unwrap().to_owned();
    let r = write(Method::PATCH, format!("/api/connections/{conn}"), Some(json!({"cost_micros": 5}))).await;
    assert_eq!(r.status, StatusCode::OK, "{}", r.text);
    assert_eq!(
        write(Method::DELETE, format!("/api/connections/{conn}"), None).await.status,
        StatusCode::NO_CONTENT
    );
    assert_eq!(
        write(Method::DELETE, format!("/api/secrets/{secret}"), None).await.status,
        StatusCode::NO_CONTENT
    );
    // A refused change leaves no record.
    let r = write(Method::DELETE, format!("/api/secrets/{secret}"), None).await;
    assert_eq!(r.status, StatusCode::NOT_FOUND, "{}", r.text);

    let by_admin = json!({"member": admin.id, "role": "admin"});
    for kind in [
        "secret.created",
        "secret.updated",
        "secret.granted",
        "secret.grant_revoked",
        "secret.deleted",
        "policy.created",
        "policy.updated",
        "connection.created",
        "connection.updated",
        "connection.deleted",
    ] {
        let records = audit_details(&s, &owner, None, kind).await;
        // Newest first; the owner's "ask" policy was made before the admin's.
        let whom: Vec<&Value> = records.iter().map(|r| &r["by"]).collect();
        let by_owner = json!({"member": owner.id, "role": "owner"});
        let want = if kind == "policy.created" { vec![&by_admin, &by_owner] } else { vec![&by_admin] };
        assert_eq!(whom, want, "{kind}: {records:?}");
    }
    let updated = &audit_details(&s, &owner, None, "secret.updated").await[0];
    assert_eq!(
        (updated["secret"].as_str(), &updated["value_rotated"]),
        (Some(secret.as_str()), &json!(true))
    );
    let created = &audit_details(&s, &owner, None, "policy.created").await[0];
    assert_eq!((created["policy"].as_str(), &created["version"]), (Some(policy.as_str()), &json!(1)));
    assert_eq!(created["sha256"].as_str().map(str::len), Some(64));
    let made = &audit_details(&s, &owner, None, "connection.created").await[0];
    assert_eq!(
        (made["secret"].as_str(), made["origin"].as_str()),
        (Some("team-key"), Some(mock.url("").trim_end_matches('/')))
    );
    let r = act(&s, &owner, None, Method::GET, "/api/audit?limit=200", None).await;
    for leaked in [value, rotated, "cap-token"] {
        assert!(!r.text.contains(leaked), "the audit log carries {leaked:?}");
    }

    // The chain, with the members' records in it, verifies.
    let r = s.get("/api/audit/verify", &owner.access).await;
    assert_eq!(r.body["valid"], true, "{}", r.text);
}

#[tokio::test]
async fn orgs_the_two_person_rule_performs_only_after_the_last_distinct_approver() {
    let mock = crate::mock::MockUpstream::start().await;
    let s = TestServer::start_with(&[("AEGIS_EGRESS_ALLOW", "127.0.0.1/32")]).await;
    let owner = s.sponsor("owner").await;
    let admin = member(&s, &owner, "admin").await;
    let first = member(&s, &owner, "approver").await;
    let second = member(&s, &owner, "approver").await;
    let org = Some(owner.id.as_str());
    let settings = "/api/orgs/settings";

    // Off by default; only owners change it, within bounds.
    let r = act(&s, &first, org, Method::GET, settings, None).await;
    assert_eq!(
        r.body,
        json!({"approvers_required": 1, "approvers_cost_above_micros": null, "approvers_reasons": []})
    );
    let rule = json!({"approvers_required": 2, "approvers_cost_above_micros": 1_000, "approvers_reasons": ["wire transfer"]});
    let r = act(&s, &admin, org, Method::PUT, settings, Some(rule.clone())).await;
    assert_eq!((r.status, r.code()), (StatusCode::FORBIDDEN, "forbidden_role"), "{}", r.text);
    let r = act(&s, &owner, None, Method::PUT, settings, Some(json!({"approvers_required": 11}))).await;
    assert_eq!((r.status, r.code()), (StatusCode::UNPROCESSABLE_ENTITY, "validation_failed"), "{}", r.text);
    let r = act(&s, &owner, None, Method::PUT, settings, Some(rule.clone())).await;
    assert_eq!((r.status, &r.body), (StatusCode::OK, &rule), "{}", r.text);
    let changed = audit_details(&s, &owner, None, "org.settings_changed").await;
    assert_eq!(changed[0]["to"], rule);

    ask_policy(&s, &owner).await;
    let (_, key) = s.agent_with(&owner, json!({"name": "payer", "policy": "ask"})).await;
    let park = |cost: i64| {
        let (s, key, url) = (&s, key.clone(), mock.url("/counted"));
        async move {
            let r = s
                .execute(&key, json!({"method": "POST", "url": url, "body": "{}", "cost_micros": cost}))
                .await;
            assert_eq!(r.status, StatusCode::ACCEPTED, "{}", r.text);
            r.body["approval_id"].as_str().unwrap().to_owned()
        }
    };

    // At or below the threshold, one approver performs it.
    let cheap = park(1_000).await;
    let r = act(&s, &owner, None, Method::GET, &format!("/api/approvals/{cheap}"), None).await;
    assert_eq!(r.body["approvers_required"], 1, "{}", r.text);
    let r = approve_in(&s, &first, &owner.id, &cheap).await;
    assert_eq!((r.status, r.body["status"].as_str()), (StatusCode::OK, Some("approved")), "{}", r.text);
    assert_eq!(mock.hits(), 1);

    // Above it, the first approval is a vote: nothing is performed.
    let dear = park(1_001).await;
    let r = approve_in(&s, &first, &owner.id, &dear).await;
    assert_eq!(r.status, StatusCode::OK, "{}", r.text);
    assert_eq!(
        (r.body["status"].as_str(), r.body["approvers_required"].as_u64()),
        (Some("pending"), Some(2)),
        "{}",
        r.text
    );
    assert_eq!(r.body["approved_by"][0]["member"], first.id.as_str(), "{}", r.text);
    assert_eq!(mock.hits(), 1, "one approval of two performs nothing");
    // The same member twice does not count twice.
    let r = approve_in(&s, &first, &owner.id, &dear).await;
    assert_eq!((r.status, r.code()), (StatusCode::CONFLICT, "already_approved"), "{}", r.text);
    assert_eq!(mock.hits(), 1);
    // The second distinct member's approval performs it, once.
    let r = approve_in(&s, &second, &owner.id, &dear).await;
    assert_eq!((r.status, r.body["status"].as_str()), (StatusCode::OK, Some("approved")), "{}", r.text);
    assert_eq!(r.body["decided_by"], second.id.as_str(), "{}", r.text);
    let by: Vec<&str> =
        r.body["approved_by"].as_array().unwrap().iter().map(|v| v["member"].as_str().unwrap()).collect();
    assert_eq!(by, [first.id.as_str(), second.id.as_str()], "{}", r.text);
    assert_eq!(mock.hits(), 2);
    let r = approve_in(&s, &admin, &owner.id, &dear).await;
    assert_eq!((r.status, r.code()), (StatusCode::CONFLICT, "approval_decided"), "{}", r.text);
    assert_eq!(mock.hits(), 2, "performed exactly once");

    // The audit shows each approver.
    let mut votes: Vec<(String, u64)> = audit_details(&s, &owner, None, "approval.vote")
        .await
        .iter()
        .filter(|d| d["approval_id"] == dear.as_str())
        .map(|d| (d["approver"].as_str().unwrap().to_owned(), d["approvals"].as_u64().unwrap()))
        .collect();
    votes.sort_by_key(|v| v.1);
    assert_eq!(votes, [(first.id.clone(), 1), (second.id.clone(), 2)], "no vote on a decided approval");
    let approved = audit_details(&s, &owner, None, "approval.approved").await;
    let last = approved.iter().find(|d| d["approval_id"] == dear.as_str()).unwrap();
    let members: Vec<&str> =
        last["approvers"].as_array().unwrap().iter().map(|a| a["member"].as_str().unwrap()).collect();
    assert_eq!(members, [first.id.as_str(), second.id.as_str()], "{last}");

    // A named reason needs two whatever the cost; one rejection ends it.
    let r = act(&s, &owner, None, Method::POST, "/api/policies", Some(json!({"name": "wire", "source": "package aegis\nimport rego.v1\ndefault decision := \"require_approval\"\nreasons contains \"wire transfer\"\n"}))).await;
    assert_eq!(r.status, StatusCode::CREATED, "{}", r.text);
    let (_, wire_key) = s.agent_with(&owner, json!({"name": "wirer", "policy": "wire"})).await;
    let r = s
        .execute(
            &wire_key,
            json!({"method": "POST", "url": mock.url("/counted"), "body": "{}", "cost_micros": 1}),
        )
        .await;
    let wire = r.body["approval_id"].as_str().unwrap().to_owned();
    let r = approve_in(&s, &first, &owner.id, &wire).await;
    assert_eq!(
        (r.body["status"].as_str(), r.body["approvers_required"].as_u64()),
        (Some("pending"), Some(2)),
        "{}",
        r.text
    );
    let r = act(
        &s,
        &second,
        org,
        Method::POST,
        &format!("/api/approvals/{wire}/reject"),
        Some(json!({"reason": "no"})),
    )
    .await;
    assert_eq!((r.status, r.body["status"].as_str()), (StatusCode::OK, Some("rejected")), "{}", r.text);
    let r = approve_in(&s, &admin, &owner.id, &wire).await;
    assert_eq!((r.status, r.code()), (StatusCode::CONFLICT, "approval_decided"), "{}", r.text);
    assert_eq!(mock.hits(), 2, "a rejected call is never performed");
}
