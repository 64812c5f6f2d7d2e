//! The DMA test endpoint's command interface (BAR0) and its DMA engine.
//!
//! The guest programs source, destination, length and pattern, then
//! writes an opcode to `CMD`. The device runs the command at once,
//! updates `STATUS`, `FAULT` and `SEQ`, and signals the MSI-X vector named
//! in `VECTOR`. QEMU posts BAR writes (the vCPU runs on once the message
//! is sent; `x-no-posted-writes=on` turns that off), but reads are never
//! posted and the server handles a function's messages in order, so a
//! read of `STATUS` after the `CMD` write sees the finished command. Every byte it moves goes through the requester's view of
//! memory, an [`IommuMemory`] over nesting-core's [`IommuView`]: the
//! [`Translate`] model decides what each IOVA is, and the endpoint only
//! learns whether the access was allowed.
//!
//! | off  | name      | access | meaning                                  |
//! |------|-----------|--------|------------------------------------------|
//! | 0x00 | ID        | RO     | 0x414d4456 ("VDMA")                      |
//! | 0x04 | VERSION   | RO     | 1                                        |
//! | 0x08 | CMD       | RW     | write 1 FILL, 2 COPY, 3 TRANSLATE: runs  |
//! |      |           |        | the command                              |
//! | 0x0c | STATUS    | RO     | [`Status`] of the last command           |
//! | 0x10 | SRC_LO/HI | RW     | source IOVA (COPY), 0x14 high half       |
//! | 0x18 | DST_LO/HI | RW     | destination IOVA, 0x1c high half         |
//! | 0x20 | LEN       | RW     | bytes, 1..=MAX_LEN                       |
//! | 0x24 | PATTERN   | RW     | FILL: 32-bit pattern, little-endian      |
//! | 0x28 | VECTOR    | RW     | MSI-X vector on completion, !0 = none    |
//! | 0x2c | SEQ       | RO     | commands completed (wraps)               |
//! | 0x30 | FAULT_LO  | RO     | first IOVA refused, 0x34 high half       |
//! | 0x38 | MAX_LEN   | RO     | [`MAX_LEN`]                              |
//! | 0x3c | SCRATCH   | RW     | 32 bits kept across function resets and   |
//! |      |           |        | guest reboots; 0 only when the server starts |
//! | 0x40 | RESULT_LO | RO     | TRANSLATE: the address DST translates to,|
//! |      |           |        | 0x44 high half                           |
//!
//! TRANSLATE asks the IOMMU what a 4-byte write to `DST` (the size of an
//! MSI write) would reach, without writing: `STATUS` ok and the address in
//! `RESULT`, or a write fault reported as for FILL. The harness needs it
//! where QEMU delivers the function's MSI-X messages itself: QEMU sends
//! them to the address in the MSI-X table untranslated, but behind an Arm
//! SMMU that address is an IOVA (Linux maps the GIC ITS doorbell into the
//! device's domain), so the guest program asks the endpoint where its MSI
//! write goes and puts that address in the table.
//! `SCRATCH` is harness plumbing, not device behaviour: the guest program
//! writes a boot counter there so that after a reboot it knows which boot
//! it is in. A function reset (QEMU sends `VFIO_USER_DEVICE_RESET` on
//! every system reset) resets every other register.

use std::sync::Arc;

use log::{debug, info};
use nesting_core::iotlb::{IommuView, Translate};
use nesting_core::types::RequesterId;
use vm_memory::iommu::Iommu;
use vm_memory::{Bytes, GuestAddress, GuestMemory, GuestMemoryMmap, IommuMemory, Permissions};

use crate::account::{ACCOUNTS, Work};
use crate::irq::MsixVectors;
use crate::regfile::{RegFile, RegFileError, RegSpec};

/// Value of the ID register: "VDMA" in little-endian byte order.
pub const ID: u32 = u32::from_le_bytes(*b"VDMA");
/// Longest transfer of one command: the device stages a COPY in a host
/// buffer of this size and holds the server for the whole command, so a
/// guest must not be able to ask for more.
pub const MAX_LEN: u32 = 1 << 20;
/// `VECTOR` value meaning "no interrupt".
pub const NO_VECTOR: u32 = u32::MAX;
/// Page granule used to locate the first refused byte of a transfer.
const PAGE: u64 = 0x1000;

