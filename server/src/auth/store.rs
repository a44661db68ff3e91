//! The account tables: users and refresh-token families (login failures are counted in
//! [`crate::throttle`]). Plain functions over a pooled client or a transaction.

use chrono::{DateTime, Utc};
use deadpool_postgres::GenericClient;
use protocol::auth::{Role, User};
use tokio_postgres::Row;
use tokio_postgres::error::SqlState;
use uuid::Uuid;

use super::tokens::IssuedRefresh;
use crate::error::ApiError;

pub fn role_from_db(value: &str) -> Role {
    match value {
        "admin" => Role::Admin,
        _ => Role::User,
    }
}

pub fn role_to_db(role: Role) -> &'static str {
    match role {
        Role::Admin => "admin",
        Role::User => "user",
    }
}

fn user_from_row(row: &Row) -> Result<User, tokio_postgres::Error> {
    Ok(User {
        id: row.try_get("id")?,
        username: row.try_get("username")?,
        email: row.try_get("email")?,
        role: role_from_db(row.try_get("role")?),
        created_at: row.try_get("created_at")?,
    })
}

/// Inserts an account. A taken username or email (in any letter case) is a 409.
pub async fn insert_user(
    db: &impl GenericClient,
    username: &str,
    email: &str,
    password_hash: &str,
    role: Role,
) -> Result<User, ApiError> {
    let statement = db
        .prepare_cached(
            "INSERT INTO users (username, email, password_hash, role) VALUES ($1, $2, $3, $4)
             RETURNING id, username, email, role, created_at",
        )
        .await?;
    match db
        .query_one(
            &statement,
            &[&username, &email, &password_hash, &role_to_db(role)],
        )
        .await
    {
        Ok(row) => Ok(user_from_row(&row)?),
        Err(e) if e.code() == Some(&SqlState::UNIQUE_VIOLATION) => {
            let constraint = e
                .as_db_error()
                .and_then(|d| d.constraint())
                .unwrap_or_default();
            Err(ApiError::Conflict(if constraint == "users_email_key" {
                "an account with this email already exists".into()
            } else {
                "this username is already taken".into()
            }))
        }
        Err(e) => Err(e.into()),
    }
}

/// What a sign-up would collide with, if anything: checked before hashing, so a taken name
/// costs a query and not a hash.
pub async fn taken(
    db: &impl GenericClient,
    username: &str,
    email: &str,
) -> Result<Option<&'static str>, ApiError> {
    let statement = db
        .prepare_cached(
            "SELECT lower(username) = lower($1) FROM users
             WHERE lower(username) = lower($1) OR lower(email) = lower($2)
             ORDER BY 1 DESC LIMIT 1",
        )
        .await?;
    let row = db.query_opt(&statement, &[&username, &email]).await?;
    Ok(match row {
        None => None,
        Some(row) if row.try_get::<_, bool>(0)? => Some("this username is already taken"),
        Some(_) => Some("an account with this email already exists"),
    })
}

/// An account with its password hash, for the login check only.
pub struct Credentials {
    pub user: User,
    pub password_hash: String,
}

pub async fn credentials_by_username(
    db: &impl GenericClient,
    username: &str,
) -> Result<Option<Credentials>, ApiError> {
    let statement = db
        .prepare_cached(
            "SELECT id, username, email, role, created_at, password_hash FROM users
             WHERE lower(username) = lower($1)",
        )
        .await?;
    let Some(row) = db.query_opt(&statement, &[&username]).await? else {
        return Ok(None);
    };
    Ok(Some(Credentials {
        user: user_from_row(&row)?,
        password_hash: row.try_get("password_hash")?,
    }))
}

/// The public view of an account: for a token refresh, and the chat socket's `ready` frame.
pub async fn user_by_id(db: &impl GenericClient, id: Uuid) -> Result<Option<User>, ApiError> {
    let statement = db
        .prepare_cached("SELECT id, username, email, role, created_at FROM users WHERE id = $1")
        .await?;
    match db.query_opt(&statement, &[&id]).await? {
        Some(row) => Ok(Some(user_from_row(&row)?)),
        None => Ok(None),
    }
}

