//! Placeholder: simulated backend.
pub struct SimIommufd;
