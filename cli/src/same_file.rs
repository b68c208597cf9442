//! Whether two paths are one file, by any names (hard or symbolic links,
//! `./` spellings): an output that is an input would be written over it.

use std::fs::Metadata;
use std::os::unix::fs::MetadataExt;

/// The same device and inode.
pub fn same_file(a: &Metadata, b: &Metadata) -> bool {
    (a.dev(), a.ino()) == (b.dev(), b.ino())
}
