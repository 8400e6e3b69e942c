//! A stand-in for a Supabase project's Auth server (GoTrue behind its API gateway), written to
//! `shared/reference/supabase-auth-contract.md` and driven by its §9 checklist. Supabase cannot
//! be reached from the test machines; this is the one fake in the test suite, and it copies the
//! real server's answers (status, `error_code`, message text, both error formats, both key
//! systems) rather than what would be convenient for our client.
//!
//! It runs on `127.0.0.1:0` inside the test process, counts the requests each endpoint gets, and
//! can be taken down to simulate an outage.

#![allow(
    clippy::disallowed_types,
    reason = "the stub is not our API: it answers in GoTrue's shapes, not problem+json"
)]
#![allow(
    clippy::result_large_err,
    reason = "a check that fails returns the finished response; size does not matter in a stub"
)]

use std::{
    collections::HashMap,
    net::SocketAddr,
    sync::{
        Arc, Mutex, MutexGuard,
        atomic::{AtomicUsize, Ordering},
    },
    time::{Duration, Instant},
};

use axum::{
    Json, Router,
    body::Bytes,
    extract::{FromRequestParts, Query, Request, State},
    http::{HeaderMap, HeaderValue, StatusCode, header, request::Parts},
    middleware::{self, Next},
    response::{IntoResponse, Response},
    routing::{get, post},
};
use base64::{Engine, engine::general_purpose::URL_SAFE_NO_PAD};
use chrono::{DateTime, SecondsFormat, Utc};
use jsonwebtoken::{Algorithm, DecodingKey, EncodingKey, Header, Validation, errors::ErrorKind};
use rand::{Rng, distributions::Alphanumeric};
use ring::signature::{ECDSA_P256_SHA256_FIXED_SIGNING, EcdsaKeyPair, KeyPair};
use serde::Deserialize;
use serde_json::{Value, json};
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;
use uuid::Uuid;

/// The project's legacy JWT secret: signs HS256 user tokens in legacy mode and the `anon` key.
pub const LEGACY_SECRET: &str = "super-secret-jwt-token-with-at-least-32-characters-long";
/// The publishable key's stand-in is a legacy `anon` JWT key, as older projects have.
const PROJECT_REF: &str = "stubprojectref";
pub const SECRET_KEY: &str = "sb_secret_stub0123456789abcdefghijklmnop";
const VERSION_HEADER: &str = "x-supabase-api-version";

/// How the project signs its users' tokens.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum KeyMode {
    /// Legacy: HS256 with the project's JWT secret; the JWKS is empty.
    Legacy,
    /// Signing keys: ES256 with a `kid`, public keys in the JWKS.
    Jwks,
}

/// The project's settings that change GoTrue's answers.
#[derive(Debug, Clone)]
pub struct StubConfig {
    /// "Confirm email" off: signup returns a session at once.
    pub autoconfirm: bool,
    pub keys: KeyMode,
    pub signup_disabled: bool,
    /// Simulates a proxy between us and Supabase that drops `X-Supabase-Api-Version`, so GoTrue
    /// answers errors in the legacy shape.
    pub strip_api_version: bool,
    /// Refresh-token reuse interval (hosted default 10 s; GoTrue's own default 0).
    pub reuse_interval: Duration,
    /// Per-IP `/token` bucket: answers 429 after this many requests (no refill while a test runs).
    pub token_burst: Option<usize>,
    /// Makes the JWKS endpoint slow, so that concurrent cold-cache requests overlap.
    pub jwks_delay: Duration,
}

impl Default for StubConfig {
    fn default() -> Self {
        Self {
            autoconfirm: true,
            keys: KeyMode::Jwks,
            signup_disabled: false,
            strip_api_version: false,
            reuse_interval: Duration::from_secs(10),
            token_burst: None,
            jwks_delay: Duration::ZERO,
        }
    }
}

/// Requests each endpoint received (after the gateway let them through).
#[derive(Debug, Default)]
pub struct Counters {
    pub signup: AtomicUsize,
    pub token: AtomicUsize,
    pub logout: AtomicUsize,
    pub user: AtomicUsize,
    pub jwks: AtomicUsize,
    pub gateway_rejections: AtomicUsize,
}

struct SigningKey {
    kid: String,
    encoding: EncodingKey,
    decoding: DecodingKey,
    jwk: Value,
}

impl SigningKey {
    fn generate() -> Self {
        let rng = ring::rand::SystemRandom::new();
        let pkcs8 = EcdsaKeyPair::generate_pkcs8(&ECDSA_P256_SHA256_FIXED_SIGNING, &rng)
            .expect("P-256 key generation");
        let pair = EcdsaKeyPair::from_pkcs8(&ECDSA_P256_SHA256_FIXED_SIGNING, pkcs8.as_ref(), &rng)
            .expect("generated key parses");
        // Uncompressed point: 0x04 || x || y.
        let point = pair.public_key().as_ref();
        let (x, y) = (URL_SAFE_NO_PAD.encode(&point[1..33]), URL_SAFE_NO_PAD.encode(&point[33..]));
        let kid = Uuid::new_v4().to_string();
        Self {
            encoding: EncodingKey::from_ec_der(pkcs8.as_ref()),
            decoding: DecodingKey::from_ec_components(&x, &y).expect("public key"),
            jwk: json!({"kty": "EC", "kid": kid, "alg": "ES256", "crv": "P-256", "x": x, "y": y,
                        "use": "sig", "key_ops": ["verify"], "ext": true}),
            kid,
        }
    }
}

