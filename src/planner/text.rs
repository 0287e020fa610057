//! Query bytes as text for the planner, byte for byte.

use std::borrow::Cow;

/// The query's text with exactly the input's length, so every byte offset the planner
/// returns indexes the raw bytes too. Valid UTF-8 is borrowed as it is; each byte of an
/// invalid sequence becomes `_`, which is an identifier character: it can neither end
/// nor start a string, comment, quoted name or statement.
pub fn sql_text(bytes: &[u8]) -> Cow<'_, str> {
    match std::str::from_utf8(bytes) {
        Ok(t) => Cow::Borrowed(t),
        Err(_) => {
            let mut out = String::with_capacity(bytes.len());
            for chunk in bytes.utf8_chunks() {
                out.push_str(chunk.valid());
                out.extend(std::iter::repeat_n('_', chunk.invalid().len()));
            }
            Cow::Owned(out)
        }
    }
}
