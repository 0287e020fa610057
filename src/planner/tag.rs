//! Workspace tags in `/* */` comments, as Rails query log tags write them.
//!
//! Accepted forms (the key must be `workspace_id`, the value a non-negative integer):
//! `/*workspace_id:42*/`, legacy `/*application:Foo,controller:bar,workspace_id:42*/`
//! and sqlcommenter `/*application='Foo',workspace_id='42'*/`.

/// The workspace a comment names, if it is a tag carrying a valid `workspace_id`.
/// `comment` is the whole comment including `/*` and `*/`.
pub(crate) fn workspace_in_comment(comment: &str) -> Option<u64> {
    workspace_digits_in_comment(comment).map(|(_, id)| id)
}

/// [`workspace_in_comment`] with the byte range of the id's digits in `comment` (the
/// plan cache keys a tagged statement on the comment without those digits).
pub(crate) fn workspace_digits_in_comment(comment: &str) -> Option<(std::ops::Range<usize>, u64)> {
    let body = comment.strip_prefix("/*")?;
    let body = body.strip_suffix("*/").unwrap_or(body);
    body.split(',').find_map(|pair| {
        let (key, value) = pair.split_once([':', '='])?;
        if !key.trim().eq_ignore_ascii_case("workspace_id") {
            return None;
        }
        let value = value.trim();
        let value = value
            .strip_prefix('\'')
            .and_then(|v| v.strip_suffix('\''))
            .unwrap_or(value);
        let id = parse_workspace_digits(value)?;
        // `value` is a slice of `comment`: its offset is the distance between the two.
        let start = (value.as_ptr() as usize).checked_sub(comment.as_ptr() as usize)?;
        Some((start..start + value.len(), id))
    })
}

/// A non-negative integer made only of ASCII digits that fits in a u64.
pub(crate) fn parse_workspace_digits(text: &str) -> Option<u64> {
    if text.is_empty() {
        return None;
    }
    // One pass (a long INSERT reads one per row): any other byte, or overflow, is None.
    text.bytes().try_fold(0u64, |n, b| {
        let digit = b.wrapping_sub(b'0');
        (digit <= 9).then_some(())?;
        n.checked_mul(10)?.checked_add(u64::from(digit))
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn accepts_the_three_rails_forms() {
        assert_eq!(workspace_in_comment("/*workspace_id:42*/"), Some(42));
        assert_eq!(
            workspace_in_comment("/*application:Foo,controller:bar,workspace_id:42*/"),
            Some(42)
        );
        assert_eq!(
            workspace_in_comment("/*application='Foo',workspace_id='42'*/"),
            Some(42)
        );
        assert_eq!(workspace_in_comment("/* workspace_id: 7 */"), Some(7));
    }

    #[test]
    fn workspace_digits_are_a_u64_of_ascii_digits_only() {
        assert_eq!(parse_workspace_digits("0"), Some(0));
        assert_eq!(parse_workspace_digits("007"), Some(7));
        assert_eq!(
            parse_workspace_digits("18446744073709551615"),
            Some(u64::MAX)
        );
        assert_eq!(parse_workspace_digits("18446744073709551616"), None);
        assert_eq!(parse_workspace_digits("99999999999999999999"), None);
        for bad in [
            "", "+1", "-1", "1.0", "1e3", " 1", "1 ", "٣", "1a", ":", "/",
        ] {
            assert_eq!(parse_workspace_digits(bad), None, "{bad:?}");
        }
    }

    #[test]
    fn rejects_other_keys_and_bad_values() {
        assert_eq!(workspace_in_comment("/*workspace:42*/"), None);
        assert_eq!(workspace_in_comment("/*old_workspace_id:42*/"), None);
        assert_eq!(workspace_in_comment("/*workspace_id:-1*/"), None);
        assert_eq!(workspace_in_comment("/*workspace_id:4x*/"), None);
        assert_eq!(workspace_in_comment("/*workspace_id:*/"), None);
        assert_eq!(
            workspace_in_comment("/*workspace_id:99999999999999999999999*/"),
            None
        );
    }
}
