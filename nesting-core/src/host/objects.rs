//! Placeholder: RAII handles.
