//! `/v1/keys` (an admin's: make, list and revoke API keys) and `/v1/session`
//! (the dashboard's sign-in: a key exchanged for a session cookie). The rules of
//! who may call them are `auth::RULES`'; what a key is, `auth::key`.

use axum::body::Body;
use axum::extract::State;
use axum::http::{header, HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::Json;
use serde::{Deserialize, Serialize};
use utoipa::{IntoParams, ToSchema};
use weir_store::StoredKey;

use crate::api::{now_ms, parse, read_body, AppState};
use crate::auth::key::{KeyRecord, KeySpec, Role};
use crate::auth::{refusal_response, session, KeyEntry};
use crate::error::ApiError;
use crate::extract::Path;
use crate::openapi::{BodyProblems, Common, Invalid, Missing, TooMany};
use crate::wire::{parse_rfc3339, rfc3339};

/// Largest `POST /v1/keys` or `/v1/session` body.
const KEY_BODY_BYTES_MAX: usize = 16 * 1024;

/// `POST /v1/keys`.
#[derive(Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct KeyBody {
    /// What the key is for (1–128 bytes, shown in lists and logs).
    pub name: String,
    /// One or more of `producer`, `worker`, `reader`, `admin`.
    #[schema(value_type = Vec<String>)]
    pub roles: Vec<Role>,
    /// Queue patterns the key is limited to (`*` is any run of characters);
    /// absent or `null`: every queue.
    #[serde(default)]
    pub queues: Option<Vec<String>>,
    /// When the key stops working (RFC 3339); absent or `null`: never.
    #[serde(default)]
    pub expires_at: Option<String>,
}

/// A key as `GET /v1/keys` shows it: never its secret.
#[derive(Serialize, ToSchema)]
pub struct KeyJson {
    pub id: String,
    pub name: String,
    #[schema(value_type = Vec<String>)]
    pub roles: Vec<Role>,
    pub queues: Option<Vec<String>>,
    pub created_at: String,
    pub expires_at: Option<String>,
    pub last_used_at: Option<String>,
}

impl KeyJson {
    fn new(id: &str, r: &KeyRecord, last_used_ms: Option<u64>) -> KeyJson {
        KeyJson {
            id: id.to_owned(),
            name: r.name.clone(),
            roles: r.roles.clone(),
            queues: r.queues.clone(),
            created_at: rfc3339(r.created_at_ms),
            expires_at: r.expires_at_ms.map(rfc3339),
            last_used_at: last_used_ms.map(rfc3339),
        }
    }
}

/// `POST /v1/keys`'s answer: the key, the only time its text is shown.
#[derive(Serialize, ToSchema)]
pub struct CreatedKeyJson {
    /// `weir_<id>_<secret>`: send it as `Authorization: Bearer <key>`. Shown once.
    pub key: String,
    #[serde(flatten)]
    pub view: KeyJson,
}

/// `GET /v1/keys`.
#[derive(Serialize, ToSchema)]
pub struct KeysJson {
    pub keys: Vec<KeyJson>,
}

/// A key id in the path.
#[derive(IntoParams)]
#[into_params(parameter_in = Path)]
#[allow(dead_code)] // parameters only: handlers read them with `extract::Path`.
pub struct KeyPath {
    /// 16 hex digits.
    #[param(pattern = "^[0-9a-f]{16}$")]
    pub id: String,
}

/// Makes a key from its spec and stores it: what `POST /v1/keys` and `weir keys
/// create` share. Answers the key's view and its text (shown once).
pub async fn create(
    broker: &dyn weir_store::Broker,
    spec: KeySpec,
) -> Result<CreatedKeyJson, ApiError> {
    let now = now_ms();
    let made = spec
        .make(now)
        .map_err(|(field, detail)| ApiError::invalid(field, detail))?;
    broker.create_key(&made.id, &made.record.to_text()).await?;
    Ok(CreatedKeyJson {
        view: KeyJson::new(&made.id, &made.record, None),
        key: made.key,
    })
}

/// Every key of the store, as listed (a record that does not read is an error
/// naming its id).
pub async fn list(broker: &dyn weir_store::Broker) -> Result<Vec<KeyJson>, ApiError> {
    broker
        .keys()
        .await?
        .iter()
        .map(|k: &StoredKey| {
            KeyRecord::from_text(&k.record)
                .map(|r| KeyJson::new(&k.id, &r, k.last_used_ms))
                .map_err(|e| {
                    ApiError::from(weir_store::StoreError::bug(format!(
                        "API key {}: {e}",
                        k.id
                    )))
                })
        })
        .collect()
}

/// Makes an API key: 201 with its text, the only time it is shown.
#[utoipa::path(
    post, path = "/v1/keys", tag = "keys", request_body = KeyBody,
    responses((status = 201, description = "The key, with its secret (shown once)", body = CreatedKeyJson), BodyProblems, TooMany, Common)
)]
pub(crate) async fn create_key(
    State(s): State<AppState>,
    headers: HeaderMap,
    body: Body,
) -> Result<Response, ApiError> {
    let bytes = read_body(&headers, body, KEY_BODY_BYTES_MAX).await?;
    let b: KeyBody = parse(&bytes)?;
    let expires_at_ms = match b.expires_at {
        None => None,
        Some(t) => Some(
            parse_rfc3339(&t)
                .and_then(|ms| u64::try_from(ms).ok())
                .ok_or_else(|| {
                    ApiError::invalid("expires_at", "expires_at is not an RFC 3339 time")
                })?,
        ),
    };
    let spec = KeySpec {
        name: b.name,
        roles: b.roles,
        queues: b.queues,
        expires_at_ms,
    };
    let created = create(s.broker.as_ref(), spec).await?;
    s.auth.forget(&created.view.id);
    tracing::info!(key_id = %created.view.id, name = %created.view.name, "API key created");
    Ok((StatusCode::CREATED, Json(created)).into_response())
}