#[derive(Debug, Clone)]
struct StubUser {
    id: Uuid,
    identity_id: Uuid,
    email: String,
    password: String,
    data: Value,
    confirmation_sent_at: Option<DateTime<Utc>>,
    confirmed_at: Option<DateTime<Utc>>,
    last_sign_in_at: Option<DateTime<Utc>>,
    banned: bool,
    created_at: DateTime<Utc>,
    updated_at: DateTime<Utc>,
}

#[derive(Debug, Clone)]
struct RefreshRow {
    session_id: Uuid,
    user_id: Uuid,
    parent: Option<String>,
    revoked_at: Option<Instant>,
    created: u64,
}

#[derive(Default)]
struct Db {
    users: HashMap<Uuid, StubUser>,
    /// session id → (user id, sign-in time for `amr`).
    sessions: HashMap<Uuid, (Uuid, i64)>,
    refresh_tokens: HashMap<String, RefreshRow>,
    refresh_seq: u64,
    /// Sessions past their time-box or inactivity limit: they exist, but cannot be refreshed.
    ended_sessions: std::collections::HashSet<Uuid>,
}

impl Db {
    fn by_email(&self, email: &str) -> Option<&StubUser> {
        self.users.values().find(|u| u.email == email)
    }

    /// The session's newest unrevoked refresh token.
    fn active_token(&self, session_id: Uuid) -> Option<String> {
        self.refresh_tokens
            .iter()
            .filter(|(_, row)| row.session_id == session_id && row.revoked_at.is_none())
            .max_by_key(|(_, row)| row.created)
            .map(|(token, _)| token.clone())
    }

    fn delete_session(&mut self, session_id: Uuid) {
        self.sessions.remove(&session_id);
        self.refresh_tokens.retain(|_, row| row.session_id != session_id);
    }

    fn new_refresh_token(
        &mut self,
        session_id: Uuid,
        user_id: Uuid,
        parent: Option<String>,
    ) -> String {
        let token: String = rand::thread_rng()
            .sample_iter(&Alphanumeric)
            .map(|c| (c as char).to_ascii_lowercase())
            .take(12)
            .collect();
        self.refresh_seq += 1;
        self.refresh_tokens.insert(
            token.clone(),
            RefreshRow { session_id, user_id, parent, revoked_at: None, created: self.refresh_seq },
        );
        token
    }
}

struct Stub {
    config: StubConfig,
    issuer: String,
    anon_key: String,
    /// The JWT the gateway substitutes for the secret key.
    service_role_jwt: String,
    db: Mutex<Db>,
    /// Published keys; the last one signs.
    keys: Mutex<Vec<Arc<SigningKey>>>,
    counters: Counters,
    token_requests: AtomicUsize,
    forwarded_for: Mutex<Vec<String>>,
    /// This many coming requests time out inside GoTrue (504 `request_timeout`).
    timeouts: AtomicUsize,
}

impl Stub {
    fn db(&self) -> MutexGuard<'_, Db> {
        self.db.lock().unwrap()
    }

    fn signing_key(&self) -> Arc<SigningKey> {
        Arc::clone(self.keys.lock().unwrap().last().expect("a signing key"))
    }

    fn sign(&self, claims: &Value) -> String {
        match self.config.keys {
            KeyMode::Legacy => {
                let mut header = Header::new(Algorithm::HS256);
                header.typ = Some("JWT".into());
                jsonwebtoken::encode(
                    &header,
                    claims,
                    &EncodingKey::from_secret(LEGACY_SECRET.as_bytes()),
                )
                .unwrap()
            }
            KeyMode::Jwks => {
                let key = self.signing_key();
                let mut header = Header::new(Algorithm::ES256);
                header.kid = Some(key.kid.clone());
                header.typ = Some("JWT".into());
                jsonwebtoken::encode(&header, claims, &key.encoding).unwrap()
            }
        }
    }

    fn claims(&self, user: &StubUser, session_id: Uuid, signed_in_at: i64) -> Value {
        let now = Utc::now().timestamp();
        json!({
            "iss": self.issuer, "sub": user.id, "aud": "authenticated", "exp": now + 3600,
            "iat": now, "email": user.email, "phone": "",
            "app_metadata": {"provider": "email", "providers": ["email"]},
            "user_metadata": user_metadata(user), "role": "authenticated", "aal": "aal1",
            "amr": [{"method": "password", "timestamp": signed_in_at}],
            "session_id": session_id, "is_anonymous": false,
        })
    }

    /// A new session for `user`, as the token endpoint answers it.
    fn new_session(&self, db: &mut Db, user_id: Uuid) -> Value {
        let now = Utc::now();
        let session_id = Uuid::new_v4();
        db.sessions.insert(session_id, (user_id, now.timestamp()));
        let user = db.users.get_mut(&user_id).expect("user exists");
        user.last_sign_in_at = Some(now);
        let user = user.clone();
        let refresh = db.new_refresh_token(session_id, user_id, None);
        self.session_json(&user, session_id, now.timestamp(), refresh)
    }

    fn session_json(
        &self,
        user: &StubUser,
        session_id: Uuid,
        signed_in_at: i64,
        refresh: String,
    ) -> Value {
        let claims = self.claims(user, session_id, signed_in_at);
        json!({
            "access_token": self.sign(&claims), "token_type": "bearer", "expires_in": 3600,
            "expires_at": claims["exp"], "refresh_token": refresh, "user": user_json(user),
        })
    }
}

