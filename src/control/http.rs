//! The HTTP port (`metrics_listen`): `GET /metrics` for Prometheus, and the vschema's
//! JSON API for admins (`docs/control-plane.md#http-api`):
//!
//! - `GET /vschema`: the current document (passwords hidden) and its version, also in
//!   the `ETag` header; role `dba` or `admin` (HTTP Basic, shardgate's own users).
//! - `PUT /vschema` with `If-Match: <version>` (`?allow_data_movement=true` to allow a
//!   change that moves rows): the whole new document, TOML as the body (or JSON
//!   `{"document": "..."}`); role `admin`. 200 with the new version and the changes;
//!   409 when the version is not the current one; 422 with every validation error
//!   (or the moves a change would make); 428 without `If-Match`; 503 when the
//!   topology store did not take it.
//! - `GET /vschema/history[?limit=n]`: versions, newest first, with author, time and
//!   changes; role `dba` or `admin`.
//!
//! Every request is bounded: 16 KiB of headers, 16 MiB of body, 10 s in all.

use std::sync::Arc;
use std::time::Duration;

use base64::Engine as _;
use serde_json::json;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::watch;

use super::{ChangeError, ChangeRequest};
use crate::access::Role;
use crate::shared::Shared;
use crate::vschema::Document;

const MAX_HEAD: usize = 16 << 10;
const MAX_BODY: usize = 16 << 20;
const REQUEST_DEADLINE: Duration = Duration::from_secs(10);

/// A parsed request.
struct Request {
    method: String,
    path: String,
    query: String,
    headers: Vec<(String, String)>,
    body: Vec<u8>,
}

impl Request {
    fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(n, _)| n.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_str())
    }

    fn param(&self, name: &str) -> Option<&str> {
        self.query.split('&').find_map(|kv| {
            let (k, v) = kv.split_once('=').unwrap_or((kv, ""));
            (k == name).then_some(v)
        })
    }
}

