//! Placeholder: filled by the shadow work of issue 3.
