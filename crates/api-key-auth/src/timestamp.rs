//! RFC 3339 timestamps (`2027-01-31T00:00:00Z`) to and from Unix seconds.
//!
//! The lookup contract writes `expires_at` this way, and the key store lists creation
//! and last-use times this way. Only what those need: UTC output, input with `Z` or a
//! numeric offset, optional fractional seconds (ignored), years 1970 to 9999.

/// Parses an RFC 3339 date-time into whole seconds since the Unix epoch.
pub fn parse_rfc3339(text: &str) -> Result<u64, String> {
    let bad = || format!("{text:?} is not an RFC 3339 timestamp such as \"2027-01-31T00:00:00Z\"");
    let b = text.as_bytes();
    if b.len() < 20 || b[4] != b'-' || b[7] != b'-' || !matches!(b[10], b'T' | b't') {
        return Err(bad());
    }
    if b[13] != b':' || b[16] != b':' {
        return Err(bad());
    }
    let number = |from: usize, to: usize| -> Result<u64, String> {
        let digits = text.get(from..to).ok_or_else(bad)?;
        if !digits.bytes().all(|c| c.is_ascii_digit()) {
            return Err(bad());
        }
        digits.parse().map_err(|_| bad())
    };
    let (year, month, day) = (number(0, 4)?, number(5, 7)?, number(8, 10)?);
    let (hour, minute, second) = (number(11, 13)?, number(14, 16)?, number(17, 19)?);
    if !(1970..=9999).contains(&year)
        || !(1..=12).contains(&month)
        || day < 1
        || day > days_in_month(year, month)
        || hour > 23
        || minute > 59
        // 60 is a leap second; counted as the next second's start, as Unix time does.
        || second > 60
    {
        return Err(bad());
    }
    let mut rest = &text[19..];
    if let Some(fraction) = rest.strip_prefix('.') {
        let digits = fraction.bytes().take_while(u8::is_ascii_digit).count();
        if digits == 0 {
            return Err(bad());
        }
        rest = &fraction[digits..];
    }
    let offset_seconds: i64 = match rest {
        "Z" | "z" => 0,
        _ => {
            let rb = rest.as_bytes();
            if rb.len() != 6 || !matches!(rb[0], b'+' | b'-') || rb[3] != b':' {
                return Err(bad());
            }
            let at = text.len() - rest.len();
            let (oh, om) = (number(at + 1, at + 3)?, number(at + 4, at + 6)?);
            if oh > 23 || om > 59 {
                return Err(bad());
            }
            let magnitude = (oh * 3600 + om * 60) as i64;
            if rb[0] == b'+' {
                magnitude
            } else {
                -magnitude
            }
        }
    };
    let days = days_from_civil(year, month, day);
    let local = days * 86_400 + (hour * 3600 + minute * 60 + second) as i64;
    // An offset can carry 9999-12-31 past the last instant `format_rfc3339` writes
    // with four year digits: refused, so that every accepted time can be written back.
    u64::try_from(local - offset_seconds)
        .ok()
        .filter(|seconds| *seconds <= LAST_INSTANT)
        .ok_or_else(bad)
}

/// 9999-12-31T23:59:59Z, the last instant with a four-digit year.
const LAST_INSTANT: u64 = 253_402_300_799;

/// Formats Unix seconds as `YYYY-MM-DDTHH:MM:SSZ`.
pub fn format_rfc3339(unix_seconds: u64) -> String {
    let days = (unix_seconds / 86_400) as i64;
    let second_of_day = unix_seconds % 86_400;
    let (year, month, day) = civil_from_days(days);
    format!(
        "{year:04}-{month:02}-{day:02}T{:02}:{:02}:{:02}Z",
        second_of_day / 3600,
        second_of_day / 60 % 60,
        second_of_day % 60
    )
}

fn is_leap(year: u64) -> bool {
    year.is_multiple_of(4) && (!year.is_multiple_of(100) || year.is_multiple_of(400))
}

fn days_in_month(year: u64, month: u64) -> u64 {
    match month {
        2 if is_leap(year) => 29,
        2 => 28,
        4 | 6 | 9 | 11 => 30,
        _ => 31,
    }
}

