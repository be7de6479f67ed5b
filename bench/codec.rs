//! Codec micro-benchmarks: parse a typical Prepare (30-byte destination, 32-byte data), parse a
//! BTP MESSAGE carrying it, encode a Fulfill, validate an address.
//!
//! Run: `cargo bench --bench codec`

use bytes::{Bytes, BytesMut};
use criterion::{black_box, criterion_group, criterion_main, Criterion, Throughput};
use ilp_connector::codec::btp::{self, BtpType};
use ilp_connector::codec::ilp::rewrite_prepare;
use ilp_connector::codec::{
    validate_address, BtpPacket, FulfillFields, Prepare, PrepareFields, Timestamp,
};

/// 30 bytes.
const DESTINATION: &[u8] = b"g.us-fed.acmebank.alice.x7q2a3";

fn typical_prepare() -> Bytes {
    assert_eq!(DESTINATION.len(), 30);
    let cond = [0x5a; 32];
    let mut out = BytesMut::new();
    PrepareFields {
        amount: 1_000,
        expires_at: Timestamp::from_unix_millis(1_900_000_000_000),
        execution_condition: &cond,
        destination: DESTINATION,
        data: &[0xab; 32],
    }
    .encode(&mut out);
    out.freeze()
}

fn codec(c: &mut Criterion) {
    let prepare = typical_prepare();
    let mut frame = BytesMut::new();
    btp::encode_ilp(&mut frame, BtpType::Message, 7, &prepare);
    let frame = frame.freeze();

    let mut g = c.benchmark_group("codec");
    g.throughput(Throughput::Elements(1));
    g.bench_function("prepare_parse", |b| {
        b.iter(|| {
            let p = Prepare::decode(black_box(prepare.clone())).unwrap();
            black_box(p.amount());
            black_box(p.expires_at());
            black_box(p.destination().len());
        })
    });
    g.bench_function("btp_message_with_prepare_parse", |b| {
        b.iter(|| {
            let m = BtpPacket::decode(black_box(frame.clone())).unwrap();
            let p = Prepare::decode(m.ilp().unwrap()).unwrap();
            black_box(p.amount());
        })
    });
    let fulfillment = [7u8; 32];
    let mut out = BytesMut::with_capacity(256);
    g.bench_function("fulfill_encode", |b| {
        b.iter(|| {
            out.clear();
            FulfillFields {
                fulfillment: black_box(&fulfillment),
                data: black_box(&[][..]),
            }
            .encode(&mut out);
            black_box(out.len());
        })
    });
    let mut buf = BytesMut::from(&prepare[..]);
    g.bench_function("prepare_rewrite_in_place", |b| {
        b.iter(|| {
            rewrite_prepare(
                black_box(&mut buf),
                black_box(999),
                Timestamp::from_unix_millis(black_box(1_900_000_000_000)),
            )
            .unwrap();
        })
    });
    g.bench_function("timestamp_parse", |b| {
        b.iter(|| Timestamp::parse_ilp(black_box(b"20171224161432279")).unwrap())
    });
    g.bench_function("bytes_clone_drop", |b| {
        b.iter(|| black_box(prepare.clone()))
    });
    g.bench_function("address_validate", |b| {
        b.iter(|| validate_address(black_box(DESTINATION)).unwrap())
    });
    g.finish();
}

criterion_group!(benches, codec);
criterion_main!(benches);
