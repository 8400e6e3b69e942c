//! The state machines of deployments and runs, as transition tables.
//!
//! Each table lists every allowed `(from, to)` move, and nothing else decides: the store checks
//! each status change it is asked for against the table ([`Lifecycle::check`]) and writes it as
//! one conditional `UPDATE … WHERE status IN (from…)` whose list comes from the same table
//! ([`Lifecycle::sources`]), so a move the table does not allow can neither be requested nor
//! happen by a race. A new state (`stopping`, `stopped`, …) is a variant in `wire::status`, its
//! rows here, and its handling where it is entered.

use std::fmt;

use super::{DeploymentStatus, RunStatus};

/// A status whose changes follow a transition table.
pub trait Lifecycle: Copy + Eq + fmt::Display + 'static {
    /// Every allowed move, `(from, to)`.
    const MOVES: &'static [(Self, Self)];

    /// Its text in the database.
    fn text(self) -> &'static str;

    fn can_move_to(self, to: Self) -> bool {
        Self::MOVES.contains(&(self, to))
    }

    /// Every state that may move to `to`, in table order.
    fn sources(to: Self) -> Vec<Self> {
        Self::MOVES.iter().filter(|(_, t)| *t == to).map(|(from, _)| *from).collect()
    }

    /// `Ok` when each of `from` may move to `to`.
    fn check(from: &[Self], to: Self) -> Result<(), IllegalMove> {
        match from.iter().find(|f| !f.can_move_to(to)) {
            None if !from.is_empty() => Ok(()),
            found => Err(IllegalMove {
                machine: std::any::type_name::<Self>().rsplit("::").next().unwrap_or("status"),
                from: found.map_or_else(|| "nothing".to_owned(), ToString::to_string),
                to: to.to_string(),
            }),
        }
    }

    /// `'pending', 'ready'`: the SQL list of `states`. Their texts are our own fixed identifiers,
    /// never input, so they are written into the statement rather than bound, which keeps each
    /// query's argument list fixed.
    fn sql_list(states: &[Self]) -> String {
        states.iter().map(|s| format!("'{}'", s.text())).collect::<Vec<_>>().join(", ")
    }
}

/// A status change its transition table does not allow: a bug in the caller, never user input.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("a {machine} may not move from {from} to {to}")]
pub struct IllegalMove {
    pub machine: &'static str,
    pub from: String,
    pub to: String,
}

impl Lifecycle for DeploymentStatus {
    const MOVES: &'static [(Self, Self)] = {
        use DeploymentStatus::*;
        &[
            // Its first run is claimed, or fails or is cancelled while still queued.
            (Pending, Provisioning),
            (Pending, Failed),
            (Pending, Destroying),
            // A re-queued apply starts again; the apply ends.
            (Provisioning, Provisioning),
            (Provisioning, Ready),
            (Provisioning, Failed),
            (Provisioning, Destroying),
            // A failed deployment is applied again (its first apply: provisioning; a later one,
            // or a change of its variables: updating) or destroyed.
            (Failed, Provisioning),
            (Failed, Updating),
            (Failed, Destroying),
            // A change (update, scale, replace) of a ready deployment.
            (Ready, Updating),
            (Ready, Destroying),
            (Updating, Updating),
            (Updating, Ready),
            (Updating, Failed),
            (Updating, Destroying),
            // A destroy ends; `destroyed` is final.
            (Destroying, Destroyed),
            (Destroying, Failed),
        ]
    };

    fn text(self) -> &'static str {
        self.as_str()
    }
}

impl Lifecycle for RunStatus {
    const MOVES: &'static [(Self, Self)] = {
        use RunStatus::*;
        &[
            (Queued, Running),
            (Queued, Cancelled),
            (Running, Succeeded),
            (Running, Failed),
            (Running, Cancelled),
            (Running, Interrupted),
        ]
    };

    fn text(self) -> &'static str {
        self.as_str()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn no_move_leaves_a_final_state<T: Lifecycle + fmt::Debug>(all: &[T], finals: &[T]) {
        for state in finals {
            assert!(all.iter().all(|to| !state.can_move_to(*to)), "{state:?} is final");
        }
        for (from, to) in T::MOVES {
            assert!(all.contains(from) && all.contains(to));
        }
    }

    #[test]
    fn final_states_have_no_way_out() {
        no_move_leaves_a_final_state(DeploymentStatus::ALL, &[DeploymentStatus::Destroyed]);
        use RunStatus::*;
        no_move_leaves_a_final_state(RunStatus::ALL, &[Succeeded, Failed, Cancelled, Interrupted]);
    }

    #[test]
    fn every_live_deployment_can_be_destroyed_and_only_a_destroy_destroys() {
        use DeploymentStatus::*;
        assert_eq!(
            DeploymentStatus::sources(Destroying),
            [Pending, Provisioning, Failed, Ready, Updating]
        );
        assert_eq!(DeploymentStatus::sources(Destroyed), [Destroying]);
        assert_eq!(DeploymentStatus::sources(Ready), [Provisioning, Updating]);
    }

    #[test]
    fn check_names_the_first_illegal_source() {
        use DeploymentStatus::*;
        assert_eq!(DeploymentStatus::check(&[Pending, Failed], Provisioning), Ok(()));
        let err = DeploymentStatus::check(&[Pending, Destroyed], Provisioning).unwrap_err();
        assert_eq!(
            err.to_string(),
            "a DeploymentStatus may not move from destroyed to provisioning"
        );
        assert!(DeploymentStatus::check(&[], Ready).is_err());
        assert!(RunStatus::check(&[RunStatus::Succeeded], RunStatus::Running).is_err());
    }

    #[test]
    fn sql_lists_quote_each_state() {
        use DeploymentStatus::*;
        assert_eq!(DeploymentStatus::sql_list(&[Pending, Ready]), "'pending', 'ready'");
    }
}
