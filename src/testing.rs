//! Helpers shared by unit tests.

/// Every single-byte deletion, duplication and replacement (by each of `replacements`) of `seed`: the inputs of the
/// parsers' mutation tests.
pub fn single_byte_mutations(seed: &[u8], replacements: &[u8]) -> Vec<Vec<u8>> {
    let mut variants = Vec::with_capacity(seed.len() * (2 + replacements.len()));
    for i in 0..seed.len() {
        let mut deleted = seed.to_vec();
        deleted.remove(i);
        variants.push(deleted);
        let mut doubled = seed.to_vec();
        doubled.insert(i, seed[i]);
        variants.push(doubled);
        for &r in replacements {
            let mut replaced = seed.to_vec();
            replaced[i] = r;
            variants.push(replaced);
        }
    }
    variants
}
