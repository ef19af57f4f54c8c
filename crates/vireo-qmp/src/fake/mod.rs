//! Protocol-faithful fakes of QEMU's QMP monitor and of qemu-guest-agent. **Test-only**:
//! compiled for this crate's own tests and, for other crates, behind the `testing` feature.
//! They listen on real unix sockets, so the clients under test run unmodified.

mod ga;
mod qmp;

pub use ga::{FakeExec, FakeExecOutcome, FakeGuestAgent, FakeGuestConfig};
pub use qmp::{FakeCommand, FakeQmpControl, FakeQmpServer, FakeReply, FakeVm};
