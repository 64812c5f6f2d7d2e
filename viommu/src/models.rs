//! The three models as the `model` directive names them: each model crate
//! owns its options and its checks against a host; this module only picks
//! the crate by name.

use std::fmt;

use nesting_core::guest::GuestIommu;
use nesting_core::options::{ModelOptions, OptionError};
use smmuv3::Smmuv3Config;
use thiserror::Error;
use virtio_iommu::VirtioIommuConfig;
use vtd::VtdConfig;

#[cfg(test)]
mod tests;

/// Model names as scripts write them.
pub const MODEL_NAMES: [&str; 3] = [
    VtdConfig::MODEL,
    Smmuv3Config::MODEL,
    VirtioIommuConfig::MODEL,
];

/// A `model` directive could not be turned into a configuration.
#[derive(Debug, Error, PartialEq, Eq)]
pub enum ModelError {
    /// The model name is not one of [`MODEL_NAMES`].
    #[error("unknown model {0:?} (known: vtd, smmuv3, virtio-iommu)")]
    UnknownModel(String),
    /// The options do not make a configuration of the model.
    #[error(transparent)]
    Options(#[from] OptionError),
}

/// The configuration of one guest IOMMU model.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum GuestModel {
    /// Intel VT-d.
    Vtd(VtdConfig),
    /// Arm SMMUv3.
    Smmuv3(Smmuv3Config),
    /// virtio-iommu.
    VirtioIommu(VirtioIommuConfig),
}

impl GuestModel {
    /// Parses `key=value` options for `model`; keys left out take their
    /// defaults.
    pub fn from_options(model: &str, opts: &[&str]) -> Result<GuestModel, ModelError> {
        Ok(match model {
            VtdConfig::MODEL => GuestModel::Vtd(VtdConfig::from_options(opts)?),
            Smmuv3Config::MODEL => GuestModel::Smmuv3(Smmuv3Config::from_options(opts)?),
            VirtioIommuConfig::MODEL => {
                GuestModel::VirtioIommu(VirtioIommuConfig::from_options(opts)?)
            }
            _ => return Err(ModelError::UnknownModel(model.to_string())),
        })
    }

    /// The default configuration of `model`.
    pub fn defaults(model: &str) -> Result<GuestModel, ModelError> {
        Self::from_options(model, &[])
    }

    /// Every key with its value, in `REPLAY.md` order.
    pub fn options(&self) -> Vec<(String, String)> {
        match self {
            GuestModel::Vtd(c) => c.options(),
            GuestModel::Smmuv3(c) => c.options(),
            GuestModel::VirtioIommu(c) => c.options(),
        }
    }

    /// The model name as scripts write it.
    pub fn model_name(&self) -> &'static str {
        self.guest().model_name()
    }

    /// The configuration as the ladder sees it.
    pub fn guest(&self) -> &dyn GuestIommu {
        match self {
            GuestModel::Vtd(c) => c,
            GuestModel::Smmuv3(c) => c,
            GuestModel::VirtioIommu(c) => c,
        }
    }
}

impl fmt::Display for GuestModel {
    /// `NAME KEY=VALUE ...`, the `model` directive's arguments.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&match self {
            GuestModel::Vtd(c) => c.directive(),
            GuestModel::Smmuv3(c) => c.directive(),
            GuestModel::VirtioIommu(c) => c.directive(),
        })
    }
}
