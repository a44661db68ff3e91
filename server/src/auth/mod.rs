//! Accounts and tokens: signup, login (throttled), refresh-token rotation with reuse detection,
//! logout, and the `AuthUser` / `AdminUser` extractors every protected route uses.
//!
//! - [`tokens`]: JWT issue and verification (HS256 only, typed access/refresh tokens).
//! - [`password`]: argon2id hashing on a fixed set of workers behind a bounded gate.
//! - [`django`]: the Django prototype's imported hashes, verified until the next login.
//! - [`validate`]: username, email and password rules.
//! - [`store`]: the `users` and `refresh_tokens` tables.
//!
//! Nothing here takes the application state whole: the extractors and handlers take the parts
//! they use as axum sub-states (`Arc<TokenService>`, the pool, the config, the trusted proxies;
//! see [`routes`]).
//!
//! Why one file: the account endpoints and the extractors that check their tokens are one contract
//! (what a token proves, how every route asks for it); hashing, tokens, validation and storage are
//! the rooms below.

use std::sync::Arc;

use axum::Json;
use axum::extract::{FromRef, FromRequestParts, State};
use axum::http::StatusCode;
use axum::http::request::Parts;
use deadpool_postgres::Pool;
use protocol::ErrorBody;
use protocol::auth::{
    LoginRequest, LogoutRequest, RefreshRequest, Role, SignupRequest, TokenPair, User,
};
use utoipa_axum::router::OpenApiRouter;
use utoipa_axum::routes;
use uuid::Uuid;

use crate::client_ip::{ClientIp, TrustedProxies};
use crate::config::Config;
use crate::error::{ApiError, ApiResult};
use crate::extract::ApiJson;
use crate::throttle;

pub mod django;
pub mod password;
pub mod store;
pub mod tokens;
pub mod validate;

pub use tokens::TokenService;

/// The caller, from a valid `Authorization: Bearer <access token>`.
#[derive(Debug, Clone)]
pub struct AuthUser {
    pub id: Uuid,
    pub username: String,
    pub role: Role,
    /// When the access token expires (unix seconds).
    pub expires_at: i64,
}

impl AuthUser {
    /// When the access token expires, on the tokio clock (sockets close then unless renewed).
    pub fn expiry(&self) -> tokio::time::Instant {
        let left = self
            .expires_at
            .saturating_sub(chrono::Utc::now().timestamp());
        tokio::time::Instant::now()
            + std::time::Duration::from_secs(u64::try_from(left).unwrap_or(0))
    }
}

/// The token of an `Authorization: Bearer ...` header (the scheme name is case-insensitive).
pub fn bearer_token(headers: &axum::http::HeaderMap) -> Option<&str> {
    let value = headers
        .get(axum::http::header::AUTHORIZATION)?
        .to_str()
        .ok()?;
    let (scheme, token) = value.split_once(' ')?;
    let token = token.trim();
    (scheme.eq_ignore_ascii_case("bearer") && !token.is_empty()).then_some(token)
}

impl<S> FromRequestParts<S> for AuthUser
where
    S: Send + Sync,
    Arc<TokenService>: FromRef<S>,
{
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, state: &S) -> Result<Self, ApiError> {
        let token =
            bearer_token(&parts.headers).ok_or(ApiError::Unauthorized("missing bearer token"))?;
        Arc::<TokenService>::from_ref(state).verify_access(token)
    }
}

/// The caller, who must hold the admin role in the database (not merely in the token), so
/// a demotion takes effect at once.
#[derive(Debug, Clone)]
pub struct AdminUser(pub AuthUser);

impl<S> FromRequestParts<S> for AdminUser
where
    S: Send + Sync,
    Arc<TokenService>: FromRef<S>,
    Pool: FromRef<S>,
{
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, state: &S) -> Result<Self, ApiError> {
        let user = AuthUser::from_request_parts(parts, state).await?;
        let client = Pool::from_ref(state).get().await?;
        match store::role_of(&client, user.id).await? {
            Some(Role::Admin) => Ok(Self(AuthUser {
                role: Role::Admin,
                ..user
            })),
            Some(Role::User) => Err(ApiError::Forbidden("this needs the admin role")),
            None => Err(ApiError::Unauthorized("this account no longer exists")),
        }
    }
}

/// The account routes, for any application state that holds the config, the pool, the token
/// service and the trusted proxies.
pub fn routes<S>() -> OpenApiRouter<S>
where
    S: Clone + Send + Sync + 'static,
    Arc<Config>: FromRef<S>,
    Pool: FromRef<S>,
    Arc<TokenService>: FromRef<S>,
    Arc<TrustedProxies>: FromRef<S>,
{
    OpenApiRouter::new()
        .routes(routes!(signup))
        .routes(routes!(login))
        .routes(routes!(refresh))
        .routes(routes!(logout))
}

