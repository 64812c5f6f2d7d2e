//! Placeholder: ladder.