fn ts(at: DateTime<Utc>) -> String {
    at.to_rfc3339_opts(SecondsFormat::Micros, true)
}

fn user_metadata(user: &StubUser) -> Value {
    let mut data = user.data.clone();
    if user.confirmed_at.is_some() {
        data["email_verified"] = json!(true);
    }
    data
}

/// The User object (§5.2): optional fields left out when empty, in the server's order.
fn user_json(user: &StubUser) -> Value {
    let mut out = serde_json::Map::new();
    out.insert("id".into(), json!(user.id));
    out.insert("aud".into(), json!("authenticated"));
    out.insert("role".into(), json!("authenticated"));
    out.insert("email".into(), json!(user.email));
    if let Some(at) = user.confirmed_at {
        out.insert("email_confirmed_at".into(), json!(ts(at)));
    }
    out.insert("phone".into(), json!(""));
    if let Some(at) = user.confirmation_sent_at {
        out.insert("confirmation_sent_at".into(), json!(ts(at)));
    }
    if let Some(at) = user.confirmed_at {
        out.insert("confirmed_at".into(), json!(ts(at)));
    }
    if let Some(at) = user.last_sign_in_at {
        out.insert("last_sign_in_at".into(), json!(ts(at)));
    }
    out.insert("app_metadata".into(), json!({"provider": "email", "providers": ["email"]}));
    out.insert("user_metadata".into(), user_metadata(user));
    out.insert(
        "identities".into(),
        json!([{
            "identity_id": user.identity_id,
            "id": user.id, "user_id": user.id,
            "identity_data": {"email": user.email, "email_verified": user.confirmed_at.is_some(),
                              "phone_verified": false, "sub": user.id},
            "provider": "email", "last_sign_in_at": ts(user.created_at),
            "created_at": ts(user.created_at), "updated_at": ts(user.updated_at),
            "email": user.email,
        }]),
    );
    out.insert("created_at".into(), json!(ts(user.created_at)));
    out.insert("updated_at".into(), json!(ts(user.updated_at)));
    out.insert("is_anonymous".into(), json!(false));
    Value::Object(out)
}

/// Which error shape the request asked for (§3): the `2024-01-01` shape for that date or later.
#[derive(Debug, Clone, Copy)]
struct ApiVersion {
    dated: bool,
}

impl<S: Send + Sync> FromRequestParts<S> for ApiVersion {
    type Rejection = std::convert::Infallible;

    async fn from_request_parts(parts: &mut Parts, _: &S) -> Result<Self, Self::Rejection> {
        let dated = parts
            .headers
            .get(VERSION_HEADER)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| chrono::NaiveDate::parse_from_str(v.trim(), "%Y-%m-%d").ok())
            .is_some_and(|date| date >= chrono::NaiveDate::from_ymd_opt(2024, 1, 1).unwrap());
        Ok(Self { dated })
    }
}

impl ApiVersion {
    fn error(self, status: StatusCode, code: &str, msg: &str) -> Response {
        self.error_with(status, code, msg, None)
    }

    fn error_with(
        self,
        status: StatusCode,
        code: &str,
        msg: &str,
        weak: Option<&[&str]>,
    ) -> Response {
        let mut body = if self.dated {
            json!({"code": code, "message": msg})
        } else {
            let mut body = json!({"code": status.as_u16(), "error_code": code, "msg": msg});
            if status.is_server_error() {
                body["error_id"] = json!(Uuid::new_v4());
            }
            body
        };
        if let Some(reasons) = weak {
            body["weak_password"] = json!({"reasons": reasons});
        }
        let mut response = (status, Json(body)).into_response();
        let headers = response.headers_mut();
        headers.insert("x-sb-error-code", HeaderValue::from_str(code).unwrap());
        if self.dated {
            headers.insert(VERSION_HEADER, HeaderValue::from_static("2024-01-01"));
        }
        response
    }

    fn bad_json(self, err: &serde_json::Error) -> Response {
        let detail =
            if err.is_eof() { "unexpected end of JSON input".to_owned() } else { err.to_string() };
        self.error(
            StatusCode::BAD_REQUEST,
            "bad_json",
            &format!("Could not parse request body as JSON: {detail}"),
        )
    }

    fn parse<T: for<'de> Deserialize<'de>>(self, body: &Bytes) -> Result<T, Response> {
        if body.len() > 1 << 20 {
            return Err(self.error(
                StatusCode::PAYLOAD_TOO_LARGE,
                "request_entity_too_large",
                "Request entity too large",
            ));
        }
        serde_json::from_slice(body).map_err(|err| self.bad_json(&err))
    }
}

