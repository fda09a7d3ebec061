//! Score arithmetic: every score is a finite number in 0–10 with one decimal,
//! so reports are stable, comparable and readable.

/// Clamps to 0–10 (NaN becomes 0) and rounds to one decimal.
pub fn round_score(score: f64) -> f64 {
    if score.is_nan() {
        0.0
    } else {
        round1(score.clamp(0.0, 10.0))
    }
}

/// Rounds to one decimal.
pub fn round1(value: f64) -> f64 {
    if value.is_finite() {
        (value * 10.0).round() / 10.0
    } else {
        0.0
    }
}

/// 10 × min(1, actual / target); 10 when the target is 0.
pub fn ratio_score(actual: f64, target: f64) -> f64 {
    if target <= 0.0 {
        10.0
    } else {
        10.0 * (actual / target).clamp(0.0, 1.0)
    }
}

/// The weighted mean of `(score, weight)` pairs; `None` when no weight.
pub fn weighted_mean(parts: &[(f64, f64)]) -> Option<f64> {
    let total_weight: f64 = parts.iter().map(|(_, weight)| weight).sum();
    if total_weight <= 0.0 {
        return None;
    }
    Some(
        parts
            .iter()
            .map(|(score, weight)| score * weight)
            .sum::<f64>()
            / total_weight,
    )
}

/// The plain mean; `None` for no scores.
pub fn mean(scores: &[f64]) -> Option<f64> {
    if scores.is_empty() {
        None
    } else {
        Some(scores.iter().sum::<f64>() / scores.len() as f64)
    }
}

/// `"42%"`.
pub fn percent(fraction: f64) -> String {
    let whole = if fraction.is_finite() {
        (fraction * 100.0).round() as i64
    } else {
        0
    };
    format!("{whole}%")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rounding_and_ratios() {
        assert_eq!(round_score(7.25), 7.3);
        assert_eq!(round_score(f64::NAN), 0.0);
        assert_eq!(round_score(12.0), 10.0);
        assert!((ratio_score(2.0, 7.0) - 20.0 / 7.0).abs() < 1e-12);
        assert_eq!(ratio_score(9.0, 7.0), 10.0);
        assert_eq!(weighted_mean(&[(10.0, 0.6), (5.0, 0.4)]), Some(8.0));
        assert_eq!(mean(&[]), None);
        assert_eq!(percent(0.425), "43%");
    }
}
