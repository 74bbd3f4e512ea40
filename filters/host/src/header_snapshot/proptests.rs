//! Properties of the header-pair reader (proptest). The buffer comes from the host,
//! so the reader must hold up whatever it holds: `Pairs` cannot be reached without
//! proxy-wasm, which is why these run here rather than as a fuzz target.

use super::Pairs;
use proptest::collection::vec;
use proptest::prelude::*;

/// The proxy-wasm serialization of a header map: a count, the sizes, then each key
/// and value followed by a NUL.
fn serialize(pairs: &[(Vec<u8>, Vec<u8>)]) -> Vec<u8> {
    let mut out = (pairs.len() as u32).to_le_bytes().to_vec();
    for (key, value) in pairs {
        out.extend_from_slice(&(key.len() as u32).to_le_bytes());
        out.extend_from_slice(&(value.len() as u32).to_le_bytes());
    }
    for (key, value) in pairs {
        out.extend_from_slice(key);
        out.push(0);
        out.extend_from_slice(value);
        out.push(0);
    }
    out
}

fn pairs() -> impl Strategy<Value = Vec<(Vec<u8>, Vec<u8>)>> {
    vec((vec(any::<u8>(), 0..12), vec(any::<u8>(), 0..24)), 0..8)
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(256))]

    #[test]
    fn a_serialized_map_reads_back_exactly(map in pairs()) {
        let buffer = serialize(&map);
        let read: Vec<(Vec<u8>, Vec<u8>)> = Pairs::new(&buffer)
            .map(|(key, value)| (key.to_vec(), value.to_vec()))
            .collect();
        prop_assert_eq!(read, map);
    }

    #[test]
    fn a_cut_buffer_reads_as_a_prefix_of_its_pairs(map in pairs(), cut in any::<usize>()) {
        let mut buffer = serialize(&map);
        buffer.truncate(cut % (buffer.len() + 1));
        let read: Vec<(Vec<u8>, Vec<u8>)> = Pairs::new(&buffer)
            .map(|(key, value)| (key.to_vec(), value.to_vec()))
            .collect();
        prop_assert!(read.len() <= map.len());
        prop_assert_eq!(&read[..], &map[..read.len()]);
    }

    #[test]
    fn any_buffer_reads_within_itself(buffer in vec(any::<u8>(), 0..128), count in any::<u32>()) {
        // A random count in front, so that large and small counts are both tried.
        let mut bytes = count.to_le_bytes().to_vec();
        bytes.extend_from_slice(&buffer);
        let mut read = 0;
        for (key, value) in Pairs::new(&bytes) {
            read += key.len() + value.len() + 2;
        }
        prop_assert!(read <= bytes.len());
    }
}
