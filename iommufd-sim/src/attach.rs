//! HWPT allocation and device attachment: `drivers/iommu/iommufd/hw_pagetable.c`
//! and `device.c`, with the driver decisions of `intel/iommu.c`,
//! `intel/nested.c`, `intel/pasid.c` and `arm/arm-smmu-v3/arm-smmu-v3.c`
//! (see [`super::vendor`]).

use nesting_core::host::{Errno, HostCaps, HwptAlloc, HwptData, HwptFlags, PtId};

use super::driver::{HWPT_DATA_NONE, UnitKind};
use super::state::{Attach, Nested, Obj, Paging, Stage, State};
use super::{mock, vendor};

/// `IOMMU_HWPT_ALLOC_*` bits the core knows (hw_pagetable.c,
/// `iommufd_hwpt_paging_alloc`, `valid_flags`).
const VALID_HWPT_FLAGS: HwptFlags = HwptFlags::all();

/// Whether a request carries vendor data (`user_data.len != 0`).
fn has_data(d: &HwptData) -> bool {
    !matches!(d, HwptData::None)
}

impl State {
    /// hw_pagetable.c, `iommufd_hwpt_alloc`.
    pub fn hwpt_alloc(&mut self, req: &HwptAlloc) -> Result<u32, Errno> {
        // "if ((cmd->data_type == IOMMU_HWPT_DATA_NONE && cmd->data_len) ||
        //      (cmd->data_type != IOMMU_HWPT_DATA_NONE && !cmd->data_len)) return -EINVAL;"
        if let HwptData::Raw { data_type, bytes } = &req.data
            && ((*data_type == HWPT_DATA_NONE) != bytes.is_empty())
        {
            return Err(Errno::EINVAL);
        }
        let dev = req.dev.0;
        self.dev(dev)?;
        let pt = req.parent.raw();
        let id = match self.objects.get(&pt) {
            Some(Obj::Ioas(_)) => self.paging_alloc(pt, dev, 0, req.flags, &req.data, false)?,
            Some(Obj::Paging(_)) => self.nested_alloc(pt, dev, req.flags, &req.data)?,
            Some(Obj::Viommu(_)) => self.viommu_nested_alloc(pt, dev, req.flags, &req.data)?,
            // "pt_obj = iommufd_get_object(...); if (IS_ERR(pt_obj)) { rc = -EINVAL; ..."
            _ => return Err(Errno::EINVAL),
        };
        if req.flags.contains(HwptFlags::FAULT_ID_VALID) {
            // iommufd_get_fault: -ENOENT for a missing fault object.
            let fault = req.fault.map_or(0, |f| f.0);
            self.fault(fault)?;
            match self.objects.get_mut(&id) {
                Some(Obj::Paging(p)) => p.fault = Some(fault),
                Some(Obj::Nested(n)) => n.fault = Some(fault),
                _ => {}
            }
        }
        Ok(id)
    }

    /// hw_pagetable.c, `iommufd_hwpt_paging_alloc`; with `immediate` the
    /// device is attached before the domain joins the IOAS (the automatic
    /// domain of `iommufd_device_attach`).
    pub fn paging_alloc(
        &mut self,
        ioas: u32,
        dev: u32,
        pasid: u32,
        flags: HwptFlags,
        data: &HwptData,
        immediate: bool,
    ) -> Result<u32, Errno> {
        let unit = self.dev(dev)?.unit;
        // "if (flags & ~valid_flags) return ERR_PTR(-EOPNOTSUPP);"
        if !VALID_HWPT_FLAGS.contains(flags) {
            return Err(Errno::EOPNOTSUPP);
        }
        // "if ((flags & IOMMU_HWPT_ALLOC_DIRTY_TRACKING) &&
        //      !device_iommu_capable(idev->dev, IOMMU_CAP_DIRTY_TRACKING)) return ERR_PTR(-EOPNOTSUPP);"
        if flags.contains(HwptFlags::DIRTY_TRACKING)
            && !self.unit_info(unit).caps.contains(HostCaps::DIRTY_TRACKING)
        {
            return Err(Errno::EOPNOTSUPP);
        }
        // "if ((flags & IOMMU_HWPT_FAULT_ID_VALID) && (flags & IOMMU_HWPT_ALLOC_NEST_PARENT))"
        if flags.contains(HwptFlags::FAULT_ID_VALID | HwptFlags::NEST_PARENT) {
            return Err(Errno::EOPNOTSUPP);
        }
        let drv_flags = flags - HwptFlags::FAULT_ID_VALID;
        let stage = if UnitKind::of(self.unit_info(unit)) == UnitKind::Mock {
            mock::alloc_paging(drv_flags, data)?;
            Stage::Generic
        } else {
            vendor::domain_alloc_paging(self.unit_info(unit), drv_flags, has_data(data))?
        };
        let id = self.insert(Obj::Paging(Paging {
            ioas,
            unit,
            flags,
            auto_domain: false,
            stage,
            fault: None,
            dirty_enabled: false,
            dirty: Default::default(),
        }))?;
        if immediate {
            self.hwpt_attach(id, dev, pasid)?;
        }
        self.add_domain(ioas, id, unit)?;
        Ok(id)
    }

