//! Backend choice within an arm: least in-flight first, never past a backend's `max_inflight`.

/// Orders an arm's backends for one request: fewest requests in flight first, ties broken by
/// `rotation` so equal backends share the load; backends at their limit are left out. The
/// caller tries them in this order, moving on only when a connect fails.
///
/// `load_of(backend)` returns `(in_flight, max_inflight)`.
pub fn order_by_load(
    candidates: &[usize],
    load_of: impl Fn(usize) -> (u32, u32),
    rotation: usize,
) -> Vec<usize> {
    let n = candidates.len().max(1);
    let mut open: Vec<(u32, usize, usize)> = candidates
        .iter()
        .enumerate()
        .filter_map(|(pos, &backend)| {
            let (in_flight, max) = load_of(backend);
            (in_flight < max).then_some((in_flight, (pos + n - rotation % n) % n, backend))
        })
        .collect();
    open.sort_unstable();
    open.into_iter().map(|(_, _, backend)| backend).collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn least_in_flight_first_and_saturated_left_out() {
        let loads = [(5, 10), (1, 10), (10, 10), (3, 10)];
        let order = order_by_load(&[0, 1, 2, 3], |b| loads[b], 0);
        assert_eq!(order, vec![1, 3, 0]);
    }

    #[test]
    fn ties_rotate() {
        let firsts: Vec<usize> = (0..6)
            .map(|r| order_by_load(&[7, 8, 9], |_| (0, 4), r)[0])
            .collect();
        assert_eq!(firsts, vec![7, 8, 9, 7, 8, 9]);
    }
}
