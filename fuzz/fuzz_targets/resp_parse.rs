//! Fuzz target: the RESP request decoder alone, checked against `redis-protocol` as the reference: every
//! request ours accepts must decode there to the same arguments and the same length, and ours never
//! panics or reads past its input.
#![no_main]

use libfuzzer_sys::fuzz_target;
use redis_protocol::resp2::decode::decode;
use redis_protocol::resp2::types::OwnedFrame;
use zdb::protocol::parse_request;

fuzz_target!(|data: &[u8]| {
    let mut ranges = Vec::new();
    let mut pos = 0;
    // Decode request after request, as a connection does with pipelined input.
    while pos < data.len() {
        let rest = &data[pos..];
        let Ok(Some(n)) = parse_request(rest, &mut ranges) else {
            return;
        };
        assert!(n > 0 && n <= rest.len(), "consumed {n} of {}", rest.len());
        let ours: Vec<&[u8]> = ranges.iter().map(|r| &rest[r.clone()]).collect();
        match decode(rest) {
            Ok(Some((OwnedFrame::Array(items), m))) => {
                assert_eq!(m, n, "request length differs from redis-protocol's");
                let theirs: Vec<&[u8]> = items
                    .iter()
                    .map(|f| match f {
                        OwnedFrame::BulkString(b) => b.as_slice(),
                        other => panic!("ours accepted a non-bulk argument {other:?}"),
                    })
                    .collect();
                assert_eq!(ours, theirs, "arguments differ from redis-protocol's");
            }
            other => panic!("ours accepted a request redis-protocol decodes as {other:?}"),
        }
        pos += n;
    }
});
