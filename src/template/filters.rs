//! Our two MiniJinja filters (docs/interface.md §6).

use std::fmt::Write;

use chrono::DateTime;
use chrono::format::{Item, StrftimeItems};
use minijinja::{Error, ErrorKind, Value};

/// `{{ data.slot_start | datetime('%Y年%m月%d日 %H:%M') }}`: an RFC 3339 timestamp to wall-clock text
/// in the timestamp's own offset (the booking app writes its local offset, e.g. `+08:00`).
pub(crate) fn datetime(value: String, format: String) -> Result<String, Error> {
    check_strftime(&format).map_err(|m| Error::new(ErrorKind::InvalidOperation, m))?;
    let dt = DateTime::parse_from_rfc3339(value.trim()).map_err(|e| {
        Error::new(
            ErrorKind::InvalidOperation,
            format!("datetime: {value:?} is not an RFC 3339 timestamp ({e})"),
        )
    })?;
    let mut out = String::new();
    write!(out, "{}", dt.format(&format)).map_err(|_| {
        Error::new(
            ErrorKind::InvalidOperation,
            format!("datetime: cannot format with {format:?}"),
        )
    })?;
    Ok(out)
}

/// `{{ data.slot_start | add_minutes(-60) }}`: an RFC 3339 timestamp moved by N minutes (N may be
/// negative), in the timestamp's own offset, as RFC 3339 again.
pub(crate) fn add_minutes(value: String, minutes: i64) -> Result<String, Error> {
    let dt = DateTime::parse_from_rfc3339(value.trim()).map_err(|e| {
        Error::new(
            ErrorKind::InvalidOperation,
            format!("add_minutes: {value:?} is not an RFC 3339 timestamp ({e})"),
        )
    })?;
    chrono::TimeDelta::try_minutes(minutes)
        .and_then(|d| dt.checked_add_signed(d))
        .map(|t| t.to_rfc3339())
        .ok_or_else(|| {
            Error::new(
                ErrorKind::InvalidOperation,
                format!("add_minutes: {value:?} plus {minutes} minutes is out of range"),
            )
        })
}

/// Refuses strftime formats chrono cannot render (it would fail mid-render otherwise).
pub(crate) fn check_strftime(format: &str) -> Result<(), String> {
    if StrftimeItems::new(format).any(|item| matches!(item, Item::Error)) {
        return Err(format!("datetime: invalid strftime format {format:?}"));
    }
    Ok(())
}

/// `{{ data.price_cents | yuan }}`: integer cents to `39.80元`.
pub(crate) fn yuan(value: Value) -> Result<String, Error> {
    let cents: i64 = match value.as_str() {
        Some(s) => s.trim().parse().ok(),
        None => i64::try_from(value.clone()).ok(),
    }
    .ok_or_else(|| {
        Error::new(
            ErrorKind::InvalidOperation,
            format!("yuan: expected integer cents, got {value}"),
        )
    })?;
    let sign = if cents < 0 { "-" } else { "" };
    let abs = cents.unsigned_abs();
    Ok(format!("{sign}{}.{:02}元", abs / 100, abs % 100))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn yuan_formats_cents() {
        assert_eq!(yuan(Value::from(3980)).unwrap(), "39.80元");
        assert_eq!(yuan(Value::from(5)).unwrap(), "0.05元");
        assert_eq!(yuan(Value::from(-150)).unwrap(), "-1.50元");
        assert_eq!(yuan(Value::from("1200")).unwrap(), "12.00元");
        assert!(yuan(Value::from("12.5")).is_err());
        assert!(yuan(Value::from(1.5)).is_err());
    }

    #[test]
    fn add_minutes_moves_in_the_same_offset() {
        let s = add_minutes("2026-11-22T14:00:00+08:00".into(), -60).unwrap();
        assert_eq!(s, "2026-11-22T13:00:00+08:00");
        assert_eq!(
            add_minutes("2026-11-22T23:30:00Z".into(), 45).unwrap(),
            "2026-11-23T00:15:00+00:00"
        );
        assert!(add_minutes("soon".into(), 5).is_err());
        assert!(add_minutes("2026-11-22T14:00:00+08:00".into(), i64::MAX).is_err());
    }

    #[test]
    fn datetime_keeps_the_offset_wall_clock() {
        let s = datetime("2026-11-22T14:00:00+08:00".into(), "%Y年%m月%d日 %H:%M".into()).unwrap();
        assert_eq!(s, "2026年11月22日 14:00");
        assert!(datetime("tomorrow".into(), "%H".into()).is_err());
        assert!(datetime("2026-11-22T14:00:00Z".into(), "%Q".into()).is_err());
    }
}
