//! Percentiles and histograms of measured durations.

use std::time::Duration;

use serde_json::{Value, json};

use crate::procstat::round;

/// A sorted sample of durations.
#[derive(Debug, Clone, Default)]
pub(crate) struct Sample {
    sorted: Vec<Duration>,
}

impl Sample {
    pub(crate) fn new(mut values: Vec<Duration>) -> Sample {
        values.sort_unstable();
        Sample { sorted: values }
    }

    pub(crate) fn len(&self) -> usize {
        self.sorted.len()
    }

    /// The nearest-rank percentile `p` (0..=100); zero when empty.
    pub(crate) fn percentile(&self, p: f64) -> Duration {
        if self.sorted.is_empty() {
            return Duration::ZERO;
        }
        let rank = ((p / 100.0) * self.sorted.len() as f64).ceil() as usize;
        self.sorted[rank.clamp(1, self.sorted.len()) - 1]
    }

    pub(crate) fn max(&self) -> Duration {
        self.sorted.last().copied().unwrap_or_default()
    }

    /// p50, p99 and max in milliseconds.
    pub(crate) fn json_ms(&self) -> Value {
        json!({
            "count": self.len(),
            "p50_ms": ms(self.percentile(50.0)),
            "p99_ms": ms(self.percentile(99.0)),
            "max_ms": ms(self.max()),
        })
    }

    /// p50, p99 and max in microseconds.
    pub(crate) fn json_us(&self) -> Value {
        json!({
            "count": self.len(),
            "p50_us": us(self.percentile(50.0)),
            "p99_us": us(self.percentile(99.0)),
            "max_us": us(self.max()),
        })
    }
}

pub(crate) fn ms(d: Duration) -> f64 {
    round(d.as_secs_f64() * 1e3, 3)
}

pub(crate) fn us(d: Duration) -> f64 {
    round(d.as_secs_f64() * 1e6, 1)
}

/// Counts of `values` per `bucket`, from zero to the largest value.
pub(crate) fn histogram(values: &[Duration], bucket: Duration) -> Vec<u64> {
    let width = bucket.as_nanos().max(1);
    let mut counts: Vec<u64> = Vec::new();
    for v in values {
        let i = usize::try_from(v.as_nanos() / width).unwrap_or(usize::MAX);
        if i >= 100_000 {
            continue;
        }
        if counts.len() <= i {
            counts.resize(i + 1, 0);
        }
        counts[i] += 1;
    }
    counts
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn percentiles_by_nearest_rank() {
        let s = Sample::new((1..=100).rev().map(Duration::from_millis).collect());
        assert_eq!(s.percentile(50.0), Duration::from_millis(50));
        assert_eq!(s.percentile(99.0), Duration::from_millis(99));
        assert_eq!(s.max(), Duration::from_millis(100));
        assert_eq!(Sample::default().percentile(99.0), Duration::ZERO);
    }

    #[test]
    fn histogram_buckets() {
        let v = [0, 10, 260, 270, 900].map(Duration::from_millis);
        assert_eq!(histogram(&v, Duration::from_millis(250)), vec![2, 2, 0, 1]);
    }
}
