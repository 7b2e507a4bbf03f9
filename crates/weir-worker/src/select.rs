//! Which queue a lease request goes to: smooth weighted round-robin (nginx's), or
//! strict order, plus which queue takes the long-poll when all of them are empty.

/// Picks queues for lease requests. Deterministic, so tests can check the spread.
#[derive(Debug)]
pub(crate) struct QueuePicker {
    /// Each queue's weight, in the order the queues were added.
    weights: Vec<i64>,
    /// Smooth weighted round-robin's running scores.
    current: Vec<i64>,
    /// Sum of the weights.
    total: i64,
    /// Earlier queues first, always.
    strict: bool,
    /// Counts idle rounds, to rotate the long-poll over the queues.
    idle_rounds: usize,
}

impl QueuePicker {
    pub(crate) fn new(weights: &[u32], strict: bool) -> QueuePicker {
        assert!(!weights.is_empty(), "a pool has at least one queue");
        let weights: Vec<i64> = weights.iter().map(|&w| i64::from(w.max(1))).collect();
        QueuePicker {
            total: weights.iter().sum(),
            current: vec![0; weights.len()],
            weights,
            strict,
            idle_rounds: 0,
        }
    }

    /// The order to try the queues in this round: the queue whose turn it is,
    /// then the others (heaviest first; in strict order, simply 0, 1, 2, …).
    pub(crate) fn order(&mut self) -> Vec<usize> {
        let n = self.weights.len();
        if self.strict || n == 1 {
            return (0..n).collect();
        }
        let mut best = 0;
        for i in 0..n {
            self.current[i] += self.weights[i];
            if self.current[i] > self.current[best] {
                best = i;
            }
        }
        self.current[best] -= self.total;
        let mut order: Vec<usize> = (0..n).filter(|&i| i != best).collect();
        order.sort_by_key(|&i| std::cmp::Reverse(self.weights[i]));
        order.insert(0, best);
        order
    }

    /// The queue that long-polls this idle round: each in turn, so work arriving on
    /// any queue is seen within one rotation.
    pub(crate) fn idle_queue(&mut self) -> usize {
        let i = self.idle_rounds % self.weights.len();
        self.idle_rounds = self.idle_rounds.wrapping_add(1);
        i
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn weighted_spread_is_exact_over_a_cycle() {
        let mut p = QueuePicker::new(&[5, 1, 1], false);
        let mut firsts = [0; 3];
        for _ in 0..7 * 100 {
            let order = p.order();
            assert_eq!(order.len(), 3);
            firsts[order[0]] += 1;
        }
        assert_eq!(firsts, [500, 100, 100]);
    }

    #[test]
    fn weighted_is_smooth() {
        let mut p = QueuePicker::new(&[2, 1], false);
        let firsts: Vec<usize> = (0..6).map(|_| p.order()[0]).collect();
        assert_eq!(firsts, [0, 1, 0, 0, 1, 0]);
    }

    #[test]
    fn strict_is_always_in_order() {
        let mut p = QueuePicker::new(&[1, 9, 3], true);
        for _ in 0..5 {
            assert_eq!(p.order(), [0, 1, 2]);
        }
    }

    #[test]
    fn idle_rotates() {
        let mut p = QueuePicker::new(&[1, 1, 1], false);
        let idle: Vec<usize> = (0..4).map(|_| p.idle_queue()).collect();
        assert_eq!(idle, [0, 1, 2, 0]);
    }
}
