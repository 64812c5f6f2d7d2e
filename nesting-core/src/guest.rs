//! Placeholder: guest config.
