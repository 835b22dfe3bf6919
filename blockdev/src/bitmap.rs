//! A fixed-size bitmap that any number of threads read and update without locks.

use std::sync::atomic::{AtomicU64, Ordering};

pub struct Bitmap {
    words: Vec<AtomicU64>,
    len: u64,
}

impl Bitmap {
    pub fn new(len: u64) -> Self {
        // Allocated zeroed (calloc): the pages of a large bitmap stay untouched, and so out of the process's
        // resident memory, until a bit in them is set. A TiB disk's private-store bitmaps are 64 MiB, of
        // which a live mount touches only the regions it writes.
        let zeroed = vec![0u64; len.div_ceil(64) as usize];
        let mut zeroed = std::mem::ManuallyDrop::new(zeroed);
        let (ptr, words, capacity) = (zeroed.as_mut_ptr(), zeroed.len(), zeroed.capacity());
        // SAFETY: AtomicU64 has the same size, alignment and bit validity as u64 (its documentation says
        // so), and the vector's allocation is handed over whole, with its length and capacity.
        let words = unsafe { Vec::from_raw_parts(ptr.cast::<AtomicU64>(), words, capacity) };
        Bitmap { words, len }
    }

    pub fn len(&self) -> u64 {
        self.len
    }

    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    pub fn get(&self, i: u64) -> bool {
        debug_assert!(i < self.len);
        self.words[(i / 64) as usize].load(Ordering::Acquire) & (1 << (i % 64)) != 0
    }

    pub fn set_range(&self, start: u64, count: u64, value: bool) {
        for (word, mask) in self.words_of(start, count) {
            if value {
                self.words[word].fetch_or(mask, Ordering::AcqRel);
            } else {
                self.words[word].fetch_and(!mask, Ordering::AcqRel);
            }
        }
    }

    /// Whether any bit of `start..start + count` is set.
    pub fn any_in(&self, start: u64, count: u64) -> bool {
        self.words_of(start, count).any(|(word, mask)| self.words[word].load(Ordering::Acquire) & mask != 0)
    }

    /// The words that hold bits `start..start + count` (cut at the end), each with the mask of those bits.
    fn words_of(&self, start: u64, count: u64) -> impl Iterator<Item = (usize, u64)> {
        let end = (start + count).min(self.len);
        let mut i = start;
        std::iter::from_fn(move || {
            if i >= end {
                return None;
            }
            let (word, first) = ((i / 64) as usize, i % 64);
            let n = (end - i).min(64 - first);
            i += n;
            Some((word, if n == 64 { u64::MAX } else { ((1u64 << n) - 1) << first }))
        })
    }

    /// Number of set bits.
    pub fn count_ones(&self) -> u64 {
        self.words.iter().map(|w| u64::from(w.load(Ordering::Acquire).count_ones())).sum()
    }

    /// Runs of set bits as (start, count).
    pub fn runs(&self) -> Vec<(u64, u64)> {
        let mut out = Vec::new();
        let mut start: Option<u64> = None;
        for i in 0..=self.len {
            let set = i < self.len && self.get(i);
            match (set, start) {
                (true, None) => start = Some(i),
                (false, Some(s)) => {
                    out.push((s, i - s));
                    start = None;
                }
                _ => {}
            }
        }
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ranges_across_words() {
        let b = Bitmap::new(300);
        b.set_range(60, 10, true);
        b.set_range(128, 64, true);
        b.set_range(299, 5, true);
        assert!(!b.get(59) && b.get(60) && b.get(69) && !b.get(70));
        assert_eq!(b.count_ones(), 10 + 64 + 1);
        b.set_range(62, 2, false);
        assert_eq!(b.runs(), vec![(60, 2), (64, 6), (128, 64), (299, 1)]);
    }
}
