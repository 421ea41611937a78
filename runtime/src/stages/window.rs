//! A sliding window of live rows kept as ten sub-windows of mergeable tallies, so memory is
//! fixed whatever the traffic: it covers the last `rows` rows (a tenth at a time) and at most
//! `seconds`. The drift monitor tallies bin counts in it; the quality monitor, confusion counts
//! and error sums.

use std::time::{Duration, Instant};

/// Sub-windows per window: the window slides by a tenth at a time.
const SUB_WINDOWS: usize = 10;

/// A stretch of rows and their tally.
#[derive(Clone)]
struct Part<T> {
    rows: u64,
    started: Instant,
    tally: T,
}

/// The window: closed sub-windows, oldest first, and the open one.
pub struct Sliding<T> {
    rows: u64,
    seconds: u64,
    empty: T,
    closed: Vec<Part<T>>,
    open: Part<T>,
}

impl<T: Clone> Sliding<T> {
    /// A window of `rows` rows and at most `seconds`, whose sub-windows start as `empty`.
    pub fn new(rows: u64, seconds: u64, empty: T) -> Sliding<T> {
        Sliding {
            rows,
            seconds,
            open: Part {
                rows: 0,
                started: Instant::now(),
                tally: empty.clone(),
            },
            empty,
            closed: Vec::new(),
        }
    }

    /// Count `rows` more rows, which `add` tallies into the open sub-window. True when the
    /// open sub-window closed after them (full, or old): the moment to judge the window.
    pub fn add(&mut self, rows: u64, add: impl FnOnce(&mut T)) -> bool {
        self.open.rows += rows;
        add(&mut self.open.tally);
        let sub_rows = (self.rows / SUB_WINDOWS as u64).max(1);
        let sub_age = Duration::from_secs(self.seconds) / SUB_WINDOWS as u32;
        if self.open.rows < sub_rows && self.open.started.elapsed() < sub_age {
            return false;
        }
        let fresh = Part {
            rows: 0,
            started: Instant::now(),
            tally: self.empty.clone(),
        };
        self.closed.push(std::mem::replace(&mut self.open, fresh));
        let horizon = Duration::from_secs(self.seconds);
        self.closed.retain(|part| part.started.elapsed() <= horizon);
        let excess = self.closed.len().saturating_sub(SUB_WINDOWS);
        self.closed.drain(..excess);
        true
    }

    /// Every sub-window's tally, oldest first, the open one last.
    pub fn tallies(&self) -> impl Iterator<Item = &T> {
        self.closed
            .iter()
            .chain([&self.open])
            .map(|part| &part.tally)
    }

    /// Rows in the window.
    pub fn rows(&self) -> u64 {
        self.closed.iter().map(|part| part.rows).sum::<u64>() + self.open.rows
    }

    /// Seconds since the oldest sub-window started.
    pub fn span_seconds(&self) -> f64 {
        let oldest = self.closed.first().unwrap_or(&self.open);
        oldest.started.elapsed().as_secs_f64()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_window_keeps_the_last_rows_a_tenth_at_a_time() {
        let mut window = Sliding::new(100, 3600, 0u64);
        for _ in 0..250 {
            window.add(1, |n| *n += 1);
        }
        assert_eq!(window.rows(), 100, "ten closed tenths, the open one empty");
        assert_eq!(window.tallies().sum::<u64>(), 100);
        assert!(
            !window.add(3, |n| *n += 3),
            "the open tenth is not full yet"
        );
        assert_eq!(window.rows(), 103);
    }
}
