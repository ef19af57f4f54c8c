//! The image engine's error type. Variants name what failed and carry the context a user needs
//! (file, offset, limit); causes are chained through `source`, never repeated in the message.

/// Every failure the image engine reports.
#[derive(Debug, thiserror::Error)]
pub enum ImageError {
    #[error("{context}")]
    Io {
        context: String,
        #[source]
        source: std::io::Error,
    },
    #[error("{format} image is corrupt: {detail}")]
    Corrupt {
        format: &'static str,
        detail: String,
    },
    #[error("{format} feature not supported: {detail}")]
    Unsupported {
        format: &'static str,
        detail: String,
    },
    #[error("{what} of {requested} bytes exceeds the limit of {limit} bytes")]
    LimitExceeded {
        what: &'static str,
        requested: u64,
        limit: u64,
    },
    #[error("referenced file {reference:?} is outside the allowed directories")]
    PathNotAllowed { reference: String },
    #[error("backing chain is longer than {0} images or loops")]
    ChainTooDeep(usize),
    #[error("read of {len} bytes at offset {offset} is past the virtual size {size}")]
    OutOfRange { offset: u64, len: u64, size: u64 },
    #[error("unrecognised image format")]
    UnknownFormat,
    #[error("invalid argument: {0}")]
    InvalidArgument(String),
    #[error("cancelled")]
    Cancelled,
    #[error("refusing to write {}: {reason}", path.display())]
    WriteRefused {
        path: std::path::PathBuf,
        reason: String,
    },
    /// Another process (typically a running QEMU) holds the image's lock.
    #[error("{} is in use by another process (QEMU or qemu-img holds its lock)", path.display())]
    InUse { path: std::path::PathBuf },
}

impl ImageError {
    /// Wraps an I/O error with a description of what was being done.
    pub fn io(context: impl Into<String>, source: std::io::Error) -> Self {
        ImageError::Io {
            context: context.into(),
            source,
        }
    }
}