/// Creates an account and queues its welcome mail, both or neither.
///
/// Throttled per client address (and optionally overall), checked for a taken name or address
/// before any hashing, and hashed through the bounded hashing gate.
#[utoipa::path(
    post,
    path = "/api/signup/",
    tag = "accounts",
    request_body = SignupRequest,
    responses(
        (status = 201, description = "Account created", body = User),
        (status = 400, description = "Malformed JSON", body = ErrorBody),
        (status = 409, description = "Username or email already taken", body = ErrorBody),
        (status = 422, description = "A field breaks a rule", body = ErrorBody),
        (status = 429, description = "Too many sign-ups from this address; see Retry-After", body = ErrorBody),
        (status = 503, description = "Too many sign-ups and logins at once; see Retry-After", body = ErrorBody),
    )
)]
async fn signup(
    State(config): State<Arc<Config>>,
    State(db): State<Pool>,
    client_ip: ClientIp,
    ApiJson(body): ApiJson<SignupRequest>,
) -> ApiResult<(StatusCode, Json<User>)> {
    let problems = validate::signup(&body.username, &body.email, &body.password);
    if !problems.is_empty() {
        return Err(ApiError::Validation(problems));
    }
    {
        let client = db.get().await?;
        let mut limits = vec![throttle::Limit {
            key: format!("signup:ip:{}", client_ip.limit_key()),
            max: config.signup_max_per_addr,
            window_secs: config.signup_window_secs,
        }];
        if config.signup_max_per_minute > 0 {
            limits.push(throttle::Limit {
                key: "signup:all".to_owned(),
                max: config.signup_max_per_minute,
                window_secs: 60,
            });
        }
        if let throttle::Verdict::Limited { retry_after_secs } =
            throttle::hit(&client, &limits).await?
        {
            metrics::counter!("auth_signups_throttled_total").increment(1);
            return Err(ApiError::RateLimited {
                message: "too many sign-ups; try again later".into(),
                retry_after_secs,
            });
        }
        // A taken name or address costs a query, not a hash (the insert still checks, for
        // two sign-ups racing for one name).
        if let Some(taken) = store::taken(&client, &body.username, &body.email).await? {
            return Err(ApiError::Conflict(taken.into()));
        }
    }
    // The pooled connection is not held while hashing.
    let password_hash = password::hash(body.password).await?;

    let mut client = db.get().await?;
    let tx = client.transaction().await?;
    let user =
        store::insert_user(&tx, &body.username, &body.email, &password_hash, Role::User).await?;
    crate::jobs::outbox::enqueue_welcome(&tx, &user).await?;
    tx.commit().await?;

    tracing::info!(user_id = %user.id, username = %user.username, "account created");
    metrics::counter!("auth_signups_total").increment(1);
    Ok((StatusCode::CREATED, Json(user)))
}

/// The login limits: failures per (username, address), so nobody can lock a user out at their
/// own address, and per address alone, with a higher bound, against one client trying many
/// usernames.
fn login_limits(config: &Config, username: &str, client_ip: ClientIp) -> [throttle::Limit; 2] {
    let addr = client_ip.limit_key();
    [
        throttle::Limit {
            key: format!("login:user-ip:{}|{addr}", username.to_lowercase()),
            max: config.login_max_failures,
            window_secs: config.login_lockout_secs,
        },
        throttle::Limit {
            key: format!("login:ip:{addr}"),
            max: config.login_max_failures_per_addr,
            window_secs: config.login_lockout_secs,
        },
    ]
}

const BAD_CREDENTIALS: &str = "invalid username or password";

