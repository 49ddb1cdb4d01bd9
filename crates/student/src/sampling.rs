//! Choosing a token by sampling: the served students' answer to a request's `temperature`,
//! `top_p` and `seed`. The decoders' constraints say which tokens are allowed (and with what
//! bonus); this module only draws one of them. Greedy decoding, the predict step's and the
//! default, never comes here.

use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;
use tracelab_core::job::Sampling;

/// Draws tokens for one query: its own seeded generator, so the draw does not depend on the
/// other queries of its batch.
pub struct Sampler {
    temperature: f32,
    top_p: f32,
    rng: ChaCha8Rng,
}

impl Sampler {
    /// A sampler for `s`.
    pub fn new(s: &Sampling) -> Sampler {
        Sampler {
            temperature: s.temperature.max(1e-3),
            top_p: s.top_p.clamp(f32::MIN_POSITIVE, 1.0),
            rng: ChaCha8Rng::seed_from_u64(s.seed),
        }
    }

    /// Draws one of `candidates` (token, log-score), each with probability proportional to
    /// `exp(score / temperature)`, among the most likely ones whose probabilities reach `top_p`.
    /// A token listed twice counts once, at its best score. `None` when there is no candidate
    /// with a finite score; a single candidate is taken without drawing.
    pub fn draw(&mut self, candidates: &mut Vec<(u32, f32)>) -> Option<u32> {
        candidates.retain(|(_, s)| s.is_finite());
        // Best score first; among equal scores the lower token, so the order is reproducible.
        candidates.sort_by(|a, b| b.1.total_cmp(&a.1).then(a.0.cmp(&b.0)));
        let mut seen = std::collections::HashSet::new();
        candidates.retain(|(t, _)| seen.insert(*t));
        // One candidate is no draw: taking no randomness keeps the stream of later draws the
        // same whether forced tokens are decoded one by one or fed together.
        if let [(only, _)] = candidates[..] {
            return Some(only);
        }
        let top = candidates.first()?.1;
        let weights: Vec<f64> = candidates
            .iter()
            .map(|(_, s)| (((s - top) / self.temperature) as f64).exp())
            .collect();
        let total: f64 = weights.iter().sum();
        // The nucleus: the shortest best-first prefix holding `top_p` of the mass.
        let mut kept = 0;
        let mut mass = 0.0;
        while kept < weights.len() && (kept == 0 || mass < self.top_p as f64 * total) {
            mass += weights[kept];
            kept += 1;
        }
        let mut x = self.rng.random::<f64>() * mass;
        for (i, w) in weights[..kept].iter().enumerate() {
            if x < *w {
                return Some(candidates[i].0);
            }
            x -= w;
        }
        Some(candidates[kept - 1].0)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sampler(temperature: f32, top_p: f32, seed: u64) -> Sampler {
        Sampler::new(&Sampling {
            temperature,
            top_p,
            seed,
        })
    }

    fn draws(s: &mut Sampler, cands: &[(u32, f32)], n: usize) -> Vec<u32> {
        (0..n)
            .map(|_| s.draw(&mut cands.to_vec()).expect("a token"))
            .collect()
    }

    #[test]
    fn the_same_seed_draws_the_same_tokens_and_another_seed_others() {
        let cands = [(1, -1.0), (2, -1.1), (3, -1.2), (4, -1.3)];
        let a = draws(&mut sampler(1.0, 1.0, 7), &cands, 40);
        assert_eq!(a, draws(&mut sampler(1.0, 1.0, 7), &cands, 40));
        assert_ne!(a, draws(&mut sampler(1.0, 1.0, 8), &cands, 40));
        for t in 1..=4 {
            assert!(a.contains(&t), "token {t} never drawn in {a:?}");
        }
    }

    #[test]
    fn draws_follow_the_scores_and_sharpen_at_low_temperature() {
        // log 0.75 vs log 0.25: at temperature 1 about three in four; at 0.1 nearly always.
        let cands = [(5, 0.75f32.ln()), (9, 0.25f32.ln())];
        let share = |t: f32| {
            let d = draws(&mut sampler(t, 1.0, 1), &cands, 4000);
            d.iter().filter(|&&x| x == 5).count() as f64 / d.len() as f64
        };
        let warm = share(1.0);
        assert!((warm - 0.75).abs() < 0.03, "share {warm}");
        assert!(share(0.1) > 0.999);
    }

    #[test]
    fn the_nucleus_drops_the_unlikely_tail() {
        let cands = [(1, 0.6f32.ln()), (2, 0.3f32.ln()), (3, 0.1f32.ln())];
        let d = draws(&mut sampler(1.0, 0.8, 3), &cands, 2000);
        assert!(!d.contains(&3), "the tail token was drawn");
        assert!(d.contains(&1) && d.contains(&2));
    }

    #[test]
    fn a_token_listed_twice_counts_once_and_no_finite_candidate_is_none() {
        let mut s = sampler(1.0, 1.0, 2);
        let d = draws(&mut s, &[(1, 0.0), (1, 0.0), (2, 0.0)], 4000);
        let ones = d.iter().filter(|&&x| x == 1).count() as f64 / d.len() as f64;
        assert!((ones - 0.5).abs() < 0.04, "share {ones}");
        assert_eq!(s.draw(&mut vec![(3, f32::NEG_INFINITY)]), None);
        assert_eq!(s.draw(&mut Vec::new()), None);
    }

    #[test]
    fn a_single_candidate_takes_no_randomness() {
        let (mut a, mut b) = (sampler(1.0, 1.0, 7), sampler(1.0, 1.0, 7));
        let two = [(1, 0.0), (2, 0.0)];
        let mut from_a = Vec::new();
        for _ in 0..20 {
            assert_eq!(a.draw(&mut vec![(5, -3.0)]), Some(5));
            from_a.extend(draws(&mut a, &two, 1));
        }
        assert_eq!(from_a, draws(&mut b, &two, 20));
    }
}
