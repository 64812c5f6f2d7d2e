//! nesting-core's engines, RAII handles and decision ladder driven through
//! the public API against the simulated host.

mod ladder;
mod nested;
mod objects;
mod ram;
mod shadow;
