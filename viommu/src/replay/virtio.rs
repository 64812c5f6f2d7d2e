//! Replay of the virtio-iommu model (`REPLAY.md`, "Virtio" and "DMA"):
//! the runner's directives become what a virtio transport and a guest
//! driver do to the device: feature negotiation, config space accesses,
//! queue set-up, descriptor chains published on a split ring and notified,
//! and DMA translations of endpoints.
//!
//! Passthrough endpoints are handed to the device, which shadows them
//! through nesting-core's passthrough registry over the runner's simulated
//! iommufd and RAM IOAS, and decides ([`VirtioIommu::add_passthrough`]: the
//! ladder, or the hot-plug rule once the driver has read the
//! configuration).

use std::sync::Arc;

use nesting_core::host::objects::BoundDevice;
use nesting_core::ladder::Decision;
use nesting_core::types::Access;
use virtio_iommu::VirtioIommuConfig;
use virtio_iommu::driver::SplitRing;
use virtio_iommu::protocol::NUM_QUEUES;
use virtio_iommu::{DeviceError, DeviceOptions, VirtioIommu};
use vm_memory::GuestMemoryMmap;

use super::parse::{Buf, Width};
use super::{Env, ModelError, Passthrough, ReplayModel};

/// The virtio-iommu device with the driver-side rings replay writes.
pub struct VirtioReplay {
    dev: Result<VirtioIommu<GuestMemoryMmap>, String>,
    rings: [Option<SplitRing>; NUM_QUEUES],
    /// The device was given the host, at the first passthrough device.
    host_set: bool,
}

impl VirtioReplay {
    /// The device of `cfg` (a configuration the device refuses makes every
    /// model directive a script error naming why).
    pub fn new(cfg: &VirtioIommuConfig) -> Self {
        VirtioReplay {
            dev: VirtioIommu::new(cfg, DeviceOptions::default())
                .map_err(|e| format!("virtio-iommu device refused: {}", chain(&e))),
            rings: [None, None],
            host_set: false,
        }
    }

    fn dev(&self) -> Result<&VirtioIommu<GuestMemoryMmap>, ModelError> {
        self.dev.as_ref().map_err(|e| ModelError::Script(e.clone()))
    }

    /// The device, seeing the script's current RAM.
    fn dev_with_mem(&self, env: &Env<'_>) -> Result<&VirtioIommu<GuestMemoryMmap>, ModelError> {
        let dev = self.dev()?;
        dev.set_memory(Arc::new(env.mem.clone()));
        Ok(dev)
    }
}

/// An error with its causes, `a: b: c`.
fn chain(e: &dyn std::error::Error) -> String {
    let mut s = e.to_string();
    let mut cur = e.source();
    while let Some(c) = cur {
        s += &format!(": {c}");
        cur = c.source();
    }
    s
}

fn script(e: impl std::fmt::Display) -> ModelError {
    ModelError::Script(e.to_string())
}

fn queue_index(q: u16) -> Result<usize, ModelError> {
    let i = usize::from(q);
    if i < NUM_QUEUES {
        Ok(i)
    } else {
        Err(script(format_args!(
            "virtio-iommu has queues 0 (request) and 1 (event), not {q}"
        )))
    }
}

impl ReplayModel for VirtioReplay {
    fn passthrough(
        &mut self,
        _env: &Env<'_>,
        p: Passthrough<'_>,
    ) -> Result<Decision, (ModelError, BoundDevice)> {
        let dev = match &self.dev {
            Ok(d) => d,
            Err(e) => return Err((ModelError::Script(e.clone()), p.device)),
        };
        if !self.host_set {
            if let Err(e) = dev.set_passthrough_host(p.host.clone(), p.ram.clone()) {
                return Err((script(chain(&e)), p.device));
            }
            self.host_set = true;
        }
        match dev.add_passthrough(p.sid, p.device, &p.view) {
            Ok(decision) => Ok(decision),
            // Refused: the device is dropped (unbound), as the runner
            // expects of a refused device.
            Err((DeviceError::Refused(decision), device)) => {
                drop(device);
                Ok(*decision)
            }
            Err((e, device)) => Err((script(chain(&e)), device)),
        }
    }

    fn features(&mut self) -> Result<u64, ModelError> {
        Ok(self.dev()?.device_features())
    }

    fn ack_features(&mut self, value: u64) -> Result<(), ModelError> {
        self.dev()?
            .ack_features(value)
            .map_err(|e| script(format_args!("FEATURES_OK refused: {e}")))
    }

    fn config_read(&mut self, width: Width, offset: u64) -> Result<u64, ModelError> {
        let mut b = [0u8; 8];
        self.dev()?.read_config(offset, &mut b[..width.bytes()]);
        Ok(u64::from_le_bytes(b))
    }

