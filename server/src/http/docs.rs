//! `GET /docs`: the OpenAPI description rendered as one self-contained HTML page —
//! no JavaScript, no external stylesheet, font or image — so it works offline and
//! under a `default-src 'none'` content security policy.
//!
//! It is generated from the same [`utoipa::openapi::OpenApi`] value as
//! `/api/openapi.json` (via its JSON form, which is what clients see too). Every piece
//! of text from the spec goes through [`esc`] (or [`prose`], which escapes first).

use std::fmt::Write;
use std::sync::OnceLock;

use axum::response::{Html, IntoResponse};
use http::header;
use serde_json::Value;

const METHODS: [&str; 8] = ["get", "post", "put", "patch", "delete", "head", "options", "trace"];

#[utoipa::path(get, path = "/docs", tag = "meta",
    summary = "This documentation as a web page",
    description = "Generated from `/api/openapi.json`; self-contained (no scripts, no external assets).",
    responses((status = 200, description = "An HTML page", content_type = "text/html", body = String)))]
pub async fn page() -> impl IntoResponse {
    static PAGE: OnceLock<String> = OnceLock::new();
    let html = PAGE.get_or_init(|| render(super::openapi::spec()));
    (
        [(
            header::CONTENT_SECURITY_POLICY,
            "default-src 'none'; style-src 'unsafe-inline'; frame-ancestors 'none'",
        )],
        Html(html.as_str()),
    )
}

/// The whole page for `spec`.
pub fn render(spec: &utoipa::openapi::OpenApi) -> String {
    let doc = serde_json::to_value(spec).unwrap_or_default();
    let title = str_at(&doc, &["info", "title"]);
    let version = str_at(&doc, &["info", "version"]);
    let mut out = String::with_capacity(256 * 1024);
    let _ = write!(
        out,
        "<!DOCTYPE html>\n<html lang=\"en\"><head><meta charset=\"utf-8\">\
         <meta name=\"viewport\" content=\"width=device-width, initial-scale=1\">\
         <title>{t}</title><style>{STYLE}</style></head><body>\
         <header class=\"top\"><span class=\"brand\">{t}</span> <span class=\"muted\">version {v}</span>\
         <a href=\"/api/openapi.json\">openapi.json</a></header><main>\
         <h1>{t}</h1>{d}",
        t = esc(title),
        v = esc(version),
        d = prose(str_at(&doc, &["info", "description"])),
    );

    let order: Vec<&str> = spec.paths.paths.keys().map(String::as_str).collect();
    let groups = operations_by_tag(&doc, &order);
    out.push_str("<nav class=\"toc\"><h2>Contents</h2><ul>");
    for (tag, _, ops) in &groups {
        let _ = write!(
            out,
            "<li><a href=\"#tag-{a}\">{t}</a> <span class=\"muted\">({n})</span></li>",
            a = anchor(tag),
            t = esc(tag),
            n = ops.len()
        );
    }
    out.push_str("<li><a href=\"#security\">Authentication</a></li><li><a href=\"#schemas\">Schemas</a></li></ul></nav>");

    security_section(&mut out, &doc);
    for (tag, description, ops) in &groups {
        let _ = write!(
            out,
            "<section class=\"tag\" id=\"tag-{a}\"><h2>{t}</h2>{d}",
            a = anchor(tag),
            t = esc(tag),
            d = prose(description)
        );
        for (path, methods, op) in ops {
            operation(&mut out, &doc, path, methods, op);
        }
        out.push_str("</section>");
    }
    schemas_section(&mut out, &doc);
    out.push_str("</main></body></html>\n");
    out
}

