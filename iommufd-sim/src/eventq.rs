//! vEVENTQs and IOPF fault queues (`drivers/iommu/iommufd/eventq.c`,
//! `driver.c`, `iommufd_private.h`).

use nesting_core::host::{
    Errno, FaultGroup, PageFault, PageFaultFlags, PageResponse, VEvent, VeventqType, ViommuType,
};
use nesting_core::types::{Access, Iova};

use super::state::{FaultQ, Group, Obj, QItem, State, Veventq};

/// eventq.c: "An arbitrary upper bound for veventq_depth that fits all
/// existing HWs".
const VEVENTQ_MAX_DEPTH: u32 = 1 << 19;

/// `IOMMU_VEVENTQ_TYPE_DEFAULT`.
const VEVENTQ_TYPE_DEFAULT: VeventqType = VeventqType::Other(0);

impl State {
    /// eventq.c, `iommufd_veventq_alloc`.
    pub fn veventq_alloc(
        &mut self,
        viommu: u32,
        kind: VeventqType,
        depth: u32,
    ) -> Result<u32, Errno> {
        // "if (cmd->flags || cmd->__reserved || cmd->type == IOMMU_VEVENTQ_TYPE_DEFAULT) return -EOPNOTSUPP;"
        if kind == VEVENTQ_TYPE_DEFAULT {
            return Err(Errno::EOPNOTSUPP);
        }
        // "if (!cmd->veventq_depth || cmd->veventq_depth > VEVENTQ_MAX_DEPTH) return -EINVAL;"
        if depth == 0 || depth > VEVENTQ_MAX_DEPTH {
            return Err(Errno::EINVAL);
        }
        self.viommu(viommu)?;
        // "if (iommufd_viommu_find_veventq(viommu, cmd->type)) { rc = -EEXIST; ..."
        if self.find_veventq(viommu, kind).is_some() {
            return Err(Errno::EEXIST);
        }
        self.insert(Obj::Veventq(Veventq {
            viommu,
            kind,
            depth,
            deliver: Default::default(),
            num_events: 0,
            sequence: 0,
        }))
    }

    fn find_veventq(&self, viommu: u32, kind: VeventqType) -> Option<u32> {
        self.objects.iter().find_map(|(id, o)| match o {
            Obj::Veventq(q) if q.viommu == viommu && q.kind == kind => Some(*id),
            _ => None,
        })
    }

    /// The queue `inject_vevent` delivers to: the one of the vIOMMU's own
    /// event type, else the oldest queue of the vIOMMU.
    pub fn default_veventq(&self, viommu: u32) -> Result<u32, Errno> {
        let v = self.viommu(viommu)?;
        let native = match v.kind {
            ViommuType::ArmSmmuv3 => Some(VeventqType::ArmSmmuv3),
            ViommuType::Other(_) => None,
        };
        native
            .and_then(|k| self.find_veventq(viommu, k))
            .or_else(|| {
                self.objects.iter().find_map(|(id, o)| match o {
                    Obj::Veventq(q) if q.viommu == viommu => Some(*id),
                    _ => None,
                })
            })
            // driver.c, iommufd_viommu_report_event: "if (!veventq) rc = -EOPNOTSUPP;"
            .ok_or(Errno::EOPNOTSUPP)
    }

    /// driver.c, `iommufd_viommu_report_event` and iommufd_private.h,
    /// `iommufd_vevent_handler`: past `depth` pending events the
    /// lost-events header is (re)queued at the tail with a fresh sequence
    /// number; a header still at the tail is replaced by the next node.
    pub fn report_event(&mut self, q: u32, data: Vec<u8>) -> Result<(), Errno> {
        // "if (WARN_ON_ONCE(!data_len || !event_data)) return -EINVAL;"
        if data.is_empty() {
            return Err(Errno::EINVAL);
        }
        let q = self.veventq_mut(q)?;
        let sequence = q.sequence;
        let item = if q.num_events == q.depth {
            QItem::Lost { sequence }
        } else {
            q.num_events += 1;
            QItem::Event { sequence, data }
        };
        if matches!(q.deliver.back(), Some(QItem::Lost { .. })) {
            q.deliver.pop_back();
        }
        q.deliver.push_back(item);
        // "veventq->sequence = (veventq->sequence + 1) & INT_MAX;"
        q.sequence = (q.sequence + 1) & i32::MAX as u32;
        Ok(())
    }

