//! Deterministic shuffling and the train/validation hold-out. A fixed, self-contained PRNG
//! (no `rand`) so that a seed means the same split on every machine and in every version.

/// SplitMix64 (Steele, Lea and Flood, 2014; Vigna's reference code): one 64-bit state, a
/// full period of 2⁶⁴, and every seed, 0 included, gives a good stream.
#[derive(Clone, Debug)]
pub struct SplitMix64(u64);

impl SplitMix64 {
    pub fn new(seed: u64) -> SplitMix64 {
        SplitMix64(seed)
    }

    pub fn next_u64(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }

    /// Uniform in `0..n` without modulo bias (Lemire's multiply-and-reject). `n > 0`.
    pub fn below(&mut self, n: u64) -> u64 {
        assert!(n > 0, "below(0) has no value to return");
        let threshold = n.wrapping_neg() % n;
        loop {
            let m = u128::from(self.next_u64()) * u128::from(n);
            if (m as u64) >= threshold {
                return (m >> 64) as u64;
            }
        }
    }
}

/// Fisher–Yates with a fresh generator seeded by `seed` (for one order per epoch, pass
/// e.g. `seed + epoch`).
pub fn shuffle(items: &mut [usize], seed: u64) {
    let mut rng = SplitMix64::new(seed);
    for i in (1..items.len()).rev() {
        let j = rng.below(i as u64 + 1) as usize;
        items.swap(i, j);
    }
}

/// Splits `0..n` into (train, validation) with `round(n·fraction)` random indices held out,
/// at least one of each side when `0 < fraction` and `n ≥ 2` (the paper's protocol holds out
/// 20 % when no validation set is given). Both lists come back sorted, for memory locality;
/// shuffle the training list per epoch. Panics unless `0 ≤ fraction < 1`.
pub fn holdout(n: usize, fraction: f64, seed: u64) -> (Vec<usize>, Vec<usize>) {
    assert!(
        (0.0..1.0).contains(&fraction),
        "validation fraction {fraction} is not in [0, 1)"
    );
    let mut val_len = (n as f64 * fraction).round() as usize;
    if fraction > 0.0 && n >= 2 {
        val_len = val_len.clamp(1, n - 1);
    }
    let mut order: Vec<usize> = (0..n).collect();
    shuffle(&mut order, seed);
    let mut val = order.split_off(n - val_len);
    order.sort_unstable();
    val.sort_unstable();
    (order, val)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn splitmix64_reference_stream() {
        // Vigna's splitmix64.c with x = 1234567, its first five next() values, computed in
        // Python with the reference arithmetic mod 2**64.
        let mut rng = SplitMix64::new(1_234_567);
        let got: Vec<u64> = (0..5).map(|_| rng.next_u64()).collect();
        assert_eq!(
            got,
            [
                6_457_827_717_110_365_317,
                3_203_168_211_198_807_973,
                9_817_491_932_198_370_423,
                4_593_380_528_125_082_431,
                16_408_922_859_458_223_821,
            ]
        );
    }

    #[test]
    fn below_is_in_range_and_roughly_uniform() {
        let mut rng = SplitMix64::new(7);
        let mut counts = [0usize; 3];
        for _ in 0..30_000 {
            counts[rng.below(3) as usize] += 1;
        }
        assert!(
            counts.iter().all(|&c| (9_500..10_500).contains(&c)),
            "{counts:?}"
        );
        assert_eq!(rng.below(1), 0);
    }

    #[test]
    fn shuffle_is_a_seeded_permutation() {
        let mut a: Vec<usize> = (0..100).collect();
        let mut b = a.clone();
        shuffle(&mut a, 42);
        shuffle(&mut b, 42);
        assert_eq!(a, b);
        assert_ne!(a, (0..100).collect::<Vec<_>>());
        let mut sorted = a.clone();
        sorted.sort_unstable();
        assert_eq!(sorted, (0..100).collect::<Vec<_>>());
        let mut c: Vec<usize> = (0..100).collect();
        shuffle(&mut c, 43);
        assert_ne!(a, c);
        shuffle(&mut [], 1);
    }

    #[test]
    fn holdout_takes_a_fifth() {
        let (train, val) = holdout(2000, 0.2, 0);
        assert_eq!((train.len(), val.len()), (1600, 400));
        let mut all: Vec<usize> = train.iter().chain(&val).copied().collect();
        all.sort_unstable();
        assert_eq!(all, (0..2000).collect::<Vec<_>>());
        assert!(train.windows(2).all(|w| w[0] < w[1]));
        assert_eq!(holdout(2000, 0.2, 0), (train, val.clone()));
        assert_ne!(holdout(2000, 0.2, 1).1, val);

        assert_eq!(holdout(3, 0.2, 5).1.len(), 1);
        assert_eq!(holdout(2, 0.9, 5).0.len(), 1);
        assert_eq!(holdout(1, 0.2, 5), (vec![0], vec![]));
        assert_eq!(holdout(5, 0.0, 5), ((0..5).collect(), vec![]));
    }
}
