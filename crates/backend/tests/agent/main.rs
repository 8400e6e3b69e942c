//! End-to-end tests of `nim-agent` (in the backend crate, so the agent crate depends on nothing
//! of the backend): real agent processes on 127.0.0.1, real TLS with a minted and
//! pinned certificate, driven through the backend's own `CloudClientService`.

mod exec;
mod fanout;
mod helpers;
mod isolation;
mod protocol;
mod shutdown;