static SPECS: &[RegSpec] = &[
    RegSpec::ro("ID", 0x00, 4, ID),
    RegSpec::ro("VERSION", 0x04, 4, 1),
    RegSpec::rw("CMD", 0x08, 4, 0, 0xffff_ffff),
    RegSpec::ro("STATUS", 0x0c, 4, 0),
    RegSpec::rw("SRC_LO", 0x10, 4, 0, 0xffff_ffff),
    RegSpec::rw("SRC_HI", 0x14, 4, 0, 0xffff_ffff),
    RegSpec::rw("DST_LO", 0x18, 4, 0, 0xffff_ffff),
    RegSpec::rw("DST_HI", 0x1c, 4, 0, 0xffff_ffff),
    RegSpec::rw("LEN", 0x20, 4, 0, 0xffff_ffff),
    RegSpec::rw("PATTERN", 0x24, 4, 0, 0xffff_ffff),
    RegSpec::rw("VECTOR", 0x28, 4, NO_VECTOR, 0xffff_ffff),
    RegSpec::ro("SEQ", 0x2c, 4, 0),
    RegSpec::ro("FAULT_LO", 0x30, 4, 0),
    RegSpec::ro("FAULT_HI", 0x34, 4, 0),
    RegSpec::ro("MAX_LEN", 0x38, 4, MAX_LEN),
    RegSpec::rw("SCRATCH", 0x3c, 4, 0, 0xffff_ffff),
    RegSpec::ro("RESULT_LO", 0x40, 4, 0),
    RegSpec::ro("RESULT_HI", 0x44, 4, 0),
];

/// Bytes of the write a TRANSLATE command asks about: an MSI is a 32-bit
/// write (PCI Local Bus 3.0, 6.8.3.1 for MSI-X Message Data).
const TRANSLATE_LEN: usize = 4;

/// A command opcode; decoding is total.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Op {
    /// Write `PATTERN` repeated over `[DST, DST + LEN)`.
    Fill,
    /// Copy `[SRC, SRC + LEN)` to `[DST, DST + LEN)`.
    Copy,
    /// Translate a 4-byte write at `DST` into `RESULT`; moves nothing.
    Translate,
    /// Anything else.
    Unknown(u32),
}

impl From<u32> for Op {
    fn from(v: u32) -> Self {
        match v {
            1 => Op::Fill,
            2 => Op::Copy,
            3 => Op::Translate,
            v => Op::Unknown(v),
        }
    }
}

/// Result of a command, as `STATUS` reports it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[repr(u32)]
pub enum Status {
    /// No command has run since reset.
    Idle = 0,
    /// The command completed.
    Ok = 1,
    /// A read of the source was refused; `FAULT` holds the IOVA.
    ReadFault = 2,
    /// A write of the destination was refused; `FAULT` holds the IOVA.
    WriteFault = 3,
    /// Bus Master Enable is clear: the device issued no DMA.
    NoBusMaster = 4,
    /// `LEN` is 0, above [`MAX_LEN`], or the range wraps the address space.
    BadLength = 5,
    /// `CMD` held an unknown opcode.
    BadOpcode = 6,
}

/// The endpoint: registers plus the memory its requester ID sees.
#[derive(Debug)]
pub struct DmaEndpoint<T: Translate> {
    regs: RegFile,
    mem: IommuMemory<GuestMemoryMmap, IommuView<T>>,
}

impl<T: Translate> DmaEndpoint<T> {
    /// The endpoint issuing DMA as `rid` through `model`.
    pub fn new(model: Arc<T>, rid: RequesterId) -> Self {
        let view = IommuView::new(model, rid, None, false);
        DmaEndpoint {
            regs: RegFile::new(SPECS, 0x1000),
            mem: IommuMemory::new(GuestMemoryMmap::default(), view, true, ()),
        }
    }

    /// Follows a change of the guest RAM the client shares.
    pub fn set_ram(&mut self, ram: &GuestMemoryMmap) {
        self.mem = self.mem.with_replaced_backend(ram.clone());
    }

    /// Device reset: registers back to their reset values, except
    /// `SCRATCH`, which only a new server clears.
    pub fn reset(&mut self) {
        let scratch = self.regs.get("SCRATCH");
        self.regs.reset();
        self.regs.set("SCRATCH", scratch);
    }

    /// A BAR0 read.
    pub fn read(&self, offset: u64, data: &mut [u8]) -> Result<(), RegFileError> {
        self.regs.read(offset, data)
    }

    /// A BAR0 write; a write reaching `CMD` runs the command. `bus_master`
    /// is the Command register's Bus Master Enable.
    pub fn write(
        &mut self,
        offset: u64,
        data: &[u8],
        bus_master: bool,
        irqs: &mut MsixVectors,
    ) -> Result<(), RegFileError> {
        let touched = self.regs.write(offset, data)?;
        if touched.contains(&"CMD") {
            let op = Op::from(self.regs.get("CMD"));
            let (status, fault) = ACCOUNTS.timed(Work::EndpointCommand, || match op {
                Op::Translate => self.translate(bus_master),
                _ => self.run(op, bus_master),
            });
            self.complete(op, status, fault, irqs);
        }
        // The bench's guest program marks its timed loops here (see
        // crate::account).
        if touched.contains(&"SCRATCH") {
            ACCOUNTS.mark(&self.regs.get("SCRATCH").to_string());
        }
        Ok(())
    }

