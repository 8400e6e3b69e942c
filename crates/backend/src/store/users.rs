//! Users of the built-in auth provider.

use chrono::{DateTime, Utc};
use uuid::Uuid;

use super::{Store, StoreError, StoreResult, on_db};

#[derive(Debug, Clone, sqlx::FromRow)]
pub struct UserRow {
    pub id: Uuid,
    pub email: String,
    pub password_hash: String,
    pub role: String,
    pub email_confirmed_at: Option<DateTime<Utc>>,
    pub last_sign_in_at: Option<DateTime<Utc>>,
    pub created_at: DateTime<Utc>,
    pub updated_at: DateTime<Utc>,
}

const USER_COLUMNS: &str =
    "id, email, password_hash, role, email_confirmed_at, last_sign_in_at, created_at, updated_at";

impl Store {
    /// Inserts a new user; a taken email is `Conflict("users_email_key")`.
    #[tracing::instrument(level = "debug", skip_all, fields(user_id = %user.id))]
    pub async fn insert_user(&self, user: &UserRow) -> StoreResult<()> {
        on_db!(self, |pool| {
            sqlx::query(
                "INSERT INTO users (id, email, password_hash, role, email_confirmed_at, \
                 last_sign_in_at, created_at, updated_at) \
                 VALUES ($1, $2, $3, $4, $5, $6, $7, $8)",
            )
            .bind(user.id)
            .bind(&user.email)
            .bind(&user.password_hash)
            .bind(&user.role)
            .bind(user.email_confirmed_at)
            .bind(user.last_sign_in_at)
            .bind(user.created_at)
            .bind(user.updated_at)
            .execute(pool)
            .await
            .map(|done| done.rows_affected())
        })
        .map_err(|err| StoreError::classify(err, &["users_email_key"]))?;
        Ok(())
    }

    #[tracing::instrument(level = "debug", skip_all)]
    pub async fn find_user_by_email(&self, email: &str) -> StoreResult<Option<UserRow>> {
        let sql = format!("SELECT {USER_COLUMNS} FROM users WHERE email = $1");
        Ok(on_db!(self, |pool| sqlx::query_as(&sql).bind(email).fetch_optional(pool).await)?)
    }

    #[tracing::instrument(level = "debug", skip_all, fields(user_id = %id))]
    pub async fn find_user(&self, id: Uuid) -> StoreResult<Option<UserRow>> {
        let sql = format!("SELECT {USER_COLUMNS} FROM users WHERE id = $1");
        Ok(on_db!(self, |pool| sqlx::query_as(&sql).bind(id).fetch_optional(pool).await)?)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::store::testing::stores;

    fn user(email: &str) -> UserRow {
        let now = crate::domain::now();
        UserRow {
            id: Uuid::now_v7(),
            email: email.to_owned(),
            password_hash: "hash".to_owned(),
            role: "authenticated".to_owned(),
            email_confirmed_at: Some(now),
            last_sign_in_at: None,
            created_at: now,
            updated_at: now,
        }
    }

    #[tokio::test]
    async fn a_taken_email_is_reported_by_constraint_name() {
        for (store, _guard) in stores().await {
            store.insert_user(&user("a@example.com")).await.unwrap();
            let err = store.insert_user(&user("a@example.com")).await.unwrap_err();
            assert!(matches!(err, StoreError::Conflict("users_email_key")), "{err:?}");
        }
    }

    #[tokio::test]
    async fn users_round_trip_by_id_and_email() {
        for (store, _guard) in stores().await {
            let row = user("b@example.com");
            store.insert_user(&row).await.unwrap();
            let by_email = store.find_user_by_email("b@example.com").await.unwrap().unwrap();
            let by_id = store.find_user(row.id).await.unwrap().unwrap();
            assert_eq!(by_email.id, row.id);
            assert_eq!(by_id.email, "b@example.com");
            assert_eq!(by_id.created_at, row.created_at);
            assert!(store.find_user_by_email("c@example.com").await.unwrap().is_none());
        }
    }
}
