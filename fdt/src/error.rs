//! What can be wrong with a device tree.

/// What is wrong with a device tree.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum FdtError {
    /// The header's magic is not `0xd00dfeed`.
    BadMagic,
    /// The header or a block points outside the blob.
    Truncated,
    /// `last_comp_version` is newer than 17.
    BadVersion,
    /// An unknown token, or nodes that do not nest.
    BadStructure,
    /// A name that is not NUL-terminated UTF-8.
    BadString,
    /// Nodes nest deeper than the walker follows.
    TooDeep,
    /// A `reg` property whose length is not a whole number of entries, or
    /// whose cell counts are unsupported.
    BadReg,
    /// An edit would not fit the property it rewrites.
    EditDoesNotFit,
}

impl core::fmt::Display for FdtError {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        let s = match self {
            Self::BadMagic => "bad magic",
            Self::Truncated => "truncated",
            Self::BadVersion => "unsupported version",
            Self::BadStructure => "malformed structure block",
            Self::BadString => "malformed name",
            Self::TooDeep => "nodes nest too deep",
            Self::BadReg => "malformed reg property",
            Self::EditDoesNotFit => "edit does not fit",
        };
        f.write_str(s)
    }
}