/// A running stub; stops when dropped.
pub struct GoTrueStub {
    addr: SocketAddr,
    stub: Arc<Stub>,
    shutdown: CancellationToken,
    server: Option<JoinHandle<()>>,
}

impl GoTrueStub {
    pub async fn start(config: StubConfig) -> Self {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.expect("bind the stub");
        let addr = listener.local_addr().unwrap();
        let now = Utc::now().timestamp();
        let legacy = |role: &str| {
            let claims = json!({"iss": "supabase", "ref": PROJECT_REF, "role": role, "iat": now,
                                "exp": now + 10 * 365 * 86_400});
            jsonwebtoken::encode(
                &Header::new(Algorithm::HS256),
                &claims,
                &EncodingKey::from_secret(LEGACY_SECRET.as_bytes()),
            )
            .unwrap()
        };
        let stub = Arc::new(Stub {
            issuer: format!("http://{addr}/auth/v1"),
            anon_key: legacy("anon"),
            service_role_jwt: legacy("service_role"),
            keys: Mutex::new(vec![Arc::new(SigningKey::generate())]),
            config,
            db: Mutex::default(),
            counters: Counters::default(),
            token_requests: AtomicUsize::new(0),
            forwarded_for: Mutex::default(),
            timeouts: AtomicUsize::new(0),
        });
        let auth = Router::new()
            .route("/signup", post(signup))
            .route("/token", post(token))
            .route("/logout", post(logout))
            .route("/user", get(user))
            .route("/.well-known/jwks.json", get(jwks))
            .route("/health", get(health))
            .route("/settings", get(settings));
        let router = Router::new()
            .nest("/auth/v1", auth)
            // Go's default mux answer for an unknown path: plain text.
            .fallback(|| async { (StatusCode::NOT_FOUND, "404 page not found\n") })
            .layer(middleware::from_fn_with_state(Arc::clone(&stub), gateway))
            .with_state(Arc::clone(&stub));
        let shutdown = CancellationToken::new();
        let stop = shutdown.clone();
        let server = tokio::spawn(async move {
            axum::serve(listener, router)
                .with_graceful_shutdown(async move { stop.cancelled().await })
                .await
                .expect("stub server");
        });
        Self { addr, stub, shutdown, server: Some(server) }
    }

    /// The project URL, as `SUPABASE_URL` takes it.
    pub fn url(&self) -> String {
        format!("http://{}", self.addr)
    }

    pub fn anon_key(&self) -> &str {
        &self.stub.anon_key
    }

    pub fn counters(&self) -> &Counters {
        &self.stub.counters
    }

    pub fn count(counter: &AtomicUsize) -> usize {
        counter.load(Ordering::SeqCst)
    }

    /// The `Sb-Forwarded-For` values GoTrue honoured, in order.
    pub fn forwarded_for(&self) -> Vec<String> {
        self.stub.forwarded_for.lock().unwrap().clone()
    }

    /// The user follows the link in their confirmation email.
    pub fn confirm_email(&self, email: &str) {
        let mut db = self.stub.db();
        let user = db.users.values_mut().find(|u| u.email == email).expect("user exists");
        user.confirmed_at = Some(Utc::now());
    }

    pub fn ban(&self, email: &str) {
        let mut db = self.stub.db();
        db.users.values_mut().find(|u| u.email == email).expect("user exists").banned = true;
    }

    /// Ends every session (as a session time-box or an admin would); refresh then answers
    /// `refresh_token_not_found`.
    pub fn delete_all_sessions(&self) {
        let mut db = self.stub.db();
        db.sessions.clear();
        db.refresh_tokens.clear();
    }

    /// Every session passes its time-box: refresh answers `session_expired`.
    pub fn end_all_sessions(&self) {
        let mut db = self.stub.db();
        let ids: Vec<Uuid> = db.sessions.keys().copied().collect();
        db.ended_sessions.extend(ids);
    }

    /// The next `n` requests past the gateway run over GoTrue's ~10 s limit and answer 504.
    pub fn time_out_next(&self, n: usize) {
        self.stub.timeouts.store(n, Ordering::SeqCst);
    }

    /// Adds a new signing key and signs with it from now on; the old ones stay published.
    pub fn rotate_key(&self) -> String {
        let key = Arc::new(SigningKey::generate());
        let kid = key.kid.clone();
        self.stub.keys.lock().unwrap().push(key);
        kid
    }

    /// Revokes every key but the signing one: it leaves the JWKS and no longer verifies.
    pub fn revoke_old_keys(&self) {
        let mut keys = self.stub.keys.lock().unwrap();
        let current = keys.pop().expect("a signing key");
        *keys = vec![current];
    }

    pub fn signing_kid(&self) -> String {
        self.stub.signing_key().kid.clone()
    }

    /// The current key's public JWK.
    pub fn public_jwk(&self) -> Value {
        self.stub.signing_key().jwk.clone()
    }

    /// Signs `claims` the way the project signs user tokens.
    pub fn sign(&self, claims: &Value) -> String {
        self.stub.sign(claims)
    }

