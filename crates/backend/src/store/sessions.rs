//! Login sessions and their rotating refresh tokens.

use chrono::{DateTime, Utc};
use uuid::Uuid;

use super::{Store, StoreError, StoreResult, on_db};

#[derive(Debug, Clone, sqlx::FromRow)]
pub struct AuthSessionRow {
    pub id: Uuid,
    pub user_id: Uuid,
    pub created_at: DateTime<Utc>,
    pub not_after: DateTime<Utc>,
    pub user_agent: Option<String>,
    pub ip: Option<String>,
}

/// What presenting a refresh token did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum RefreshOutcome {
    /// The token was live: it is now revoked and its child stored.
    Rotated { session_id: Uuid, user_id: Uuid },
    /// The token had already been rotated: it leaked, so its whole session is now revoked.
    Reused { session_id: Uuid },
    /// The token was live but its session was logged out or has expired.
    SessionEnded,
    /// No such token.
    NotFound,
}

impl Store {
    /// Creates a session with its first refresh token and records the sign-in, in one transaction.
    #[tracing::instrument(level = "debug", skip_all, fields(user_id = %session.user_id, session_id = %session.id))]
    pub async fn create_session(
        &self,
        session: &AuthSessionRow,
        refresh_token_hash: &[u8],
    ) -> StoreResult<()> {
        let now = session.created_at;
        on_db!(self, |pool| async {
            let mut tx = pool.begin().await?;
            sqlx::query(
                "INSERT INTO auth_sessions (id, user_id, created_at, not_after, user_agent, ip) \
                 VALUES ($1, $2, $3, $4, $5, $6)",
            )
            .bind(session.id)
            .bind(session.user_id)
            .bind(now)
            .bind(session.not_after)
            .bind(&session.user_agent)
            .bind(&session.ip)
            .execute(&mut *tx)
            .await?;
            sqlx::query(
                "INSERT INTO refresh_tokens (id, session_id, token_hash, revoked, created_at) \
                 VALUES ($1, $2, $3, FALSE, $4)",
            )
            .bind(Uuid::now_v7())
            .bind(session.id)
            .bind(refresh_token_hash)
            .bind(now)
            .execute(&mut *tx)
            .await?;
            sqlx::query("UPDATE users SET last_sign_in_at = $1 WHERE id = $2")
                .bind(now)
                .bind(session.user_id)
                .execute(&mut *tx)
                .await?;
            tx.commit().await
        }
        .await)
        .map_err(|err| StoreError::classify(err, &["refresh_tokens_token_hash_key"]))
    }

    /// Exchanges the refresh token hashed as `old_hash` for the one hashed as `new_hash`.
    ///
    /// Each step is a conditional update, so of two concurrent uses of one token exactly one
    /// rotates it; the other is treated as reuse.
    #[tracing::instrument(level = "debug", skip_all)]
    pub async fn rotate_refresh_token(
        &self,
        old_hash: &[u8],
        new_hash: &[u8],
        now: DateTime<Utc>,
    ) -> StoreResult<RefreshOutcome> {
        on_db!(self, |pool| async {
            let mut tx = pool.begin().await?;
            let rotated: Option<(Uuid,)> = sqlx::query_as(
                "UPDATE refresh_tokens SET revoked = TRUE \
                 WHERE token_hash = $1 AND revoked = FALSE RETURNING session_id",
            )
            .bind(old_hash)
            .fetch_optional(&mut *tx)
            .await?;

            let Some((session_id,)) = rotated else {
                let known: Option<(Uuid,)> =
                    sqlx::query_as("SELECT session_id FROM refresh_tokens WHERE token_hash = $1")
                        .bind(old_hash)
                        .fetch_optional(&mut *tx)
                        .await?;
                let Some((session_id,)) = known else {
                    return Ok(RefreshOutcome::NotFound);
                };
                sqlx::query(
                    "UPDATE auth_sessions SET revoked_at = $1 WHERE id = $2 AND revoked_at IS NULL",
                )
                .bind(now)
                .bind(session_id)
                .execute(&mut *tx)
                .await?;
                sqlx::query("UPDATE refresh_tokens SET revoked = TRUE WHERE session_id = $1")
                    .bind(session_id)
                    .execute(&mut *tx)
                    .await?;
                tx.commit().await?;
                return Ok(RefreshOutcome::Reused { session_id });
            };

            let live: Option<(Uuid,)> = sqlx::query_as(
                "UPDATE auth_sessions SET refreshed_at = $1 \
                 WHERE id = $2 AND revoked_at IS NULL AND not_after > $1 RETURNING user_id",
            )
            .bind(now)
            .bind(session_id)
            .fetch_optional(&mut *tx)
            .await?;
            let Some((user_id,)) = live else {
                // Leave the token as it was: the session is over either way.
                tx.rollback().await?;
                return Ok(RefreshOutcome::SessionEnded);
            };
            sqlx::query(
                "INSERT INTO refresh_tokens (id, session_id, token_hash, revoked, created_at) \
                 VALUES ($1, $2, $3, FALSE, $4)",
            )
            .bind(Uuid::now_v7())
            .bind(session_id)
            .bind(new_hash)
            .bind(now)
            .execute(&mut *tx)
            .await?;
            tx.commit().await?;
            Ok(RefreshOutcome::Rotated { session_id, user_id })
        }
        .await)
        .map_err(|err: sqlx::Error| StoreError::classify(err, &["refresh_tokens_token_hash_key"]))
    }

