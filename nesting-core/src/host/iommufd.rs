//! Placeholder: the real backend (helper fills).
pub struct Iommufd;