    /// Claims of a well-formed user token for `user_id`, to be altered by a test.
    pub fn user_claims(&self, user_id: &str, session_id: &str) -> Value {
        let now = Utc::now().timestamp();
        json!({"iss": self.stub.issuer, "sub": user_id, "aud": "authenticated", "exp": now + 3600,
               "iat": now, "email": "", "phone": "", "app_metadata": {}, "user_metadata": {},
               "role": "authenticated", "aal": "aal1", "session_id": session_id,
               "is_anonymous": false})
    }

    /// Stops listening and closes every connection: Supabase is now unreachable.
    pub async fn take_down(&mut self) {
        self.shutdown.cancel();
        if let Some(server) = self.server.take() {
            server.await.expect("stub server stopped cleanly");
        }
    }
}

impl Drop for GoTrueStub {
    fn drop(&mut self) {
        self.shutdown.cancel();
    }
}

/// The API gateway (§1): `apikey` required everywhere but the JWKS; with no `Authorization`, the
/// key itself (or, for a secret key, a service-role JWT) becomes the bearer token.
async fn gateway(State(stub): State<Arc<Stub>>, mut request: Request, next: Next) -> Response {
    let path = request.uri().path().to_owned();
    if path == "/auth/v1/.well-known/jwks.json" {
        return next.run(request).await;
    }
    let from_query = request
        .uri()
        .query()
        .and_then(|q| url_pairs(q).find(|(k, _)| k == "apikey").map(|(_, v)| v));
    let key = request
        .headers()
        .get("apikey")
        .and_then(|v| v.to_str().ok())
        .map(str::to_owned)
        .or(from_query);
    let refuse = |message: &str, hint: &str| {
        stub.counters.gateway_rejections.fetch_add(1, Ordering::SeqCst);
        (StatusCode::UNAUTHORIZED, Json(json!({"message": message, "hint": hint}))).into_response()
    };
    let Some(key) = key else {
        return refuse(
            "No API key found in request",
            "No `apikey` request header or url param was found.",
        );
    };
    let bearer = if key == stub.anon_key {
        stub.anon_key.clone()
    } else if key == SECRET_KEY {
        stub.service_role_jwt.clone()
    } else {
        return refuse(
            "Invalid API key",
            "Double check your Supabase `anon` or `service_role` API key.",
        );
    };
    let headers = request.headers_mut();
    let own = headers.get(header::AUTHORIZATION).and_then(|v| v.to_str().ok()).map(str::to_owned);
    if own.as_deref().is_none_or(|v| v.starts_with("Bearer sb_")) {
        headers.insert(header::AUTHORIZATION, format!("Bearer {bearer}").parse().unwrap());
    }
    if stub.config.strip_api_version {
        headers.remove(VERSION_HEADER);
    }
    let timing_out = stub
        .timeouts
        .fetch_update(Ordering::SeqCst, Ordering::SeqCst, |n| n.checked_sub(1))
        .is_ok();
    if timing_out {
        let (mut parts, body) = request.into_parts();
        let version =
            ApiVersion::from_request_parts(&mut parts, &()).await.unwrap_or_else(|e| match e {});
        drop(body);
        return version.error(
            StatusCode::GATEWAY_TIMEOUT,
            "request_timeout",
            "Processing this request timed out, please retry after a moment.",
        );
    }
    // GoTrue honours Sb-Forwarded-For only from requests made with a secret key.
    let forwarded = headers.remove("sb-forwarded-for");
    if key == SECRET_KEY {
        if let Some(ip) = forwarded.and_then(|v| v.to_str().ok().map(str::to_owned)) {
            stub.forwarded_for.lock().unwrap().push(ip);
        }
    }
    next.run(request).await
}

fn url_pairs(query: &str) -> impl Iterator<Item = (String, String)> + '_ {
    query.split('&').map(|pair| {
        let (k, v) = pair.split_once('=').unwrap_or((pair, ""));
        (k.to_owned(), v.to_owned())
    })
}

#[derive(Deserialize)]
struct SignupBody {
    #[serde(default)]
    email: String,
    #[serde(default)]
    phone: String,
    #[serde(default)]
    password: String,
    #[serde(default)]
    data: Option<Value>,
}