/// Exchanges a username and password for an access and a refresh token.
///
/// An unknown user and a wrong password get the same answer in about the same time. Each
/// attempt is counted before the password is checked (one atomic statement per limit), so
/// parallel guesses get no extra tries; a success takes its attempt back. Too many failures
/// for one username from one address, or from one address overall, lock further attempts
/// (429).
#[utoipa::path(
    post,
    path = "/api/login/",
    tag = "accounts",
    request_body = LoginRequest,
    responses(
        (status = 200, description = "Logged in", body = TokenPair),
        (status = 401, description = "Wrong username or password", body = ErrorBody),
        (status = 422, description = "A field is too long or empty", body = ErrorBody),
        (status = 429, description = "Too many failed logins; see Retry-After", body = ErrorBody),
        (status = 503, description = "Too many sign-ups and logins at once; see Retry-After", body = ErrorBody),
    )
)]
async fn login(
    State(config): State<Arc<Config>>,
    State(db): State<Pool>,
    State(token_service): State<Arc<TokenService>>,
    client_ip: ClientIp,
    ApiJson(body): ApiJson<LoginRequest>,
) -> ApiResult<Json<TokenPair>> {
    // Bounded before any work, so a huge password cannot buy a long hash.
    if body.username.is_empty() || body.username.len() > validate::EMAIL_MAX {
        return Err(ApiError::validation(
            "username",
            "must be 1 to 254 bytes long",
        ));
    }
    if body.password.len() > password::MAX_LEN {
        return Err(ApiError::validation(
            "password",
            "must be at most 1024 bytes long",
        ));
    }
    let limits = login_limits(&config, &body.username, client_ip);

    let (counted, credentials) = {
        let client = db.get().await?;
        let counted = match throttle::hit(&client, &limits).await? {
            throttle::Verdict::Allowed(counted) => counted,
            throttle::Verdict::Limited { retry_after_secs } => {
                metrics::counter!("auth_logins_total", "outcome" => "locked").increment(1);
                return Err(ApiError::RateLimited {
                    message: "too many failed logins; try again later".into(),
                    retry_after_secs,
                });
            }
        };
        (
            counted,
            store::credentials_by_username(&client, &body.username).await?,
        )
    };

    // The pooled connection is not held while hashing.
    let (user, phc) = match credentials {
        Some(c) => (Some(c.user), Some(c.password_hash)),
        None => (None, None),
    };
    // A Django prototype hash that verifies is replaced by argon2id below.
    let legacy = phc
        .clone()
        .filter(|h| django::is_django_hash(h))
        .map(|h| (h, body.password.clone()));
    let matches = password::verify(body.password, phc).await;

    let client = db.get().await?;
    let user = match (user, matches) {
        (Some(user), Ok(true)) => user,
        (_, Ok(false)) | (None, Ok(true)) => {
            // The attempts stay counted: that is the failure being recorded.
            metrics::counter!("auth_logins_total", "outcome" => "failed").increment(1);
            return Err(ApiError::Unauthorized(BAD_CREDENTIALS));
        }
        (_, Err(e)) => {
            // Not a guess that failed (the gate was full, say): give the attempt back.
            for hit in &counted {
                throttle::undo(&client, hit).await?;
            }
            return Err(e);
        }
    };
    // The user proved the password: this pair's failures are forgotten, and this attempt does
    // not count against the address.
    for hit in &counted {
        if hit.key() == limits[0].key {
            throttle::clear(&client, hit.key()).await?;
        } else {
            throttle::undo(&client, hit).await?;
        }
    }
    if let Some((old_hash, password)) = legacy {
        upgrade_legacy_hash(&client, user.id, &old_hash, password).await?;
    }
    store::prune_expired_refresh(&client, user.id).await?;

    let refresh = token_service.issue_refresh(user.id)?;
    store::insert_refresh(&client, &refresh, Uuid::new_v4(), user.id).await?;
    let access = token_service.issue_access(user.id, &user.username, user.role)?;
    metrics::counter!("auth_logins_total", "outcome" => "ok").increment(1);
    Ok(Json(token_pair(&token_service, access, refresh.token)))
}

fn token_pair(tokens: &TokenService, access: String, refresh: String) -> TokenPair {
    TokenPair {
        access,
        refresh,
        token_type: "Bearer".to_owned(),
        expires_in: tokens.access_ttl_secs(),
    }
}

/// Exchanges a refresh token for a new pair. Each refresh token works once; presenting a used
/// one again revokes its whole family (every token descended from the same login).
#[utoipa::path(
    post,
    path = "/api/token/refresh/",
    tag = "accounts",
    request_body = RefreshRequest,
    responses(
        (status = 200, description = "A new token pair", body = TokenPair),
        (status = 401, description = "Invalid, expired, revoked or reused refresh token", body = ErrorBody),
    )
)]
async fn refresh(
    State(db): State<Pool>,
    State(token_service): State<Arc<TokenService>>,
    ApiJson(body): ApiJson<RefreshRequest>,
) -> ApiResult<Json<TokenPair>> {
    let claims = token_service.verify_refresh(&body.refresh)?;
    let token_hash = tokens::hash_token(&body.refresh);

    let mut client = db.get().await?;
    let tx = client.transaction().await?;
    let row = store::lock_refresh(&tx, &token_hash)
        .await?
        .filter(|row| row.id == claims.jti && row.user_id == claims.user_id)
        .ok_or(ApiError::Unauthorized("unknown refresh token"))?;
    if row.revoked {
        return Err(ApiError::Unauthorized(
            "refresh token revoked; log in again",
        ));
    }
    if row.used {
        // Someone holds a copy: the thief or the owner, we cannot tell which, so every token
        // of this login dies and the owner logs in again.
        let revoked = store::revoke_family(&tx, row.family_id).await?;
        tx.commit().await?;
        tracing::warn!(
            user_id = %row.user_id,
            family_id = %row.family_id,
            revoked,
            "refresh token reused; its family is revoked"
        );
        metrics::counter!("auth_refresh_reuse_total").increment(1);
        return Err(ApiError::Unauthorized(
            "refresh token already used; log in again",
        ));
    }
    if row.expires_at <= chrono::Utc::now() {
        return Err(ApiError::Unauthorized("refresh token expired"));
    }
    let user = store::user_by_id(&tx, row.user_id)
        .await?
        .ok_or(ApiError::Unauthorized("this account no longer exists"))?;

    store::mark_refresh_used(&tx, row.id).await?;
    let next = token_service.issue_refresh(user.id)?;
    store::insert_refresh(&tx, &next, row.family_id, user.id).await?;
    tx.commit().await?;

    let access = token_service.issue_access(user.id, &user.username, user.role)?;
    Ok(Json(token_pair(&token_service, access, next.token)))
}

