//! WeChat's rule for template messages since 2023-05-04 (docs/interface.md §12): every keyword
//! value is cut at 20 characters and at its first line break, whatever its type, and the send still
//! succeeds. A value cut by WeChat is a value the user never sees whole, so wxnotify checks the
//! samples against the rule at start-up and, at send time, shortens a longer value itself: lines
//! joined with a space, then cut at a character boundary (at a space when a Latin word would be
//! split) with "…", so the user sees a deliberate ellipsis. Subscribe messages keep their types'
//! own limits.

/// Characters WeChat shows of a template-message value.
pub(crate) const TEMPLATE_VALUE_MAX: usize = 20;

/// How far back from the cut a space is looked for, so as not to split a Latin word.
const WORD_LOOKBACK: usize = 8;

/// Why WeChat would not show a template-message value whole.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Cut {
    LineBreak,
    TooLong(usize),
}

impl std::fmt::Display for Cut {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Cut::LineBreak => write!(f, "holds a line break"),
            Cut::TooLong(n) => write!(f, "is {n} characters long"),
        }
        .and_then(|()| {
            write!(
                f,
                "; WeChat cuts every template-message value at its first line break and at \
                 {TEMPLATE_VALUE_MAX} characters since 2023-05-04"
            )
        })
    }
}

/// What WeChat would cut of `value`, if anything.
pub(crate) fn would_cut(value: &str) -> Option<Cut> {
    if value.contains(['\n', '\r']) {
        return Some(Cut::LineBreak);
    }
    let n = value.chars().count();
    (n > TEMPLATE_VALUE_MAX).then_some(Cut::TooLong(n))
}

/// `value` as WeChat will show it whole; `None` when it fits already.
pub(crate) fn shorten(value: &str) -> Option<String> {
    would_cut(value)?;
    let joined = value
        .split(['\n', '\r'])
        .map(str::trim)
        .filter(|l| !l.is_empty())
        .collect::<Vec<_>>()
        .join(" ");
    let chars: Vec<char> = joined.chars().collect();
    if chars.len() <= TEMPLATE_VALUE_MAX {
        return Some(joined);
    }
    let mut keep = TEMPLATE_VALUE_MAX - 1;
    let splits_a_word = |at: usize| chars[at - 1].is_ascii_alphanumeric() && chars[at].is_ascii_alphanumeric();
    if splits_a_word(keep)
        && let Some(space) = (keep.saturating_sub(WORD_LOOKBACK)..keep)
            .rev()
            .find(|&i| chars[i] == ' ')
        && space > 0
    {
        keep = space;
    }
    let mut short: String = chars[..keep].iter().collect::<String>().trim_end().to_string();
    short.push('…');
    Some(short)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_value_that_fits_is_left_alone() {
        assert_eq!(shorten("徐汇店"), None);
        assert_eq!(
            shorten(&"店".repeat(20)),
            None,
            "20 characters fit, whatever their bytes"
        );
        assert_eq!(would_cut(&"a".repeat(21)), Some(Cut::TooLong(21)));
    }

    #[test]
    fn a_long_value_ends_in_an_ellipsis_at_a_character_boundary() {
        let store = "上海市徐汇区漕溪北路第一百八十八号汽车美容中心旗舰店"; // 26 characters
        let short = shorten(store).unwrap();
        assert_eq!(short.chars().count(), 20);
        assert!(
            short.ends_with('…') && store.starts_with(short.trim_end_matches('…')),
            "{short}"
        );
    }

    #[test]
    fn a_latin_word_is_not_split() {
        let short = shorten("Premium hand wash and interior detailing").unwrap();
        assert_eq!(short, "Premium hand wash…");
        let unbroken = shorten(&"x".repeat(30)).unwrap();
        assert_eq!(unbroken.chars().count(), 20, "no space to cut at: cut at 19 characters");
    }

    #[test]
    fn lines_are_joined_so_nothing_after_a_break_is_lost() {
        assert_eq!(shorten("精洗\n打蜡"), Some("精洗 打蜡".into()));
        assert_eq!(shorten("a\r\nb"), Some("a b".into()));
        assert_eq!(would_cut("a\nb"), Some(Cut::LineBreak));
        let long = shorten(&format!("{}\n{}", "甲".repeat(15), "乙".repeat(15))).unwrap();
        assert_eq!(long.chars().count(), 20);
        assert!(long.contains(' ') && long.ends_with('…'));
    }
}
