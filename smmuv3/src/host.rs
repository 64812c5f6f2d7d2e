//! The seam a passthrough (nesting) backend plugs into: every command the
//! guest queues is offered to it, and a CMD_SYNC completes only after it
//! says every host operation it owes for the commands before the sync has
//! returned (IHI 0070 CMD_SYNC: its completion means every command
//! before it has completed; `STYLE.md`: no completion before the work).
//!
//! The model calls [`HostCommands::command`] for each legal command other
//! than CMD_SYNC and the prefetch hints, in queue order, after applying
//! the command to its own state; and [`HostCommands::sync`] before it
//! makes any CMD_SYNC completion visible (CMDQ_CONS past the sync, the
//! MSI write, the SEV or wired interrupt), and before CMDQ_CONS passes
//! commands offered since the last sync at the end of a queue drain (so
//! CMDQ_CONS never has to move back). A refusal stops the queue at the
//! refused command with CERROR_ILL and GERROR.CMDQ_ERR.

use thiserror::Error;

use crate::cmdq::Command;

/// The backend refused the command at queue position `index`.
#[derive(Clone, Copy, Debug, Error, PartialEq, Eq)]
#[error("host refused the command at queue position {index:#x}")]
pub struct Refused {
    /// The command's position (index and wrap bit, as CMDQ_CONS holds
    /// it), as [`HostCommands::command`] was given it.
    pub index: u32,
}

/// A nesting backend's share of command processing.
pub trait HostCommands {
    /// The command at queue position `index` (index and wrap bit, as
    /// CMDQ_CONS holds it). The backend starts whatever host operation it
    /// owes for it; it may finish later, but before [`sync`](Self::sync)
    /// returns.
    fn command(&mut self, index: u32, cmd: &Command);

    /// Every operation started for the commands given since the last
    /// call has returned: `Ok`, or the first refused command's position.
    fn sync(&mut self) -> Result<(), Refused>;
}