/// Ends a login: revokes the given refresh token's family. The access token stays valid until
/// it expires (it is short-lived and not stored).
#[utoipa::path(
    post,
    path = "/api/logout/",
    tag = "accounts",
    request_body = LogoutRequest,
    security(("bearer" = [])),
    responses(
        (status = 204, description = "Logged out"),
        (status = 401, description = "Missing or bad access token, or unknown refresh token", body = ErrorBody),
        (status = 403, description = "The refresh token belongs to another account", body = ErrorBody),
    )
)]
async fn logout(
    State(db): State<Pool>,
    State(token_service): State<Arc<TokenService>>,
    user: AuthUser,
    ApiJson(body): ApiJson<LogoutRequest>,
) -> ApiResult<StatusCode> {
    let claims = token_service.verify_refresh_ignoring_expiry(&body.refresh)?;
    if claims.user_id != user.id {
        return Err(ApiError::Forbidden(
            "that refresh token belongs to another account",
        ));
    }
    let mut client = db.get().await?;
    let tx = client.transaction().await?;
    let row = store::lock_refresh(&tx, &tokens::hash_token(&body.refresh))
        .await?
        .filter(|row| row.user_id == user.id)
        .ok_or(ApiError::Unauthorized("unknown refresh token"))?;
    store::revoke_family(&tx, row.family_id).await?;
    tx.commit().await?;
    Ok(StatusCode::NO_CONTENT)
}

/// Creates the `ADMIN_USERNAME` account with the admin role if it does not exist, or gives
/// the existing account the admin role. An existing password is left alone. Safe when several
/// instances start at once.
pub async fn bootstrap_admin(config: &Config, db: &deadpool_postgres::Pool) -> anyhow::Result<()> {
    let (Some(username), Some(password)) = (&config.admin_username, &config.admin_password) else {
        return Ok(());
    };
    if let Some(problem) = validate::username(username) {
        anyhow::bail!("ADMIN_USERNAME {problem}");
    }
    if let Some(problem) = validate::password(password.expose()) {
        anyhow::bail!("ADMIN_PASSWORD {problem}");
    }
    let client = db.get().await?;
    if store::promote_to_admin(&client, username).await? {
        tracing::info!(%username, "bootstrap admin present");
        return Ok(());
    }
    let hash = password::hash(password.expose().to_owned()).await?;
    let email = format!("{}@localhost", username.to_lowercase());
    match store::insert_user(&client, username, &email, &hash, Role::Admin).await {
        Ok(user) => tracing::info!(user_id = %user.id, %username, "bootstrap admin created"),
        // Another instance created it meanwhile, or the address is taken: make sure the name
        // holds the role, and say so if it does not exist at all.
        Err(ApiError::Conflict(_)) => {
            if !store::promote_to_admin(&client, username).await? {
                anyhow::bail!(
                    "cannot create the admin account: {email} belongs to another account"
                );
            }
        }
        Err(e) => return Err(anyhow::anyhow!("creating the admin account: {e}")),
    }
    Ok(())
}

/// Replaces an imported Django hash that just verified with an argon2id hash of the same
/// password, so the account is off PBKDF2 (or bcrypt) after one login. The update only applies
/// if the stored hash is still the one verified: one statement, so the swap is atomic and a
/// concurrent login or password change is never overwritten.
async fn upgrade_legacy_hash(
    client: &impl deadpool_postgres::GenericClient,
    user_id: Uuid,
    old_hash: &str,
    password: String,
) -> Result<(), ApiError> {
    let new_hash = password::hash(password).await?;
    if store::replace_password_hash(client, user_id, old_hash, &new_hash).await? {
        tracing::info!(%user_id, "imported password hash upgraded to argon2id");
        metrics::counter!("auth_legacy_hash_upgrades_total").increment(1);
    }
    Ok(())
}
