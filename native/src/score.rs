//! The softmax, margin and entropy of `worker/core/routing.py`, operation for operation.
//!
//! Every step is either exact IEEE arithmetic (subtract, divide, multiply, negate), a call of
//! the C library's `exp` and `log1p` (the functions CPython's `math.exp` and `math.log1p` call), or
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

/// The exactly rounded sum of finite values, `math.fsum`'s result bit for bit. Most sums are
/// settled by one pass of Sum2 (Ogita, Rump and Oishi, "Accurate sum and dot product", 2005):
/// error-free additions leave `s + c` within `γ(n)² · Σ|x|` of the exact sum, and where that
/// interval cannot reach a rounding midpoint of `fl(s + c)`, that is the exactly rounded sum.
/// Any other sum (a midpoint within reach, a zero, an overflow) is left to `fsum_exact`.
pub fn fsum(values: impl Iterator<Item = f64> + Clone) -> f64 {
    let (mut s, mut c, mut magnitude, mut n) = (0.0f64, 0.0f64, 0.0f64, 0u32);
    for x in values.clone() {
        let (t, e) = two_sum(s, x);
        s = t;
        c += e;
        magnitude += x.abs();
        n += 1;
    }
    let (r, d) = two_sum(s, c);
    // |exact - (s + c)| <= γ(n)²·Σ|x|, γ(k) = k·u/(1 - k·u); bounded above here by four
    // times (n·u)², which also covers the rounding of this bound's own arithmetic.
    let nu = f64::from(n) * (f64::EPSILON / 2.0);
    let reach = d.abs() + 4.0 * nu * nu * magnitude;
    if r != 0.0 && r.is_finite() && magnitude.is_finite() && n < 1 << 20 {
        let above = f64::from_bits(r.abs().to_bits() + 1);
        // A quarter of r's ulp: half the gap below r, which is half the gap above at a power
        // of two.
        if above.is_finite() && reach < (above - r.abs()) / 4.0 {
            return r;
        }
    }
    fsum_exact(values)
}

/// `a + b` and its rounding error, exactly (Knuth's TwoSum).
fn two_sum(a: f64, b: f64) -> (f64, f64) {
    let s = a + b;
    let z = s - a;
    (s, (a - (s - z)) + (b - z))
}

/// Shewchuk's exactly rounded sum, as CPython's `math.fsum` computes it (finite inputs only).
pub fn fsum_exact(values: impl Iterator<Item = f64>) -> f64 {
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

/// (x - top) / T, also where x - top is past the float range and x is not masked: as
/// `worker.core.routing._scaled_gap`.
#[inline]
fn scaled_gap(x: f64, top: f64, temperature: f64) -> f64 {
    let gap = x - top;
    if gap == f64::NEG_INFINITY && x != f64::NEG_INFINITY {
        return x / temperature - top / temperature;
    }
    gap / temperature
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
    let z: Vec<f64> = logits.iter().map(|&x| scaled_gap(x, top, temperature)).collect();
    let e: Vec<f64> = z.iter().map(|&v| v.exp()).collect();
    let total = fsum(e.iter().copied());
    let probabilities: Vec<f64> = e.iter().map(|&v| v / total).collect();
    let spread = fsum(
        e.iter()
            .zip(z.iter())
            .filter(|(&ei, _)| ei > 0.0)
            .map(|(&ei, &zi)| ei * -zi),
    );
    // log1p of the sum less the maximum's exact 1: a confident event's entropy keeps its digits.
    let rest = fsum(e.iter().copied().chain(std::iter::once(-1.0)));
    let entropy = rest.ln_1p() + spread / total;
    // The first largest logit, even where its probability rounds to a neighbour's.
    let best = logits.iter().position(|&x| x == top).unwrap_or(0);
    let top1 = probabilities[best];
    let top2 = probabilities
        .iter()
        .enumerate()
        .filter(|&(i, _)| i != best)
        .map(|(_, &p)| p)
        .fold(f64::NEG_INFINITY, f64::max);
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
        // A sum exactly halfway between two doubles, and one just past the halfway point.
        assert_eq!(fsum([1.0, 1.1102230246251565e-16].into_iter()), 1.0);
        let past = [1.0, 1.1102230246251565e-16, 1e-300];
        assert_eq!(fsum(past.into_iter()), 1.0000000000000002);
        assert_eq!(fsum_exact(past.into_iter()), 1.0000000000000002);
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