    /// hw_pagetable.c, `iommufd_hwpt_nested_alloc` (VT-d: the parent is a
    /// NEST_PARENT paging HWPT).
    fn nested_alloc(
        &mut self,
        parent: u32,
        dev: u32,
        flags: HwptFlags,
        data: &HwptData,
    ) -> Result<u32, Errno> {
        let unit = self.dev(dev)?.unit;
        let p = self.paging(parent)?.clone();
        let kind = UnitKind::of(self.unit_info(unit));
        // "if ((flags & ~(IOMMU_HWPT_FAULT_ID_VALID | IOMMU_HWPT_ALLOC_PASID)) ||
        //      !user_data->len || !ops->domain_alloc_nested) return ERR_PTR(-EOPNOTSUPP);"
        if flags.intersects(!(HwptFlags::FAULT_ID_VALID | HwptFlags::PASID))
            || !has_data(data)
            || !matches!(kind, UnitKind::Vtd | UnitKind::Mock)
        {
            return Err(Errno::EOPNOTSUPP);
        }
        // "if (parent->auto_domain || !parent->nest_parent ||
        //      parent->common.domain->owner != ops) return ERR_PTR(-EINVAL);"
        if p.auto_domain
            || !p.flags.contains(HwptFlags::NEST_PARENT)
            || UnitKind::of(self.unit_info(p.unit)) != kind
        {
            return Err(Errno::EINVAL);
        }
        let drv_flags = flags - HwptFlags::FAULT_ID_VALID;
        if kind == UnitKind::Mock {
            mock::alloc_nested(drv_flags, data)?;
        } else {
            vendor::vtd_alloc_nested(self.unit_info(unit), drv_flags, p.stage, data)?;
        }
        self.insert(Obj::Nested(Nested {
            parent,
            viommu: None,
            unit,
            flags,
            data: data.clone(),
            fault: None,
        }))
    }

    /// hw_pagetable.c, `iommufd_viommu_alloc_hwpt_nested` (SMMUv3).
    fn viommu_nested_alloc(
        &mut self,
        viommu: u32,
        dev: u32,
        flags: HwptFlags,
        data: &HwptData,
    ) -> Result<u32, Errno> {
        let unit = self.dev(dev)?.unit;
        let v = self.viommu(viommu)?.clone();
        // "if (viommu->iommu_dev != __iommu_get_iommu_dev(idev->dev)) rc = -EINVAL;"
        if v.unit != unit {
            return Err(Errno::EINVAL);
        }
        // "if (flags & ~(IOMMU_HWPT_FAULT_ID_VALID | IOMMU_HWPT_ALLOC_PASID)) return ERR_PTR(-EOPNOTSUPP);
        //  if (!user_data->len) return ERR_PTR(-EOPNOTSUPP);"
        if flags.intersects(!(HwptFlags::FAULT_ID_VALID | HwptFlags::PASID)) || !has_data(data) {
            return Err(Errno::EOPNOTSUPP);
        }
        if UnitKind::of(self.unit_info(unit)) == UnitKind::Mock {
            mock::alloc_nested(flags - HwptFlags::FAULT_ID_VALID, data)?;
        } else {
            vendor::smmu_alloc_domain_nested(flags - HwptFlags::FAULT_ID_VALID, data)?;
        }
        self.insert(Obj::Nested(Nested {
            parent: v.hwpt,
            viommu: Some(viommu),
            unit,
            flags,
            data: data.clone(),
            fault: None,
        }))
    }

