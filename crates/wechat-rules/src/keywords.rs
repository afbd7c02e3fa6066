//! WeChat's keyword rules (WECHAT_API.md): each `data` key is a type plus a number (`thing1`,
//! `car_number4`), and its value must fit the type. Used twice, deliberately by the same code:
//! by the renderer, which refuses what WeChat would refuse (`render_failed`), and by the simulator
//! (`crates/wechat-sim`), which answers `47003` like WeChat does.

use std::fmt;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum KeywordType {
    Thing,
    Number,
    Letter,
    Symbol,
    CharacterString,
    Time,
    Date,
    Amount,
    PhoneNumber,
    CarNumber,
    Name,
    Phrase,
    Const,
}

impl KeywordType {
    const ALL: [(&'static str, KeywordType); 13] = [
        ("character_string", KeywordType::CharacterString),
        ("phone_number", KeywordType::PhoneNumber),
        ("car_number", KeywordType::CarNumber),
        ("thing", KeywordType::Thing),
        ("number", KeywordType::Number),
        ("letter", KeywordType::Letter),
        ("symbol", KeywordType::Symbol),
        ("time", KeywordType::Time),
        ("date", KeywordType::Date),
        ("amount", KeywordType::Amount),
        ("name", KeywordType::Name),
        ("phrase", KeywordType::Phrase),
        ("const", KeywordType::Const),
    ];

    /// The type of a keyword key: a known prefix followed by one or more digits.
    pub fn of_key(key: &str) -> Option<Self> {
        let prefix = key.trim_end_matches(|c: char| c.is_ascii_digit());
        if prefix.len() == key.len() {
            return None;
        }
        Self::ALL.iter().find(|(name, _)| *name == prefix).map(|(_, t)| *t)
    }

    pub fn name(self) -> &'static str {
        Self::ALL
            .iter()
            .find(|(_, t)| *t == self)
            .map(|(n, _)| *n)
            .unwrap_or("?")
    }
}

/// Why a value does not fit its keyword.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum KeywordError {
    #[error("`{0}` is not a WeChat keyword (expected a type such as thing, time, amount followed by a number)")]
    UnknownType(String),
    #[error("`{key}` ({kind}) value {value:?} is invalid: {rule}")]
    Invalid {
        key: String,
        kind: &'static str,
        value: String,
        rule: &'static str,
    },
}

impl fmt::Display for KeywordType {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

fn is_cjk(c: char) -> bool {
    matches!(c as u32, 0x3400..=0x4DBF | 0x4E00..=0x9FFF | 0xF900..=0xFAFF | 0x20000..=0x2FA1F)
}

fn is_symbol(c: char) -> bool {
    !c.is_alphanumeric() && !c.is_whitespace() && !is_cjk(c)
}

/// Checks one key/value pair against WeChat's rules.
pub fn check(key: &str, value: &str) -> Result<(), KeywordError> {
    let kind = KeywordType::of_key(key).ok_or_else(|| KeywordError::UnknownType(key.to_string()))?;
    match rule_violation(kind, value) {
        None => Ok(()),
        Some(rule) => Err(KeywordError::Invalid {
            key: key.to_string(),
            kind: kind.name(),
            value: truncate(value, 40).to_string(),
            rule,
        }),
    }
}

/// At most `max` characters of `s` (for an error message).
fn truncate(s: &str, max: usize) -> &str {
    match s.char_indices().nth(max) {
        Some((idx, _)) => &s[..idx],
        None => s,
    }
}

fn rule_violation(kind: KeywordType, value: &str) -> Option<&'static str> {
    let n = value.chars().count();
    if value.trim().is_empty() {
        return Some("must not be empty");
    }
    let fail = |ok: bool, rule| if ok { None } else { Some(rule) };
    match kind {
        KeywordType::Thing => fail(n <= 20, "at most 20 characters"),
        KeywordType::Number => fail(
            is_number(value) && value.chars().filter(char::is_ascii_digit).count() <= 32,
            "at most 32 digits (a decimal point allowed)",
        ),
        KeywordType::Letter => fail(
            n <= 32 && value.chars().all(|c| c.is_ascii_alphabetic()),
            "at most 32 letters",
        ),
        KeywordType::Symbol => fail(n <= 5 && value.chars().all(is_symbol), "at most 5 symbols"),
        KeywordType::CharacterString => fail(
            n <= 32 && value.chars().all(|c| c.is_ascii_graphic()),
            "at most 32 digits, letters or symbols, no Chinese",
        ),
        KeywordType::Time | KeywordType::Date => fail(
            is_time_or_range(value),
            "a 24-hour time or a date (a range joined with ~)",
        ),
        KeywordType::Amount => fail(
            is_amount(value),
            "an optional currency symbol and at most 10 digits, optional trailing 元",
        ),
        KeywordType::PhoneNumber => fail(
            n <= 17 && value.chars().all(|c| c.is_ascii_digit() || c == '+' || c == '-'),
            "at most 17 digits, + or -",
        ),
        KeywordType::CarNumber => fail(
            n <= 8 && value.chars().all(|c| c.is_ascii_alphanumeric() || is_cjk(c)),
            "at most 8 characters of a plate",
        ),
        KeywordType::Name => {
            let all_cjk = value.chars().all(is_cjk);
            let all_letters = value.chars().all(|c| c.is_ascii_alphabetic() || c == ' ');
            fail(
                (all_cjk && n <= 10) || (all_letters && n <= 20),
                "at most 10 Chinese characters or 20 letters",
            )
        }
        KeywordType::Phrase => fail(n <= 5 && value.chars().all(is_cjk), "at most 5 Chinese characters"),
        KeywordType::Const => fail(n <= 20, "at most 20 characters"),
    }
}