/// Every API key (never a secret).
#[utoipa::path(
    get, path = "/v1/keys", tag = "keys",
    responses((status = 200, description = "The keys", body = KeysJson), Common)
)]
pub(crate) async fn list_keys(State(s): State<AppState>) -> Result<Response, ApiError> {
    let keys = list(s.broker.as_ref()).await?;
    Ok(Json(KeysJson { keys }).into_response())
}

/// Revokes an API key: 204, or 404 if there was none. Every server on the store
/// refuses it within `auth::KEY_CACHE_TTL_MS`; this one at once.
#[utoipa::path(
    delete, path = "/v1/keys/{id}", tag = "keys", params(KeyPath),
    responses((status = 204, description = "Revoked"), Invalid, Missing, Common)
)]
pub(crate) async fn delete_key(
    State(s): State<AppState>,
    Path(id): Path<String>,
) -> Result<Response, ApiError> {
    if !crate::auth::key::is_id(&id) {
        return Err(ApiError::invalid(
            "id",
            format!("{id:?} is not a key id (16 hex digits)"),
        ));
    }
    let found = s.broker.delete_key(&id).await?;
    s.auth.forget(&id);
    if !found {
        return Err(ApiError::not_found(format!("no API key with id {id}")));
    }
    tracing::info!(key_id = %id, "API key revoked");
    Ok(StatusCode::NO_CONTENT.into_response())
}

/// `POST /v1/session`.
#[derive(Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct SessionBody {
    /// An API key, `weir_<id>_<secret>`.
    pub key: String,
}

/// The dashboard's session.
#[derive(Serialize, ToSchema)]
pub struct SessionJson {
    /// Whether the server checks keys at all; `false`: everything is open and no
    /// other field is given.
    pub auth: bool,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub key_id: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub name: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    #[schema(value_type = Option<Vec<String>>)]
    pub roles: Option<Vec<Role>>,
    /// The key's queue patterns (`null`: every queue).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub queues: Option<Option<Vec<String>>>,
    /// What a write made with the session cookie must send in `X-CSRF-Token`.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub csrf: Option<String>,
}

impl SessionJson {
    fn off() -> SessionJson {
        SessionJson {
            auth: false,
            key_id: None,
            name: None,
            roles: None,
            queues: None,
            csrf: None,
        }
    }

    fn of(e: &KeyEntry, csrf: String) -> SessionJson {
        SessionJson {
            auth: true,
            key_id: Some(e.id.clone()),
            name: Some(e.record.name.clone()),
            roles: Some(e.record.roles.clone()),
            queues: Some(e.record.queues.clone()),
            csrf: Some(csrf),
        }
    }
}

/// Signs in with a key: sets the session cookie and answers the session (its
/// CSRF token included). 401 for a key that does not pass.
#[utoipa::path(
    post, path = "/v1/session", tag = "session", request_body = SessionBody,
    responses((status = 200, description = "Signed in", body = SessionJson), BodyProblems, Common)
)]
pub(crate) async fn sign_in(
    State(s): State<AppState>,
    headers: HeaderMap,
    body: Body,
) -> Result<Response, ApiError> {
    let bytes = read_body(&headers, body, KEY_BODY_BYTES_MAX).await?;
    let b: SessionBody = parse(&bytes)?;
    let entry = match s.auth.sign_in(&b.key).await {
        Ok(e) => e,
        Err(r) => return Ok(refusal_response(&s, r)),
    };
    let now = now_ms();
    let (value, csrf) = session::issue(&entry.id, &entry.record, now);
    let max_age = session::claimed(&value).map_or(0, |c| c.until_ms.saturating_sub(now) / 1000);
    let cookie = session::set_cookie(&value, max_age);
    Ok((
        [(header::SET_COOKIE, cookie)],
        Json(SessionJson::of(&entry, csrf)),
    )
        .into_response())
}

/// The session behind the request's cookie (with its CSRF token), `{"auth":
/// false}` when the server checks no keys, or 401.
#[utoipa::path(
    get, path = "/v1/session", tag = "session",
    responses((status = 200, description = "The session", body = SessionJson), Common)
)]
pub(crate) async fn get_session(
    State(s): State<AppState>,
    headers: HeaderMap,
) -> Result<Response, ApiError> {
    if !s.auth.enabled().await? {
        return Ok(Json(SessionJson::off()).into_response());
    }
    match s.auth.current_session(&headers).await {
        Ok((entry, csrf)) => Ok(Json(SessionJson::of(&entry, csrf)).into_response()),
        Err(r) => Ok(refusal_response(&s, r)),
    }
}

/// Signs out: clears the session cookie (204).
#[utoipa::path(
    delete, path = "/v1/session", tag = "session",
    responses((status = 204, description = "Signed out"))
)]
pub(crate) async fn sign_out() -> Response {
    (
        StatusCode::NO_CONTENT,
        [(header::SET_COOKIE, session::set_cookie("", 0))],
    )
        .into_response()
}
