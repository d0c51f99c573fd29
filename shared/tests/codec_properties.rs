//! Property tests of the instruction codec: whatever is encoded parses back the same, however the bytes are
//! split across reads, and no input at all can make the scanner panic or hold more than one instruction.

#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    reason = "a test: a failed expectation is a failed test"
)]

use deskbroker_shared::instruction::Instruction;
use deskbroker_shared::scanner::{InstructionBuffer, MAX_INSTRUCTION_BYTES};
use proptest::prelude::*;

fn element() -> impl Strategy<Value = String> {
    prop_oneof![
        "[a-z0-9]{0,12}",
        "[,;.0-9]{0,6}",
        any::<String>().prop_map(|s| s.chars().take(40).collect()),
    ]
}

fn instruction() -> impl Strategy<Value = Instruction> {
    ("[a-z]{0,8}", prop::collection::vec(element(), 0..8))
        .prop_map(|(opcode, args)| Instruction { opcode, args })
}

/// Feeds `wire` to a buffer in pieces cut at `cuts` and collects what it hands out, one at a time.
fn feed(wire: &[u8], cuts: &[usize]) -> Vec<Instruction> {
    let mut buffer = InstructionBuffer::default();
    let mut out = Vec::new();
    let mut at = 0;
    let mut bounds: Vec<usize> = cuts.iter().map(|c| c % (wire.len() + 1)).collect();
    bounds.push(wire.len());
    bounds.sort_unstable();
    for bound in bounds {
        buffer.extend_from_slice(&wire[at..bound]);
        at = bound;
        while let Some(bytes) = buffer.next_instruction().expect("valid input") {
            out.push(Instruction::parse(&bytes).expect("whole instruction"));
        }
    }
    assert!(buffer.is_empty());
    out
}

proptest! {
    #[test]
    fn round_trips(instruction in instruction()) {
        let wire = instruction.encode();
        prop_assert_eq!(Instruction::parse(wire.as_bytes()), Ok(instruction));
    }

    #[test]
    fn any_split_yields_the_same_instructions(
        instructions in prop::collection::vec(instruction(), 1..10),
        cuts in prop::collection::vec(any::<usize>(), 0..12),
    ) {
        let wire: String = instructions.iter().map(Instruction::encode).collect();
        prop_assert_eq!(feed(wire.as_bytes(), &cuts), instructions);
    }

    #[test]
    fn batches_hold_whole_instructions(
        instructions in prop::collection::vec(instruction(), 1..10),
        cuts in prop::collection::vec(any::<usize>(), 0..12),
    ) {
        let wire: String = instructions.iter().map(Instruction::encode).collect();
        let mut buffer = InstructionBuffer::default();
        let mut relayed = Vec::new();
        let mut at = 0;
        let mut bounds: Vec<usize> = cuts.iter().map(|c| c % (wire.len() + 1)).collect();
        bounds.push(wire.len());
        bounds.sort_unstable();
        for bound in bounds {
            buffer.extend_from_slice(&wire.as_bytes()[at..bound]);
            at = bound;
            if let Some(batch) = buffer.take_instructions().expect("valid input") {
                // Every batch is itself a sequence of whole instructions.
                prop_assert!(!feed(&batch, &[]).is_empty());
                relayed.extend_from_slice(&batch);
            }
        }
        prop_assert_eq!(relayed, wire.into_bytes());
    }

    #[test]
    fn arbitrary_bytes_never_panic_or_overgrow(chunks in prop::collection::vec(prop::collection::vec(any::<u8>(), 0..64), 0..64)) {
        let mut buffer = InstructionBuffer::default();
        for chunk in chunks {
            buffer.extend_from_slice(&chunk);
            match buffer.take_instructions() {
                Ok(_) => prop_assert!(buffer.len() <= MAX_INSTRUCTION_BYTES + 64),
                Err(_) => break,
            }
        }
    }
}