    /// eventq.c, `iommufd_veventq_fops_read`, with room for `max` records.
    pub fn veventq_read(&mut self, q: u32, max: usize) -> Result<Vec<VEvent>, Errno> {
        let q = self.veventq_mut(q)?;
        // "Minimum read count is a vEVENT header": "if (count < sizeof(*hdr)) return -EINVAL;"
        if max == 0 {
            return Err(Errno::EINVAL);
        }
        let mut out = Vec::new();
        while out.len() < max {
            let Some(item) = q.deliver.pop_front() else {
                break;
            };
            out.push(match item {
                QItem::Event { sequence, data } => {
                    q.num_events -= 1;
                    VEvent::Event { sequence, data }
                }
                QItem::Lost { sequence } => VEvent::Lost { sequence },
            });
        }
        Ok(out)
    }

    /// eventq.c, `iommufd_fault_alloc`.
    pub fn fault_queue_alloc(&mut self) -> Result<u32, Errno> {
        self.insert(Obj::Fault(FaultQ::default()))
    }

    /// Queues a page request group on the fault queue of the HWPT that
    /// `(dev, pasid)` is attached to (eventq.c, `iommufd_fault_iopf_handler`).
    pub fn raise_fault(
        &mut self,
        dev: u32,
        pasid: u32,
        addr: Iova,
        perm: Access,
        group_len: u32,
    ) -> Result<(), Errno> {
        if group_len == 0 {
            return Err(Errno::EINVAL);
        }
        let page = self.page_size();
        let a = self.attachment(dev, pasid).ok_or(Errno::ENODEV)?.clone();
        // Without a fault queue the IOMMU core answers the request itself.
        let fq = self.hwpt_fault(a.hwpt).ok_or(Errno::EOPNOTSUPP)?;
        let d = self.dev_mut(dev)?;
        let grpid = d.next_grpid;
        d.next_grpid = d.next_grpid.wrapping_add(1);
        let mut faults = Vec::with_capacity(group_len as usize);
        for i in 0..group_len {
            let at = addr.checked_add(u64::from(i) * page).ok_or(Errno::EINVAL)?;
            let mut flags = PageFaultFlags::empty();
            flags.set(PageFaultFlags::PASID_VALID, pasid != 0);
            flags.set(PageFaultFlags::LAST_PAGE, i + 1 == group_len);
            faults.push(PageFault {
                flags,
                dev: nesting_core::host::DevId(dev),
                pasid,
                grpid,
                perm,
                addr: at,
                // iommufd_compose_fault_message: "hwpt_fault->length = 0;"
                length: 0,
                cookie: 0,
            });
        }
        self.fault_mut(fq)?.deliver.push_back(Group {
            handle: a.handle,
            faults,
        });
        Ok(())
    }

    /// eventq.c, `iommufd_fault_fops_read`: each group read gets a cookie
    /// (`xa_alloc` on an `XA_FLAGS_ALLOC1` xarray: lowest free from 1) and
    /// waits in `fault->response`.
    pub fn fault_read(&mut self, q: u32) -> Result<Vec<FaultGroup>, Errno> {
        let fq = self.fault_mut(q)?;
        let mut out = Vec::new();
        while let Some(mut g) = fq.deliver.pop_front() {
            let mut cookie = 1u32;
            while fq.response.contains_key(&cookie) {
                cookie = cookie.checked_add(1).ok_or(Errno::ENOSPC)?;
            }
            for f in &mut g.faults {
                f.cookie = cookie;
            }
            out.push(FaultGroup {
                faults: g.faults.clone(),
            });
            fq.response.insert(cookie, g);
        }
        Ok(out)
    }

    /// eventq.c, `iommufd_fault_fops_write`: "group = xa_erase(&fault->response,
    /// response.cookie); if (!group) rc = -EINVAL;"
    pub fn fault_respond(&mut self, q: u32, resp: PageResponse) -> Result<(), Errno> {
        let fq = self.fault_mut(q)?;
        fq.response
            .remove(&resp.cookie)
            .map(|_| ())
            .ok_or(Errno::EINVAL)
    }

    /// eventq.c, `iommufd_auto_response_faults`: the groups of a handle
    /// being detached or replaced are answered INVALID and dropped.
    pub fn auto_response(&mut self, handle: u64) {
        for o in self.objects.values_mut() {
            if let Obj::Fault(fq) = o {
                fq.deliver.retain(|g| g.handle != handle);
                fq.response.retain(|_, g| g.handle != handle);
            }
        }
    }
}
