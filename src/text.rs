//! Words for people: what messages, logs and errors say of values whose
//! Rust `Debug` form is not meant for an operator.

use std::time::Duration;

/// A duration as an operator reads it: `250 ms`, `5 s`, `1.5 s`, `2 min`.
pub fn duration(d: &Duration) -> String {
    let ms = d.as_millis();
    if ms < 1000 {
        return format!("{ms} ms");
    }
    let s = d.as_secs();
    if s >= 120 && s.is_multiple_of(60) && d.subsec_millis() == 0 {
        return format!("{} min", s / 60);
    }
    if d.subsec_millis() == 0 {
        return format!("{s} s");
    }
    format!("{:.1} s", d.as_secs_f64())
}

/// Numbers joined with commas: `3, 4, 4`.
pub fn list<T: std::fmt::Display>(items: &[T]) -> String {
    items
        .iter()
        .map(|i| i.to_string())
        .collect::<Vec<_>>()
        .join(", ")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn durations_read_as_words() {
        let ms = Duration::from_millis;
        assert_eq!(duration(&ms(0)), "0 ms");
        assert_eq!(duration(&ms(250)), "250 ms");
        assert_eq!(duration(&ms(5000)), "5 s");
        assert_eq!(duration(&ms(1500)), "1.5 s");
        assert_eq!(duration(&ms(90_000)), "90 s");
        assert_eq!(duration(&ms(120_000)), "2 min");
        assert_eq!(list(&[3u32, 4]), "3, 4");
    }
}
