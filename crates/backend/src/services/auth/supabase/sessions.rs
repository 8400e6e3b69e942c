//! Strict revocation (`SUPABASE_SESSION_CHECK_SECS`): whether a token's session still exists, as
//! GoTrue last said, and forgetting sessions that a logout through us has ended.

use std::{
    collections::HashMap,
    time::{Duration, Instant},
};

use uuid::Uuid;

use super::{
    super::{AuthError, AuthUser, LogoutScope},
    CACHE_CAPACITY, SupabaseAuth,
    errors::{Op, map_error},
    keys::Verified,
    lock,
};

/// The longest access-token lifetime a Supabase project can configure (one week).
const MAX_TOKEN_LIFETIME_SECS: i64 = 7 * 86_400;

#[derive(Debug, Clone, Copy)]
pub(super) enum SessionCheck {
    Alive { user_id: Uuid, checked_at: Instant },
    Ended { until_exp: i64 },
}

impl SupabaseAuth {
    /// Strict mode: the session must still exist, as GoTrue last said at most `interval` ago.
    pub(super) async fn check_session(
        &self,
        verified: &Verified,
        token: &str,
        interval: Duration,
    ) -> Result<(), AuthError> {
        let Some(session_id) = verified.session_id else { return Ok(()) };
        let now = Instant::now();
        {
            let mut sessions = lock(&self.sessions);
            match sessions.get(&session_id) {
                Some(SessionCheck::Ended { .. }) => return Err(AuthError::SessionNotFound),
                Some(SessionCheck::Alive { checked_at, .. })
                    if now.duration_since(*checked_at) < interval =>
                {
                    return Ok(());
                }
                _ => {}
            }
            sweep(&mut sessions);
            // Claim this check, so concurrent requests of the session do not all ask.
            sessions.insert(
                session_id,
                SessionCheck::Alive { user_id: verified.user_id, checked_at: now },
            );
        }
        match self.client.user(token).await.map_err(|err| map_error(Op::Verify, err)) {
            Ok(_) => Ok(()),
            Err(AuthError::Unavailable(cause)) => {
                // Revocation is a refinement; an outage must not sign everyone out.
                tracing::warn!(error = format!("{cause:#}"), %session_id, "cannot check the session with Supabase; allowing it");
                Ok(())
            }
            Err(err) => {
                lock(&self.sessions)
                    .insert(session_id, SessionCheck::Ended { until_exp: verified.exp });
                Err(err)
            }
        }
    }

    /// After a logout through us, strict mode stops trusting the ended sessions at once.
    pub(super) fn forget_sessions(&self, user: &AuthUser, scope: LogoutScope) {
        if self.session_check_interval.is_none() {
            return;
        }
        let mut sessions = lock(&self.sessions);
        let current = user.session_id;
        if scope != LogoutScope::Others {
            if let Some(id) = current {
                // The token's `exp` is not at hand; Supabase caps token lifetimes at a week.
                let until_exp = chrono::Utc::now().timestamp() + MAX_TOKEN_LIFETIME_SECS;
                sessions.insert(id, SessionCheck::Ended { until_exp });
            }
        }
        if scope != LogoutScope::Local {
            // The user's other sessions are not known by id: make each one ask again.
            sessions.retain(|id, check| {
                Some(*id) == current
                    || !matches!(check, SessionCheck::Alive { user_id, .. } if *user_id == user.id)
            });
        }
    }
}

fn sweep(sessions: &mut HashMap<Uuid, SessionCheck>) {
    if sessions.len() < CACHE_CAPACITY {
        return;
    }
    let now = chrono::Utc::now().timestamp();
    sessions
        .retain(|_, check| matches!(check, SessionCheck::Ended { until_exp } if *until_exp > now));
}