    fn addr(&self, lo: &str, hi: &str) -> u64 {
        u64::from(self.regs.get(lo)) | (u64::from(self.regs.get(hi)) << 32)
    }

    fn run(&self, op: Op, bus_master: bool) -> (Status, u64) {
        // PCI Local Bus 3.0, 6.2.2, Bus Master: "A value of 0 disables the
        // device from generating PCI accesses."
        if !bus_master {
            return (Status::NoBusMaster, 0);
        }
        let len = self.regs.get("LEN");
        let src = self.addr("SRC_LO", "SRC_HI");
        let dst = self.addr("DST_LO", "DST_HI");
        let wraps = |a: u64| a.checked_add(u64::from(len)).is_none();
        if len == 0 || len > MAX_LEN || wraps(dst) || (op == Op::Copy && wraps(src)) {
            return (Status::BadLength, 0);
        }
        // The device translates the whole transfer, page by page in
        // address order, before it moves a byte: the first refused page
        // ends the command with one fault (reported once by the model) and
        // nothing written.
        if op == Op::Copy
            && let Some(at) = self.first_refused(src, len, Permissions::Read)
        {
            return (Status::ReadFault, at);
        }
        if let Op::Unknown(_) = op {
            return (Status::BadOpcode, 0);
        }
        if let Some(at) = self.first_refused(dst, len, Permissions::Write) {
            return (Status::WriteFault, at);
        }
        let mut buf = vec![0u8; len as usize];
        match op {
            Op::Fill => {
                let pattern = self.regs.get("PATTERN").to_le_bytes();
                for (b, p) in buf.iter_mut().zip(pattern.iter().cycle()) {
                    *b = *p;
                }
            }
            // Translations just checked are in the view's cache; a failure
            // now means the memory went away under the command.
            Op::Copy | Op::Translate | Op::Unknown(_) => {
                if self.mem.read_slice(&mut buf, GuestAddress(src)).is_err() {
                    return (Status::ReadFault, src);
                }
            }
        }
        if self.mem.write_slice(&buf, GuestAddress(dst)).is_err() {
            return (Status::WriteFault, dst);
        }
        (Status::Ok, 0)
    }

    /// TRANSLATE: where a 4-byte write at `DST` goes, into `RESULT`. `LEN`
    /// is not used.
    fn translate(&mut self, bus_master: bool) -> (Status, u64) {
        self.regs.set("RESULT_LO", 0);
        self.regs.set("RESULT_HI", 0);
        if !bus_master {
            return (Status::NoBusMaster, 0);
        }
        let dst = self.addr("DST_LO", "DST_HI");
        if dst.checked_add(TRANSLATE_LEN as u64).is_none() {
            return (Status::BadLength, 0);
        }
        let target = self
            .mem
            .iommu()
            .translate(GuestAddress(dst), TRANSLATE_LEN, Permissions::Write)
            .ok()
            .and_then(|mut it| it.next())
            .map(|m| m.base.0);
        let Some(gpa) = target else {
            return (Status::WriteFault, dst);
        };
        self.regs.set("RESULT_LO", gpa as u32);
        self.regs.set("RESULT_HI", (gpa >> 32) as u32);
        (Status::Ok, 0)
    }

    /// The first address of `[addr, addr + len)` (page-granular) that the
    /// requester may not access, translating each page once. Bounded:
    /// `len` is at most [`MAX_LEN`].
    fn first_refused(&self, addr: u64, len: u32, access: Permissions) -> Option<u64> {
        let end = addr.saturating_add(u64::from(len));
        let mut at = addr;
        while at < end {
            let next = ((at & !(PAGE - 1)) + PAGE).min(end);
            let n = usize::try_from(next - at).unwrap_or(usize::MAX);
            if !self.mem.check_range(GuestAddress(at), n, access) {
                return Some(at);
            }
            at = next;
        }
        None
    }

    fn complete(&mut self, op: Op, status: Status, fault: u64, irqs: &mut MsixVectors) {
        self.regs.set("STATUS", status as u32);
        self.regs.set("FAULT_LO", fault as u32);
        self.regs.set("FAULT_HI", (fault >> 32) as u32);
        let seq = self.regs.get("SEQ").wrapping_add(1);
        self.regs.set("SEQ", seq);
        let vector = self.regs.get("VECTOR");
        let signalled = vector != NO_VECTOR && irqs.signal(vector);
        match status {
            Status::Ok => debug!("{op:?} done (seq {seq}, irq {signalled})"),
            _ => info!("{op:?}: {status:?} at {fault:#x} (seq {seq}, irq {signalled})"),
        }
    }
}

#[cfg(test)]
mod tests;