/// Days since 1970-01-01 of a proleptic Gregorian date (Howard Hinnant's algorithm).
fn days_from_civil(year: u64, month: u64, day: u64) -> i64 {
    let y = year as i64 - i64::from(month <= 2);
    let era = y.div_euclid(400);
    let year_of_era = y - era * 400;
    let m = month as i64;
    let day_of_year = (153 * (m + if m > 2 { -3 } else { 9 }) + 2) / 5 + day as i64 - 1;
    let day_of_era = year_of_era * 365 + year_of_era / 4 - year_of_era / 100 + day_of_year;
    era * 146_097 + day_of_era - 719_468
}

fn civil_from_days(days: i64) -> (i64, i64, i64) {
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let day_of_era = z - era * 146_097;
    let year_of_era =
        (day_of_era - day_of_era / 1460 + day_of_era / 36_524 - day_of_era / 146_096) / 365;
    let day_of_year = day_of_era - (365 * year_of_era + year_of_era / 4 - year_of_era / 100);
    let mp = (5 * day_of_year + 2) / 153;
    let day = day_of_year - (153 * mp + 2) / 5 + 1;
    let month = if mp < 10 { mp + 3 } else { mp - 9 };
    let year = year_of_era + era * 400 + i64::from(month <= 2);
    (year, month, day)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn known_instants() {
        assert_eq!(parse_rfc3339("1970-01-01T00:00:00Z"), Ok(0));
        assert_eq!(parse_rfc3339("2000-03-01T00:00:00Z"), Ok(951_868_800));
        assert_eq!(parse_rfc3339("2024-02-29T12:34:56Z"), Ok(1_709_210_096));
        assert_eq!(parse_rfc3339("2038-01-19T03:14:08Z"), Ok(2_147_483_648));
    }

    #[test]
    fn offsets_and_fractions() {
        let utc = parse_rfc3339("2027-01-31T00:00:00Z").unwrap();
        assert_eq!(parse_rfc3339("2027-01-31T02:00:00+02:00"), Ok(utc));
        assert_eq!(parse_rfc3339("2027-01-30T19:00:00-05:00"), Ok(utc));
        assert_eq!(parse_rfc3339("2027-01-31T00:00:00.999Z"), Ok(utc));
        assert_eq!(parse_rfc3339("2027-01-31t00:00:00z"), Ok(utc));
    }

    #[test]
    fn round_trip() {
        for seconds in [
            0,
            59,
            86_399,
            86_400,
            951_782_400,
            1_709_210_096,
            253_402_300_799,
        ] {
            assert_eq!(parse_rfc3339(&format_rfc3339(seconds)), Ok(seconds));
        }
        assert_eq!(format_rfc3339(1_709_210_096), "2024-02-29T12:34:56Z");
    }

    #[test]
    fn refusals() {
        for bad in [
            "",
            "2027-01-31",
            "2027-01-31 00:00:00Z",
            "2027-01-31T00:00:00",
            "2027-02-29T00:00:00Z",
            "2027-13-01T00:00:00Z",
            "2027-01-31T24:00:00Z",
            "2027-01-31T00:00:00.Z",
            "2027-01-31T00:00:00+0200",
            "1969-12-31T23:59:59Z",
            "1970-01-01T00:00:00+01:00",
            "２０27-01-31T00:00:00Z",
            "+027-01-31T00:00:00Z",
        ] {
            assert!(parse_rfc3339(bad).is_err(), "{bad:?}");
        }
    }

    #[test]
    fn nothing_past_the_year_9999_is_accepted() {
        // Found by the api_key_record fuzz target: a negative offset carried the time
        // into year 10000, which format_rfc3339 cannot write back in a form that parses.
        assert_eq!(parse_rfc3339("9999-12-31T23:59:59Z"), Ok(LAST_INSTANT));
        assert_eq!(format_rfc3339(LAST_INSTANT), "9999-12-31T23:59:59Z");
        for past in [
            "9999-12-31T23:59:59-00:04",
            "9999-12-31T23:59:60Z",
            "9999-12-31T20:00:00-05:00",
        ] {
            assert!(parse_rfc3339(past).is_err(), "{past:?}");
        }
        assert_eq!(
            parse_rfc3339("9999-12-31T23:59:59+00:04"),
            Ok(LAST_INSTANT - 240)
        );
    }
}
