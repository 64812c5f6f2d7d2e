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
use nesting_core::types::{Bdf, Gpa};
use vm_memory::GuestMemory;
use zerocopy::IntoBytes;
use zerocopy::little_endian::U64 as Le64;

use crate::tables::Qwords;

/// Size of a page request descriptor.
pub const DESCRIPTOR_SIZE: u64 = 32;

/// PRS_REG bits (11.4 PRS_REG).
pub mod prs {
    nesting_core::bitfield! {
        /// A PRS_REG value.
        pub struct Prs(u64) in mod;
        /// Pending page request (RW1C).
        PPR [0]: bool => ppr, with_ppr;
        /// Page request overflow (RW1C).
        PRO [1]: bool => pro, with_pro;
    }
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

nesting_core::bitfield! {
    /// A page request descriptor (VT-d "Page Request Descriptor"; Linux's
    /// `struct page_req_dsc`). Quadwords 2 and 3 (private data) stay zero.
    pub struct PageRequestDsc([u64; 4]);
    /// Descriptor type.
    TYPE [7:0]: u8 => ty, with_ty;
    /// PASID present.
    PP [8]: bool => pasid_present, with_pasid_present;
    /// Requester-id.
    RID [31:16]: Bdf => rid, with_rid;
    /// PASID.
    PASID [51:32]: u32 => pasid, with_pasid;
    /// Execute requested.
    EXE [52]: bool => exe, with_exe;
    /// Privileged mode requested.
    PM [53]: bool => pm, with_pm;
    /// Read access requested.
    RD [64]: bool => rd, with_rd;
    /// Write access requested.
    WR [65]: bool => wr, with_wr;
    /// Last page request in its group.
    LPIG [66]: bool => lpig, with_lpig;
    /// Page request group index.
    PRG_INDEX [75:67]: u16 => prg_index, with_prg_index;
    /// Page address, bits 127:76.
    ADDR [127:76]: address => addr, with_addr;
}

/// The descriptor type of a page request descriptor.
pub const PAGE_REQUEST_TYPE: u8 = 1;

impl PageRequest {
    /// The descriptor's four quadwords.
    pub fn encode(&self) -> [u64; 4] {
        PageRequestDsc::default()
            .with_ty(PAGE_REQUEST_TYPE)
            .with_pasid_present(self.pasid.is_some())
            .with_rid(Bdf(self.sid))
            .with_pasid(self.pasid.unwrap_or(0))
            .with_exe(self.exec)
            .with_pm(self.privileged)
            .with_rd(self.read)
            .with_wr(self.write)
            .with_lpig(self.last)
            .with_prg_index(self.index)
            .with_addr(self.addr)
            .0
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
