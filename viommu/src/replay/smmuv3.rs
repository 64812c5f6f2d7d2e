//! Replay of the Arm SMMUv3 model (`REPLAY.md`, "Registers" and "DMA"):
//! register accesses go to the SMMU's two 64 KiB pages (page 0 at offset
//! 0, page 1 at 0x10000), and `translate` is a transaction of a StreamID,
//! with a SubstreamID when `pasid=` is given.
//!
//! A register write returns after everything it starts: enables, the
//! GBPA update and command queue consumption up to the new CMDQ_PROD run
//! synchronously in the model. MSIs whose address is not guest RAM have
//! no interrupt controller to go to and are taken as delivered.
//!
//! Passthrough devices are backed by the SMMU's own passthrough backend
//! (nested on the runner's simulated host SMMUv3: a vIOMMU, a vDEVICE per
//! StreamID, a nested HWPT per vSTE), which decides them with the ladder;
//! every register write returns after the host work it caused, as in a
//! VMM. Host events are polled before every register access, as a VMM
//! polling on MMIO would.

use nesting_core::host::objects::BoundDevice;
use nesting_core::ladder::Decision;
use nesting_core::types::{Access, Iova};
use smmuv3::passthrough::PassthroughError;
use smmuv3::{Smmuv3, Smmuv3Config, TranslateResult};

use super::parse::Width;
use super::{Env, ModelError, Passthrough, ReplayModel};

/// The SMMU a script drives.
pub struct Smmuv3Replay {
    smmu: Smmuv3,
}

impl Smmuv3Replay {
    /// The SMMU of `cfg`, at reset.
    pub fn new(cfg: &Smmuv3Config) -> Self {
        let mut smmu = Smmuv3::new(cfg.clone());
        smmu.set_interrupt_callback(|_| true);
        Smmuv3Replay { smmu }
    }
}

fn mmio_size(width: Width) -> Result<u32, ModelError> {
    match width {
        Width::W32 => Ok(4),
        Width::W64 => Ok(8),
        _ => Err(ModelError::Script(
            "SMMUv3 registers take 32- and 64-bit accesses".to_string(),
        )),
    }
}

impl Smmuv3Replay {
    /// Host events of passthrough devices into the guest's event queue.
    fn poll(&mut self, env: &Env<'_>) -> Result<(), ModelError> {
        self.smmu
            .poll_host_events(env.mem)
            .map(|_| ())
            .map_err(|e| ModelError::Script(format!("simulated host: {e}")))
    }
}

impl ReplayModel for Smmuv3Replay {
    fn passthrough(
        &mut self,
        env: &Env<'_>,
        p: Passthrough<'_>,
    ) -> Result<Decision, (ModelError, BoundDevice)> {
        self.smmu.enable_passthrough(p.host.clone(), p.ram.clone());
        match self.smmu.add_passthrough(env.mem, p.sid, p.device, p.view) {
            Ok(d) => Ok(d),
            // Refused: the device is dropped (unbound), as the runner
            // expects of a refused device.
            Err((PassthroughError::Refused { decision }, _device)) => Ok(*decision),
            Err((e, device)) => Err((ModelError::Script(e.to_string()), device)),
        }
    }

    fn mmio_read(&mut self, env: &Env<'_>, width: Width, offset: u64) -> Result<u64, ModelError> {
        self.poll(env)?;
        Ok(self.smmu.mmio_read(offset, mmio_size(width)?))
    }

    fn mmio_write(
        &mut self,
        env: &Env<'_>,
        width: Width,
        offset: u64,
        value: u64,
    ) -> Result<(), ModelError> {
        self.poll(env)?;
        self.smmu
            .mmio_write(env.mem, offset, mmio_size(width)?, value);
        Ok(())
    }

    fn translate(
        &mut self,
        env: &Env<'_>,
        sid: u32,
        pasid: Option<u32>,
        iova: u64,
        access: Access,
    ) -> Result<Option<u64>, ModelError> {
        Ok(
            match self.smmu.translate(env.mem, sid, pasid, Iova(iova), access) {
                TranslateResult::Mapped(t) => Some(t.gpa_of(Iova(iova)).raw()),
                TranslateResult::Fault { .. } | TranslateResult::Stalled { .. } => None,
            },
        )
    }
}

#[cfg(test)]
mod tests {
    use super::super::run_script;

    fn run(script: &str) -> (usize, usize, String) {
        let mut out = Vec::new();
        let s = run_script(script, &mut out).unwrap();
        (
            s.passed,
            s.failed,
            String::from_utf8_lossy(&out).into_owned(),
        )
    }

    #[test]
    fn smmuv3_disabled_bypasses_and_idr0_reads() {
        let (p, f, out) = run(
            "model smmuv3\nram 0 0x10000\ntranslate 5 0x1234 rw => 0x1234\nmmio-read32 0 & 0x2 == 0x2\n",
        );
        assert_eq!((p, f), (2, 0), "{out}");
    }

    #[test]
    fn smmuv3_enabled_without_stream_table_faults() {
        // SMMUEN with a zero-sized linear stream table: every StreamID but
        // 0 is C_BAD_STREAMID.
        let (p, f, out) = run(
            "model smmuv3\nram 0 0x10000\nmmio-write32 0x20 1\nmmio-read32 0x24 == 1\ntranslate 5 pasid=1 0x1234 r => fault\n",
        );
        assert_eq!((p, f), (2, 0), "{out}");
    }
}
