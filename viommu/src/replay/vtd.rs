//! Replay of the VT-d model (`REPLAY.md`, "Registers" and "DMA"): register
//! accesses go to the unit's register file at offset 0, and `translate`
//! is a DMA request of a PCI requester (bus << 8 | devfn), with PASID when
//! given.
//!
//! A register write returns after everything it starts: the global
//! command, register-based invalidations and the invalidation queue up to
//! the new tail run synchronously in the model.
//!
//! Passthrough devices are backed by the unit's own passthrough backend
//! (nested stage-1 HWPTs or shadow domains on the runner's simulated
//! iommufd), which decides them with the ladder; every register write
//! returns after the host work it caused, as in a VMM.

use nesting_core::host::objects::BoundDevice;
use nesting_core::ladder::Decision;
use nesting_core::types::{Access, Bdf, Iova, Pasid};
use vtd::VtdConfig;
use vtd::passthrough::PassthroughError;
use vtd::{TranslateResult, Vtd};

use super::parse::Width;
use super::{Env, ModelError, Passthrough, ReplayModel};

/// The VT-d unit a script drives.
pub struct VtdReplay {
    unit: Vtd,
}

impl VtdReplay {
    /// The unit of `cfg`, at reset.
    pub fn new(cfg: &VtdConfig) -> Self {
        VtdReplay {
            unit: Vtd::new(cfg.clone()),
        }
    }
}

fn mmio_size(width: Width) -> Result<u32, ModelError> {
    match width {
        Width::W32 => Ok(4),
        Width::W64 => Ok(8),
        _ => Err(ModelError::Script(
            "VT-d registers take 32- and 64-bit accesses".to_string(),
        )),
    }
}

impl ReplayModel for VtdReplay {
    fn passthrough(
        &mut self,
        env: &Env<'_>,
        p: Passthrough<'_>,
    ) -> Result<Decision, (ModelError, BoundDevice)> {
        let Ok(sid) = u16::try_from(p.sid) else {
            let e = format!("VT-d source-id {:#x} is wider than 16 bits", p.sid);
            return Err((ModelError::Script(e), p.device));
        };
        self.unit.enable_passthrough(p.host.clone(), p.ram.clone());
        match self.unit.add_passthrough(env.mem, sid, p.device, p.view) {
            Ok(d) => Ok(d),
            // Refused: the device is dropped (unbound), as the runner
            // expects of a refused device.
            Err((PassthroughError::Refused { decision }, _device)) => Ok(*decision),
            Err((e, device)) => Err((ModelError::Script(e.to_string()), device)),
        }
    }

    fn mmio_read(&mut self, _env: &Env<'_>, width: Width, offset: u64) -> Result<u64, ModelError> {
        Ok(self.unit.mmio_read(offset, mmio_size(width)?))
    }

    fn mmio_write(
        &mut self,
        env: &Env<'_>,
        width: Width,
        offset: u64,
        value: u64,
    ) -> Result<(), ModelError> {
        self.unit
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
        let sid = u16::try_from(sid).map_err(|_| {
            ModelError::Script(format!("VT-d source-id {sid:#x} is wider than 16 bits"))
        })?;
        let pasid = match pasid {
            Some(p) => Some(Pasid::new(p).ok_or_else(|| {
                ModelError::Script(format!("PASID {p:#x} is wider than 20 bits"))
            })?),
            None => None,
        };
        Ok(
            match self
                .unit
                .translate(env.mem, Bdf(sid), pasid, Iova(iova), access)
            {
                TranslateResult::Mapped(t) => Some(t.gpa_of(Iova(iova)).raw()),
                TranslateResult::Fault { .. } => None,
            },
        )
    }
}

#[cfg(test)]
mod tests {
    use super::super::{ScriptError, run_script};

    fn err(script: &str) -> ScriptError {
        let mut out = Vec::new();
        run_script(script, &mut out).unwrap_err()
    }

    #[test]
    fn vtd_sid_wider_than_16_bits_is_script_error() {
        let e = err("model vtd\nram 0 0x10000\ntranslate 0x10000 0x1000 r => fault\n");
        assert!(e.to_string().contains("16 bits"), "{e}");
    }

    #[test]
    fn vtd_passthrough_sid_wider_than_16_bits_is_script_error() {
        let e = err("model vtd\nram 0 0x10000\npassthrough 0x10000\n");
        assert_eq!(e.line, 3);
        assert!(e.to_string().contains("16 bits"), "{e}");
    }

    #[test]
    fn vtd_passthrough_refused_by_the_ladder_prints_refuse() {
        let mut out = Vec::new();
        let s = run_script(
            "model vtd cm=0\nram 0 0x10000\nhost vtd-nonest\npassthrough 8 => refuse\n",
            &mut out,
        )
        .unwrap();
        assert_eq!(
            (s.passed, s.failed),
            (1, 0),
            "{}",
            String::from_utf8_lossy(&out)
        );
    }

    #[test]
    fn vtd_translation_off_is_identity() {
        let mut out = Vec::new();
        let s = run_script(
            "model vtd mode=legacy\nram 0 0x10000\ntranslate 0x10 0x1234 rw => 0x1234\nmmio-read32 0 == 0x10\n",
            &mut out,
        )
        .unwrap();
        assert_eq!(
            (s.passed, s.failed),
            (2, 0),
            "{}",
            String::from_utf8_lossy(&out)
        );
    }
}
