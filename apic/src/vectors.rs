//! A 256-bit set of interrupt vectors in APIC register order.

/// Vectors 0-255; vector `v` is bit `v & 31` of 32-bit register word `v >> 5`
/// (Intel SDM vol. 3A §11.8.4, IRR/ISR/TMR layout).
///
/// Stored as four 64-bit words (vector `v` is bit `v & 63` of word `v >> 6`)
/// so that [`VectorSet::highest`] is four `leading_zeros` at most.
#[derive(Clone, Copy, Default, PartialEq, Eq, Hash, Debug)]
pub struct VectorSet {
    bits: [u64; 4],
}

/// Bit of `vector` inside its 64-bit word.
#[inline(always)]
fn bit(vector: u8) -> u64 {
    1u64.wrapping_shl(u32::from(vector & 63))
}

impl VectorSet {
    /// The empty set.
    pub const EMPTY: Self = Self { bits: [0; 4] };
    /// Every vector 0-255.
    pub const ALL: Self = Self {
        bits: [u64::MAX; 4],
    };

    /// Every vector the APIC can hold in IRR/ISR: 16-255 (Intel SDM vol. 3A
    /// §11.5.2: vectors 0-15 are illegal).
    pub const LEGAL: Self = Self {
        bits: [!0xFFFF, u64::MAX, u64::MAX, u64::MAX],
    };
    /// Vectors 31-255: those a host may present (spec §6: 0-30 are illegal
    /// for the APIC protocol, 31 is legal).
    pub const HOST_LEGAL: Self = Self {
        bits: [!0x7FFF_FFFF, u64::MAX, u64::MAX, u64::MAX],
    };

    /// Builds a set from the eight 32-bit register words.
    pub fn from_words(words: [u32; 8]) -> Self {
        let mut bits = [0u64; 4];
        for (pair, out) in words.chunks_exact(2).zip(bits.iter_mut()) {
            if let [lo, hi] = pair {
                *out = u64::from(*lo) | (u64::from(*hi) << 32);
            }
        }
        Self { bits }
    }

    /// The eight 32-bit register words.
    pub fn words(&self) -> [u32; 8] {
        let mut words = [0u32; 8];
        for (pair, b) in words.chunks_exact_mut(2).zip(self.bits.iter()) {
            if let [lo, hi] = pair {
                *lo = *b as u32;
                *hi = (*b >> 32) as u32;
            }
        }
        words
    }

    /// 32-bit register word `index` (0-7); 0 for any other index.
    pub fn word(&self, index: usize) -> u32 {
        match self.bits.get(index >> 1) {
            Some(b) if index & 1 == 0 => *b as u32,
            Some(b) => (*b >> 32) as u32,
            None => 0,
        }
    }

    /// Whether `vector` is in the set.
    #[inline]
    pub fn contains(&self, vector: u8) -> bool {
        self.bits
            .get(usize::from(vector >> 6))
            .is_some_and(|w| w & bit(vector) != 0)
    }

    /// Adds `vector`; returns true when it was not already present.
    #[inline]
    pub fn insert(&mut self, vector: u8) -> bool {
        match self.bits.get_mut(usize::from(vector >> 6)) {
            Some(w) => {
                let was = *w & bit(vector) != 0;
                *w |= bit(vector);
                !was
            }
            None => false,
        }
    }

    /// Removes `vector`; returns true when it was present.
    #[inline]
    pub fn remove(&mut self, vector: u8) -> bool {
        match self.bits.get_mut(usize::from(vector >> 6)) {
            Some(w) => {
                let was = *w & bit(vector) != 0;
                *w &= !bit(vector);
                was
            }
            None => false,
        }
    }

    /// The highest vector in the set.
    #[inline]
    pub fn highest(&self) -> Option<u8> {
        let [w0, w1, w2, w3] = self.bits;
        // ilog2 of a non-zero word is 0..=63 (one `bsr`; the `unwrap_or`
        // is never taken and compiles away).
        let top = |w: u64, base: u8| (w.checked_ilog2().unwrap_or(0) as u8) | base;
        if w3 != 0 {
            Some(top(w3, 192))
        } else if w2 != 0 {
            Some(top(w2, 128))
        } else if w1 != 0 {
            Some(top(w1, 64))
        } else if w0 != 0 {
            Some(top(w0, 0))
        } else {
            None
        }
    }

    /// Whether the set is exactly `{vector}`.
    #[inline]
    pub fn is_only(&self, vector: u8) -> bool {
        let mut only = Self::EMPTY;
        only.insert(vector);
        self.bits == only.bits
    }

    /// Whether the set is empty.
    #[inline]
    pub fn is_empty(&self) -> bool {
        self.bits.iter().all(|w| *w == 0)
    }

    /// Every vector in `self` or `other`.
    pub fn union(&self, other: &Self) -> Self {
        let mut bits = self.bits;
        for (a, b) in bits.iter_mut().zip(other.bits.iter()) {
            *a |= *b;
        }
        Self { bits }
    }

    /// Every vector in both `self` and `other`.
    pub fn intersection(&self, other: &Self) -> Self {
        let mut bits = self.bits;
        for (a, b) in bits.iter_mut().zip(other.bits.iter()) {
            *a &= *b;
        }
        Self { bits }
    }

    /// Every vector in `self` but not in `other`.
    pub fn difference(&self, other: &Self) -> Self {
        let mut bits = self.bits;
        for (a, b) in bits.iter_mut().zip(other.bits.iter()) {
            *a &= !*b;
        }
        Self { bits }
    }

    /// Number of vectors in the set.
    pub fn len(&self) -> u32 {
        self.bits
            .iter()
            .fold(0u32, |n, w| n.saturating_add(w.count_ones()))
    }

    /// The vectors in ascending order.
    pub fn iter(&self) -> impl Iterator<Item = u8> + '_ {
        Iter { bits: self.bits }
    }
}

/// Ascending iterator over a copy of the set.
struct Iter {
    bits: [u64; 4],
}

impl Iterator for Iter {
    type Item = u8;

    fn next(&mut self) -> Option<u8> {
        for (base, w) in [0u8, 64, 128, 192].into_iter().zip(self.bits.iter_mut()) {
            if *w != 0 {
                // trailing_zeros of a non-zero word is 0..=63.
                let low = w.trailing_zeros() as u8;
                *w &= w.wrapping_sub(1);
                return Some(base | low);
            }
        }
        None
    }
}
