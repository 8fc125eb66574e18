//! The softmax, margin and entropy of `worker/core/routing.py`, operation for operation.
//!
//! Every step is either exact IEEE arithmetic (subtract, divide, multiply, negate), a call of
//! the C library's `exp` and `log` (the functions CPython's `math.exp` and `math.log` call), or
//! an exactly rounded sum (`fsum`, CPython's `math.fsum` algorithm). So the results are the
//! Python reference's bit for bit, not merely close to them.

pub struct Scores {
    pub probabilities: Vec<f64>,
    pub top1: f64,
    pub top2: f64,
    pub margin: f64,
    pub entropy: f64,
    pub class_index: usize,
}

/// Shewchuk's exactly rounded sum, as CPython's `math.fsum` computes it (finite inputs only).
pub fn fsum(values: impl Iterator<Item = f64>) -> f64 {
    let mut partials: Vec<f64> = Vec::with_capacity(8);
    for mut x in values {
        let mut i = 0;
        for j in 0..partials.len() {
            let mut y = partials[j];
            if x.abs() < y.abs() {
                std::mem::swap(&mut x, &mut y);
            }
            let hi = x + y;
            let lo = y - (hi - x);
            if lo != 0.0 {
                partials[i] = lo;
                i += 1;
            }
            x = hi;
        }
        partials.truncate(i);
        if x != 0.0 {
            partials.push(x);
        }
    }
    let mut n = partials.len();
    if n == 0 {
        return 0.0;
    }
    n -= 1;
    let mut hi = partials[n];
    let mut lo = 0.0;
    while n > 0 {
        let x = hi;
        n -= 1;
        let y = partials[n];
        hi = x + y;
        lo = y - (hi - x);
        if lo != 0.0 {
            break;
        }
    }
    // Round half to even across partials, as CPython does.
    if n > 0 && ((lo < 0.0 && partials[n - 1] < 0.0) || (lo > 0.0 && partials[n - 1] > 0.0)) {
        let y = lo * 2.0;
        let x = hi + y;
        if y == x - hi {
            hi = x;
        }
    }
    hi
}

/// `routing.score`: `None` where the reference refuses the logits (no finite one, or +inf);
/// the caller then lets the Python path name the refusal.
pub fn score(logits: &[f64], temperature: f64) -> Option<Scores> {
    let mut top = f64::NEG_INFINITY;
    for &x in logits {
        if x.is_nan() {
            return None;
        }
        if x > top {
            top = x;
        }
    }
    if top.is_infinite() || logits.len() < 2 {
        return None;
    }
    let z: Vec<f64> = logits.iter().map(|&x| (x - top) / temperature).collect();
    let e: Vec<f64> = z.iter().map(|&v| v.exp()).collect();
    let total = fsum(e.iter().copied());
    let probabilities: Vec<f64> = e.iter().map(|&v| v / total).collect();
    let spread = fsum(
        e.iter()
            .zip(z.iter())
            .filter(|(&ei, _)| ei > 0.0)
            .map(|(&ei, &zi)| ei * -zi),
    );
    let entropy = total.ln() + spread / total;
    // top-1 (lowest index on a tie), top-2, as `routing._summarise`.
    let mut best = 0;
    let mut top1 = probabilities[0];
    let mut top2 = f64::NEG_INFINITY;
    for (i, &p) in probabilities.iter().enumerate().skip(1) {
        if p > top1 {
            top2 = top1;
            top1 = p;
            best = i;
        } else if p > top2 {
            top2 = p;
        }
    }
    Some(Scores {
        margin: top1 - top2,
        probabilities,
        top1,
        top2,
        entropy,
        class_index: best,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn fsum_is_exact_where_a_naive_sum_is_not() {
        assert_eq!(fsum([1e100, 1.0, -1e100, 1e-100].into_iter()), 1.0);
        assert_eq!(fsum([0.1; 10].into_iter()), 1.0);
        assert_eq!(fsum(std::iter::empty()), 0.0);
    }

    #[test]
    fn the_lab_example() {
        let s = score(&[3.2, 2.8, 0.5], 1.0).unwrap();
        assert_eq!(s.class_index, 0);
        assert!((s.margin - 0.18974).abs() < 1e-4, "{}", s.margin);
    }

    #[test]
    fn nothing_to_score() {
        assert!(score(&[f64::NEG_INFINITY, f64::NEG_INFINITY], 1.0).is_none());
        assert!(score(&[f64::INFINITY, 1.0], 1.0).is_none());
    }
}