    /// Revokes sessions of `user_id`: only `session_id` (`Only`), all of them (`All`), or all but
    /// `session_id` (`AllBut`). Returns how many were live.
    #[tracing::instrument(level = "debug", skip_all, fields(user_id = %user_id))]
    pub async fn revoke_sessions(
        &self,
        user_id: Uuid,
        which: SessionSelector,
        now: DateTime<Utc>,
    ) -> StoreResult<u64> {
        let (filter, session_id) = match which {
            SessionSelector::Only(id) => ("AND id = $3", Some(id)),
            SessionSelector::AllBut(id) => ("AND id <> $3", Some(id)),
            SessionSelector::All => ("", None),
        };
        let sql = format!(
            "UPDATE auth_sessions SET revoked_at = $1 \
             WHERE user_id = $2 AND revoked_at IS NULL {filter}"
        );
        let done = on_db!(self, |pool| {
            let mut query = sqlx::query(&sql).bind(now).bind(user_id);
            if let Some(id) = session_id {
                query = query.bind(id);
            }
            query.execute(pool).await.map(|done| done.rows_affected())
        })?;
        Ok(done)
    }

    /// Whether `session_id` belongs to `user_id` and is neither revoked nor expired.
    #[tracing::instrument(level = "debug", skip_all, fields(session_id = %session_id))]
    pub async fn session_is_live(
        &self,
        session_id: Uuid,
        user_id: Uuid,
        now: DateTime<Utc>,
    ) -> StoreResult<bool> {
        let found: Option<(Uuid,)> = on_db!(self, |pool| {
            sqlx::query_as(
                "SELECT id FROM auth_sessions \
                 WHERE id = $1 AND user_id = $2 AND revoked_at IS NULL AND not_after > $3",
            )
            .bind(session_id)
            .bind(user_id)
            .bind(now)
            .fetch_optional(pool)
            .await
        })?;
        Ok(found.is_some())
    }
}

/// Which of a user's sessions [`Store::revoke_sessions`] ends.
#[derive(Debug, Clone, Copy)]
pub enum SessionSelector {
    Only(Uuid),
    AllBut(Uuid),
    All,
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::store::{UserRow, testing::stores};

    async fn signed_in(store: &Store, token: &[u8]) -> AuthSessionRow {
        let now = crate::domain::now();
        let user = UserRow {
            id: Uuid::now_v7(),
            email: format!("{}@example.com", Uuid::new_v4()),
            password_hash: "h".into(),
            role: "authenticated".into(),
            email_confirmed_at: None,
            last_sign_in_at: None,
            created_at: now,
            updated_at: now,
        };
        store.insert_user(&user).await.unwrap();
        let session = AuthSessionRow {
            id: Uuid::now_v7(),
            user_id: user.id,
            created_at: now,
            not_after: now + chrono::Duration::days(1),
            user_agent: None,
            ip: None,
        };
        store.create_session(&session, token).await.unwrap();
        session
    }

    #[tokio::test]
    async fn a_refresh_token_rotates_once_and_reuse_revokes_the_session() {
        for (store, _guard) in stores().await {
            let session = signed_in(&store, b"t1").await;
            let now = crate::domain::now();
            let outcome = store.rotate_refresh_token(b"t1", b"t2", now).await.unwrap();
            assert_eq!(
                outcome,
                RefreshOutcome::Rotated { session_id: session.id, user_id: session.user_id }
            );
            // t1 again: reuse. The session dies, and with it the child token t2.
            let outcome = store.rotate_refresh_token(b"t1", b"t3", now).await.unwrap();
            assert_eq!(outcome, RefreshOutcome::Reused { session_id: session.id });
            assert!(!store.session_is_live(session.id, session.user_id, now).await.unwrap());
            let outcome = store.rotate_refresh_token(b"t2", b"t4", now).await.unwrap();
            assert_eq!(outcome, RefreshOutcome::Reused { session_id: session.id });
            let outcome = store.rotate_refresh_token(b"nope", b"t5", now).await.unwrap();
            assert_eq!(outcome, RefreshOutcome::NotFound);
        }
    }

    #[tokio::test]
    async fn a_logged_out_or_expired_session_cannot_refresh() {
        for (store, _guard) in stores().await {
            let session = signed_in(&store, b"a1").await;
            let later = session.not_after + chrono::Duration::seconds(1);
            let outcome = store.rotate_refresh_token(b"a1", b"a2", later).await.unwrap();
            assert_eq!(outcome, RefreshOutcome::SessionEnded);

            let now = crate::domain::now();
            let revoked = store
                .revoke_sessions(session.user_id, SessionSelector::Only(session.id), now)
                .await
                .unwrap();
            assert_eq!(revoked, 1);
            let outcome = store.rotate_refresh_token(b"a1", b"a3", now).await.unwrap();
            assert_eq!(outcome, RefreshOutcome::SessionEnded);
        }
    }

    #[tokio::test]
    async fn concurrent_use_of_one_token_rotates_it_exactly_once() {
        for (store, _guard) in stores().await {
            signed_in(&store, b"c1").await;
            let now = crate::domain::now();
            let attempts = (0..8).map(|i| {
                let store = store.clone();
                tokio::spawn(async move {
                    store.rotate_refresh_token(b"c1", format!("child{i}").as_bytes(), now).await
                })
            });
            let mut rotated = 0;
            for attempt in attempts {
                if let RefreshOutcome::Rotated { .. } = attempt.await.unwrap().unwrap() {
                    rotated += 1;
                }
            }
            assert_eq!(rotated, 1);
        }
    }
}
