//! Record extensions on the wire: each a length-prefixed postcard blob of its own, appended in
//! the order they were introduced (see `record.rs`).

use serde::Serialize;

use crate::record::RecordError;

pub(crate) fn append_extension(
    blob: Vec<u8>,
    value: &impl Serialize,
) -> Result<Vec<u8>, RecordError> {
    let ext = postcard::to_allocvec(value).map_err(|_| RecordError::Malformed)?;
    postcard::to_extend(ext.as_slice(), blob).map_err(|_| RecordError::Malformed)
}

/// The next extension, if the sender wrote one; a truncated one is malformed, not absent.
pub(crate) fn take_extension<T: serde::de::DeserializeOwned>(
    rest: &mut &[u8],
) -> Result<Option<T>, RecordError> {
    if rest.is_empty() {
        return Ok(None);
    }
    let (ext, after): (&[u8], _) =
        postcard::take_from_bytes(rest).map_err(|_| RecordError::Malformed)?;
    *rest = after;
    postcard::from_bytes(ext)
        .map(Some)
        .map_err(|_| RecordError::Malformed)
}
