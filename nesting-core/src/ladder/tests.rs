//! The ladder's range arithmetic (private). The decisions themselves are
//! tested against the simulated host profiles in
//! `nesting-core/tests/sim/ladder.rs`.

use super::*;

fn range(a: u64, b: u64) -> IovaRange {
    IovaRange {
        first: Iova(a),
        last: Iova(b),
    }
}

#[test]
fn subtract_handles_top_of_space_and_adjacent_holes() {
    let full = [range(0, u64::MAX)];
    assert_eq!(subtract(&full, &[range(0, 9), range(10, u64::MAX)]), vec![]);
    assert_eq!(
        subtract(&full, &[range(0x10, 0x1f), range(u64::MAX - 1, u64::MAX)]),
        vec![range(0, 0xf), range(0x20, u64::MAX - 2)]
    );
    assert_eq!(
        intersect(&[range(0, 10)], &[range(5, 20), range(30, 40)]),
        vec![range(5, 10)]
    );
    assert_eq!(
        normalize(&[range(5, 9), range(0, 4), range(3, 6)]),
        vec![range(0, 9)]
    );
}