/// A tag, its description, and its operations: (path, methods, operation).
type Group<'a> = (String, &'a str, Vec<(&'a str, Vec<&'a str>, &'a Value)>);

/// Operations grouped by their first tag, tags in the spec's declared order and paths
/// in `order` (the spec's). One handler serving several methods (the same
/// `operationId` on one path) is one entry.
fn operations_by_tag<'a>(doc: &'a Value, order: &[&'a str]) -> Vec<Group<'a>> {
    let mut groups: Vec<Group<'_>> = doc["tags"]
        .as_array()
        .into_iter()
        .flatten()
        .map(|t| (str_at(t, &["name"]).to_owned(), str_at(t, &["description"]), Vec::new()))
        .collect();
    for path in order {
        let item = &doc["paths"][*path];
        for method in METHODS {
            let Some(op) = item.get(method) else { continue };
            let tag = op["tags"][0].as_str().unwrap_or("other");
            let i = match groups.iter().position(|(t, _, _)| t == tag) {
                Some(i) => i,
                None => {
                    groups.push((tag.to_owned(), "", Vec::new()));
                    groups.len() - 1
                }
            };
            let ops = &mut groups[i].2;
            match ops.last_mut() {
                Some((p, methods, last)) if *p == *path && last["operationId"] == op["operationId"] => {
                    methods.push(method)
                }
                _ => ops.push((path, vec![method], op)),
            }
        }
    }
    groups.retain(|(_, _, ops)| !ops.is_empty());
    groups
}

fn operation(out: &mut String, doc: &Value, path: &str, methods: &[&str], op: &Value) {
    let badges: String = methods
        .iter()
        .map(|m| format!("<span class=\"method m-{m}\">{}</span> ", m.to_ascii_uppercase()))
        .collect();
    let _ = write!(
        out,
        "<article class=\"op\" id=\"op-{m}-{a}\"><h3>{badges}<code class=\"path\">{p}</code> \
         <span class=\"summary\">{s}</span></h3>",
        m = methods[0],
        a = anchor(path),
        p = esc(path),
        s = esc(str_at(op, &["summary"])),
    );
    out.push_str(&auth_line(doc, op));
    out.push_str(&prose(str_at(op, &["description"])));

    if let Some(params) = op["parameters"].as_array().filter(|p| !p.is_empty()) {
        out.push_str(
            "<h4>Parameters</h4><table><tr><th>name</th><th>in</th><th>type</th><th>description</th></tr>",
        );
        for p in params {
            let required = if p["required"] == true { " <span class=\"req\">required</span>" } else { "" };
            let _ = write!(
                out,
                "<tr><td><code>{n}</code>{required}</td><td>{i}</td><td>{t}</td><td>{d}</td></tr>",
                n = esc(str_at(p, &["name"])),
                i = esc(str_at(p, &["in"])),
                t = schema_label(&p["schema"]),
                d = prose(str_at(p, &["description"])),
            );
        }
        out.push_str("</table>");
    }

    if let Some(body) = op["requestBody"].as_object() {
        let required = if body.get("required") == Some(&Value::Bool(true)) { "required" } else { "optional" };
        let _ = write!(out, "<h4>Request body <span class=\"muted\">({required})</span></h4>");
        if let Some(d) = body.get("description").and_then(Value::as_str) {
            out.push_str(&prose(d));
        }
        for (content_type, content) in body.get("content").and_then(Value::as_object).into_iter().flatten() {
            let _ =
                write!(out, "<p><code>{}</code> {}</p>", esc(content_type), schema_label(&content["schema"]));
        }
    }

    out.push_str("<h4>Responses</h4><table><tr><th>status</th><th>description</th><th>body</th></tr>");
    for (status, response) in op["responses"].as_object().into_iter().flatten() {
        let class = match status.as_bytes().first() {
            Some(b'2') => "s-ok",
            Some(b'4') => "s-client",
            Some(b'5') => "s-server",
            _ => "s-other",
        };
        let mut body = String::new();
        for (content_type, content) in response["content"].as_object().into_iter().flatten() {
            let _ =
                write!(body, "<code>{}</code> {}<br>", esc(content_type), schema_label(&content["schema"]));
        }
        for (name, header) in response["headers"].as_object().into_iter().flatten() {
            let _ = write!(
                body,
                "header <code>{}</code> {}<br>",
                esc(name),
                inline_prose(str_at(header, &["description"]))
            );
        }
        let _ = write!(
            out,
            "<tr><td><span class=\"status {class}\">{s}</span></td><td>{d}</td><td>{body}</td></tr>",
            s = esc(status),
            d = prose(str_at(response, &["description"])),
        );
    }
    out.push_str("</table></article>");
}

/// Who may call an operation: each alternative scheme with how to send it.
fn auth_line(doc: &Value, op: &Value) -> String {
    let alternatives: Vec<String> = op["security"]
        .as_array()
        .into_iter()
        .flatten()
        .filter_map(Value::as_object)
        .flat_map(|requirement| requirement.keys())
        .map(|name| {
            let scheme = &doc["components"]["securitySchemes"][name];
            let how = match str_at(scheme, &["type"]) {
                "http" => format!(
                    "Authorization: {} {}",
                    capitalise(str_at(scheme, &["scheme"])),
                    str_at(scheme, &["bearerFormat"])
                ),
                "apiKey" => format!("{} {}", str_at(scheme, &["name"]), str_at(scheme, &["in"])),
                other => other.to_owned(),
            };
            let kind = if name.starts_with("sponsor") { "sponsor" } else { "agent" };
            format!(
                "<a class=\"auth auth-{kind}\" href=\"#security-{a}\">{n}</a> <code>{h}</code>",
                a = anchor(name),
                n = esc(name),
                h = esc(how.trim()),
            )
        })
        .collect();
    if alternatives.is_empty() {
        "<p class=\"authline\"><span class=\"auth auth-public\">public</span> no authentication</p>"
            .to_owned()
    } else {
        format!("<p class=\"authline\">Requires {}</p>", alternatives.join(" or "))
    }
}

fn security_section(out: &mut String, doc: &Value) {
    out.push_str("<section id=\"security\"><h2>Authentication</h2><table><tr><th>scheme</th><th>type</th><th>description</th></tr>");
    for (name, scheme) in doc["components"]["securitySchemes"].as_object().into_iter().flatten() {
        let kind =
            [str_at(scheme, &["type"]), str_at(scheme, &["scheme"]), str_at(scheme, &["bearerFormat"])]
                .into_iter()
                .filter(|s| !s.is_empty())
                .collect::<Vec<_>>()
                .join(" ");
        let _ = write!(
            out,
            "<tr id=\"security-{a}\"><td><code>{n}</code></td><td>{k}</td><td>{d}</td></tr>",
            a = anchor(name),
            n = esc(name),
            k = esc(&kind),
            d = prose(str_at(scheme, &["description"])),
        );
    }
    out.push_str("</table></section>");
}

fn schemas_section(out: &mut String, doc: &Value) {
    out.push_str("<section id=\"schemas\"><h2>Schemas</h2>");
    for (name, schema) in doc["components"]["schemas"].as_object().into_iter().flatten() {
        let json = serde_json::to_string_pretty(schema).unwrap_or_default();
        let _ = write!(
            out,
            "<article class=\"schema\" id=\"schema-{a}\"><h3>{n}</h3>{d}<pre>{j}</pre></article>",
            a = anchor(name),
            n = esc(name),
            d = prose(str_at(schema, &["description"])),
            j = esc(&json),
        );
    }
    out.push_str("</section>");
}

/// A schema in a few words, linking to named components.
fn schema_label(schema: &Value) -> String {
    if let Some(reference) = schema["$ref"].as_str() {
        let name = reference.rsplit('/').next().unwrap_or(reference);
        return format!("<a href=\"#schema-{}\">{}</a>", anchor(name), esc(name));
    }
    for (key, joiner) in [("oneOf", " | "), ("anyOf", " | "), ("allOf", " & ")] {
        if let Some(parts) = schema[key].as_array() {
            return parts.iter().map(schema_label).collect::<Vec<_>>().join(joiner);
        }
    }
    let kind = match &schema["type"] {
        Value::String(s) => s.clone(),
        Value::Array(types) => types.iter().filter_map(Value::as_str).collect::<Vec<_>>().join(" | "),
        _ if schema.is_null() => return String::new(),
        _ => return format!("<code>{}</code>", esc(&schema.to_string())),
    };
    let mut label = esc(&kind);
    if kind.starts_with("array") {
        label = format!("array of {}", schema_label(&schema["items"]));
    }
    if let Some(format) = schema["format"].as_str() {
        let _ = write!(label, " <span class=\"muted\">({})</span>", esc(format));
    }
    label
}

/// Escapes text for HTML element content and attribute values.
pub fn esc(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    for c in text.chars() {
        match c {
            '&' => out.push_str("&amp;"),
            '<' => out.push_str("&lt;"),
            '>' => out.push_str("&gt;"),
            '"' => out.push_str("&quot;"),
            '\'' => out.push_str("&#39;"),
            c => out.push(c),
        }
    }
    out
}

/// The spec's descriptions as HTML: escaped, then a small subset of Markdown —
/// paragraphs (blank lines), line breaks, `code` and **bold**.
fn prose(text: &str) -> String {
    if text.trim().is_empty() {
        return String::new();
    }
    text.split("\n\n").map(|p| format!("<p>{}</p>", inline_prose(p.trim()))).collect()
}

fn inline_prose(text: &str) -> String {
    let mut out = String::new();
    for (i, part) in esc(text).split('`').enumerate() {
        if i % 2 == 1 {
            let _ = write!(out, "<code>{part}</code>");
        } else {
            for (j, piece) in part.split("**").enumerate() {
                if j % 2 == 1 {
                    let _ = write!(out, "<strong>{piece}</strong>");
                } else {
                    out.push_str(&piece.replace('\n', "<br>"));
                }
            }
        }
    }
    out
}

/// A fragment identifier made only of `[a-z0-9-]`, safe in `href` and `id`.
fn anchor(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    for c in text.chars() {
        if c.is_ascii_alphanumeric() {
            out.push(c.to_ascii_lowercase());
        } else if !out.ends_with('-') {
            out.push('-');
        }
    }
    out.trim_matches('-').to_owned()
}

fn capitalise(s: &str) -> String {
    let mut chars = s.chars();
    chars.next().map(|c| c.to_uppercase().chain(chars).collect()).unwrap_or_default()
}

fn str_at<'a>(value: &'a Value, path: &[&str]) -> &'a str {
    path.iter().fold(value, |v, key| &v[*key]).as_str().unwrap_or("")
}

