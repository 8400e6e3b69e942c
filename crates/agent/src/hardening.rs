//! Keeping the agent's secrets from the commands it runs. Commands run as the agent's own user,
//! so the agent makes itself non-dumpable, and a config read from stdin leaves nothing behind
//! on fd 0. Their environment is the other half, see `exec::command_base_env`.

use anyhow::Context;

/// Marks the agent non-dumpable (`prctl(PR_SET_DUMPABLE, 0)`): no core dumps, and its
/// `/proc/<pid>/{environ,mem,fd,maps,…}` become root's, so a process of the same uid without
/// `CAP_SYS_PTRACE` can neither read them nor ptrace the agent. Commands are unaffected: the
/// flag resets when they `execve`. It does not stop root; an agent running as root runs its
/// commands as root too.
pub fn set_not_dumpable() -> nix::Result<()> {
    nix::sys::prctl::set_dumpable(false)
}

/// Points the agent's fd 0 at `/dev/null`, once the config has been read from it: whatever
/// stdin was (a pipe, or a file the launcher redirected), no command can reopen it through
/// `/proc/<agent pid>/fd/0`. Commands never inherit fd 0 anyway: theirs is null or a pipe.
pub(crate) fn detach_stdin() -> anyhow::Result<()> {
    let null = std::fs::File::open("/dev/null").context("failed to open /dev/null")?;
    nix::unistd::dup2_stdin(&null).context("failed to point stdin at /dev/null (dup2)")
}