/// `POST /signup` (§4.1), checks in the server's order.
async fn signup(State(stub): State<Arc<Stub>>, v: ApiVersion, body: Bytes) -> Response {
    stub.counters.signup.fetch_add(1, Ordering::SeqCst);
    let body: SignupBody = match v.parse(&body) {
        Ok(body) => body,
        Err(response) => return response,
    };
    let bad = StatusCode::BAD_REQUEST;
    let unprocessable = StatusCode::UNPROCESSABLE_ENTITY;
    if body.email.is_empty() && body.phone.is_empty() {
        return v.error(
            unprocessable,
            "anonymous_provider_disabled",
            "Anonymous sign-ins are disabled",
        );
    }
    if stub.config.signup_disabled {
        return v.error(unprocessable, "signup_disabled", "Signups not allowed for this instance");
    }
    if body.password.is_empty() {
        return v.error(bad, "validation_failed", "Signup requires a valid password");
    }
    if body.password.len() > 72 {
        return v.error(bad, "validation_failed", "Password cannot be longer than 72 characters");
    }
    if body.password.chars().count() < 6 {
        return v.error_with(
            unprocessable,
            "weak_password",
            "Password should be at least 6 characters.",
            Some(&["length"]),
        );
    }
    if !body.email.is_empty() && !body.phone.is_empty() {
        return v.error(
            bad,
            "validation_failed",
            "Only an email address or phone number should be provided on signup.",
        );
    }
    let email = body.email.to_lowercase();
    if email.len() > 255 {
        return v.error(bad, "validation_failed", "An email address is too long");
    }
    let valid = email.split_once('@').is_some_and(|(local, domain)| {
        !local.is_empty() && domain.contains('.') && !domain.contains('@')
    });
    if !valid {
        return v.error(
            bad,
            "validation_failed",
            "Unable to validate email address: invalid format",
        );
    }

    let now = Utc::now();
    let mut db = stub.db();
    if let Some(existing) = db.by_email(&email).cloned() {
        if existing.confirmed_at.is_some() {
            if stub.config.autoconfirm {
                return v.error(unprocessable, "user_already_exists", "User already registered");
            }
            // Confirmed, confirmation on: an obfuscated look-alike, so as not to reveal the account.
            return Json(json!({
                "id": Uuid::new_v4(), "aud": "authenticated", "role": "", "email": email,
                "phone": "", "confirmation_sent_at": ts(now),
                "app_metadata": {"provider": "email", "providers": ["email"]},
                "user_metadata": body.data.unwrap_or_else(|| json!({})), "identities": [],
                "created_at": ts(now), "updated_at": ts(now), "is_anonymous": false,
            }))
            .into_response();
        }
        if stub.config.autoconfirm {
            // Quirk: confirms the existing user and signs in without checking the password.
            db.users.get_mut(&existing.id).unwrap().confirmed_at = Some(now);
            let session = stub.new_session(&mut db, existing.id);
            return Json(session).into_response();
        }
        if let Some(sent) = existing.confirmation_sent_at {
            let elapsed = (now - sent).num_seconds();
            if elapsed < 60 {
                return v.error(
                    StatusCode::TOO_MANY_REQUESTS,
                    "over_email_send_rate_limit",
                    &format!(
                        "For security purposes, you can only request this after {} seconds.",
                        60 - elapsed
                    ),
                );
            }
        }
        let user = db.users.get_mut(&existing.id).unwrap();
        user.confirmation_sent_at = Some(now);
        return Json(user_json(user)).into_response();
    }
    let user = StubUser {
        id: Uuid::new_v4(),
        identity_id: Uuid::new_v4(),
        email,
        password: body.password,
        data: body.data.unwrap_or_else(|| json!({})),
        confirmation_sent_at: (!stub.config.autoconfirm).then_some(now),
        confirmed_at: stub.config.autoconfirm.then_some(now),
        last_sign_in_at: None,
        banned: false,
        created_at: now,
        updated_at: now,
    };
    let id = user.id;
    db.users.insert(id, user);
    if stub.config.autoconfirm {
        Json(stub.new_session(&mut db, id)).into_response()
    } else {
        Json(user_json(&db.users[&id])).into_response()
    }
}

#[derive(Deserialize)]
struct GrantQuery {
    grant_type: Option<String>,
}

#[derive(Deserialize)]
struct PasswordBody {
    #[serde(default)]
    email: String,
    #[serde(default)]
    phone: String,
    #[serde(default)]
    password: String,
}

#[derive(Deserialize)]
struct RefreshBody {
    #[serde(default)]
    refresh_token: String,
}

/// `POST /token` (§4.2, §4.3).
async fn token(
    State(stub): State<Arc<Stub>>,
    v: ApiVersion,
    Query(query): Query<GrantQuery>,
    body: Bytes,
) -> Response {
    stub.counters.token.fetch_add(1, Ordering::SeqCst);
    let bad = StatusCode::BAD_REQUEST;
    let grant = query.grant_type.unwrap_or_default();
    if grant != "password" && grant != "refresh_token" {
        return v.error(bad, "invalid_credentials", "unsupported_grant_type");
    }
    let seen = stub.token_requests.fetch_add(1, Ordering::SeqCst);
    if stub.config.token_burst.is_some_and(|burst| seen >= burst) {
        return v.error(
            StatusCode::TOO_MANY_REQUESTS,
            "over_request_rate_limit",
            "Request rate limit reached",
        );
    }
    if grant == "password" {
        password_grant(&stub, v, &body)
    } else {
        refresh_grant(&stub, v, &body)
    }
}