    /// vfio/iommufd.c, `vfio_iommufd_physical_attach_ioas` /
    /// `_pasid_attach_ioas`: attach when detached, else replace.
    pub fn attach(&mut self, dev: u32, pasid: u32, pt: PtId) -> Result<(), Errno> {
        self.dev(dev)?;
        let replace = self.attachment(dev, pasid).is_some();
        let raw = pt.raw();
        // device.c, iommufd_device_change_pt: dispatch on the object's type.
        let hwpt = match self.objects.get(&raw) {
            None | Some(Obj::Tombstone) => return Err(Errno::ENOENT),
            Some(Obj::Paging(_) | Obj::Nested(_)) => {
                if replace {
                    self.do_replace(dev, pasid, raw)?;
                } else {
                    self.hwpt_attach(raw, dev, pasid)?;
                }
                raw
            }
            Some(Obj::Ioas(_)) => self.auto_get_domain(dev, pasid, raw, replace)?,
            // "default: destroy_hwpt = ERR_PTR(-EINVAL);"
            Some(_) => return Err(Errno::EINVAL),
        };
        if let Some(a) = self.attach.get_mut(&(dev, pasid)) {
            a.requested = match self.objects.get(&raw) {
                Some(Obj::Ioas(_)) => PtId::Ioas(nesting_core::host::IoasId(raw)),
                _ => PtId::Hwpt(nesting_core::host::HwptId(hwpt)),
            };
        }
        Ok(())
    }

    /// device.c, `iommufd_device_auto_get_domain`: reuse an automatic
    /// domain of the IOAS that accepts the device (EINVAL means
    /// "incompatible, try the next"), else allocate one.
    fn auto_get_domain(
        &mut self,
        dev: u32,
        pasid: u32,
        ioas: u32,
        replace: bool,
    ) -> Result<u32, Errno> {
        let autos: Vec<u32> = self
            .ioas(ioas)?
            .domains
            .iter()
            .copied()
            .filter(|d| self.paging(*d).is_ok_and(|p| p.auto_domain))
            .collect();
        for hwpt in autos {
            let mut trial = self.clone();
            let rc = if replace {
                trial.do_replace(dev, pasid, hwpt)
            } else {
                trial.hwpt_attach(hwpt, dev, pasid)
            };
            match rc {
                Ok(()) => {
                    *self = trial;
                    return Ok(hwpt);
                }
                Err(Errno::EINVAL) => continue,
                Err(e) => return Err(e),
            }
        }
        // "iommufd_hwpt_paging_alloc(idev->ictx, ioas, idev, pasid, 0, immediate_attach, NULL)"
        let id = self.paging_alloc(
            ioas,
            dev,
            pasid,
            HwptFlags::empty(),
            &HwptData::None,
            !replace,
        )?;
        if let Ok(p) = self.paging_mut(id) {
            p.auto_domain = true;
        }
        if replace {
            self.do_replace(dev, pasid, id)?;
        }
        Ok(id)
    }

    /// device.c, `iommufd_hw_pagetable_attach` for a detached device/PASID.
    pub fn hwpt_attach(&mut self, hwpt: u32, dev: u32, pasid: u32) -> Result<(), Errno> {
        // "xa_insert(&attach->device_array, ...)" fails -EBUSY when attached.
        if self.attachment(dev, pasid).is_some() {
            return Err(Errno::EBUSY);
        }
        let resv_ioas = if pasid == 0 {
            self.find_hwpt_paging(hwpt)
                .and_then(|p| self.paging(p).ok())
                .map(|p| p.ioas)
        } else {
            None
        };
        // iommufd_device_attach_reserved_iova
        if let Some(ioas) = resv_ioas {
            self.enforce_dev_resv(ioas, dev)?;
        }
        self.attach_device_checks(hwpt, dev, pasid)?;
        let handle = self.new_handle();
        self.attach.insert(
            (dev, pasid),
            Attach {
                hwpt,
                requested: PtId::Hwpt(nesting_core::host::HwptId(hwpt)),
                handle,
            },
        );
        Ok(())
    }