    fn config_write(&mut self, width: Width, offset: u64, value: u64) -> Result<(), ModelError> {
        let b = value.to_le_bytes();
        self.dev()?.write_config(offset, &b[..width.bytes()]);
        Ok(())
    }

    fn queue(
        &mut self,
        env: &Env<'_>,
        q: u16,
        size: u16,
        desc: u64,
        avail: u64,
        used: u64,
    ) -> Result<(), ModelError> {
        let i = queue_index(q)?;
        self.dev_with_mem(env)?
            .setup_queue(q, size, desc, avail, used)
            .map_err(|e| script(chain(&e)))?;
        self.rings[i] = Some(SplitRing::new(size, desc, avail, used));
        Ok(())
    }

    fn submit(
        &mut self,
        env: &Env<'_>,
        q: u16,
        out: &[Buf],
        inp: &[Buf],
    ) -> Result<(), ModelError> {
        let i = queue_index(q)?;
        let ring = self.rings[i]
            .as_mut()
            .ok_or_else(|| script(format_args!("use before setup: queue {q} not set up")))?;
        if out.len() + inp.len() > usize::from(ring.size) || out.len() + inp.len() == 0 {
            return Err(script(format_args!(
                "a chain of {} buffers does not fit queue {q} of size {}",
                out.len() + inp.len(),
                ring.size
            )));
        }
        let out: Vec<(u64, u32)> = out.iter().map(|b| (b.gpa, b.len)).collect();
        let inp: Vec<(u64, u32)> = inp.iter().map(|b| (b.gpa, b.len)).collect();
        ring.publish(env.mem, &out, &inp)
            .map_err(|e| script(format_args!("writing the ring: {e}")))?;
        self.dev_with_mem(env)?
            .notify(q)
            .map_err(|e| script(chain(&e)))
    }

    fn used(&mut self, _env: &Env<'_>, q: u16) -> Result<u64, ModelError> {
        let i = queue_index(q)?;
        if self.rings[i].is_none() {
            return Err(script(format_args!(
                "use before setup: queue {q} not set up"
            )));
        }
        Ok(self.dev()?.used_count(q).map_or(0, u64::from))
    }

    fn translate(
        &mut self,
        env: &Env<'_>,
        sid: u32,
        pasid: Option<u32>,
        iova: u64,
        access: Access,
    ) -> Result<Option<u64>, ModelError> {
        if pasid.is_some() {
            return Err(script("virtio-iommu endpoints have no PASIDs"));
        }
        Ok(self.dev_with_mem(env)?.translate(sid, iova, access).gpa())
    }
}

#[cfg(test)]
mod tests {
    use super::super::{ScriptError, run_script};

    fn err(script: &str) -> ScriptError {
        let mut out = Vec::new();
        run_script(script, &mut out).unwrap_err()
    }

    const HEAD: &str = "model virtio-iommu\nram 0 0x10000\n";

    #[test]
    fn virtio_queue_index_above_1_is_script_error() {
        let e = err(&format!(
            "{HEAD}queue 2 size=8 desc=0x1000 avail=0x2000 used=0x3000\n"
        ));
        assert_eq!(e.line, 3);
        assert!(e.reason.contains("queues 0"), "{e}");
    }

    #[test]
    fn virtio_submit_or_used_before_queue_is_use_before_setup() {
        assert!(
            err(&format!("{HEAD}submit 0 out=0x100:4\n"))
                .reason
                .contains("use before setup")
        );
        assert!(
            err(&format!("{HEAD}used 1 == 0\n"))
                .reason
                .contains("use before setup")
        );
    }

    #[test]
    fn virtio_translate_with_pasid_is_script_error() {
        assert!(
            err(&format!("{HEAD}translate 8 pasid=1 0x1000 r => fault\n"))
                .reason
                .contains("PASID")
        );
    }

    #[test]
    fn virtio_refused_features_ok_is_script_error() {
        let e = err(&format!("{HEAD}ack-features 0x77\n"));
        assert!(e.reason.contains("FEATURES_OK refused"), "{e}");
    }

    #[test]
    fn virtio_bad_queue_size_is_script_error() {
        let e = err(&format!(
            "{HEAD}queue 0 size=3 desc=0x1000 avail=0x2000 used=0x3000\n"
        ));
        assert_eq!(e.line, 3);
    }

    #[test]
    fn virtio_device_refusing_configuration_makes_directives_script_errors() {
        let e = err("model virtio-iommu probe_size=0x100000\nfeatures == 0\n");
        assert!(e.reason.contains("refused"), "{e}");
    }
}
