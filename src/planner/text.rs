//! The text the planner reads, made from a COM_QUERY's raw bytes.
//!
//! Every span the planner returns (statements, INSERT rows) is a byte offset into the
//! text it was given, and the session slices the client's raw bytes with those spans.
//! So the text must have exactly the raw bytes' length: `String::from_utf8_lossy`
//! does not (it turns each invalid byte into the 3-byte U+FFFD), and its spans drift.

use std::borrow::Cow;

/// What each byte of an invalid UTF-8 sequence becomes.
///
/// `$` because it reads like the byte it replaces: invalid bytes are all >= 0x80,
/// which our lexer and sqlparser's MySQL dialect (and MySQL itself) treat as part of an
/// unquoted identifier, and so do they `$`; inside strings and comments neither
/// matters. So the tokens keep their boundaries. It is not a quote, backslash,
/// backtick, `;`, comment or whitespace character, it is no placeholder (unlike `?`),
/// and no keyword contains it, so it cannot turn `GET\xffLOCK` or `workspace\xffid`
/// into a word the planner acts on, as `_` would.
const INVALID_BYTE: char = '$';

/// The planner's text for `bytes`, with exactly `bytes.len()` bytes, so that every
/// span of [`plan`](super::plan) is a valid range of `bytes` itself.
///
/// Valid UTF-8 (nearly every query) is borrowed as it is; otherwise each byte of an
/// invalid sequence becomes one `$`.
pub fn sql_text(bytes: &[u8]) -> Cow<'_, str> {
    match std::str::from_utf8(bytes) {
        Ok(text) => Cow::Borrowed(text),
        Err(_) => {
            let mut text = String::with_capacity(bytes.len());
            for chunk in bytes.utf8_chunks() {
                text.push_str(chunk.valid());
                text.extend(std::iter::repeat_n(INVALID_BYTE, chunk.invalid().len()));
            }
            Cow::Owned(text)
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn valid_utf8_is_borrowed_unchanged() {
        let sql = "SELECT 'héllo 🙂' FROM t".as_bytes();
        let text = sql_text(sql);
        assert!(matches!(text, Cow::Borrowed(_)));
        assert_eq!(text.as_bytes(), sql);
    }

    #[test]
    fn each_invalid_byte_becomes_one_placeholder_byte() {
        // A lone continuation byte, a truncated 3-byte sequence, an overlong NUL, 0xff.
        let raw: &[u8] = b"a\x80b\xe2\x82c\xc0\x80d\xffe";
        let text = sql_text(raw);
        assert_eq!(text.len(), raw.len());
        assert_eq!(text, "a$b$$c$$d$e");
    }

    #[test]
    fn valid_characters_around_invalid_bytes_keep_their_offsets() {
        let raw = [
            b"\xe9".as_slice(),
            "é".as_bytes(),
            b"\xf0\x9f",
            "🙂".as_bytes(),
        ]
        .concat();
        let text = sql_text(&raw);
        assert_eq!(text.len(), raw.len());
        assert_eq!(text, "$é$$🙂");
        for (i, c) in text.char_indices() {
            if c != INVALID_BYTE {
                assert_eq!(
                    raw.get(i..i + c.len_utf8()),
                    text.get(i..i + c.len_utf8()).map(str::as_bytes)
                );
            }
        }
    }
}
