//! The deterministic instruction stream the test guacd sends on `x-flood`, so a test can compute the bytes
//! it must receive and compare hashes. Payloads are mostly ASCII with 2-, 3- and 4-byte UTF-8 characters
//! mixed in, so relays that count bytes instead of code points, or cut inside a character, are caught.

use deskbroker_shared::scanner::MAX_ELEMENT_LENGTH;

/// Characters of each UTF-8 width mixed into payloads.
const WIDE: [char; 3] = ['\u{e9}', '\u{4e2d}', '\u{1F600}'];

/// splitmix64: tiny, deterministic, good enough to vary payloads.
fn next(state: &mut u64) -> u64 {
    *state = state.wrapping_add(0x9e37_79b9_7f4a_7c15);
    let mut z = *state;
    z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
    z ^ (z >> 31)
}

/// A payload of `size` code points derived from (seed, i).
pub fn payload(seed: u64, i: u64, size: usize) -> String {
    let mut state = seed ^ i.wrapping_mul(0x2545_f491_4f6c_dd1d);
    let mut out = String::with_capacity(size + size / 4);
    for _ in 0..size.min(MAX_ELEMENT_LENGTH) {
        let r = next(&mut state);
        if r.is_multiple_of(16) {
            out.push(WIDE[(r >> 8) as usize % WIDE.len()]);
        } else {
            out.push(char::from(b' ' + (r >> 16) as u8 % 95));
        }
    }
    out
}

/// The wire bytes of the i-th flood instruction: `6.x-data,<i>,<payload>;`.
pub fn instruction(seed: u64, i: u64, size: usize) -> String {
    let index = i.to_string();
    let payload = payload(seed, i, size);
    format!(
        "6.x-data,{}.{index},{}.{payload};",
        index.len(),
        payload.chars().count()
    )
}

/// All `count` flood instructions, in order, generated one at a time.
pub fn instructions(count: u64, size: usize, seed: u64) -> impl Iterator<Item = String> {
    (0..count).map(move |i| instruction(seed, i, size))
}

/// What the test guacd sends over and over on `x-repeat`: 64 flood instructions of 4,000 code points (about
/// 280 KiB), made once, so that a benchmark measures the relay rather than the payload generator. With
/// `ascii`, every multi-byte character is replaced by `~`: the same lengths, one byte per character.
pub fn block(ascii: bool) -> &'static [u8] {
    static BLOCKS: [std::sync::OnceLock<Vec<u8>>; 2] = [const { std::sync::OnceLock::new() }; 2];
    BLOCKS[ascii as usize].get_or_init(|| {
        let text: String = instructions(64, 4000, 0).collect();
        match ascii {
            true => text
                .chars()
                .map(|c| if c.is_ascii() { c } else { '~' })
                .collect::<String>(),
            false => text,
        }
        .into_bytes()
    })
}

/// A mixed-width text of `n` code points, for `x-big`.
pub fn big_text(n: usize) -> String {
    payload(0xb16, 0, n)
}

#[cfg(test)]
mod tests {
    use deskbroker_shared::instruction::Instruction;

    use super::*;

    #[test]
    fn flood_instructions_are_valid_and_deterministic() {
        let first: Vec<_> = instructions(20, 300, 5).collect();
        assert_eq!(first, instructions(20, 300, 5).collect::<Vec<_>>());
        for (i, wire) in first.iter().enumerate() {
            let parsed = Instruction::parse(wire.as_bytes()).unwrap();
            assert_eq!(parsed.opcode, "x-data");
            assert_eq!(parsed.args[0], i.to_string());
            assert_eq!(parsed.args[1].chars().count(), 300);
        }
        assert!(
            first.iter().any(|w| w.len() > w.chars().count()),
            "multi-byte characters appear"
        );
    }
}