    /// device.c, `iommufd_device_do_replace`.
    fn do_replace(&mut self, dev: u32, pasid: u32, hwpt: u32) -> Result<(), Errno> {
        let old = self.attachment(dev, pasid).ok_or(Errno::EINVAL)?.clone();
        // "if (hwpt == old_hwpt) return NULL;"
        if old.hwpt == hwpt {
            return Ok(());
        }
        let new_ioas = self
            .find_hwpt_paging(hwpt)
            .and_then(|p| self.paging(p).ok())
            .map(|p| p.ioas);
        let old_ioas = self
            .find_hwpt_paging(old.hwpt)
            .and_then(|p| self.paging(p).ok())
            .map(|p| p.ioas);
        // iommufd_group_do_replace_reserved_iova: only when the IOAS changes
        // ("if (!old_hwpt_paging || hwpt_paging->ioas != old_hwpt_paging->ioas)").
        if pasid == 0
            && let Some(n) = new_ioas
            && old_ioas != Some(n)
        {
            self.enforce_dev_resv(n, dev)?;
        }
        self.attach_device_checks(hwpt, dev, pasid)?;
        // "if (old_hwpt_paging && pasid == IOMMU_NO_PASID &&
        //      (!hwpt_paging || hwpt_paging->ioas != old_hwpt_paging->ioas))"
        if pasid == 0
            && let Some(o) = old_ioas
            && new_ioas != Some(o)
        {
            self.remove_dev_resv(o, dev);
        }
        self.auto_response(old.handle);
        let handle = self.new_handle();
        self.attach.insert(
            (dev, pasid),
            Attach {
                hwpt,
                requested: PtId::Hwpt(nesting_core::host::HwptId(hwpt)),
                handle,
            },
        );
        self.put_hwpt(old.hwpt);
        Ok(())
    }

    /// device.c, `iommufd_hwpt_attach_device` / `_replace_device`: the
    /// PASID compatibility rule, then the IOMMU core and driver checks.
    fn attach_device_checks(&self, hwpt: u32, dev: u32, pasid: u32) -> Result<(), Errno> {
        // device.c, iommufd_hwpt_pasid_compat
        if pasid == 0 {
            let others = self.attach.keys().any(|(d, p)| *d == dev && *p != 0);
            if !self.hwpt_pasid_compat(hwpt) && others {
                return Err(Errno::EINVAL);
            }
        } else {
            if !self.hwpt_pasid_compat(hwpt) {
                return Err(Errno::EINVAL);
            }
            if let Some(a) = self.attachment(dev, 0)
                && !self.hwpt_pasid_compat(a.hwpt)
            {
                return Err(Errno::EINVAL);
            }
        }
        let unit = self.dev(dev)?.unit;
        let has_pasids = self.attach.keys().any(|(d, p)| *d == dev && *p != 0);
        let vsid_known = |viommu: u32| {
            self.viommu(viommu)
                .is_ok_and(|v| v.vdevs.values().any(|vd| self.vdev_dev(*vd) == Some(dev)))
        };
        let target = vendor::AttachTarget {
            pasid,
            dev_unit: unit,
            dev_info: self.unit_info(unit),
            dev_spec: self.unit_spec(unit),
            has_pasids,
        };
        match self.objects.get(&hwpt) {
            Some(Obj::Paging(p)) => vendor::attach_paging(&target, p, self.unit_spec(p.unit)),
            Some(Obj::Nested(n)) => {
                let parent = self.paging(n.parent)?;
                let vdev = n.viommu.is_some_and(vsid_known);
                vendor::attach_nested(&target, n, parent, self.unit_spec(parent.unit), vdev)
            }
            _ => Err(Errno::EINVAL),
        }
    }

    fn vdev_dev(&self, vdev: u32) -> Option<u32> {
        match self.objects.get(&vdev) {
            Some(Obj::Vdevice(v)) => Some(v.dev),
            _ => None,
        }
    }

    /// device.c, `iommufd_hw_pagetable_detach`; detaching what is not
    /// attached is a no-op (`vfio_iommufd_physical_detach_ioas`).
    pub fn detach(&mut self, dev: u32, pasid: u32) -> Result<(), Errno> {
        self.dev(dev)?;
        let Some(old) = self.attach.remove(&(dev, pasid)) else {
            return Ok(());
        };
        // iommufd_hwpt_detach_device -> iommufd_auto_response_faults
        self.auto_response(old.handle);
        if pasid == 0
            && let Some(ioas) = self
                .find_hwpt_paging(old.hwpt)
                .and_then(|p| self.paging(p).ok())
                .map(|p| p.ioas)
        {
            self.remove_dev_resv(ioas, dev);
        }
        self.put_hwpt(old.hwpt);
        Ok(())
    }
}
