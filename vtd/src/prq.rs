//! The page request queue (VT-d "Recoverable Fault Reporting", registers 11.4,
//! page request registers), present when ECAP.PRS is set: a PRI-capable
//! device's page requests (forwarded by a VMM or by a nesting layer from the
//! host's fault queue) are written as 256-bit page request descriptors at PQT;
//! PRS.PPR and the page request event tell software; a full queue sets PRS.PRO.
//!
//! The descriptor layout is the one Linux's `prq.c` reads (`struct
//! page_req_dsc`).

use nesting_core::bits::Field;
use nesting_core::mem::{GuestMemoryExt, MemError};
use nesting_core::types::Gpa;
use vm_memory::GuestMemory;
use zerocopy::IntoBytes;
use zerocopy::little_endian::U64 as Le64;

use crate::tables::Qwords;

/// Size of a page request descriptor.
pub const DESCRIPTOR_SIZE: u64 = 32;

/// PRS_REG bits (11.4 PRS_REG).
pub mod prs {
    use nesting_core::bits::Field;
    /// Pending page request.
    pub const PPR: Field = Field::bit(0);
    /// Page request overflow.
    pub const PRO: Field = Field::bit(1);
}

/// PQH/PQT offset field: bits 18:5 (32-byte descriptors).
pub const PQ_OFFSET: Field = Field::bits(18, 5);

/// Page group response codes (VT-d "Page Group Response Descriptor").
pub mod response {
    /// Success.
    pub const SUCCESS: u8 = 0x0;
    /// Invalid request.
    pub const INVALID: u8 = 0x1;
}

/// One page request (PCIe Page Request Message, as VT-d "Recoverable Fault
/// Reporting" describes it).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct PageRequest {
    /// Requester.
    pub sid: u16,
    /// PASID, if the request carried one.
    pub pasid: Option<u32>,
    /// Page address.
    pub addr: u64,
    /// Read access requested.
    pub read: bool,
    /// Write access requested.
    pub write: bool,
    /// Execute requested.
    pub exec: bool,
    /// Privileged mode requested.
    pub privileged: bool,
    /// Last page request in its group.
    pub last: bool,
    /// Page request group index (9 bits).
    pub index: u16,
}

impl PageRequest {
    /// The descriptor's four quadwords.
    pub fn encode(&self) -> [u64; 4] {
        // qw0: type 1 (page request), PASID present, RID, PASID, ER, PM.
        let mut q0 = Field::bits(7, 0).set(0, 1);
        q0 = Field::bit(8).set(q0, u64::from(self.pasid.is_some()));
        q0 = Field::bits(31, 16).set(q0, u64::from(self.sid));
        q0 = Field::bits(51, 32).set(q0, u64::from(self.pasid.unwrap_or(0)));
        q0 = Field::bit(52).set(q0, u64::from(self.exec));
        q0 = Field::bit(53).set(q0, u64::from(self.privileged));
        // qw1: RD, WR, LPIG, PRG index, page address.
        let mut q1 = Field::bit(0).set(0, u64::from(self.read));
        q1 = Field::bit(1).set(q1, u64::from(self.write));
        q1 = Field::bit(2).set(q1, u64::from(self.last));
        q1 = Field::bits(11, 3).set(q1, u64::from(self.index));
        q1 |= Field::bits(63, 12).mask() & self.addr;
        [q0, q1, 0, 0]
    }
}

/// What became of a page request.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum PageRequestOutcome {
    /// Written into the queue; software answers with a page group
    /// response descriptor.
    Queued,
    /// Not queued (overflow, or page requests not enabled for the
    /// device); `response` is the page group response the unit sends the
    /// device on its own, for the last request of a group.
    Responded {
        /// Response code sent to the device, if any.
        response: Option<u8>,
    },
}

/// Wire form of a page request descriptor.
pub type PageRequestWire = Qwords<4>;
const _: () = assert!(size_of::<PageRequestWire>() == DESCRIPTOR_SIZE as usize);

/// Writes `req` as a descriptor at `at`.
pub fn write_descriptor<M: GuestMemory + ?Sized>(
    mem: &M,
    at: u64,
    req: &PageRequest,
) -> Result<(), MemError> {
    let wire: PageRequestWire = Qwords(req.encode().map(Le64::new));
    mem.write_bytes_at(Gpa(at), wire.as_bytes())
}