fn password_grant(stub: &Stub, v: ApiVersion, body: &Bytes) -> Response {
    let bad = StatusCode::BAD_REQUEST;
    let body: PasswordBody = match v.parse(body) {
        Ok(body) => body,
        Err(response) => return response,
    };
    if !body.email.is_empty() && !body.phone.is_empty() {
        return v.error(
            bad,
            "validation_failed",
            "Only an email address or phone number should be provided on login.",
        );
    }
    if body.email.is_empty() && body.phone.is_empty() {
        return v.error(bad, "validation_failed", "missing email or phone");
    }
    let mut db = stub.db();
    let Some(user) = db.by_email(&body.email.to_lowercase()).cloned() else {
        return v.error(bad, "invalid_credentials", "Invalid login credentials");
    };
    if user.banned {
        return v.error(bad, "user_banned", "User is banned");
    }
    if user.password != body.password {
        return v.error(bad, "invalid_credentials", "Invalid login credentials");
    }
    if user.confirmed_at.is_none() {
        return v.error(bad, "email_not_confirmed", "Email not confirmed");
    }
    let mut session = stub.new_session(&mut db, user.id);
    session["weak_password"] = Value::Null;
    Json(session).into_response()
}

fn refresh_grant(stub: &Stub, v: ApiVersion, body: &Bytes) -> Response {
    let bad = StatusCode::BAD_REQUEST;
    let body: RefreshBody = match v.parse(body) {
        Ok(body) => body,
        Err(response) => return response,
    };
    let token = body.refresh_token;
    let well_formed =
        token.len() == 12 && token.bytes().all(|b| b.is_ascii_lowercase() || b.is_ascii_digit());
    if !well_formed {
        return v.error(bad, "validation_failed", "Refresh token is not valid");
    }
    let mut db = stub.db();
    let Some(row) = db.refresh_tokens.get(&token).cloned() else {
        return v.error(
            bad,
            "refresh_token_not_found",
            "Invalid Refresh Token: Refresh Token Not Found",
        );
    };
    let Some(&(_, signed_in_at)) = db.sessions.get(&row.session_id) else {
        return v.error(
            bad,
            "refresh_token_not_found",
            "Invalid Refresh Token: Refresh Token Not Found",
        );
    };
    let user = db.users[&row.user_id].clone();
    if user.banned {
        return v.error(bad, "user_banned", "Invalid Refresh Token: User Banned");
    }
    if db.ended_sessions.contains(&row.session_id) {
        return v.error(bad, "session_expired", "Invalid Refresh Token: Session Expired");
    }
    let next = match row.revoked_at {
        None => {
            db.refresh_tokens.get_mut(&token).unwrap().revoked_at = Some(Instant::now());
            db.new_refresh_token(row.session_id, row.user_id, Some(token.clone()))
        }
        Some(revoked_at) => {
            let active = db.active_token(row.session_id);
            let parent_of_active = active
                .as_ref()
                .and_then(|a| db.refresh_tokens.get(a))
                .is_some_and(|a| a.parent.as_deref() == Some(token.as_str()));
            let within_interval = revoked_at.elapsed() < stub.config.reuse_interval;
            match active {
                Some(active) if parent_of_active || within_interval => active,
                _ => {
                    // Reuse outside the allowances: the whole session is revoked.
                    db.delete_session(row.session_id);
                    return v.error(
                        bad,
                        "refresh_token_already_used",
                        "Invalid Refresh Token: Already Used",
                    );
                }
            }
        }
    };
    Json(stub.session_json(&user, row.session_id, signed_in_at, next)).into_response()
}

/// The authentication every user endpoint runs (§4.5), in the server's order.
fn authenticate(
    stub: &Stub,
    v: ApiVersion,
    headers: &HeaderMap,
) -> Result<(StubUser, Option<Uuid>), Response> {
    let no_auth = || {
        v.error(
            StatusCode::UNAUTHORIZED,
            "no_authorization",
            "This endpoint requires a valid Bearer token",
        )
    };
    let value =
        headers.get(header::AUTHORIZATION).and_then(|v| v.to_str().ok()).ok_or_else(no_auth)?;
    let (scheme, token) = value.split_once(' ').ok_or_else(no_auth)?;
    if !scheme.eq_ignore_ascii_case("bearer") || token.trim().is_empty() {
        return Err(no_auth());
    }
    let bad_jwt = |status: StatusCode, msg: &str| v.error(status, "bad_jwt", msg);
    let prefix = "invalid JWT: unable to parse or verify signature, ";
    let header = jsonwebtoken::decode_header(token).map_err(|_| {
        bad_jwt(
            StatusCode::FORBIDDEN,
            &format!("{prefix}token is malformed: could not base64 decode header"),
        )
    })?;
    let key = match header.alg {
        // HS256 with an unknown or missing kid falls back to the legacy secret.
        Algorithm::HS256 => DecodingKey::from_secret(LEGACY_SECRET.as_bytes()),
        Algorithm::ES256 if stub.config.keys == KeyMode::Jwks => {
            let kid = header.kid.unwrap_or_default();
            let keys = stub.keys.lock().unwrap();
            let Some(key) = keys.iter().find(|k| k.kid == kid) else {
                return Err(bad_jwt(
                    StatusCode::FORBIDDEN,
                    &format!(
                        "{prefix}token is unverifiable: error while executing keyfunc: invalid kid: {kid}"
                    ),
                ));
            };
            key.decoding.clone()
        }
        alg => {
            return Err(bad_jwt(
                StatusCode::FORBIDDEN,
                &format!("{prefix}token signature is invalid: signing method {alg:?} is invalid"),
            ));
        }
    };
    let mut validation = Validation::new(header.alg);
    validation.validate_aud = false;
    validation.leeway = 0;
    validation.set_required_spec_claims::<&str>(&[]);
    let claims = jsonwebtoken::decode::<Value>(token, &key, &validation)
        .map_err(|err| {
            let detail = match err.kind() {
                ErrorKind::ExpiredSignature => "token has invalid claims: token is expired",
                ErrorKind::InvalidSignature => "token signature is invalid: signature is invalid",
                _ => "token is malformed: token contains an invalid number of segments",
            };
            bad_jwt(StatusCode::FORBIDDEN, &format!("{prefix}{detail}"))
        })?
        .claims;
    let Some(sub) = claims.get("sub").and_then(|s| s.as_str()).filter(|s| !s.is_empty()) else {
        return Err(bad_jwt(StatusCode::FORBIDDEN, "invalid claim: missing sub claim"));
    };
    let Ok(user_id) = Uuid::parse_str(sub) else {
        return Err(bad_jwt(StatusCode::BAD_REQUEST, "invalid claim: sub claim must be a UUID"));
    };
    let db = stub.db();
    let Some(user) = db.users.get(&user_id).cloned() else {
        return Err(v.error(
            StatusCode::FORBIDDEN,
            "user_not_found",
            "User from sub claim in JWT does not exist",
        ));
    };
    let session_id = match claims.get("session_id").and_then(|s| s.as_str()) {
        None | Some("") => None,
        Some(id) => {
            let Ok(id) = Uuid::parse_str(id) else {
                return Err(bad_jwt(
                    StatusCode::FORBIDDEN,
                    "invalid claim: session_id claim must be a UUID",
                ));
            };
            if !db.sessions.contains_key(&id) {
                return Err(v.error(
                    StatusCode::FORBIDDEN,
                    "session_not_found",
                    "Session from session_id claim in JWT does not exist",
                ));
            }
            Some(id)
        }
    };
    if user.banned {
        return Err(v.error(StatusCode::FORBIDDEN, "user_banned", "User is banned"));
    }
    Ok((user, session_id))
}