/// A response.
struct Response {
    status: &'static str,
    content_type: &'static str,
    headers: Vec<(&'static str, String)>,
    body: String,
}

fn json_response(status: &'static str, body: serde_json::Value) -> Response {
    Response {
        status,
        content_type: "application/json",
        headers: Vec::new(),
        body: format!("{body}\n"),
    }
}

fn error(status: &'static str, message: impl Into<String>) -> Response {
    json_response(status, json!({ "error": message.into() }))
}

/// Requests served at once; more are answered 503 at once.
const MAX_CONCURRENT: usize = 64;

/// Serves the port until `stop` turns true.
pub async fn serve(shared: Arc<Shared>, listener: TcpListener, mut stop: watch::Receiver<bool>) {
    let slots = Arc::new(tokio::sync::Semaphore::new(MAX_CONCURRENT));
    loop {
        let (stream, _) = tokio::select! {
            a = listener.accept() => match a {
                Ok(x) => x,
                Err(_) => {
                    crate::timer::sleep(Duration::from_millis(50)).await;
                    continue;
                }
            },
            _ = stop.changed() => return,
        };
        let shared = shared.clone();
        let Ok(slot) = slots.clone().try_acquire_owned() else {
            tokio::spawn(async move {
                let mut stream = stream;
                let _ = stream
                    .write_all(b"HTTP/1.1 503 Service Unavailable\r\nContent-Length: 0\r\nRetry-After: 1\r\nConnection: close\r\n\r\n")
                    .await;
            });
            continue;
        };
        tokio::spawn(async move {
            let _ = crate::timer::timeout(REQUEST_DEADLINE, handle(shared, stream)).await;
            drop(slot);
        });
    }
}

async fn handle(shared: Arc<Shared>, mut stream: TcpStream) {
    let response = match read_request(&shared, &mut stream).await {
        Ok(req) => route(&shared, req).await,
        Err(Some(r)) => r,
        Err(None) => return,
    };
    let mut head = format!(
        "HTTP/1.1 {}\r\nContent-Type: {}\r\nContent-Length: {}\r\nConnection: close\r\n",
        response.status,
        response.content_type,
        response.body.len()
    );
    for (k, v) in &response.headers {
        head.push_str(&format!("{k}: {v}\r\n"));
    }
    head.push_str("\r\n");
    let _ = stream.write_all(head.as_bytes()).await;
    let _ = stream.write_all(response.body.as_bytes()).await;
    let _ = stream.shutdown().await;
}

/// Reads one request; Err(Some) is an error to answer, Err(None) a peer gone.
async fn read_request(
    shared: &Shared,
    stream: &mut TcpStream,
) -> Result<Request, Option<Response>> {
    let mut buf = Vec::with_capacity(1024);
    let mut chunk = [0u8; 4096];
    let head_end = loop {
        if let Some(i) = buf.windows(4).position(|w| w == b"\r\n\r\n") {
            break i;
        }
        if buf.len() > MAX_HEAD {
            return Err(Some(error(
                "431 Request Header Fields Too Large",
                "headers over 16 KiB",
            )));
        }
        match stream.read(&mut chunk).await {
            Ok(0) | Err(_) => return Err(None),
            Ok(n) => buf.extend_from_slice(&chunk[..n]),
        }
    };
    let head = String::from_utf8_lossy(&buf[..head_end]).into_owned();
    let mut lines = head.split("\r\n");
    let request_line = lines.next().unwrap_or("");
    let mut parts = request_line.split(' ');
    let (Some(method), Some(target)) = (parts.next(), parts.next()) else {
        return Err(Some(error("400 Bad Request", "malformed request line")));
    };
    let (path, query) = target.split_once('?').unwrap_or((target, ""));
    let headers: Vec<(String, String)> = lines
        .filter_map(|l| l.split_once(':'))
        .map(|(k, v)| (k.trim().to_string(), v.trim().to_string()))
        .collect();
    let length = match headers
        .iter()
        .find(|(k, _)| k.eq_ignore_ascii_case("content-length"))
    {
        None => 0,
        Some((_, v)) => match v.parse::<usize>() {
            Ok(n) if n <= MAX_BODY => n,
            Ok(_) => {
                return Err(Some(error(
                    "413 Payload Too Large",
                    "the body is over 16 MiB",
                )))
            }
            Err(_) => {
                return Err(Some(error(
                    "400 Bad Request",
                    "Content-Length is not a number",
                )))
            }
        },
    };
    let mut req = Request {
        method: method.to_string(),
        path: path.to_string(),
        query: query.to_string(),
        headers,
        body: Vec::new(),
    };
    // A body is read only from an admin: nobody else makes the proxy buffer one.
    if length > 0 {
        authenticate(shared, &req, Role::Admin).map_err(Some)?;
    }
    let mut body = buf.split_off(head_end + 4);
    if body.len() > length {
        body.truncate(length);
    }
    while body.len() < length {
        match stream.read(&mut chunk).await {
            Ok(0) | Err(_) => return Err(None),
            Ok(n) => body.extend_from_slice(&chunk[..n.min(length - body.len())]),
        }
    }
    req.body = body;
    Ok(req)
}

/// The user and role of the request's HTTP Basic credentials, checked against
/// shardgate's users; Err: the response to send.
fn authenticate(shared: &Shared, req: &Request, need: Role) -> Result<String, Response> {
    let challenge = |why: &str| {
        let mut r = error("401 Unauthorized", why);
        r.headers
            .push(("WWW-Authenticate", "Basic realm=\"shardgate\"".to_string()));
        r
    };
    let Some(encoded) = req.header("authorization").and_then(|v| {
        v.strip_prefix("Basic ")
            .or_else(|| v.strip_prefix("basic "))
    }) else {
        return Err(challenge(
            "credentials needed: HTTP Basic with a shardgate user",
        ));
    };
    let decoded = base64::engine::general_purpose::STANDARD
        .decode(encoded.trim())
        .ok()
        .and_then(|b| String::from_utf8(b).ok());
    let Some((user, password)) = decoded.as_deref().and_then(|d| d.split_once(':')) else {
        return Err(challenge("malformed Basic credentials"));
    };
    let ok = shared.users.get(user).is_some_and(|u| {
        let given =
            (!password.is_empty()).then(|| crate::protocol::auth::double_sha1(password.as_bytes()));
        match (&u.password_hash, &given) {
            (None, None) => true,
            (Some(a), Some(b)) => a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0,
            _ => false,
        }
    });
    if !ok {
        return Err(challenge("wrong user or password"));
    }
    let role = shared.users.get(user).map_or(Role::App, |u| u.role);
    let enough = match need {
        Role::Admin => role.is_admin(),
        _ => role.runs_migrations(),
    };
    if !enough {
        return Err(error(
            "403 Forbidden",
            format!(
                "user {user} has role {}; this needs role {}",
                role.name(),
                need.name()
            ),
        ));
    }
    Ok(user.to_string())
}

async fn route(shared: &Arc<Shared>, req: Request) -> Response {
    match (req.method.as_str(), req.path.as_str()) {
        ("GET", "/metrics") => Response {
            status: "200 OK",
            content_type: "text/plain; version=0.0.4",
            headers: Vec::new(),
            body: crate::metrics_http::render(shared),
        },
        ("GET", "/vschema") => match authenticate(shared, &req, Role::Dba) {
            Err(r) => r,
            Ok(_) => get_vschema(shared),
        },
        ("PUT", "/vschema") => match authenticate(shared, &req, Role::Admin) {
            Err(r) => r,
            Ok(user) => put_vschema(shared, &req, user).await,
        },
        ("GET", "/vschema/history") => match authenticate(shared, &req, Role::Dba) {
            Err(r) => r,
            Ok(_) => history(shared, &req).await,
        },
        (_, "/metrics" | "/vschema" | "/vschema/history") => {
            let mut r = error(
                "405 Method Not Allowed",
                format!("{} {} is not served", req.method, req.path),
            );
            let allow = if req.path == "/vschema" {
                "GET, PUT"
            } else {
                "GET"
            };
            r.headers.push(("Allow", allow.to_string()));
            r
        }
        _ => error(
            "404 Not Found",
            "served here: /metrics, /vschema, /vschema/history",
        ),
    }
}

fn get_vschema(shared: &Shared) -> Response {
    let Some(cur) = shared.plane.current() else {
        return error(
            "503 Service Unavailable",
            "the control plane has not started",
        );
    };
    let document = match Document::parse(&cur.document) {
        Ok(d) => d.hide_passwords().to_text(),
        Err(e) => {
            return error(
                "500 Internal Server Error",
                format!("version {} cannot be read: {e}", cur.version),
            )
        }
    };
    let mut r = json_response(
        "200 OK",
        json!({
            "version": cur.version,
            "author": cur.author,
            "source": cur.source,
            "time_ms": cur.time_ms,
            "document": document,
            "topology_store": shared.plane.topo().kind(),
            "topology_store_reachable": shared.plane.reachable(),
        }),
    );
    r.headers.push(("ETag", format!("\"{}\"", cur.version)));
    r
}

async fn put_vschema(shared: &Shared, req: &Request, user: String) -> Response {
    let Some(if_match) = req.header("if-match") else {
        return error(
            "428 Precondition Required",
            "send If-Match: <version> (the version from GET /vschema) so a change made meanwhile is not overwritten",
        );
    };
    let Ok(expected) = if_match.trim().trim_matches('"').parse::<u64>() else {
        return error(
            "400 Bad Request",
            "If-Match must be a vschema version number",
        );
    };
    let Ok(text) = std::str::from_utf8(&req.body) else {
        return error("400 Bad Request", "the body is not UTF-8");
    };
    let json_body = req
        .header("content-type")
        .is_some_and(|c| c.starts_with("application/json"));
    let document = if json_body {
        match serde_json::from_str::<serde_json::Value>(text)
            .ok()
            .and_then(|v| {
                v.get("document")
                    .and_then(|d| d.as_str())
                    .map(str::to_string)
            }) {
            Some(d) => d,
            None => {
                return error(
                    "400 Bad Request",
                    "a JSON body needs {\"document\": \"<TOML>\"}",
                )
            }
        }
    } else {
        text.to_string()
    };
    let allow_movement = matches!(req.param("allow_data_movement"), Some("true" | "1"));
    let r = super::change(
        shared,
        ChangeRequest {
            author: user,
            source: "http",
            document,
            expected: Some(expected),
            allow_movement,
            note: None,
        },
    )
    .await;
    match r {
        Ok(a) => {
            let mut r = json_response("200 OK", json!({ "version": a.version, "changes": a.diff }));
            r.headers.push(("ETag", format!("\"{}\"", a.version)));
            r
        }
        Err(ChangeError::Stale { expected, current }) => json_response(
            "409 Conflict",
            json!({
                "error": format!("version {expected} is not current; version {current} is: GET /vschema and redo the change"),
                "current_version": current,
            }),
        ),
        Err(ChangeError::Invalid(errors)) => json_response(
            "422 Unprocessable Entity",
            json!({
                "error": "the vschema is not valid",
                "errors": errors.iter().map(|(at, m)| json!({"at": at, "message": m})).collect::<Vec<_>>(),
            }),
        ),
        Err(ChangeError::MovesData(moves)) => {
            let message = ChangeError::MovesData(moves.clone()).to_string();
            json_response(
                "422 Unprocessable Entity",
                json!({ "error": message, "moves": moves }),
            )
        }
        Err(e @ ChangeError::Store(_)) => {
            let mut r = error("503 Service Unavailable", e.to_string());
            r.headers.push(("Retry-After", "1".to_string()));
            r
        }
    }
}

async fn history(shared: &Shared, req: &Request) -> Response {
    let limit = req
        .param("limit")
        .and_then(|l| l.parse::<usize>().ok())
        .unwrap_or(50)
        .clamp(1, 1000);
    match crate::timer::timeout(super::STORE_DEADLINE, shared.plane.topo().history(limit)).await {
        Ok(Ok(records)) => json_response(
            "200 OK",
            json!({
                "versions": records.iter().map(|r| json!({
                    "version": r.version,
                    "author": r.author,
                    "source": r.source,
                    "time_ms": r.time_ms,
                    "changes": r.diff,
                })).collect::<Vec<_>>()
            }),
        ),
        Ok(Err(e)) => error("503 Service Unavailable", e.to_string()),
        Err(_) => error(
            "503 Service Unavailable",
            "the topology store did not answer in time",
        ),
    }
}