fn is_number(v: &str) -> bool {
    let mut parts = v.splitn(2, '.');
    let int = parts.next().unwrap_or("");
    let frac = parts.next();
    !int.is_empty()
        && int.chars().all(|c| c.is_ascii_digit())
        && frac.is_none_or(|f| !f.is_empty() && f.chars().all(|c| c.is_ascii_digit()))
}

fn is_amount(v: &str) -> bool {
    let v = v.strip_suffix('元').unwrap_or(v);
    let v = v.trim_start_matches(['¥', '￥', '$', '€', '£']);
    let v = v.strip_prefix('-').unwrap_or(v);
    is_number(v) && v.chars().filter(char::is_ascii_digit).count() <= 10
}

fn is_time_or_range(v: &str) -> bool {
    let parts: Vec<&str> = v.split('~').collect();
    parts.len() <= 2 && parts.iter().all(|p| is_time_or_date(p.trim()))
}

/// A date (`2026-11-22`, `2026/11/22`, `2026年11月22日`, `11月22日`), a 24-hour time (`14:00`,
/// `14:00:59`), or a date followed by a time.
fn is_time_or_date(v: &str) -> bool {
    if v.is_empty() {
        return false;
    }
    let (date, time) = match v.rsplit_once(' ') {
        Some((d, t)) => (Some(d.trim()), Some(t)),
        None if v.contains(':') => (None, Some(v)),
        None => (Some(v), None),
    };
    // "2026年11月22日14:00" (no space) is also accepted by WeChat.
    if let (Some(d), None) = (date, time)
        && let Some((d2, t2)) = d.split_once('日')
        && !t2.is_empty()
    {
        return is_date(&format!("{d2}日")) && is_clock(t2);
    }
    date.is_none_or(is_date) && time.is_none_or(is_clock)
}

fn is_date(d: &str) -> bool {
    let nums: Vec<&str> = d
        .split(['-', '/', '年', '月', '日', '.'])
        .filter(|s| !s.is_empty())
        .collect();
    if !nums
        .iter()
        .all(|n| !n.is_empty() && n.len() <= 4 && n.chars().all(|c| c.is_ascii_digit()))
    {
        return false;
    }
    let num = |s: &str| s.parse::<u32>().unwrap_or(0);
    match nums.as_slice() {
        [y, m, day] => y.len() == 4 && (1..=12).contains(&num(m)) && (1..=31).contains(&num(day)),
        [m, day] => d.contains('月') && (1..=12).contains(&num(m)) && (1..=31).contains(&num(day)),
        _ => false,
    }
}

fn is_clock(t: &str) -> bool {
    let parts: Vec<&str> = t.split(':').collect();
    let ok = |s: &str, max: u32| {
        s.len() == 2 && s.chars().all(|c| c.is_ascii_digit()) && s.parse::<u32>().is_ok_and(|n| n <= max)
    };
    match parts.as_slice() {
        [h, m] => ok(h, 23) && ok(m, 59),
        [h, m, s] => ok(h, 23) && ok(m, 59) && ok(s, 59),
        _ => false,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keys_map_to_types() {
        assert_eq!(KeywordType::of_key("thing1"), Some(KeywordType::Thing));
        assert_eq!(
            KeywordType::of_key("character_string12"),
            Some(KeywordType::CharacterString)
        );
        assert_eq!(KeywordType::of_key("car_number4"), Some(KeywordType::CarNumber));
        assert_eq!(KeywordType::of_key("thing"), None);
        assert_eq!(KeywordType::of_key("colour1"), None);
        assert_eq!(KeywordType::of_key("first"), None);
    }

    #[test]
    fn values_follow_the_rules() {
        let ok = [
            ("thing1", "精洗套餐"),
            ("time3", "2026年11月22日 14:00"),
            ("time2", "2026-11-22 14:00"),
            ("date1", "2026-11-22~2026-11-23"),
            ("time1", "14:00"),
            ("amount5", "39.80元"),
            ("amount1", "¥100"),
            ("car_number4", "沪A12345"),
            ("phone_number1", "+86-13800138000"),
            ("character_string2", "B-10023"),
            ("name1", "张三"),
            ("phrase1", "已确认"),
            ("number1", "12.5"),
        ];
        for (k, v) in ok {
            assert_eq!(check(k, v), Ok(()), "{k}={v}");
        }
        let bad = [
            ("thing1", "这是一个非常非常非常非常非常非常长的服务名称啊"),
            ("time3", "tomorrow afternoon"),
            ("time1", "25:00"),
            ("amount5", "thirty"),
            ("car_number4", "沪A123456789"),
            ("character_string2", "订单B-10023"),
            ("phrase1", "已经确认完成了"),
            ("thing1", ""),
            ("number1", "12a"),
        ];
        for (k, v) in bad {
            assert!(check(k, v).is_err(), "{k}={v} should fail");
        }
        assert!(matches!(check("colour1", "x"), Err(KeywordError::UnknownType(_))));
    }
}
