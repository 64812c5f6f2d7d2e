//! The translation used while no guest IOMMU model sits in front of the
//! endpoint: every IOVA is the guest physical address of the same value,
//! with read and write permission. It implements nesting-core's
//! [`Translate`], the same seam the VT-d and virtio-iommu models plug into,
//! so the endpoint's DMA path does not change when a model replaces it.

use nesting_core::iotlb::{Iotlb, Translate, TranslateFault, Translation};
use nesting_core::types::{Access, Gpa, Iova, PageSize, Pasid, RequesterId};

/// Identity translation (IOVA = GPA) for every requester.
#[derive(Debug)]
pub struct Passthrough {
    /// Never filled nor invalidated: identity needs no cache, but
    /// [`Translate`] asks for one whose generation views follow.
    iotlb: Iotlb,
}

impl Default for Passthrough {
    fn default() -> Self {
        Passthrough {
            iotlb: Iotlb::new(1),
        }
    }
}

impl Translate for Passthrough {
    fn translate(
        &self,
        _rid: RequesterId,
        _pasid: Option<Pasid>,
        iova: Iova,
        access: Access,
    ) -> Result<Translation, TranslateFault> {
        let size = PageSize::SIZE_4K;
        let page = iova.align_down(size.bytes());
        Ok(Translation {
            iova: page,
            gpa: Gpa(page.raw()),
            size,
            access: Access::READ | Access::WRITE | (access & Access::PRIV),
        })
    }

    fn iotlb(&self) -> &Iotlb {
        &self.iotlb
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use nesting_core::types::Bdf;

    #[test]
    fn translate_any_iova_returns_identity_page() {
        let p = Passthrough::default();
        let t = p
            .translate(
                RequesterId::Pci(Bdf::new(0, 5, 0)),
                None,
                Iova(0x1234_5678),
                Access::WRITE,
            )
            .unwrap();
        assert_eq!(t.iova, Iova(0x1234_5000));
        assert_eq!(t.gpa, Gpa(0x1234_5000));
        assert_eq!(t.gpa_of(Iova(0x1234_5678)), Gpa(0x1234_5678));
        assert!(t.access.contains(Access::WRITE));
    }
}