/// `GET /user` (§4.5).
async fn user(State(stub): State<Arc<Stub>>, v: ApiVersion, headers: HeaderMap) -> Response {
    stub.counters.user.fetch_add(1, Ordering::SeqCst);
    match authenticate(&stub, v, &headers) {
        Ok((user, _)) => Json(user_json(&user)).into_response(),
        Err(response) => response,
    }
}

#[derive(Deserialize)]
struct ScopeQuery {
    scope: Option<String>,
}

/// `POST /logout?scope=` (§4.4).
async fn logout(
    State(stub): State<Arc<Stub>>,
    v: ApiVersion,
    Query(query): Query<ScopeQuery>,
    headers: HeaderMap,
) -> Response {
    stub.counters.logout.fetch_add(1, Ordering::SeqCst);
    let scope = query.scope.unwrap_or_default();
    if !matches!(scope.as_str(), "" | "global" | "local" | "others") {
        return v.error(
            StatusCode::BAD_REQUEST,
            "validation_failed",
            &format!("Unsupported logout scope {scope:?}"),
        );
    }
    let (user, session_id) = match authenticate(&stub, v, &headers) {
        Ok(found) => found,
        Err(response) => return response,
    };
    let mut db = stub.db();
    let mine: Vec<Uuid> =
        db.sessions.iter().filter(|(_, (u, _))| *u == user.id).map(|(id, _)| *id).collect();
    for id in mine {
        let end = match (scope.as_str(), session_id) {
            ("local", Some(current)) => id == current,
            ("others", Some(current)) => id != current,
            // No session_id: always global.
            _ => true,
        };
        if end {
            db.delete_session(id);
        }
    }
    StatusCode::NO_CONTENT.into_response()
}

/// `GET /.well-known/jwks.json` (§4.6): no apikey needed; legacy projects publish no keys.
async fn jwks(State(stub): State<Arc<Stub>>) -> Response {
    stub.counters.jwks.fetch_add(1, Ordering::SeqCst);
    if !stub.config.jwks_delay.is_zero() {
        tokio::time::sleep(stub.config.jwks_delay).await;
    }
    let keys: Vec<Value> = match stub.config.keys {
        KeyMode::Legacy => Vec::new(),
        KeyMode::Jwks => stub.keys.lock().unwrap().iter().map(|k| k.jwk.clone()).collect(),
    };
    let mut response = Json(json!({"keys": keys})).into_response();
    response
        .headers_mut()
        .insert(header::CACHE_CONTROL, HeaderValue::from_static("public, max-age=600"));
    response
}

async fn health() -> Json<Value> {
    Json(json!({"version": "v2.196.0", "name": "GoTrue",
                "description": "GoTrue is a user registration and authentication API"}))
}

async fn settings(State(stub): State<Arc<Stub>>) -> Json<Value> {
    Json(json!({
        "external": {"email": true, "phone": false, "anonymous_users": false},
        "disable_signup": stub.config.signup_disabled,
        "mailer_autoconfirm": stub.config.autoconfirm, "phone_autoconfirm": false,
        "sms_provider": "", "saml_enabled": false, "saml_private_key_next_configured": false,
        "passkeys_enabled": false,
    }))
}
