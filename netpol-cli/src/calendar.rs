//! Civil dates for the timestamps local mode writes and reads (RFC 3339 creation times,
//! RFC 7231 `Date` headers), without a calendar crate. Howard Hinnant's algorithms.

use std::time::{SystemTime, UNIX_EPOCH};

pub const MONTHS: [&str; 12] =
    ["Jan", "Feb", "Mar", "Apr", "May", "Jun", "Jul", "Aug", "Sep", "Oct", "Nov", "Dec"];

/// (year, month 1-12, day 1-31) of a day count since 1970-01-01.
pub fn civil_from_days(days: i64) -> (i64, u32, u32) {
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z - era * 146_097;
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let day = (doy - (153 * mp + 2) / 5 + 1) as u32;
    let month = if mp < 10 { mp + 3 } else { mp - 9 } as u32;
    (yoe + era * 400 + i64::from(month <= 2), month, day)
}

/// Days since 1970-01-01 of a civil date.
pub fn days_from_civil(y: i64, m: u32, d: u32) -> i64 {
    let y = if m <= 2 { y - 1 } else { y };
    let era = y.div_euclid(400);
    let yoe = y - era * 400;
    let mp = (m as i64 + 9) % 12;
    let doy = (153 * mp + 2) / 5 + d as i64 - 1;
    era * 146_097 + yoe * 365 + yoe / 4 - yoe / 100 + doy - 719_468
}

pub fn unix_now() -> u64 {
    SystemTime::now().duration_since(UNIX_EPOCH).map(|d| d.as_secs()).unwrap_or(0)
}

/// `2021-11-23T12:50:44Z`
pub fn rfc3339(secs: u64) -> String {
    let (y, m, d) = civil_from_days((secs / 86_400) as i64);
    let r = secs % 86_400;
    format!("{y}-{m:02}-{d:02}T{:02}:{:02}:{:02}Z", r / 3600, r % 3600 / 60, r % 60)
}

/// Seconds since the epoch of an RFC 3339 UTC time (`2021-11-23T12:50:44Z`).
pub fn parse_rfc3339(ts: &str) -> Option<u64> {
    let p: Vec<u64> =
        ts.split(['-', 'T', ':', 'Z']).filter(|s| !s.is_empty()).filter_map(|s| s.parse().ok()).collect();
    if p.len() < 6 {
        return None;
    }
    let days = days_from_civil(p[0] as i64, p[1] as u32, p[2] as u32);
    Some(days as u64 * 86_400 + p[3] * 3600 + p[4] * 60 + p[5])
}

/// `Tue, 23 Nov 2021 12:50:44 GMT`
pub fn http_date(secs: u64) -> String {
    let days = secs / 86_400;
    let weekday = ["Thu", "Fri", "Sat", "Sun", "Mon", "Tue", "Wed"][(days % 7) as usize];
    let (y, m, d) = civil_from_days(days as i64);
    let r = secs % 86_400;
    format!(
        "{weekday}, {d:02} {} {y} {:02}:{:02}:{:02} GMT",
        MONTHS[m as usize - 1],
        r / 3600,
        r % 3600 / 60,
        r % 60
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn dates_round_trip() {
        assert_eq!(http_date(0), "Thu, 01 Jan 1970 00:00:00 GMT");
        assert_eq!(http_date(499_162_500), "Sat, 26 Oct 1985 08:15:00 GMT");
        assert_eq!(http_date(1_637_671_844), "Tue, 23 Nov 2021 12:50:44 GMT");
        assert_eq!(rfc3339(1_637_671_844), "2021-11-23T12:50:44Z");
        for secs in [0, 951_782_400, 1_637_671_844, 4_107_542_400] {
            assert_eq!(parse_rfc3339(&rfc3339(secs)), Some(secs));
        }
    }
}
