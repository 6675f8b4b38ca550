//! Samples and percentiles.

use std::time::Duration;

/// All samples of one measure, kept so that percentiles are exact.
#[derive(Debug, Clone, Default)]
pub struct Samples {
    values: Vec<f64>,
}

impl FromIterator<f64> for Samples {
    fn from_iter<I: IntoIterator<Item = f64>>(iter: I) -> Self {
        Samples { values: iter.into_iter().collect() }
    }
}

impl Samples {
    pub fn push(&mut self, value: f64) {
        self.values.push(value);
    }

    /// A duration in milliseconds.
    pub fn push_ms(&mut self, d: Duration) {
        self.values.push(d.as_secs_f64() * 1000.0);
    }

    pub fn extend(&mut self, other: Samples) {
        self.values.extend(other.values);
    }

    pub fn len(&self) -> usize {
        self.values.len()
    }

    pub fn is_empty(&self) -> bool {
        self.values.is_empty()
    }

    /// Nearest-rank percentile: the smallest sample with at least `p`
    /// percent of the samples at or below it. `None` without samples.
    pub fn percentile(&self, p: f64) -> Option<f64> {
        let mut sorted = self.values.clone();
        sorted.sort_by(f64::total_cmp);
        percentile_of_sorted(&sorted, p)
    }

    pub fn mean(&self) -> Option<f64> {
        (!self.values.is_empty()).then(|| self.values.iter().sum::<f64>() / self.values.len() as f64)
    }
}

fn percentile_of_sorted(sorted: &[f64], p: f64) -> Option<f64> {
    if sorted.is_empty() {
        return None;
    }
    let rank = ((p / 100.0) * sorted.len() as f64).ceil() as usize;
    sorted.get(rank.clamp(1, sorted.len()) - 1).copied()
}

/// The median of a figure over the passes of a scenario (each pass's
/// value by `figure`; passes without one are left out).
pub fn median_by<T>(passes: &[T], figure: impl Fn(&T) -> Option<f64>) -> Option<f64> {
    passes.iter().filter_map(figure).collect::<Samples>().percentile(50.0)
}

/// `count / seconds`, or `None` if no time passed.
pub fn rate(count: f64, seconds: f64) -> Option<f64> {
    (seconds > 0.0).then(|| count / seconds)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn samples(v: impl IntoIterator<Item = f64>) -> Samples {
        let mut s = Samples::default();
        v.into_iter().for_each(|x| s.push(x));
        s
    }

    #[test]
    fn nearest_rank() {
        let s = samples((1..=100).rev().map(f64::from));
        assert_eq!(s.percentile(50.0), Some(50.0));
        assert_eq!(s.percentile(99.0), Some(99.0));
        assert_eq!(s.percentile(100.0), Some(100.0));
        assert_eq!(s.percentile(0.0), Some(1.0));
        let one = samples([7.5]);
        assert_eq!(one.percentile(50.0), Some(7.5));
        assert_eq!(one.percentile(99.0), Some(7.5));
        let ten = samples((1..=10).map(f64::from));
        assert_eq!(ten.percentile(99.0), Some(10.0));
        assert_eq!(ten.percentile(50.0), Some(5.0));
        assert_eq!(Samples::default().percentile(50.0), None);
        assert_eq!(samples([1.0, 2.0, 3.0, 4.0]).mean(), Some(2.5));
    }

    #[test]
    fn rates() {
        assert_eq!(rate(10.0, 2.0), Some(5.0));
        assert_eq!(rate(10.0, 0.0), None);
    }
}
