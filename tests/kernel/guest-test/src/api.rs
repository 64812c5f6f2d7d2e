//! Entry points of the `Iommufd` backend that the scenarios do not reach:
//! adopting an inherited `/dev/iommu` descriptor (libvirt's fd passing),
//! and vEVENTQs of a type whose record size the backend does not know.

use std::fs::OpenOptions;
use std::os::fd::IntoRawFd;

use nesting_core::host::{
    Errno, HostBackend, HwptData, HwptFlags, Iommufd, PtId, VEvent, VeventqType, ViommuType,
    take_inherited_fd,
};

use crate::rig::{KernelRig, Rig};
use crate::testcmd as tc;
use crate::trace::Check;

fn check(out: &mut Vec<Check>, name: &str, pass: bool, detail: impl Into<String>) {
    out.push(Check {
        name: format!("api/{name}"),
        pass,
        detail: detail.into(),
    });
}

/// Runs the checks.
pub fn run() -> Vec<Check> {
    let mut out = Vec::new();
    inherited(&mut out);
    sized_veventq(&mut out);
    out
}

/// A descriptor number taken over once works as an iommufd; taking the
/// same number again is refused with EBUSY, a closed one with EBADF.
fn inherited(out: &mut Vec<Check>) {
    let file = match OpenOptions::new().read(true).write(true).open("/dev/iommu") {
        Ok(f) => f,
        Err(e) => return check(out, "open /dev/iommu", false, e.to_string()),
    };
    let raw = file.into_raw_fd();
    let fd = match take_inherited_fd(raw) {
        Ok(fd) => fd,
        Err(e) => return check(out, "take inherited fd", false, e.to_string()),
    };
    let host = Iommufd::from_fd(fd);
    let ioas = host.ioas_alloc();
    check(
        out,
        "inherited iommufd allocates an IOAS",
        ioas.is_ok(),
        format!("{ioas:?}"),
    );
    let again = take_inherited_fd(raw)
        .map(drop)
        .map_err(|e| Errno::from_io(&e));
    check(
        out,
        "same number taken twice",
        again == Err(Errno::EBUSY),
        format!("{again:?}"),
    );
    let bad = take_inherited_fd(10_000)
        .map(drop)
        .map_err(|e| Errno::from_io(&e));
    check(
        out,
        "unopened number",
        bad == Err(Errno::EBADF),
        format!("{bad:?}"),
    );
}

/// An unknown vEVENTQ type is refused before any call by
/// `veventq_alloc`; `veventq_alloc_sized` allocates it and reads records
/// of the size given (here the selftest type, 4-byte records).
fn sized_veventq(out: &mut Vec<Check>) {
    let Ok(k) = KernelRig::open() else {
        return check(out, "open", false, "/dev/iommu");
    };
    let h = k.host();
    let setup = || {
        let ioas = h.ioas_alloc().ok()?;
        let d = k.add_device(PtId::Ioas(ioas), false).ok()?;
        let req = nesting_core::host::HwptAlloc {
            dev: d.dev,
            parent: PtId::Ioas(ioas),
            flags: HwptFlags::NEST_PARENT,
            fault: None,
            data: HwptData::None,
        };
        let parent = h.hwpt_alloc(&req).ok()?;
        let vi = h
            .viommu_alloc(d.dev, parent, ViommuType::Other(tc::VIOMMU_TYPE_SELFTEST))
            .ok()?;
        Some((d, vi))
    };
    let Some((d, vi)) = setup() else {
        return check(out, "mock vIOMMU", false, "setup failed");
    };
    let unknown = VeventqType::Other(0x1234);
    let r = h.veventq_alloc(vi, unknown, 4).map_err(|e| e.errno);
    check(
        out,
        "unknown vEVENTQ type refused",
        r == Err(Errno::EOPNOTSUPP),
        format!("{r:?}"),
    );
    let st = VeventqType::Other(tc::VEVENTQ_TYPE_SELFTEST);
    let q = k.fd.veventq_alloc_sized(vi, st, 4, 4);
    check(
        out,
        "vEVENTQ of a given record size",
        q.is_ok(),
        format!("{q:?}"),
    );
    let Ok(q) = q else { return };
    let nested = nesting_core::host::HwptAlloc {
        dev: d.dev,
        parent: PtId::Viommu(vi),
        flags: HwptFlags::empty(),
        fault: None,
        data: HwptData::Raw {
            data_type: tc::HWPT_DATA_SELFTEST,
            bytes: [tc::IOTLB_DEFAULT, 0]
                .iter()
                .flat_map(|v| v.to_ne_bytes())
                .collect(),
        },
    };
    let event = h.vdevice_alloc(vi, d.dev, 7).ok().and_then(|_| {
        let n = h.hwpt_alloc(&nested).ok()?;
        k.attach(d, None, PtId::Hwpt(n)).ok()?;
        k.trigger_vevent(d, vi, 7).ok()?;
        h.veventq_read(q, 4).ok()
    });
    let want = Some(vec![VEvent::Event {
        sequence: 0,
        data: 7u32.to_ne_bytes().to_vec(),
    }]);
    check(
        out,
        "sized vEVENTQ reads the record",
        event == want,
        format!("{event:?}"),
    );
}
