//! DA values (PS3.5 6.2, Table 6.2-1: `YYYYMMDD`) and the calendar arithmetic around
//! them, for rules that compare study dates (retention).

/// A real calendar date `YYYYMMDD` from 1900 on (placeholders such as `00000000` or
/// `19000000` are not dates, and nothing that acts on dates should act on them).
pub fn is_valid_date(date: &str) -> bool {
    if date.len() != 8 || !date.bytes().all(|b| b.is_ascii_digit()) {
        return false;
    }
    let (y, m, d): (u32, u32, u32) = (
        date[..4].parse().unwrap_or(0),
        date[4..6].parse().unwrap_or(0),
        date[6..].parse().unwrap_or(0),
    );
    let leap = (y % 4 == 0 && y % 100 != 0) || y % 400 == 0;
    let days = match m {
        1 | 3 | 5 | 7 | 8 | 10 | 12 => 31,
        4 | 6 | 9 | 11 => 30,
        2 if leap => 29,
        2 => 28,
        _ => return false,
    };
    y >= 1900 && (1..=days).contains(&d)
}

/// The DA value (`YYYYMMDD`, UTC) of a time given in seconds since the Unix epoch.
pub fn date_of_unix_secs(secs: u64) -> String {
    let (y, m, d) = civil_from_days((secs / 86_400) as i64);
    format!("{y:04}{m:02}{d:02}")
}

/// Proleptic Gregorian (year, month, day) of a day count since 1970-01-01 (Howard
/// Hinnant's `civil_from_days`).
fn civil_from_days(z: i64) -> (i64, u32, u32) {
    let z = z + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let y = yoe + era * 400;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = (doy - (153 * mp + 2) / 5 + 1) as u32;
    let m = if mp < 10 { mp + 3 } else { mp - 9 } as u32;
    (if m <= 2 { y + 1 } else { y }, m, d)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_real_dates_are_dates() {
        for good in ["19000101", "20240229", "20231231"] {
            assert!(is_valid_date(good), "{good}");
        }
        for bad in [
            "00000000", "19000000", "20230229", "20241301", "18991231", "2024011", "",
        ] {
            assert!(!is_valid_date(bad), "{bad}");
        }
        assert_eq!(civil_from_days(0), (1970, 1, 1));
        assert_eq!(civil_from_days(19_782), (2024, 2, 29));
        assert_eq!(date_of_unix_secs(19_782 * 86_400 + 3600), "20240229");
    }
}
