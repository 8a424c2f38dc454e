//! Percentiles of recorded samples. Runs are short (tens of thousands of samples), so samples are
//! kept whole and sorted: exact percentiles, no histogram buckets to explain.

use std::time::Duration;

use serde::Serialize;

/// Percentiles in microseconds.
#[derive(Debug, Clone, Copy, Serialize, Default, PartialEq)]
pub struct Summary {
    pub count: usize,
    pub min_us: f64,
    pub p50_us: f64,
    pub p90_us: f64,
    pub p95_us: f64,
    pub p99_us: f64,
    pub p999_us: f64,
    pub max_us: f64,
    pub mean_us: f64,
}

/// Nearest-rank percentile of sorted samples (`q` in 0..=1).
fn rank(sorted: &[f64], q: f64) -> f64 {
    if sorted.is_empty() {
        return f64::NAN;
    }
    let index = ((q * sorted.len() as f64).ceil() as usize).clamp(1, sorted.len()) - 1;
    sorted[index]
}

impl Summary {
    pub fn of_micros(mut samples: Vec<f64>) -> Summary {
        samples.sort_by(f64::total_cmp);
        let count = samples.len();
        let mean = if count == 0 {
            f64::NAN
        } else {
            samples.iter().sum::<f64>() / count as f64
        };
        Summary {
            count,
            min_us: samples.first().copied().unwrap_or(f64::NAN),
            p50_us: rank(&samples, 0.50),
            p90_us: rank(&samples, 0.90),
            p95_us: rank(&samples, 0.95),
            p99_us: rank(&samples, 0.99),
            p999_us: rank(&samples, 0.999),
            max_us: samples.last().copied().unwrap_or(f64::NAN),
            mean_us: mean,
        }
    }

    pub fn of(samples: &[Duration]) -> Summary {
        Summary::of_micros(samples.iter().map(|d| d.as_secs_f64() * 1e6).collect())
    }

    /// `self - floor`, percentile by percentile (not a distribution of differences: the two runs
    /// are separate calls).
    pub fn minus(&self, floor: &Summary) -> Summary {
        Summary {
            count: self.count,
            min_us: self.min_us - floor.min_us,
            p50_us: self.p50_us - floor.p50_us,
            p90_us: self.p90_us - floor.p90_us,
            p95_us: self.p95_us - floor.p95_us,
            p99_us: self.p99_us - floor.p99_us,
            p999_us: self.p999_us - floor.p999_us,
            max_us: self.max_us - floor.max_us,
            mean_us: self.mean_us - floor.mean_us,
        }
    }
}

/// Microseconds as milliseconds with three decimals, for tables.
pub fn ms(us: f64) -> String {
    format!("{:.3}", us / 1000.0)
}

/// The most of `times` (in order) that fall in any one-second window.
pub fn peak_per_s(times: &[tokio::time::Instant]) -> usize {
    let mut peak = 0;
    let mut start = 0;
    for (end, at) in times.iter().enumerate() {
        while at.duration_since(times[start]) >= Duration::from_secs(1) {
            start += 1;
        }
        peak = peak.max(end + 1 - start);
    }
    peak
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn nearest_rank_percentiles() {
        let s = Summary::of_micros((1..=1000).map(f64::from).collect());
        assert_eq!(
            (s.p50_us, s.p90_us, s.p99_us, s.p999_us),
            (500.0, 900.0, 990.0, 999.0)
        );
        assert_eq!((s.min_us, s.p95_us, s.max_us), (1.0, 950.0, 1000.0));
        let one = Summary::of_micros(vec![7.0]);
        assert_eq!((one.min_us, one.p50_us, one.p999_us), (7.0, 7.0, 7.0));
        assert!(Summary::of_micros(vec![]).p50_us.is_nan());
    }

    #[test]
    fn the_peak_counts_the_fullest_one_second_window() {
        let t0 = tokio::time::Instant::now();
        let at = |ms: u64| t0 + Duration::from_millis(ms);
        let times = [
            at(0),
            at(100),
            at(999),
            at(1000),
            at(1500),
            at(1900),
            at(1950),
            at(3000),
        ];
        // 999, 1000, 1500, 1900, 1950 lie within [999, 1999).
        assert_eq!(peak_per_s(&times), 5);
        assert_eq!(peak_per_s(&[]), 0);
        assert_eq!(peak_per_s(&times[..1]), 1);
    }
}