/// The dashboard's palette (style/main.css), inline so the page needs nothing else.
const STYLE: &str = "\
:root{--bg:#f5f7fa;--surface:#fff;--border:#dfe3ea;--text:#1b2330;--muted:#5d6878;--accent:#2f5bea;\
--accent-strong:#2148c7;--allow:#1f8a4c;--allow-bg:#e6f5ec;--deny:#c23b3b;--deny-bg:#fbeaea;\
--pending:#b7791f;--pending-bg:#fdf3e1;--suspended:#6b4fbf;--suspended-bg:#efeafb;--radius:10px;\
--font:\"Segoe UI\",system-ui,-apple-system,Roboto,\"Helvetica Neue\",Arial,sans-serif;\
--mono:ui-monospace,\"SFMono-Regular\",Menlo,Consolas,monospace}\
*{box-sizing:border-box}\
body{margin:0;font-family:var(--font);font-size:15px;line-height:1.5;color:var(--text);background:var(--bg)}\
a{color:var(--accent);text-decoration:none}a:hover{text-decoration:underline}\
code,pre{font-family:var(--mono);font-size:.85em}\
p code,td code{background:var(--bg);border:1px solid var(--border);border-radius:4px;padding:0 .25em}\
.top{display:flex;gap:1rem;align-items:baseline;padding:.75rem 1.5rem;background:var(--surface);\
border-bottom:1px solid var(--border);position:sticky;top:0}\
.top a{margin-left:auto}.brand{font-weight:700}.muted{color:var(--muted)}\
main{max-width:1100px;margin:0 auto;padding:2rem 1.5rem 4rem}\
h1{font-size:1.6rem;margin:0 0 .5rem}h2{font-size:1.25rem;margin:2.5rem 0 .75rem}\
h3{font-size:1rem;margin:0 0 .5rem;display:flex;flex-wrap:wrap;gap:.5rem;align-items:baseline}\
h4{font-size:.8rem;text-transform:uppercase;letter-spacing:.04em;color:var(--muted);margin:1rem 0 .4rem}\
.toc ul{columns:3;padding-left:1.2rem}\
.op,.schema,table{background:var(--surface)}\
.op,.schema{border:1px solid var(--border);border-radius:var(--radius);padding:1rem 1.25rem;margin:0 0 1rem}\
.path{font-size:.95rem;font-weight:600}.summary{color:var(--muted);font-weight:400}\
.method{font-family:var(--mono);font-size:.75rem;font-weight:700;padding:.15rem .5rem;border-radius:6px;\
min-width:4.2rem;text-align:center}\
.m-get{color:var(--allow);background:var(--allow-bg)}.m-post{color:var(--accent-strong);background:#e8eeff}\
.m-put,.m-patch{color:var(--pending);background:var(--pending-bg)}.m-delete{color:var(--deny);background:var(--deny-bg)}\
.m-head,.m-options,.m-trace{color:var(--suspended);background:var(--suspended-bg)}\
.authline{font-size:.9rem}.auth{font-size:.75rem;font-weight:600;padding:.1rem .45rem;border-radius:6px}\
.auth-sponsor{color:var(--accent-strong);background:#e8eeff}.auth-agent{color:var(--suspended);background:var(--suspended-bg)}\
.auth-public{color:var(--allow);background:var(--allow-bg)}\
table{width:100%;border-collapse:collapse;font-size:.9rem;border:1px solid var(--border)}\
th,td{text-align:left;vertical-align:top;padding:.4rem .6rem;border-bottom:1px solid var(--border)}\
th{color:var(--muted);font-weight:600;font-size:.8rem}td p{margin:0 0 .3rem}\
.req{color:var(--deny);font-size:.75rem}\
.status{font-family:var(--mono);font-weight:700;padding:.1rem .4rem;border-radius:6px}\
.s-ok{color:var(--allow);background:var(--allow-bg)}.s-client{color:var(--pending);background:var(--pending-bg)}\
.s-server{color:var(--deny);background:var(--deny-bg)}.s-other{color:var(--muted);background:var(--bg)}\
pre{background:var(--bg);border:1px solid var(--border);border-radius:8px;padding:.75rem;overflow:auto;max-height:28rem}\
@media (max-width:700px){.toc ul{columns:1}}";

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn escapes_text_and_keeps_code_and_bold() {
        assert_eq!(esc(r#"<a href="x">&'"#), "&lt;a href=&quot;x&quot;&gt;&amp;&#39;");
        assert_eq!(
            prose("Send `<key>` **now**\nthen <b>\n\nnext"),
            "<p>Send <code>&lt;key&gt;</code> <strong>now</strong><br>then &lt;b&gt;</p><p>next</p>"
        );
        assert_eq!(anchor("/api/gw/{connection}/{path}"), "api-gw-connection-path");
    }

    #[test]
    fn renders_every_operation_without_external_assets() {
        let html = render(super::super::openapi::spec());
        assert!(html.starts_with("<!DOCTYPE html>"));
        assert!(!html.contains("<script"));
        assert!(html.contains("id=\"op-post-api-proxy-execute\""));
        assert!(html.contains("id=\"schema-executerequest\""));
        assert!(html.contains("Authorization: Bearer JWT"));
    }
}
