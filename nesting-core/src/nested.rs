//! Placeholder: filled by the nested work of issue 3.
