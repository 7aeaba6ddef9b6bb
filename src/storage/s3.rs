//! S3 backend (placeholder, being written).
#[derive(Debug)]
pub struct S3Storage;
