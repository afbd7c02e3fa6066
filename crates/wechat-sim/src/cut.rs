//! Template message rules since 2023-05-04 (`WECHAT_API.md`): WeChat cuts every keyword value of a
//! template message (never of a subscribe message) at its first line break (`\n` or `\r`), then at
//! 20 characters, and still accepts the send; the value is checked against its keyword's type
//! after the cut.

/// The most characters of a template keyword value the user sees.
pub const MAX_CHARS: usize = 20;

/// `value` as WeChat keeps it: up to the first line break, then at most [`MAX_CHARS`] characters
/// (characters, not bytes). Equal to `value` when nothing was cut.
pub fn cut(value: &str) -> &str {
    let line = value.split(['\n', '\r']).next().unwrap_or_default();
    match line.char_indices().nth(MAX_CHARS) {
        Some((end, _)) => &line[..end],
        None => line,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cuts_at_the_first_line_break_then_at_twenty_characters() {
        assert_eq!(cut("精洗套餐"), "精洗套餐");
        assert_eq!(cut("第一行\n第二行"), "第一行");
        assert_eq!(cut("first\r\nsecond"), "first");
        assert_eq!(cut("only\rcarriage"), "only");
        assert_eq!(cut("\nafter"), "");
        let thirty: String = "精".repeat(30);
        assert_eq!(cut(&thirty), "精".repeat(20), "characters, not bytes");
        assert_eq!(cut(&"a".repeat(20)), "a".repeat(20));
        assert_eq!(cut(&format!("{}\nx", "b".repeat(25))), "b".repeat(20));
    }
}
