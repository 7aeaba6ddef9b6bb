//! Compression + authenticated encryption as one streaming pipeline.

mod compression;

pub use compression::{Compression, FinishWrite};
