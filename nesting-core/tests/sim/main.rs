//! nesting-core's engines and RAII handles driven through
//! the public API against the simulated host.

mod nested;
mod objects;
mod ram;
mod registry;
mod shadow;