pub async fn insert_refresh(
    db: &impl GenericClient,
    issued: &IssuedRefresh,
    family_id: Uuid,
    user_id: Uuid,
) -> Result<(), ApiError> {
    let statement = db
        .prepare_cached(
            "INSERT INTO refresh_tokens (id, family_id, user_id, token_hash, expires_at)
             VALUES ($1, $2, $3, $4, $5)",
        )
        .await?;
    db.execute(
        &statement,
        &[
            &issued.jti,
            &family_id,
            &user_id,
            &issued.hash,
            &issued.expires_at,
        ],
    )
    .await?;
    Ok(())
}

/// Drops `user_id`'s expired refresh tokens: their JWTs are refused before any lookup, so the
/// rows only take space. Done at login, which keeps the table bounded by live sessions.
pub async fn prune_expired_refresh(db: &impl GenericClient, user_id: Uuid) -> Result<(), ApiError> {
    let statement = db
        .prepare_cached("DELETE FROM refresh_tokens WHERE user_id = $1 AND expires_at < now()")
        .await?;
    db.execute(&statement, &[&user_id]).await?;
    Ok(())
}

/// A stored refresh token.
pub struct RefreshRow {
    pub id: Uuid,
    pub family_id: Uuid,
    pub user_id: Uuid,
    pub expires_at: DateTime<Utc>,
    pub used: bool,
    pub revoked: bool,
}

/// Finds a refresh token by its hash and locks its row until the transaction ends, so two
/// concurrent uses of one token are decided one after the other.
pub async fn lock_refresh(
    db: &impl GenericClient,
    token_hash: &[u8],
) -> Result<Option<RefreshRow>, ApiError> {
    let statement = db
        .prepare_cached(
            "SELECT id, family_id, user_id, expires_at, used_at IS NOT NULL AS used,
                    revoked_at IS NOT NULL AS revoked
             FROM refresh_tokens WHERE token_hash = $1 FOR UPDATE",
        )
        .await?;
    let Some(row) = db.query_opt(&statement, &[&token_hash]).await? else {
        return Ok(None);
    };
    Ok(Some(RefreshRow {
        id: row.try_get("id")?,
        family_id: row.try_get("family_id")?,
        user_id: row.try_get("user_id")?,
        expires_at: row.try_get("expires_at")?,
        used: row.try_get("used")?,
        revoked: row.try_get("revoked")?,
    }))
}

pub async fn mark_refresh_used(db: &impl GenericClient, id: Uuid) -> Result<(), ApiError> {
    let statement = db
        .prepare_cached("UPDATE refresh_tokens SET used_at = now() WHERE id = $1")
        .await?;
    db.execute(&statement, &[&id]).await?;
    Ok(())
}

/// Revokes every token of a family; returns how many were still live.
pub async fn revoke_family(db: &impl GenericClient, family_id: Uuid) -> Result<u64, ApiError> {
    let statement = db
        .prepare_cached(
            "UPDATE refresh_tokens SET revoked_at = now()
             WHERE family_id = $1 AND revoked_at IS NULL",
        )
        .await?;
    Ok(db.execute(&statement, &[&family_id]).await?)
}

/// Gives an existing account the admin role; returns whether it exists.
pub async fn promote_to_admin(db: &impl GenericClient, username: &str) -> Result<bool, ApiError> {
    let statement = db
        .prepare_cached("UPDATE users SET role = 'admin' WHERE lower(username) = lower($1)")
        .await?;
    Ok(db.execute(&statement, &[&username]).await? > 0)
}

pub async fn role_of(db: &impl GenericClient, id: Uuid) -> Result<Option<Role>, ApiError> {
    let statement = db
        .prepare_cached("SELECT role FROM users WHERE id = $1")
        .await?;
    let row = db.query_opt(&statement, &[&id]).await?;
    Ok(row
        .map(|r| r.try_get::<_, &str>(0).map(role_from_db))
        .transpose()?)
}

/// Sets `user_id`'s password hash to `new_hash` if it is still `old_hash`; returns whether it
/// changed.
pub async fn replace_password_hash(
    db: &impl GenericClient,
    user_id: Uuid,
    old_hash: &str,
    new_hash: &str,
) -> Result<bool, ApiError> {
    let statement = db
        .prepare_cached("UPDATE users SET password_hash = $3 WHERE id = $1 AND password_hash = $2")
        .await?;
    Ok(db
        .execute(&statement, &[&user_id, &old_hash, &new_hash])
        .await?
        > 0)
}
