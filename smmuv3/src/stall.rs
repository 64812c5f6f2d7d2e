//! Stalled transactions (IHI 0070 "Stall model"; CMD_RESUME;
//! CMD_STALL_TERM): a faulting transaction of a stream
//! configured to stall is held, its event carries a stall tag (STAG), and
//! the guest later retries or terminates it by tag, or terminates every
//! stall of a stream. The model holds at most [`MAX_STALLS`].

use nesting_core::types::Access;

use crate::regs::MAX_STALLS;
use crate::translate::Request;

/// One held transaction.
#[derive(Clone, Copy, Debug, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct Stall {
    /// StreamID.
    pub sid: u32,
    /// Stall tag.
    pub stag: u16,
    /// SubstreamID.
    pub ssid: Option<u32>,
    /// Input address.
    pub addr: u64,
    /// Access bits (`Access::bits`).
    pub access: u8,
    /// Terminate as abort (true) or RAZ/WI.
    pub abort: bool,
}

/// How a stalled transaction ends, told to the VMM.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct StallResolution {
    /// The transaction.
    pub stall: Stall,
    /// What to do with it.
    pub outcome: StallOutcome,
}

/// What the guest decided.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum StallOutcome {
    /// CMD_RESUME with Action = Retry: translate it again.
    Retry,
    /// Terminated (CMD_RESUME with Terminate or Abort, CMD_STALL_TERM):
    /// `abort` false means RAZ/WI.
    Terminate {
        /// Abort (true) or RAZ/WI (false).
        abort: bool,
    },
}

/// The held transactions.
#[derive(Clone, Debug, Default)]
pub struct StallTable {
    stalls: Vec<Stall>,
    next: u16,
}

impl StallTable {
    /// Holds `req`; returns its tag, or `None` when [`MAX_STALLS`] are
    /// already held (the transaction is then terminated).
    pub fn add(&mut self, req: &Request, abort: bool) -> Option<u16> {
        if self.stalls.len() >= usize::from(MAX_STALLS) {
            return None;
        }
        // A tag unique among this stream's stalls: at most MAX_STALLS are
        // taken, so MAX_STALLS + 1 candidates always hold a free one.
        let stag = (0..=MAX_STALLS)
            .map(|i| self.next.wrapping_add(i))
            .find(|t| !self.stalls.iter().any(|s| s.sid == req.sid && s.stag == *t))?;
        self.next = stag.wrapping_add(1);
        self.stalls.push(Stall {
            sid: req.sid,
            stag,
            ssid: req.ssid,
            addr: req.addr,
            access: req.access.bits(),
            abort,
        });
        Some(stag)
    }

    /// Releases one stall.
    pub fn remove(&mut self, sid: u32, stag: u16) -> Option<Stall> {
        let i = self
            .stalls
            .iter()
            .position(|s| s.sid == sid && s.stag == stag)?;
        Some(self.stalls.swap_remove(i))
    }

    /// Releases every stall of a stream.
    pub fn remove_stream(&mut self, sid: u32) -> Vec<Stall> {
        let (gone, kept) = self.stalls.drain(..).partition(|s| s.sid == sid);
        self.stalls = kept;
        gone
    }

    /// The held transactions.
    pub fn held(&self) -> &[Stall] {
        &self.stalls
    }

    /// The next tag tried.
    pub fn next_tag(&self) -> u16 {
        self.next
    }

    /// Restores saved stalls (snapshot), keeping at most [`MAX_STALLS`].
    pub fn restore(stalls: &[Stall], next: u16) -> StallTable {
        StallTable {
            stalls: stalls
                .iter()
                .take(usize::from(MAX_STALLS))
                .copied()
                .collect(),
            next,
        }
    }
}

impl Stall {
    /// The access of the stalled transaction.
    pub fn access(&self) -> Access {
        Access::from_bits_truncate(self.access)
    }
}
