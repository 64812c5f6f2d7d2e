//! Interrupts and global errors (IHI 0070 "Interrupts and
//! notifications"; SMMU_IRQ_CTRL; SMMU_GERROR/GERRORN; SMMU_*_IRQ_CFG0-2).
//!
//! With IDR0.MSI and a non-zero SMMU_*_IRQ_CFG0.ADDR an interrupt is an
//! MSI: a 32-bit write of CFG1 to ADDR. An MSI address in guest RAM is a
//! memory write the model performs (Linux's MSIPOLL relies on it);
//! anywhere else it goes to the VMM's callback, which says whether the
//! write was taken (`false` is an abort: GERROR.MSI_*_ABT_ERR). Without
//! an MSI the wired interrupt of the source is signalled through the same
//! callback.

use nesting_core::bits::Field;
use nesting_core::mem::GuestMemoryExt;
use nesting_core::types::Gpa;
use vm_memory::GuestMemory;

use crate::model::Smmuv3;
use crate::regs::irq_cfg0::IrqCfg0;
use crate::regs::{gerror, irq_ctrl, off};
use crate::wire::is_ram;

/// Which of the SMMU's interrupts.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum IrqSource {
    /// Event queue (SMMU_EVENTQ_IRQ_CFG*).
    EventQueue,
    /// PRI queue (SMMU_PRIQ_IRQ_CFG*).
    PriQueue,
    /// Global error (SMMU_GERROR_IRQ_CFG*).
    GlobalError,
    /// CMD_SYNC completion (the command's own MSI fields, or the wired
    /// CMD_SYNC interrupt).
    CmdSync,
}

/// How it is signalled.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Signal {
    /// An MSI write outside guest RAM.
    Msi {
        /// Address.
        addr: u64,
        /// Data.
        data: u32,
    },
    /// The source's wired interrupt (an edge).
    Wired,
    /// A CMD_SYNC wake-up event (CS = SIG_SEV; IDR0.SEV).
    Sev,
}

/// An interrupt the SMMU raises.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Interrupt {
    /// Which.
    pub source: IrqSource,
    /// How.
    pub signal: Signal,
}

impl Smmuv3 {
    fn irq_enabled(&self, source: IrqSource) -> bool {
        let ack = self.regs.get(off::IRQ_CTRLACK);
        match source {
            IrqSource::EventQueue => irq_ctrl::EVTQ_IRQEN.is_set(ack),
            IrqSource::PriQueue => irq_ctrl::PRIQ_IRQEN.is_set(ack),
            IrqSource::GlobalError => irq_ctrl::GERROR_IRQEN.is_set(ack),
            IrqSource::CmdSync => true,
        }
    }

    /// Delivers `irq` to the VMM; `true` if it was taken (also when no
    /// callback is set: there is nobody to refuse it).
    pub(crate) fn deliver(&self, irq: Interrupt) -> bool {
        nesting_core::guest_log!(Trace, "smmuv3: interrupt {irq:?}");
        self.cb.irq.as_ref().is_none_or(|f| f(irq))
    }

    /// An MSI write of `data` at `addr` (IHI 0070 "MSI
    /// synchronization"): into guest RAM when the address is RAM,
    /// otherwise to the VMM. Returns whether it completed.
    pub(crate) fn msi_write<M: GuestMemory + ?Sized>(
        &self,
        mem: &M,
        source: IrqSource,
        addr: u64,
        data: u32,
    ) -> bool {
        if is_ram(mem, addr, 4) {
            return mem.write_u32_le(Gpa(addr), data).is_ok();
        }
        self.deliver(Interrupt {
            source,
            signal: Signal::Msi { addr, data },
        })
    }

    /// Raises `source`'s interrupt if SMMU_IRQ_CTRL enables it.
    pub(crate) fn signal<M: GuestMemory + ?Sized>(&mut self, mem: &M, source: IrqSource) {
        if !self.irq_enabled(source) {
            return;
        }
        let (cfg0, cfg1, abort) = match source {
            IrqSource::EventQueue => (
                off::EVTQ_IRQ_CFG0,
                off::EVTQ_IRQ_CFG1,
                gerror::MSI_EVTQ_ABT_ERR,
            ),
            IrqSource::PriQueue => (
                off::PRIQ_IRQ_CFG0,
                off::PRIQ_IRQ_CFG1,
                gerror::MSI_PRIQ_ABT_ERR,
            ),
            IrqSource::GlobalError => (
                off::GERROR_IRQ_CFG0,
                off::GERROR_IRQ_CFG1,
                gerror::MSI_GERROR_ABT_ERR,
            ),
            IrqSource::CmdSync => return,
        };
        // SMMU_*_IRQ_CFG0.ADDR == 0 disables the MSI; the wired interrupt
        // is used instead (Linux falls back to wired interrupts this way).
        let addr = IrqCfg0(self.regs.get(cfg0)).addr();
        if !self.caps.msi || addr == 0 {
            self.deliver(Interrupt {
                source,
                signal: Signal::Wired,
            });
            return;
        }
        let data = u32::try_from(self.regs.get(cfg1) & 0xffff_ffff).unwrap_or(0);
        if !self.msi_write(mem, source, addr, data) {
            // SMMU_GERROR.MSI_GERROR_ABT_ERR does not itself raise the
            // GERROR interrupt again.
            if source == IrqSource::GlobalError {
                self.activate_error(abort);
            } else {
                self.global_error(mem, abort);
            }
        }
    }

    /// Whether a global error is active (GERROR and GERRORN differ).
    pub(crate) fn error_active(&self, bit: Field) -> bool {
        (self.regs.get(off::GERROR) ^ self.regs.get(off::GERRORN)) & bit.mask() != 0
    }

    /// Activates an error without signalling; `false` if it already was
    /// active (SMMU_GERROR: a bit toggles only when its error is not
    /// already active).
    fn activate_error(&mut self, bit: Field) -> bool {
        if self.error_active(bit) {
            return false;
        }
        let g = self.regs.get(off::GERROR);
        self.regs.set(off::GERROR, g ^ bit.mask());
        true
    }

    /// Activates a global error and raises the GERROR interrupt.
    pub(crate) fn global_error<M: GuestMemory + ?Sized>(&mut self, mem: &M, bit: Field) {
        nesting_core::guest_log!(Debug, "smmuv3: global error {bit:?}");
        if self.activate_error(bit) {
            self.signal(mem, IrqSource::GlobalError);
        }
    }
}
