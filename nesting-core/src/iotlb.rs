//! Placeholder: filled by the iotlb work of issue 3.
